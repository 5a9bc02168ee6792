# ---
# jupyter:
#   dbrunbook:
#     changes_database: true
#     title: 'Rollback: downgrade a migration set'
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
# # Rollback: downgrade a migration set
#
# The guide's *Rollback Procedures*: `alembic downgrade -1`, to a revision, or to `base` (DESTRUCTIVE: needs
# `confirm` equal to the database name). The downgrade SQL is rendered first and what it would destroy is
# counted on the live database; a loss stops the run unless `allow_data_loss` is set.
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "main"  # the one migration set to roll back
revision: str = "-1"  # -1, -N, a revision id, or base
dry_run: bool = True  # true: show what would run and change nothing
confirm: str = ""  # for base: the database name, to confirm
allow_data_loss: bool = False  # true: downgrade although it destroys rows or values (counted, recorded)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target (and take the deployer lock unless dry run)

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="rollback")
s

# %% [markdown]
# ## 2. Status before

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. What the downgrade would run (alembic downgrade --sql)

# %%
s.downgrade_sql(revision, migration_set)

# %% [markdown]
# ## 4. What the downgrade would destroy (counted on the live database)

# %%
from dbrunbook import safety

loss = safety.data_loss(s, revision, migration_set)
loss

# %% [markdown]
# ## 5. Guard: no data loss unless allowed

# %%
safety.require_no_data_loss(s, loss, allow_data_loss, dry_run=dry_run)

# %% [markdown]
# ## 6. Guard: a verified recent backup of this database (protected targets)

# %%
from dbrunbook.procedures.backup import require_recent_backup

require_recent_backup(s)

# %% [markdown]
# ## 7. Row counts before

# %%
before = s.row_counts()
before

# %% [markdown]
# ## 8. Downgrade (alembic downgrade)

# %%
s.downgrade(revision, migration_set, dry_run=dry_run, confirm=confirm)

# %% [markdown]
# ## 9. Row counts after, compared

# %%
s.compare_counts(before)

# %% [markdown]
# ## 10. Status after (alembic current)

# %%
s.status(migration_set)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
