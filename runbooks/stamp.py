# ---
# jupyter:
#   dbrunbook:
#     changes_database: true
#     title: 'Stamp: set the version pointer without running migrations'
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: dbrunbook,kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Stamp: set the version pointer without running migrations
#
# The guide's *Column already exists* fix: `alembic stamp <revision>`, when the schema already is at that
# revision. dbrunbook builds the schema of that revision on a scratch database and refuses a stamp that would
# lie unless `force` is set (recorded). `dry_run` is true by default.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "main"  # the one migration set to stamp
revision: str = "heads"  # the revision the database really is at
dry_run: bool = True  # true: show what would change and change nothing
force: bool = False  # true: stamp although the live schema does not match that revision (recorded)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target (and take the deployer lock unless dry run)

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="stamp")
s

# %% [markdown]
# ## 2. Status before

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Does the schema really match that revision? (built on a scratch database)

# %%
from dbrunbook import safety

check = safety.stamp_check(s, revision, migration_set)
check

# %% [markdown]
# ## 4. Guard: refuse a stamp that would lie

# %%
safety.require_truthful_stamp(s, check, force, dry_run=dry_run)

# %% [markdown]
# ## 5. Stamp (alembic stamp)

# %%
s.stamp(revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 6. Status after

# %%
s.status(migration_set)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
