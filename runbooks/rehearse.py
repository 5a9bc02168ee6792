# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Rehearse: the migrations on a restored copy'
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
# # Rehearse: the migrations on a restored copy
#
# The guide's *estimate downtime* and *test in staging*, on the real data: the newest verified backup (or
# one taken now) is restored into a scratch PostgreSQL; the pending migrations run there with the target's
# timeouts, each revision timed, with the relation locks it held at its commit; then they are rolled back and
# the schema is compared with the one before. The scratch server is removed afterwards. The record keeps
# `rehearsal.json` for the deploy runbook. The target itself is not changed.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
backup_run: str = ""  # run id of the backup to restore; empty: the newest verified one, or take one now
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. Status of the target

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. The backup to restore

# %%
from dbrunbook.procedures.backup import backup_for_rehearsal, rehearse, save_rehearsal

source = backup_for_rehearsal(s, backup_run)
source

# %% [markdown]
# ## 4. Restore into a scratch server, upgrade, downgrade

# %%
rehearsal = rehearse(s, source, revision=revision, migration_set=migration_set)
rehearsal

# %% [markdown]
# ## 5. Seconds per revision, up and down (downtime estimate)

# %%
rehearsal.timings()

# %% [markdown]
# ## 6. Locks each revision held at its commit
#
# PostgreSQL keeps a relation lock until the transaction ends, so these are all the locks the revision's
# statements took, each held until the revision committed.

# %%
rehearsal.locks()

# %% [markdown]
# ## 7. Schema after the round trip, compared with before

# %%
rehearsal.schema_frame()

# %% [markdown]
# ## 8. Save rehearsal.json

# %%
save_rehearsal(s, rehearsal)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
