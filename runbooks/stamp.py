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
# The guide's *Column already exists* fix: `alembic stamp <revision>`, when you know the schema already is
# at that revision. Use with caution. `dry_run` is true by default.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "main"  # the one migration set to stamp
revision: str = "heads"  # the revision the database really is at
dry_run: bool = True  # true: show what would change and change nothing
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="stamp")
s

# %% [markdown]
# ## 2. Status before

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Stamp (alembic stamp)

# %%
s.stamp(revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 4. Status after

# %%
s.status(migration_set)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
