"""Errors of the database and its migrations: no connection, no embedded server, no such revision, a failed step.

These happen while a run talks to PostgreSQL or Alembic; each carries the revision the database is at, so
the message can say where the run stopped and what to run next.
"""

from __future__ import annotations

from typing import Any

from dbrunbook.errors.base import DbRunbookError


class DatabaseUnavailable(DbRunbookError):
    """The target database does not accept connections."""

    def __init__(self, target: str, masked_url: str, reason: str):
        self.target, self.masked_url, self.reason = target, masked_url, reason
        hint = (
            "Start it with 'dbrunbook db start'."
            if target == "local"
            else f"Check that the server is up and that the URL of target '{target}' is right."
        )
        super().__init__(f"Cannot connect to target '{target}' at {masked_url}: {reason}. {hint}")


class EmbeddedServerError(DbRunbookError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""


class RevisionNotFound(DbRunbookError):
    """A revision id or name that the migration scripts do not define."""

    exit_status = 2

    def __init__(self, revision: str, migration_set: str, detail: str = ""):
        self.revision, self.migration_set = revision, migration_set
        super().__init__(
            f"Revision '{revision}' is not defined in migration set '{migration_set}'"
            f"{': ' + detail if detail else ''}. "
            f"Run 'dbrunbook run status' to list the known revisions."
        )


class AmbiguousRevision(RevisionNotFound):
    """A relative revision ('-1') with more than one meaning: it crosses a merge point, or the database is at
    several revisions. Carries the revisions one may name instead (``choices``)."""

    def __init__(self, revision: str, migration_set: str, reason: str, choices: tuple[str, ...]):
        self.revision, self.migration_set, self.reason, self.choices = revision, migration_set, reason, choices
        choose = (f"Name the revision to go to instead: {' or '.join(f'-p revision {c}' for c in choices)}."
                  if choices else
                  f"Name the revision to go to instead (-p revision ID); 'dbrunbook run status -p migration_set "
                  f"{migration_set}' shows the parents of each merge.")
        DbRunbookError.__init__(
            self, f"Revision '{revision}' of migration set '{migration_set}' is ambiguous: {reason}. {choose}")


class DialectMismatch(DbRunbookError):
    """The project's env.py connected somewhere other than the target dbrunbook handed it."""

    exit_status = 2
    migration_set: str | None = None
    actual: str | None = None  # what env.py configured
    expected: str | None = None  # the target dbrunbook handed it


class MigrationFailed(DbRunbookError):
    """An Alembic step failed; carries the last revision that completed."""

    steps: list[Any]  # StepResults of the revisions committed before the failure
    sqlstate: str | None  # the failing statement's SQLSTATE, whatever the driver
    attempts: list[Any]  # with lock-timeout retries: every attempt (safety.lock_retries.Attempt)

    def __init__(self, migration_set: str, revision: str | None, completed: tuple[str, ...], reason: str,
                 *, after: str | None = None, steps: list[Any] | None = None, sqlstate: str | None = None,
                 attempts: list[Any] | None = None):
        self.steps, self.sqlstate, self.attempts = list(steps or []), sqlstate, list(attempts or [])
        self.migration_set, self.revision, self.completed, self.reason = (
            migration_set, revision, completed, reason,
        )
        self.after = after  # the last revision this run completed, when it failed outside any revision
        where = (f"at revision {revision}" if revision else
                 f"after revision {after} (outside any revision)" if after else "before the first revision")
        super().__init__(
            f"Migration set '{migration_set}' failed {where}: {reason}. "
            f"The database is at {', '.join(completed) or 'base'}. "
            f"Run 'dbrunbook run troubleshoot' to diagnose before retrying."
        )


class HealthCheckFailed(DbRunbookError):
    """The application's health URL did not answer 2xx after a deploy."""


class MaintenanceFailed(DbRunbookError):
    """The target's maintenance command failed."""


class InvalidIndex(MigrationFailed):
    """An index left INVALID (pg_index.indisvalid = false), typically by an interrupted CREATE INDEX CONCURRENTLY."""

    def __init__(self, migration_set: str, revision: str | None, completed: tuple[str, ...],
                 indexes: list[dict], *, steps: list[Any] | None = None, attempts: list[Any] | None = None):
        self.indexes = indexes
        names = ", ".join(f"{i['index']} on {i['table']}" + (" (invalid before this run)" if i.get("before_this_run")
                                                               else "") for i in indexes)
        fixes = "; ".join(i.get("fix") or f"DROP INDEX CONCURRENTLY {i['index']}" for i in indexes)
        stuck = " (dropping it timed out too, so it was not retried)" if any(i.get("error") for i in indexes) else ""
        super().__init__(migration_set, revision, completed,
                         f"invalid index(es) {names}{stuck}: pg_index.indisvalid = false, left by an interrupted "
                         f"CREATE INDEX CONCURRENTLY; queries do not use it, writes still maintain it, and "
                         f"IF NOT EXISTS skips it. Run {fixes}, then run the migration again",
                         steps=steps, attempts=attempts)
