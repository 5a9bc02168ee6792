# ---
# jupyter:
#   dbrunbook:
#     changes_database: false
#     title: 'Review: is this migration ready to merge?'
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
# # Review: is this migration ready to merge?
#
# The guide's *Review Generated Migration* and *Test Migration Locally*: the revision's source, a lint of
# what autogenerate cannot see, its rendered SQL through squawk, then upgrade / downgrade / upgrade on a
# scratch database (never the target itself) with the schema compared, a stairway over the whole chain, and
# the guide's checklist answered from that evidence. Stops (exit 3) when the review finds an error.

# %% tags=["parameters"]
target: str = "local"  # whose server hosts the scratch databases (a protected target gets a throwaway server)
migration_set: str = "main"  # the migration set of the revision
revision: str = ""  # the revision to review (default: the newest head)
run_id: str = ""  # set by the launcher
record_dir: str = ""  # set by the launcher: where this run's record and artifacts go

# %% [markdown]
# ## 1. Connect to the target

# %%
from dbrunbook.execution.session import open_session
from dbrunbook.procedures import authoring

s = open_session(target, run_id=run_id, record_dir=record_dir)
s

# %% [markdown]
# ## 2. The revision and its source

# %%
r = authoring.revision_source(s, revision, migration_set)
r

# %% [markdown]
# ## 3. Python lint: what autogenerate and offline rendering cannot handle
#
# Empty or `pass` downgrade, `op.get_bind()`, `autocommit_block`, renames seen as drop + add, server_default
# and check-constraint changes, inserts without ON CONFLICT, NOT NULL columns without a default.

# %%
python = authoring.lint_python(r)
python

# %% [markdown]
# ## 4. Rendered SQL (alembic upgrade --sql) and squawk
#
# Saved as an artifact of this run.

# %%
sql = authoring.lint_sql(r, s)
sql

# %% [markdown]
# ## 5. Scratch databases

# %%
scratch = authoring.scratch(s)
scratch

# %% [markdown]
# ## 6. Round trip: upgrade, downgrade, upgrade again
#
# On a database at the revision's parent(s); the schema after the downgrade must equal the schema before.

# %%
trip = scratch.round_trip(r)
trip

# %% [markdown]
# ## 7. Stairway over the whole chain
#
# Every revision from base, one step at a time: up, down, up.

# %%
stairs = scratch.stairway(r)
stairs

# %% [markdown]
# ## 8. Remove the scratch server

# %%
scratch.close()

# %% [markdown]
# ## 9. Review checklist
#
# The guide's five questions (types, nullability, foreign keys, indexes, downgrade) answered from the
# evidence above; saved as `artifacts/review.json`.

# %%
review = authoring.checklist(r, python, sql, trip, stairs, s)
review

# %% [markdown]
# ## 10. Verdict

# %%
authoring.require_passing(review)

# %% [markdown]
# ## Done
#
# The line below tells the launcher the runbook ran to its end.

# %%
s.finish()
