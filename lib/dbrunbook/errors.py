"""Errors of dbrunbook: one base class, subclasses named for the condition, carrying their data.

A message says what happened with the concrete values, then what to do. Each class has an ``exit_status``
that the launcher and the CLI use: 1 a step failed, 2 bad usage or configuration, 3 stopped at a guard.
"""

from __future__ import annotations


class DbRunbookError(Exception):
    """Base of every error dbrunbook raises on purpose."""

    exit_status = 1


# --- usage and configuration (exit 2) -------------------------------------------------------------------
class ConfigError(DbRunbookError):
    """dbrunbook.toml is missing, malformed or refers to something that does not exist."""

    exit_status = 2


class ConfigExists(ConfigError):
    """``dbrunbook init`` would overwrite an existing dbrunbook.toml (it never does)."""


class TargetNotFound(ConfigError):
    """A target name that dbrunbook.toml does not define."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown target '{name}' in {path}; known targets: {', '.join(known) or '(none)'}. "
            f"Add a [targets.{name}] table or pass one of the known names with -t."
        )


class MigrationSetNotFound(ConfigError):
    """A migration set name that dbrunbook.toml does not define."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown migration set '{name}' in {path}; known sets: {', '.join(known) or '(none)'}. "
            f"Add a [migration_sets.{name}] table or use one of the known names."
        )


class MissingSecret(ConfigError):
    """The environment variable that should hold a target's connection URL is not set."""

    def __init__(self, target: str, variable: str, path: str):
        self.target, self.variable, self.path = target, variable, path
        super().__init__(
            f"Target '{target}' reads its connection URL from the environment variable {variable}, "
            f"which is not set (see [targets.{target}] url_env in {path}). "
            f"Export it, e.g. export {variable}='postgresql://user@host:5432/dbname' "
            f"(keep the password in ~/.pgpass or PGPASSWORD, never in a file under version control)."
        )


class InvalidSetting(ConfigError):
    """A key of dbrunbook.toml that is unknown, of the wrong type, or has a value dbrunbook cannot use."""

    def __init__(self, path: str, table: str, key: str, problem: str):
        self.path, self.table, self.key, self.problem = path, table, key, problem
        where = f"[{table}] " if table else ""
        super().__init__(f"{path}: {where}{key}: {problem}")


class InvalidUrl(ConfigError):
    """A connection URL that cannot be parsed; the message shows it with its password masked, never a part of it."""

    def __init__(self, masked_url: str, problem: str):
        self.masked_url, self.problem = masked_url, problem
        super().__init__(f"The connection URL {masked_url} cannot be used: {problem}")


class ParameterError(DbRunbookError):
    """A runbook parameter that is unknown, mistyped, or looks like a secret."""

    exit_status = 2


class RunbookNotFound(DbRunbookError):
    """A runbook name with no notebook under runbooks/."""

    exit_status = 2

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(
            f"Unknown runbook '{name}'; known runbooks: {', '.join(known)}. Run 'dbrunbook list' to see them."
        )


# --- environment (exit 1) ---------------------------------------------------------------------------------
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


class MigrationFailed(DbRunbookError):
    """An Alembic step failed; carries the last revision that completed."""

    def __init__(self, migration_set: str, revision: str | None, completed: tuple[str, ...], reason: str,
                 *, after: str | None = None):
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


class RunDirectoryInvalid(DbRunbookError):
    """A folder given to ``seal`` that is not an open run directory (no intent or notebook, or sealed)."""

    exit_status = 2


class RunbookFailed(DbRunbookError):
    """A runbook run that did not complete."""


class SignatureInvalid(DbRunbookError):
    """A record whose signature, trust or digest does not check out.

    ``status`` is "tampered" (bad signature or digest), "untrusted" (valid signature by a key that is not in
    allowed_signers) or "malformed".
    """

    def __init__(self, reason: str, status: str = "tampered"):
        self.reason, self.status = reason, status
        super().__init__(reason)


# --- guards (exit 3) --------------------------------------------------------------------------------------
class GuardStop(DbRunbookError):
    """A guard in a runbook refused to go on; the launcher classifies the run as stopped at a guard."""

    exit_status = 3


class ConfirmationRequired(GuardStop):
    """A destructive step needs an explicit confirmation parameter equal to the database name."""


class NotAtExpectedRevision(GuardStop):
    """The database is not at the revision this run expects."""


class DataLossRefused(GuardStop):
    """A downgrade would destroy rows or values and allow_data_loss is not set."""


class UnsafeMigration(GuardStop):
    """Lint found error-level problems that are not listed in the allow parameter."""


class DeployerLockHeld(GuardStop):
    """Another dbrunbook run holds the deployer lock on this database."""


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


class HealthCheckFailed(DbRunbookError):
    """The application's health URL did not answer 2xx after a deploy."""


# --- backup and rehearsal (issue 3, parts 6-7) ---------------------------------------------------------------
class BackupRequired(GuardStop):
    """A protected target has no verified backup of its database younger than its backup_max_age."""


class BackupFailed(DbRunbookError):
    """pg_dump or pg_restore failed, or a dump did not pass its restore check."""


class RehearsalFailed(DbRunbookError):
    """A migration round trip on a restored copy failed, or did not return to the schema it started from."""


# --- live preflight (issue 3, part 3) -----------------------------------------------------------------------
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

        pids = sorted({b.get("pid") for b in blockers if b.get("pid") is not None})
        super().__init__(
            f"Target '{target}': {len(pids)} session(s) hold locks the pending migrations need and are older "
            f"than blocker_max_age {max_age}: " + "; ".join(one(b) for b in blockers) + ". "
            f"Let them finish, or end them (SELECT pg_terminate_backend(pid) for "
            f"{', '.join(map(str, pids))}) if they are stuck, then run again; or run again with "
            f"-p ignore_blockers true to go ahead (each attempt then waits at most lock_timeout)."
        )


# --- safety guards (lint, approved preview, stamp) ----------------------------------------------------------
class PreviewNotApproved(GuardStop):
    """A protected target needs the run id of a valid, signed preview record of the same database."""


class PreviewMismatch(GuardStop):
    """The SQL about to run differs from the SQL of the approved preview (sha256)."""


class OnlineOnlyNotCovered(GuardStop):
    """On a protected target, revisions that cannot render offline whose SQL was neither captured nor allowed.

    ``steps`` holds the uncovered ``SqlStep``s (each with its ``problem``).
    """

    def __init__(self, message: str, steps: tuple = ()):
        super().__init__(message)
        self.steps = steps


class StampWouldLie(GuardStop):
    """The live schema does not match the schema the migrations build at the revision to stamp."""


class MaintenanceFailed(DbRunbookError):
    """The target's maintenance command failed."""


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


class InvalidIndex(MigrationFailed):
    """An index left INVALID (pg_index.indisvalid = false), typically by an interrupted CREATE INDEX CONCURRENTLY."""

    def __init__(self, migration_set: str, revision: str | None, completed: tuple[str, ...],
                 indexes: list[dict]):
        self.indexes = indexes
        names = ", ".join(f"{i['index']} on {i['table']}" + (" (invalid before this run)" if i.get("before_this_run")
                                                               else "") for i in indexes)
        fixes = "; ".join(i.get("fix") or f"DROP INDEX CONCURRENTLY {i['index']}" for i in indexes)
        stuck = " (dropping it timed out too, so it was not retried)" if any(i.get("error") for i in indexes) else ""
        super().__init__(migration_set, revision, completed,
                         f"invalid index(es) {names}{stuck}: pg_index.indisvalid = false, left by an interrupted "
                         f"CREATE INDEX CONCURRENTLY; queries do not use it, writes still maintain it, and "
                         f"IF NOT EXISTS skips it. Run {fixes}, then run the migration again")


# --- keys, trust and the archive (records a reviewer can trust) ---------------------------------------------
class SigningKeyMissing(ConfigError):
    """No operator signing key: ``run`` never creates or trusts one by itself."""

    def __init__(self, key_path, allowed_signers):
        self.key_path, self.allowed_signers = key_path, allowed_signers
        super().__init__(
            f"No signing key at {key_path}: every run is signed, and dbrunbook does not create or trust a key "
            f"on its own. Run 'dbrunbook keygen' (it prints the line to add to {allowed_signers}, the trust "
            f"file reviewed like code; 'dbrunbook keygen --trust' adds it), or set [records] keys_dir to the "
            f"folder holding your operator_ed25519 key."
        )


class SignerNotTrusted(ConfigError):
    """The operator's key is not in the trust file, or is trusted under another name than the operator's."""

    def __init__(self, key_path, allowed_signers, problem: str):
        self.key_path, self.allowed_signers, self.problem = key_path, allowed_signers, problem
        super().__init__(f"Signing key {key_path}: {problem}")


class ChainLockTimeout(DbRunbookError):
    """Another process held the archive's chain lock for longer than a seal can take."""

    def __init__(self, lock_path, seconds: float):
        self.lock_path, self.seconds = lock_path, seconds
        super().__init__(
            f"Could not take the chain lock {lock_path} within {seconds:.0f}s: another seal holds it. Look for "
            f"a hung 'dbrunbook' process (fuser {lock_path}); the run directory stays unsealed, seal it "
            f"afterwards with 'dbrunbook seal RUN_DIR'."
        )


class ApprovalInvalid(DbRunbookError):
    """An approval that cannot be written: the record to approve is not a valid papermill preview."""

    exit_status = 2


def _guard_names() -> frozenset[str]:
    found, todo = set(), [GuardStop]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(found)



# --- records that must be finished (issue 10: no change without a record) ----------------------------------
class RecordNotWritable(ConfigError):
    """Something a run needs to finish its record (a folder, the trust file, free space) is missing.

    Found before the first statement runs, so the run is refused (exit 2) with nothing changed.
    """

    def __init__(self, path, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"Cannot finish a run's record: {path} {problem}. Nothing was run. {fix}")


class DeployerLockRequired(DbRunbookError):
    """A change method was called by a session that does not hold the deployer lock of its database."""

    exit_status = 2

    def __init__(self, action: str, database: str, target: str, run_id: str, reason: str):
        self.action, self.database, self.target, self.run_id, self.reason = action, database, target, run_id, reason
        super().__init__(
            f"{action} would change database '{database}' on target '{target}', but run {run_id} {reason}. "
            f"Nothing was changed. Change a database only under its deployer lock: run a runbook with "
            f"'dbrunbook run' (the launcher takes it), or open the session with open_session('{target}', "
            f"run_id=..., lock=True)."
        )


# --- large-table backfills (issue 13) -------------------------------------------------------------------------
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


#: Exception names (papermill's ``ename``) the launcher classifies as "stopped at a guard": every GuardStop
#: subclass, derived from the class tree (at the end of the module, after every class) so a new guard cannot
#: be forgotten here.
GUARD_ENAMES = _guard_names()
