# ---
# jupyter:
#   dbrunbook:
#     changes_database: true
#     title: Backfill a large table in batches
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
# # Backfill a large table in batches
#
# The guide's *Keep Migrations Fast*, middle step: add the column nullable, **backfill in batches**, then
# make it non-nullable. A declared backfill (`[backfills.NAME]` in dbrunbook.toml: table, key, set, where)
# runs in keyset batches over the key, each its own short transaction with the target's timeouts, sized
# toward `batch_seconds`, paused while replication lags, an autovacuum runs on the table, WAL archiving falls
# behind or sessions wait for locks on it. Progress is committed with each batch in `dbrunbook.backfills`:
# a stopped or killed run resumes where it stopped. Ctrl-C or SIGTERM stop it after the current batch.
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
name: str = ""  # the backfill: [backfills.NAME] in dbrunbook.toml (or give table, key, set and where)
table: str = ""  # only for a backfill not declared: the table
key: str = ""  # only for a backfill not declared: the key column(s), comma-separated
set: str = ""  # only for a backfill not declared: the SET list, e.g. score = 0
where: str = ""  # only for a backfill not declared: the rows still to do, e.g. score IS NULL
batch_seconds: float = 0.5  # the batch size adapts toward this many seconds a batch
batch_size: int = 1000  # rows in the first batch
rest_seconds: float = 0.0  # seconds of rest after each batch (0: none; rests did not lower the p99 in bench/backfill.py)
max_rows: int = 0  # stop after changing this many rows (0: no limit); a later run resumes
dry_run: bool = True  # true: show what would run and change nothing
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target (and take the deployer lock unless dry run)

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="backfill")
s

# %% [markdown]
# ## 2. The backfill

# %%
from dbrunbook.procedures import backfill

spec = backfill.declared(s, name, table=table, key=key, set=set, where=where)
spec

# %% [markdown]
# ## 3. Estimate: rows to do, and where an earlier run stopped

# %%
todo = backfill.estimate(s, spec)
todo

# %% [markdown]
# ## 4. Run the batches (progress below and on stderr; pauses printed as they happen)

# %%
result = backfill.run_backfill(s, spec, batch_seconds=batch_seconds, batch_size=batch_size, max_rows=max_rows,
                               dry_run=dry_run, estimate_rows=todo.attrs["rows_to_do"], rest_seconds=rest_seconds)
result

# %% [markdown]
# ## 5. Per-batch figures: rows, seconds, pauses

# %%
from dbrunbook.views import backfill_plots

result.batches_frame()

# %%
backfill_plots.batches_chart(result, batch_seconds=batch_seconds)

# %% [markdown]
# ## 6. Check: no row still matches the WHERE; next, the safe SET NOT NULL

# %%
backfill.finish_backfill(s, spec, result)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
