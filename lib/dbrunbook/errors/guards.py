"""The guards (exit 3): a runbook refused to go on because a check of the live database said no.

Each is a ``GuardStop``; papermill records its class name as the failing cell's ``ename``, and the launcher
then classifies the run as stopped at a guard. Backup and rehearsal failures live here too: they are what
the backup guard relies on.
"""

from __future__ import annotations

from typing import Any

from dbrunbook.errors.base import DbRunbookError, GuardStop


class ConfirmationRequired(GuardStop):
    """A destructive step needs an explicit confirmation parameter equal to the database name."""


class NotAtExpectedRevision(GuardStop):
    """The database is not at the revision this run expects."""


class DataLossRefused(GuardStop):
    """A downgrade would destroy rows or values and allow_data_loss is not set."""

    report: Any = None  # safety.loss_guard.DataLossReport: what the downgrade would destroy


class UnsafeMigration(GuardStop):
    """Lint found error-level problems that are not listed in the allow parameter."""

    findings: tuple[Any, ...] = ()  # the blocking findings


class DeployerLockHeld(GuardStop):
    """Another dbrunbook run holds the deployer lock on this database."""

    holder: Any = None  # safety.lock_holder.LockHolder
    database: str | None = None
    target: str | None = None
    pid: int | None = None
    run_id: str | None = None
    runbook: str | None = None
    operator: str | None = None
    since: Any = None


class NoSnapshot(GuardStop):
    """verify found no earlier signed snapshot of this database to compare with."""


class UnexpectedChange(GuardStop):
    """verify found rows vanished, schema drift, or a version that moved without a record."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "Unexpected change since the last signed snapshot: " + "; ".join(problems)
            + ". Investigate with 'dbrunbook run troubleshoot', or re-baseline with 'dbrunbook run apply'."
        )


class BackupRequired(GuardStop):
    """A protected target has no verified backup of its database younger than its backup_max_age."""


class BackupFailed(DbRunbookError):
    """pg_dump or pg_restore failed, or a dump did not pass its restore check."""


class RehearsalFailed(DbRunbookError):
    """A migration round trip on a restored copy failed, or did not return to the schema it started from."""


class BlockersPresent(GuardStop):
    """Sessions hold locks the pending migrations need, and have for longer than the target's blocker_max_age.

    ``blockers`` holds one dict per session and table (pid, application_name, state, xact_age_s, table, mode,
    needed, query).
    """

    def __init__(self, target: str, blockers: list[dict], max_age: str):
        self.target, self.blockers, self.max_age = target, blockers, max_age

        def one(b: dict) -> str:
            age = b.get("xact_age_s")
            open_for = f", transaction open {age:.0f}s" if isinstance(age, (int, float)) else ""
            return (f"pid {b.get('pid')} '{b.get('application_name') or ''}' ({b.get('state') or '?'}{open_for}) "
                    f"holds {b.get('mode')} on {b.get('table')}, the migrations need {b.get('needed')}")

        pids = sorted({b["pid"] for b in blockers if b.get("pid") is not None})
        super().__init__(
            f"Target '{target}': {len(pids)} session(s) hold locks the pending migrations need and are older "
            f"than blocker_max_age {max_age}: " + "; ".join(one(b) for b in blockers) + ". "
            f"Let them finish, or end them (SELECT pg_terminate_backend(pid) for "
            f"{', '.join(map(str, pids))}) if they are stuck, then run again; or run again with "
            f"-p ignore_blockers true to go ahead (each attempt then waits at most lock_timeout)."
        )


class PreviewNotApproved(GuardStop):
    """A protected target needs the run id of a valid, signed preview record of the same database."""


class PreviewMismatch(GuardStop):
    """The SQL about to run differs from the SQL of the approved preview (sha256)."""

    approved_sha256: str | None = None
    sha256: str | None = None  # of the SQL about to run


class OnlineOnlyNotCovered(GuardStop):
    """On a protected target, revisions that cannot render offline whose SQL was neither captured nor allowed.

    ``steps`` holds the uncovered ``SqlStep``s (each with its ``problem``).
    """

    def __init__(self, message: str, steps: tuple = ()):
        super().__init__(message)
        self.steps = steps


class StampWouldLie(GuardStop):
    """The live schema does not match the schema the migrations build at the revision to stamp."""

    check: Any = None  # safety.stamp_guard.StampCheck


class ReviewFailed(UnsafeMigration):
    """A reviewed revision has error-level findings (non-reversible downgrade, schema not restored...)."""


class RowsVanished(GuardStop):
    """Rows of a table disappeared during a run beyond the run's tolerance."""

    def __init__(self, losses: list[dict], tolerance: float):
        self.losses, self.tolerance = losses, tolerance
        what = "; ".join(f"{x['table']} {x['before']} -> {x['after']} rows" for x in losses)
        super().__init__(
            f"Rows vanished beyond the tolerance of {tolerance:g}%: {what}. Check the data migration, restore "
            f"from the backup if the rows are needed, or run again with -p tolerance PERCENT when the loss "
            f"is intended."
        )
