# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Troubleshoot: what is wrong with this database, and what to run next'
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
# # Troubleshoot: what is wrong with this database, and what to run next
#
# The guide's *Troubleshooting* section, one step per problem, on every migration set of the target. Each
# problem found shows its evidence (the queries and what they returned), its cause, and the next step: the
# `dbrunbook` command to run, with its parameters. Reads only: it changes nothing and ends no session.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
max_age: str = ""  # transactions open longer than this are reported (default: the target's blocker_max_age)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session
from dbrunbook.procedures import diagnose

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. "Target database is not up to date"
#
# `alembic current` against `alembic heads`; the pending revisions.

# %%
up_to_date = diagnose.check_up_to_date(s, migration_set)
up_to_date

# %% [markdown]
# ## 3. "Can't locate revision identified by …"
#
# A version table naming a revision no script defines; its nearest known ancestor from the ledger and the
# signed records, and what stamping to it would mean.

# %%
unknown = diagnose.check_unknown_revision(s, migration_set)
unknown

# %% [markdown]
# ## 4. "Column already exists"
#
# Objects the pending revisions create that the live schema already has, per revision; when a stamp is safe.

# %%
exists = diagnose.check_objects_exist(s, migration_set)
exists

# %% [markdown]
# ## 5. "Duplicate key value violates unique constraint"
#
# Rows the pending data migrations insert whose keys are already in the table.

# %%
duplicates = diagnose.check_duplicate_keys(s, migration_set)
duplicates

# %% [markdown]
# ## 6. "Migration takes too long"
#
# Sessions blocked by others (pg_blocking_pids), long transactions, idle-in-transaction sessions, and the
# pids an operator could end. dbrunbook never ends them itself.

# %%
blocked = diagnose.check_blocking(s, max_age or None)
blocked

# %% [markdown]
# ## 7. Multiple heads
#
# Branches never merged, and the merge command.

# %%
heads = diagnose.check_multiple_heads(s, migration_set)
heads

# %% [markdown]
# ## 8. Drift (alembic check)
#
# The live schema against the models at head, per object.

# %%
drift = diagnose.check_drift(s, migration_set)
drift

# %% [markdown]
# ## 9. "Never edit applied migrations"
#
# Migration files whose sha256 changed since a run applied them (dbrunbook.ledger).

# %%
edited = diagnose.check_edited_migrations(s, migration_set)
edited

# %% [markdown]
# ## 10. Invalid indexes
#
# Indexes a timed-out or failed `CREATE INDEX CONCURRENTLY` left invalid, each with the statement that drops it.

# %%
invalid = diagnose.check_invalid_indexes(s, migration_set)
invalid

# %% [markdown]
# ## 11. Summary
#
# Every problem in the order to deal with it, or the all-clear; saved as `artifacts/diagnosis.json`.

# %%
diagnose.summary(s, up_to_date, unknown, exists, duplicates, blocked, heads, drift, edited, invalid)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
