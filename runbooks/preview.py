# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Preview: the SQL that would run'
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
# # Preview: the SQL that would run
#
# The guide's *dry run*: `alembic upgrade head --sql > migration_preview.sql`, per migration set and revision.
# The SQL is saved as artifacts of this record with its sha256, so a reviewer approves exactly what `apply`
# will run. Changes nothing.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. Current status

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Pending migrations

# %%
s.pending(migration_set, revision)

# %% [markdown]
# ## 4. Offline SQL per revision (alembic upgrade --sql)

# %%
preview = s.preview(revision, migration_set)
preview

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
