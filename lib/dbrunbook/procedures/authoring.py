"""Writing and reviewing migrations: ``dbrunbook new``, the review runbook, and the checks behind the pytest plugin.

The guide's *Creating Migrations* section, as code: a descriptive message (its "Migration Naming" rules),
``alembic revision [--autogenerate]`` on the set's own configuration, then the review — read the source, lint
what autogenerate cannot see, lint the rendered SQL (squawk), run the revision up, down and up again on a
scratch database and check the schema came back (its "Test Migration Locally"), a stairway over the whole
chain, and its five-point checklist answered from that evidence.

This module holds the writing side (messages, new revisions, merges) and is the front of the family: the
review runbook and the pytest plugin call ``authoring.X`` for every name, so it re-exports those of
``revision_lint`` (the source and its lints), ``roundtrip`` (up, down, up and the stairway), ``scratch``
(where review runs migrations) and ``review`` (the checklist).

Scratch databases are created on the target's server (``CREATE DATABASE``, dropped afterwards) unless the
target is protected or the role may not create databases: then a throwaway embedded server is started. A
review never migrates the target itself.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import RevisionContext
from alembic.util import CommandError

from dbrunbook.chain import migrations
from dbrunbook.config import Config, MigrationSet
from dbrunbook.errors import ConfigError, ParameterError
from dbrunbook.postgres import db
from dbrunbook.procedures.review import Review, checklist, require_passing, review
from dbrunbook.procedures.revision_lint import (
    LEVELS,
    PYTHON_RULES,
    REVIEW_LEVELS,
    SQUAWK_EXCLUDED,
    Lint,
    ReviewFinding,
    RevisionSource,
    lint_python,
    lint_sql,
    revision_source,
)
from dbrunbook.procedures.roundtrip import RoundTrip, Stairway, StepCheck, round_trip, stairway
from dbrunbook.procedures.scratch import Scratch, scratch

log = logging.getLogger(__name__)

__all__ = [
    "CHANGE_VERBS",
    "GENERIC_VERBS",
    "LEVELS",
    "MAX_MESSAGE",
    "MESSAGE_RULES",
    "PYTHON_RULES",
    "REVIEW_LEVELS",
    "SQUAWK_EXCLUDED",
    "ReviewFinding",
    "Lint",
    "Review",
    "RevisionSource",
    "RoundTrip",
    "Scratch",
    "Stairway",
    "StepCheck",
    "check_message",
    "checklist",
    "lint_python",
    "lint_sql",
    "merge_heads",
    "migration_set_for",
    "new_revision",
    "require_passing",
    "review",
    "revision_source",
    "round_trip",
    "scratch",
    "stairway",
]

# --- messages -------------------------------------------------------------------------------------------
#: Verbs that say nothing about what changed when they stand without an object (the guide's bad examples).
GENERIC_VERBS = frozenset({"update", "updates", "updated", "fix", "fixes", "fixed", "change", "changes",
                           "changed", "modify", "modified", "edit", "edits", "tweak", "tweaks", "adjust",
                           "cleanup", "clean", "refactor", "misc", "various", "minor", "wip", "tmp", "temp",
                           "test", "todo", "stuff", "things", "migration", "migrations", "new", "more", "some",
                           "work", "db", "database", "schema", "models", "model", "tables", "up", "it"})
#: Verbs that start a change; three or more in one message is three migrations in one.
CHANGE_VERBS = frozenset({"add", "drop", "remove", "rename", "create", "alter", "change", "update", "fix",
                          "make", "backfill", "split", "merge", "move", "replace", "index", "seed", "delete"})
MAX_MESSAGE = 72
_FILLERS = frozenset({"a", "an", "the", "to", "of", "and", "for", "in", "on", "with", "some", "all"})

#: (rule, reason): the reasons ``check_message`` gives; tests/unit/test_authoring.py has one row per rule.
MESSAGE_RULES = {
    "empty": "it is empty",
    "too-short": "it is shorter than two words or 10 characters",
    "too-long": f"it is longer than {MAX_MESSAGE} characters (it is a title; details go in the docstring)",
    "no-object": "it has generic words only ({words}): say what changes on which table or column",
    "too-many-changes": "it names {n} changes ({verbs}): one migration per logical change",
}


def check_message(message: str) -> str:
    """Return the message stripped, or raise ParameterError saying why it is too vague for a revision.

    Rules (the guide's *Migration Naming*): not empty; at least two words and 10 characters; at most 72;
    not made of generic words only ("Update database", "Fix stuff", "Changes"); at most two changes in one
    message ("Add preferences, fix indexes, update enums" is three migrations).

    Raises:
        ParameterError: with the rule and the reason.
    """
    text = " ".join((message or "").split())
    words = re.findall(r"[A-Za-z0-9_]+", text.lower())
    rule: str | None = None
    extra: dict[str, Any] = {}
    if not text:
        rule = "empty"
    elif len(words) >= 2 and all(w in GENERIC_VERBS or w in _FILLERS for w in words):
        rule, extra = "no-object", {"words": ", ".join(w for w in dict.fromkeys(words) if w not in _FILLERS)}
    elif len(words) < 2 or len(text) < 10:
        rule = "too-short"
    elif len(text) > MAX_MESSAGE:
        rule = "too-long"
    else:
        clauses = [c.strip() for c in re.split(r",|;|\band\b|&", text.lower()) if c.strip()]
        verbs = [c.split()[0] for c in clauses if c.split()[0] in CHANGE_VERBS]
        if len(verbs) >= 3:
            rule, extra = "too-many-changes", {"n": len(verbs), "verbs": ", ".join(verbs)}
    if rule is None:
        return text
    err = ParameterError(
        f"Migration message {message!r} is too vague: {MESSAGE_RULES[rule].format(**extra)}. Name the change "
        f"and its object, e.g. \"Add user preferences table\" or \"Add indexes to bookings table\".", rule=rule
    )
    raise err


# --- new revisions --------------------------------------------------------------------------------------
def _script_path(mset: MigrationSet, script: Any) -> Path:
    path = Path(script.path)
    return path if path.is_absolute() else (mset.base_dir / path).resolve()


def new_revision(config: Config, message: str, migration_set: str = "main", autogenerate: bool = False,
                 target: str | None = None) -> Path:
    """``alembic revision -m MESSAGE [--autogenerate]`` on a migration set; returns the new file's path.

    Autogenerate compares the models with a real database: the ``target``'s (default: the configured
    default target), reached through the set's env.py on dbrunbook's connection, with the same check that
    env.py really used it as for upgrades. Nothing is written to that database.

    Raises:
        ParameterError: the message is too vague (``check_message``).
        MigrationSetNotFound, ConfigError, DialectMismatch, DatabaseUnavailable.
    """
    text = check_message(message)
    mset = config.migration_set(migration_set)
    heads = migrations.heads(mset)
    if len(heads) > 1:
        raise ParameterError(
            f"Migration set '{mset.name}' has {len(heads)} heads ({', '.join(heads)}): a new revision would not "
            f"know which to follow. Merge them first: dbrunbook new \"merge heads\" --merge -m {mset.name}")
    if not autogenerate:
        with migrations.in_project(mset):
            try:
                script = command.revision(migrations.alembic_config(mset), message=text)
            except CommandError as err:
                raise ConfigError(f"Migration set '{mset.name}': alembic revision failed: {err}") from err
        return _script_path(mset, script)
    _target, engine = db.connect_target(config, target)
    try:
        with migrations.in_project(mset):
            cfg = migrations.alembic_config(mset)
            directory = migrations.script_directory(mset)
        context = RevisionContext(cfg, directory, {
            "message": text, "autogenerate": True, "sql": False, "head": "head", "splice": False,
            "branch_label": None, "version_path": None, "rev_id": None, "depends_on": None})

        def compare(script: Any, rev: tuple, ctx: Any) -> list:
            context.run_autogenerate(rev, ctx)
            return []

        # The project's env.py runs online on our connection, read-only (as for ``alembic check``).
        migrations.drive(mset, engine, compare, direction="check", dont_mutate=True,
                          template_args=context.template_args, revision_context=context)
        with migrations.in_project(mset):
            scripts = list(context.generate_scripts())
    finally:
        engine.dispose()
    return _script_path(mset, scripts[0])


def merge_heads(config: Config, migration_set: str = "main", message: str = "merge heads") -> Path:
    """``alembic merge -m MESSAGE heads``: one revision whose parents are all current heads.

    Raises:
        ParameterError: fewer than two heads (nothing to merge), or a vague message.
    """
    text = check_message(message)
    mset = config.migration_set(migration_set)
    heads = migrations.heads(mset)
    if len(heads) < 2:
        raise ParameterError(f"Migration set '{mset.name}' has one head ({', '.join(heads)}): nothing to merge.")
    with migrations.in_project(mset):
        try:
            script = command.merge(migrations.alembic_config(mset), list(heads), message=text)
        except CommandError as err:
            raise ConfigError(f"Migration set '{mset.name}': alembic merge failed: {err}") from err
    return _script_path(mset, script)


def migration_set_for(alembic_ini: str | Path, *, section: str = "alembic", version_table: str = "alembic_version",
                      env: dict[str, str] | None = None, name: str = "project") -> MigrationSet:
    """A MigrationSet for an alembic.ini outside any dbrunbook.toml (the pytest plugin's way in)."""
    path = Path(alembic_ini).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. Pass the path of your alembic.ini (or pyproject.toml).")
    return MigrationSet(name=name, alembic_ini=path, section=section, version_table=version_table,
                        env=dict(env or {}))
