# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Verify: counts and schema against the last signed snapshot'
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
# # Verify: counts and schema against the last signed snapshot
#
# The guide's *Verify data integrity* (`SELECT COUNT(*)` per table) and *Verify migration success*, compared
# with the snapshot the last signed `apply` or `verify` record of this database holds.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
tolerance: float = 0.0  # percent of rows a table may lose before verify stops (0 = none)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. Status

# %%
s.status()

# %% [markdown]
# ## 3. Last signed snapshot of this database

# %%
snapshot = s.last_snapshot()
snapshot and snapshot[0]

# %% [markdown]
# ## 4. Row counts now, compared with the snapshot

# %%
from dbrunbook.procedures.verification import compare_with_snapshot

result = compare_with_snapshot(s, snapshot, tolerance=tolerance)
result.counts

# %% [markdown]
# ## 5. Schema now, compared with the snapshot

# %%
result.schema

# %% [markdown]
# ## 6. Verdict

# %%
result.raise_if_unexpected()
result

# %% [markdown]
# ## 7. New snapshot

# %%
s.save_snapshot()

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
