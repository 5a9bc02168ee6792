# ---
# jupyter:
#   dbrunbook:
#     changes_database: true
#     title: 'Deploy: the production deployment checklist'
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
# # Deploy: the production deployment checklist
#
# The guide's *Production Deployment Checklist*, item by item, each section's evidence kept in this record.
# Pre-deployment: current version, backup verified, SQL reviewed and linted, preview approved, breaking changes,
# downtime estimate from the latest rehearsal, rollback plan, live preflight. Deployment: explicit approval,
# maintenance mode on, apply, verify success, health check, maintenance mode off. Post-deployment: activity,
# data integrity, snapshot, changelog entry linking the backup, preview and rehearsal records.
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
dry_run: bool = True  # true: show what would run and change nothing
approve: str = ""  # protected targets: the live database's name, to approve this deploy
allow: str = ""  # lint findings to accept: rule or rule@revision, comma-separated (recorded)
approved_preview: str = ""  # run id of the reviewed preview record (required on a protected target)
ignore_blockers: bool = False  # go ahead although sessions older than blocker_max_age hold needed locks
tolerance: float = 0.0  # percent of rows a table may lose before the run stops (0 = none)
health_url: str = ""  # HTTP URL to check after the deploy (default: the target's health_url)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target (and take the deployer lock unless dry run)

# %%
from dbrunbook.execution.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="deploy")
s

# %% [markdown]
# ## 2. Pre-deployment: current version (alembic current)

# %%
s.status(migration_set)

# %%
s.revision_graph(migration_set)

# %% [markdown]
# ## 3. Pre-deployment: backup database (a verified backup record, recent enough)

# %%
from dbrunbook.procedures.backup import latest_rehearsal, require_recent_backup

backup = require_recent_backup(s)
backup

# %% [markdown]
# ## 4. Pre-deployment: review migration SQL

# %%
preview = s.preview(revision, migration_set)
preview

# %% [markdown]
# ## 5. Pre-deployment: lint the SQL (squawk and Alembic-aware checks, weighed by the live tables)

# %%
from dbrunbook import safety

report = safety.lint(s, preview)
report

# %% [markdown]
# ## 6. Pre-deployment guard: no error-level finding unless allowed

# %%
safety.require_clean(s, report, allow, dry_run=dry_run)

# %% [markdown]
# ## 7. Pre-deployment guard: the SQL is the approved preview's

# %%
safety.require_approved_preview(s, preview, approved_preview, dry_run=dry_run)

# %% [markdown]
# ## 8. Pre-deployment: check for breaking changes

# %%
from dbrunbook.procedures import checks, deploy

checks.attempt("breaking changes", deploy.breaking_changes, preview)

# %% [markdown]
# ## 9. Pre-deployment: estimate downtime (the latest rehearsal on restored data)

# %%
rehearsal = latest_rehearsal(s)
checks.attempt("downtime estimate", deploy.rehearsal_estimate, rehearsal)

# %% [markdown]
# ## 10. Pre-deployment: plan the rollback

# %%
checks.attempt("rollback plan", deploy.rollback_plan, s, revision, migration_set)

# %% [markdown]
# ## 11. Pre-deployment: live preflight (sessions holding the tables these migrations lock)

# %%
from dbrunbook.safety import preflight

check = preflight.live_preflight(s, preview)
check

# %% [markdown]
# ## 12. Pre-deployment guard: no old blocker on a protected target

# %%
preflight.require_no_blockers(s, check, ignore_blockers)

# %% [markdown]
# ## 13. Pre-deployment: row counts before

# %%
before = s.row_counts()
before

# %% [markdown]
# ## 14. Deployment guard: explicit approval (protected targets)

# %%
deploy.require_approval(s, approve, dry_run=dry_run)

# %% [markdown]
# ## 15. Deployment: maintenance mode on

# %%
deploy.maintenance(s, True, dry_run=dry_run)

# %% [markdown]
# ## 16. Deployment: apply migrations (alembic upgrade)

# %%
from dbrunbook.views import plots

steps = s.upgrade(revision, migration_set, dry_run=dry_run, allow=allow)
steps

# %%
plots.durations_chart(steps, rehearsal=rehearsal)

# %% [markdown]
# ## 17. Deployment: verify migration success

# %%
deploy.verify_success(s, revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 18. Deployment: health check

# %%
deploy.health_check(health_url or s.target.health_url)

# %% [markdown]
# ## 19. Deployment: maintenance mode off

# %%
deploy.maintenance(s, False, dry_run=dry_run)

# %% [markdown]
# ## 20. Post-deployment: monitor database activity

# %%
checks.attempt("database activity", deploy.activity, s)

# %% [markdown]
# ## 21. Post-deployment: verify data integrity (row counts; guard: no rows vanished beyond the tolerance)

# %%
diff = s.compare_counts(before)
diff

# %%
plots.counts_chart(diff)

# %%
deploy.require_no_vanished_rows(diff, tolerance)

# %% [markdown]
# ## 22. Post-deployment: snapshot for later verification
#
# The row counts are those the comparison above took right after the upgrade; the schema and the heads are
# read now.

# %%
s.save_snapshot(after=diff)

# %% [markdown]
# ## 23. Post-deployment: changelog entry (links the backup, preview and rehearsal records)

# %%
deploy.changelog_entry(s, dry_run=dry_run, backup=backup, approved_preview=approved_preview, rehearsal=rehearsal)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
