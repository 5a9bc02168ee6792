# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Status: where is each migration set?'
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
# # Status: where is each migration set?
#
# The guide's *Check status*: `alembic current`, `alembic heads`, `alembic history --verbose`, for every
# migration set of the target. Changes nothing.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. Current revision and heads (alembic current / heads)

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Migration history (alembic history --verbose)

# %%
s.history(migration_set)

# %% [markdown]
# ## 4. Revision graph (branches, merges, where the database is)

# %%
s.revision_graph(migration_set)

# %% [markdown]
# ## 5. Pending migrations

# %%
s.pending(migration_set)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
