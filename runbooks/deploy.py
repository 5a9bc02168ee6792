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
# The guide's *Production Deployment Checklist*, one section per item, its evidence kept in this record:
# pre-deployment (current version, review SQL, breaking changes, rollback plan), deployment (apply, verify
# success), post-deployment (monitor, data integrity, changelog).
# `dry_run` is true by default: set `-p dry_run false` to change the database.

# %% tags=["parameters"]
target: str = "local"  # database target from dbrunbook.toml (local = the embedded PostgreSQL)
migration_set: str = "all"  # one set, a comma-separated list, or all
revision: str = "heads"  # upgrade target: heads, a revision id, or +N
dry_run: bool = True  # true: show what would run and change nothing
health_url: str = ""  # HTTP URL to check after the deploy (default: the target's health_url)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.session import open_session

s = open_session(target, run_id=run_id, record_dir=record_dir, lock=not dry_run, runbook="deploy")
s

# %% [markdown]
# ## 2. Pre-deployment: current version (alembic current)

# %%
s.status(migration_set)

# %% [markdown]
# ## 3. Pre-deployment: review migration SQL

# %%
preview = s.preview(revision, migration_set)
preview

# %% [markdown]
# ## 4. Pre-deployment: check for breaking changes

# %%
from dbrunbook import deploy

deploy.breaking_changes(preview)

# %% [markdown]
# ## 5. Pre-deployment: plan the rollback

# %%
deploy.rollback_plan(s, revision, migration_set)

# %% [markdown]
# ## 6. Pre-deployment: row counts before

# %%
before = s.row_counts()
before

# %% [markdown]
# ## 7. Deployment: apply migrations (alembic upgrade)

# %%
s.upgrade(revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 8. Deployment: verify migration success

# %%
deploy.verify_success(s, revision, migration_set, dry_run=dry_run)

# %% [markdown]
# ## 9. Deployment: health check

# %%
deploy.health_check(health_url or s.target.health_url)

# %% [markdown]
# ## 10. Post-deployment: monitor database activity

# %%
deploy.activity(s)

# %% [markdown]
# ## 11. Post-deployment: verify data integrity (row counts)

# %%
s.compare_counts(before)

# %% [markdown]
# ## 12. Post-deployment: snapshot for later verification

# %%
s.save_snapshot()

# %% [markdown]
# ## 13. Post-deployment: changelog entry

# %%
deploy.changelog_entry(s, dry_run=dry_run)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
