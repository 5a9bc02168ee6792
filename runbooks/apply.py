# ---
# jupyter:
#   dbrunbook:
#     changes_database: true
#     title: Apply pending migrations
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
# # Apply pending migrations
#
# The guide's *Running Migrations*: status, counts before, `alembic upgrade`, counts after, schema check.
# Each migration runs in its own transaction with the target's lock and statement timeouts.
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
dry_run: bool = True  # true: show what would run and change nothing
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="apply")
s

# %% [markdown]
# ## 2. Status before

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Pending migrations and their SQL

# %%
s.preview(revision, migration_set)

# %% [markdown]
# ## 4. Row counts before

# %%
before = s.row_counts()
before

# %% [markdown]
# ## 5. Upgrade (alembic upgrade)

# %%
s.upgrade(revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 6. Row counts after, compared

# %%
s.compare_counts(before)

# %% [markdown]
# ## 7. Status after

# %%
s.status(migration_set)

# %% [markdown]
# ## 8. Schema check: models against the database (alembic check)

# %%
s.check(migration_set)

# %% [markdown]
# ## 9. Snapshot for later verification

# %%
s.save_snapshot()

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
