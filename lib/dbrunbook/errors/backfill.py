"""Errors of large-table backfills: an undeclared backfill, its lock held, a failed batch, rows left, a guard.

A backfill runs in committed batches, so each error says what is already committed and that running again
resumes from there.
"""

from __future__ import annotations

from dbrunbook.errors.base import ConfigError, DbRunbookError, GuardStop


class BackfillNotFound(ConfigError):
    """A backfill name that dbrunbook.toml does not declare (and no table/key/set/where given instead)."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown backfill '{name}' in {path}; declared backfills: {', '.join(known) or '(none)'}. "
            f"Add a [backfills.{name}] table (table, key, set, where), or pass -p table, -p key, -p set and "
            f"-p where with the run."
        )


class BackfillLockHeld(GuardStop):
    """Another session runs the same backfill (it holds the backfill's advisory lock)."""

    def __init__(self, name: str, database: str, holder: str):
        self.name, self.database, self.holder = name, database, holder
        super().__init__(
            f"Backfill '{name}' of database '{database}' is being run by {holder}. Nothing was changed. "
            f"Wait for it to end (it resumes where it stopped), or stop it (Ctrl-C or SIGTERM stops it after "
            f"its current batch), then run again."
        )


class BackfillFailed(DbRunbookError):
    """A batch of a backfill failed (after its lock-timeout retries); the batches before it stay committed."""

    def __init__(self, name: str, batch: int, reason: str):
        self.name, self.batch, self.reason = name, batch, reason
        super().__init__(
            f"Backfill '{name}': batch {batch} failed: {reason}. The batches before it are committed and "
            f"recorded; run again to resume from there."
        )


class BackfillUnfinished(DbRunbookError):
    """After a backfill run, rows still match its WHERE (stopped early, max_rows reached, or new rows)."""

    def __init__(self, name: str, table: str, remaining: int, why: str):
        self.name, self.table, self.remaining, self.why = name, table, remaining, why
        super().__init__(
            f"Backfill '{name}': {remaining:,} row(s) of {table} still match its WHERE ({why}). "
            f"Run 'dbrunbook run backfill -p name {name} -p dry_run false' again: it resumes from its last "
            f"committed batch."
        )


class BackfillNotComplete(GuardStop):
    """apply refuses a SET NOT NULL on a column whose declared backfill is not complete."""

    def __init__(self, name: str, table: str, column: str, status: str, remaining: int | None):
        self.name, self.table, self.column, self.status, self.remaining = name, table, column, status, remaining
        left = "" if remaining is None else f", {remaining:,} row(s) still match its WHERE"
        super().__init__(
            f"A pending migration sets {table}.{column} NOT NULL, but backfill '{name}' of that column is "
            f"{status}{left}. Nothing was changed. Run 'dbrunbook run backfill -p name {name} -p dry_run false' "
            f"to the end first, then apply again."
        )
