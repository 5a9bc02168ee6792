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
# The guide's *Running Migrations*: status, the SQL and its lint, guards, counts before, `alembic upgrade`,
# counts after, schema check. Each migration runs in its own transaction with the target's lock and statement
# timeouts, retried with backoff when it times out waiting for a lock.
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
dry_run: bool = True  # true: show what would run and change nothing
allow: str = ""  # lint findings to accept: rule or rule@revision, comma-separated (recorded)
approved_preview: str = ""  # run id of the reviewed preview record (required on a protected target)
ignore_blockers: bool = False  # go ahead although sessions older than blocker_max_age hold needed locks
tolerance: float = 0.0  # percent of rows a table may lose before the run stops (0 = none)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target (and take the deployer lock unless dry run)

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="apply")
s

# %% [markdown]
# ## 2. Status before

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Pending migrations and their SQL

# %%
preview = s.preview(revision, migration_set)
preview

# %% [markdown]
# ## 4. Lint the pending SQL (squawk and Alembic-aware checks, weighed by the live tables)

# %%
from dbrunbook import safety

report = safety.lint(s, preview)
report

# %% [markdown]
# ## 5. Guard: no error-level finding unless allowed

# %%
safety.require_clean(s, report, allow, dry_run=dry_run)

# %% [markdown]
# ## 6. Guard: the SQL is the reviewed preview's (protected targets)

# %%
safety.require_approved_preview(s, preview, approved_preview, dry_run=dry_run)

# %% [markdown]
# ### Guard: a SET NOT NULL only after its declared backfill is complete

# %%
from dbrunbook.procedures.backfill_guard import require_backfills_complete

require_backfills_complete(s, preview, dry_run=dry_run)

# %% [markdown]
# ## 7. Live preflight: sessions holding the tables these migrations lock

# %%
from dbrunbook.safety import preflight

check = preflight.live_preflight(s, preview)
check

# %% [markdown]
# ## 8. Guard: no old blocker on a protected target

# %%
preflight.require_no_blockers(s, check, ignore_blockers)

# %% [markdown]
# ## 9. Guard: a verified recent backup of this database (protected targets)

# %%
from dbrunbook.procedures.backup import require_recent_backup

require_recent_backup(s)

# %% [markdown]
# ## 10. Row counts before

# %%
before = s.row_counts()
before

# %% [markdown]
# ## 11. Upgrade (alembic upgrade)

# %%
from dbrunbook.views import plots

steps = s.upgrade(revision, migration_set, dry_run=dry_run, allow=allow)
steps

# %%
plots.durations_chart(steps)

# %% [markdown]
# ## 12. Row counts after, compared (guard: no rows vanished beyond the tolerance)

# %%
diff = s.compare_counts(before)
diff

# %%
plots.counts_chart(diff)

# %%
from dbrunbook.procedures import deploy

deploy.require_no_vanished_rows(diff, tolerance)

# %% [markdown]
# ## 13. Status after

# %%
s.status(migration_set)

# %%
s.revision_graph(migration_set)

# %% [markdown]
# ## 14. Schema check: models against the database (alembic check)

# %%
from dbrunbook.procedures import checks

checks.attempt("alembic check", s.check, migration_set)

# %% [markdown]
# ## 15. Snapshot for later verification
#
# The row counts are those the comparison above took right after the upgrade; the schema and the heads are
# read now.

# %%
s.save_snapshot(after=diff)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
