"""Locks around a change: the deployer lock that keeps two runs apart, and retries of lock timeouts.

**Deployer lock.** A runbook that changes a database holds a session-level advisory lock on a dedicated
connection for its whole run. It is taken by spinning on ``pg_try_advisory_lock``, never by waiting in
``pg_advisory_lock``: a session waiting for an advisory lock while it has a snapshot open would deadlock with
``CREATE INDEX CONCURRENTLY``, which waits for every older snapshot to end. The connection names its holder in
``application_name`` (``dbrunbook:<run-id>:<runbook>:<operator>``), so a second run can say who is in the way,
and the lock goes away with the holder's session: a run that died releases it with its connection.

**Lock-timeout retries.** Every migration runs with the target's short ``lock_timeout``. A statement waiting
for a lock blocks every later query on that table, so a short timeout followed by a pause lets the
application's queue drain, where one long wait would stall it for the whole wait. When a step fails on a lock
timeout (SQLSTATE 55P03) it is retried with growing, jittered pauses up to the target's ``retries``; a
watcher thread on another connection samples ``pg_blocking_pids`` while each attempt runs, so every attempt
records who was in its way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import html
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from dbrunbook import records
from dbrunbook.errors import DeployerLockHeld, DeployerLockRequired, InvalidIndex, MigrationFailed
from dbrunbook.execution.protocol import ARTIFACTS_DIR
from dbrunbook.postgres import db, indexes

if TYPE_CHECKING:  # pandas is imported where a frame is built: the launcher never needs it
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "APPLICATION_NAME_MAX",
    "DEPLOYER_LOCK_KEY",
    "DEPLOYER_LOCK_NAMESPACE",
    "LAUNCHER_LOCK_ENV",
    "Attempt",
    "Blocker",
    "DeployerLock",
    "LockHolder",
    "RetryPolicy",
    "acquire_deployer_lock",
    "application_name",
    "attempts_frame",
    "check_deployer_lock",
    "deployer_lock_holder",
    "is_lock_timeout",
    "launcher_lock_env",
    "parse_application_name",
    "save_attempts",
    "with_lock_retries",
]

DEPLOYER_LOCK_NAMESPACE = "dbrunbook-deployer"
#: The advisory lock key: the first 8 bytes of sha256(namespace), made positive. Computed here rather than
#: with ``hashtext()``, an internal function whose values are not promised to stay the same across releases.
DEPLOYER_LOCK_KEY = int.from_bytes(hashlib.sha256(DEPLOYER_LOCK_NAMESPACE.encode()).digest()[:8], "big") \
    & 0x7FFF_FFFF_FFFF_FFFF
#: PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name and silently cuts the rest.
APPLICATION_NAME_MAX = 63
LOCK_TIMEOUT_SQLSTATE = "55P03"  # lock_not_available

#: Set by the launcher for its kernel: ``{"run_id", "pid", "database"}`` of the session holding the run's lock.
LAUNCHER_LOCK_ENV = "DBRUNBOOK_LAUNCHER_LOCK"

_LOCK_WAIT = 5.0  # seconds a second run spins before it gives up
_LOCK_POLL = 0.1
_WATCH_INTERVAL = 0.05  # how often the watcher samples pg_blocking_pids while an attempt runs
_QUERY_SNIPPET = 200

T = TypeVar("T")


# --- application_name -------------------------------------------------------------------------------------
def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:max(limit, 0)].decode("utf-8", errors="ignore")


def application_name(run_id: str, runbook: str = "", operator: str = "") -> str:
    """``dbrunbook:<run-id>:<runbook>:<operator>`` in at most 63 bytes: the operator is cut first, then the runbook.

    The run id is kept whole when it fits: it is what finds the run's record and ledger row, where the full
    operator and runbook are.
    """
    head = _cut(f"dbrunbook:{run_id.replace(':', '_')}", APPLICATION_NAME_MAX)
    rest = APPLICATION_NAME_MAX - len(head.encode("utf-8"))
    runbook_part = _cut(":" + runbook.replace(":", "_"), rest) if rest > 1 else ""
    rest -= len(runbook_part.encode("utf-8"))
    operator_part = _cut(":" + operator, rest) if rest > 1 else ""
    return head + runbook_part + operator_part


def parse_application_name(name: str | None) -> tuple[str, str, str] | None:
    """(run id, runbook, operator) from a deployer lock's application_name; None for anything else."""
    if not name or not name.startswith("dbrunbook:"):
        return None
    parts = name.split(":", 3)[1:]
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


# --- the deployer lock ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockHolder:
    """The session that holds the deployer lock of a database, as pg_locks and pg_stat_activity show it."""

    pid: int
    application_name: str
    run_id: str
    runbook: str
    operator: str
    since: dt.datetime | None
    client: str | None = None
    user: str | None = None

    def describe(self) -> str:
        since = (f"since {self.since.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC" if self.since
                 else "since (not visible to this role)")
        if self.run_id:
            who = (f"run {self.run_id} (runbook {self.runbook or '?'}, operator {self.operator or '?'}), "
                   f"holding it {since}")
        else:
            who = f"a session that is not a dbrunbook run (application_name '{self.application_name}'), {since}"
        where = f"pid {self.pid}" + (f", from {self.client}" if self.client else "") + \
            (f", role {self.user}" if self.user else "")
        return f"{who} ({where})"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"] = self.since.isoformat() if self.since else None
        return out


def _key_parts(key: int) -> tuple[int, int]:
    # pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
    return (key >> 32) & 0xFFFF_FFFF, key & 0xFFFF_FFFF


_HOLDER_SQL = sa.text("""
    SELECT a.pid, a.application_name, a.backend_start, host(a.client_addr) AS client, a.usename, a.query
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid::bigint = :classid AND l.objid::bigint = :objid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LIMIT 1
""")


def deployer_lock_holder(conn: Connection | Engine, key: int = DEPLOYER_LOCK_KEY) -> LockHolder | None:
    """Who holds the deployer lock of the connection's database; None when nobody does.

    application_name carries at most 63 bytes; when the run's ledger row exists its full runbook and operator
    are taken from there.
    """
    if isinstance(conn, Engine):
        with conn.connect() as c:
            return deployer_lock_holder(c, key)
    began = not conn.in_transaction()
    classid, objid = _key_parts(key)
    try:
        row = conn.execute(_HOLDER_SQL, {"classid": classid, "objid": objid}).mappings().first()
        if row is None:
            return None
        run_id, runbook, operator = parse_application_name(row["application_name"]) or ("", "", "")
        full = _lock_comment(row["query"])
        if full and full.get("run_id", "").startswith(run_id):
            run_id, runbook, operator = full["run_id"], full.get("runbook", runbook), full.get("operator", operator)
        elif run_id and began:
            ledger = _ledger_row(conn, run_id)
            if ledger:
                runbook, operator = ledger["runbook"] or runbook, ledger["operator"] or operator
    finally:
        if began and conn.in_transaction():
            conn.rollback()  # only what we started: a caller's transaction stays theirs
    return LockHolder(pid=row["pid"], application_name=row["application_name"] or "", run_id=run_id,
                      runbook=runbook, operator=operator, since=row["backend_start"], client=row["client"],
                      user=row["usename"])


_COMMENT = re.compile(r"/\* dbrunbook-lock (\{.*?\}) \*/", re.DOTALL)


def _lock_query(run_id: str, runbook: str, operator: str) -> sa.TextClause:
    """The try-lock statement, carrying the holder's full names in a comment.

    application_name is cut at 63 bytes; the text of a session's last statement is not (up to
    track_activity_query_size), and stays in pg_stat_activity.query while the lock connection sits idle.
    """
    names = json.dumps({"run_id": run_id, "runbook": runbook, "operator": operator}, sort_keys=True)
    names = names.replace("*/", "*\\u002f").replace(":", "\\:")  # no comment end; ':' is a bind marker
    return sa.text(f"/* dbrunbook-lock {names} */ SELECT pg_try_advisory_lock(:k)")


def _lock_comment(query: str | None) -> dict | None:
    match = _COMMENT.search(query or "")
    if not match:
        return None
    try:
        found = json.loads(match.group(1))
    except ValueError:
        return None
    return {k: str(v) for k, v in found.items()} if isinstance(found, dict) else None


def _ledger_row(conn: Connection, run_id: str) -> dict | None:
    try:
        if conn.execute(sa.text("SELECT to_regclass('dbrunbook.ledger')")).scalar() is None:
            return None
        row = conn.execute(sa.text("SELECT runbook, operator FROM dbrunbook.ledger WHERE run_id = :r"),
                           {"r": run_id}).mappings().first()
        return dict(row) if row else None
    except sa.exc.DBAPIError as err:  # a role that cannot read the ledger still gets the names in application_name
        log.info("cannot read dbrunbook.ledger: %s", err.orig)
        conn.rollback()
        return None


class DeployerLock:
    """The deployer lock of one database, held by a dedicated idle connection until ``release()``.

    The connection runs in autocommit: an idle session holds no snapshot, so it never holds back vacuum and
    never stalls ``CREATE INDEX CONCURRENTLY``, and ``idle_in_transaction_session_timeout`` cannot end it.
    """

    def __init__(self, engine: Engine, conn: Connection, *, key: int, database: str, run_id: str,
                 application_name: str, pid: int, holder_pid: int | None = None):
        self._engine, self._conn = engine, conn
        self.key, self.database, self.run_id = key, database, run_id
        self.application_name, self.pid = application_name, pid
        # A lock the launcher of this run holds on its own session (pid holder_pid) is the run's lock too:
        # the kernel borrows it, and releasing a borrowed lock leaves it with the launcher.
        self.holder_pid = pid if holder_pid is None else holder_pid
        self.borrowed = self.holder_pid != pid
        self.acquired_at = dt.datetime.now(dt.UTC)
        self._finalizer = weakref.finalize(self, _close, engine, conn)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Unlock and close the connection (idempotent). Closing alone would release it too."""
        if not self._finalizer.alive:
            return
        if not self.borrowed:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except sa.exc.DBAPIError as err:  # a killed session released it already
                log.info("deployer lock connection gone before release: %s", err.orig)
        self._finalizer()

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "database": self.database, "run_id": self.run_id, "pid": self.pid,
                "application_name": self.application_name, "acquired_at": self.acquired_at.isoformat(),
                "held": self.held, "holder_pid": self.holder_pid, "borrowed": self.borrowed}

    def _repr_html_(self) -> str:
        return "<table>" + "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.as_dict().items()) + "</table>"


def _close(engine: Engine, conn: Connection) -> None:
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        conn.close()
    engine.dispose()


_HELD: weakref.WeakSet[DeployerLock] = weakref.WeakSet()


def acquire_deployer_lock(engine: Engine, *, run_id: str, runbook: str = "", operator: str | None = None,
                          target: str = "", wait: float | None = None, poll: float = _LOCK_POLL,
                          key: int = DEPLOYER_LOCK_KEY) -> DeployerLock:
    """Take the deployer lock of the engine's database on a new connection, spinning up to ``wait`` seconds.

    Re-running the first cell of an interactive notebook opens a new Session for the same run: a lock this
    process already holds for the same run id and database is handed over, not reported as held by another run.
    A lock the launcher holds for this run (it says which session in ``LAUNCHER_LOCK_ENV``, and pg_locks
    shows that session holding it under this run id) is borrowed: the run holds it already.

    Raises:
        DeployerLockHeld: another session holds it; the error's ``holder`` (a LockHolder) and its message say
            which run, runbook and operator, and since when.
        DatabaseUnavailable: the lock connection cannot be opened.
    """
    operator = records.operator_identity() if operator is None else operator
    wait = _LOCK_WAIT if wait is None else wait
    name = application_name(run_id, runbook, operator)
    url = engine.url.render_as_string(hide_password=False)
    lock_engine = db.make_engine(url, run_id=run_id, poolclass=NullPool)
    try:
        conn = lock_engine.connect()
    except sa.exc.DBAPIError:
        lock_engine.dispose()
        db.check_connection(engine, target or "(target)")  # raises DatabaseUnavailable with a clean reason
        raise
    try:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("SELECT set_config('application_name', :n, false)"), {"n": name})
        pid, database = conn.execute(sa.text("SELECT pg_backend_pid(), current_database()")).one()
        _hand_over(engine, run_id, database)
        deadline, try_lock = time.monotonic() + wait, _lock_query(run_id, runbook, operator)
        while True:
            if conn.execute(try_lock, {"k": key}).scalar():
                lock = DeployerLock(lock_engine, conn, key=key, database=database, run_id=run_id,
                                    application_name=name, pid=pid)
                lock._server = _server_of(engine)
                _HELD.add(lock)
                return lock
            holder = deployer_lock_holder(conn, key)
            if holder is not None and _held_by_launcher(holder, run_id, database):
                log.info("deployer lock of %s is held by the launcher of run %s (pid %s)", database, run_id,
                         holder.pid)
                lock = DeployerLock(lock_engine, conn, key=key, database=database, run_id=run_id,
                                    application_name=name, pid=pid, holder_pid=holder.pid)
                lock._server = _server_of(engine)
                return lock
            if time.monotonic() >= deadline:
                if holder is not None:
                    raise _lock_held(holder, database, target, wait)
                # It was released between our try and our look: try once more.
                deadline = time.monotonic() + poll
            time.sleep(poll * random.uniform(0.5, 1.5))
    except BaseException:
        _close(lock_engine, conn)
        raise


def _held_by_launcher(holder: LockHolder, run_id: str, database: str) -> bool:
    """True when the holder is the session the launcher of this run said holds its lock."""
    try:
        said = json.loads(os.environ.get(LAUNCHER_LOCK_ENV) or "{}")
    except ValueError:
        return False
    return bool(run_id) and said.get("run_id") == run_id == holder.run_id and said.get("pid") == holder.pid \
        and said.get("database") == database


def launcher_lock_env(lock: DeployerLock) -> str:
    """The value of ``LAUNCHER_LOCK_ENV`` that lets this run's kernel borrow ``lock``."""
    return json.dumps({"run_id": lock.run_id, "pid": lock.pid, "database": lock.database}, sort_keys=True)


def check_deployer_lock(engine: Engine, lock: DeployerLock | None, *, action: str, run_id: str,
                        target: str) -> None:
    """Raise unless ``lock`` is held and the database shows its session holding the deployer lock now.

    Asked of the database each time, not of the object: a session ended by an administrator, or a lock
    released by another cell, must not leave a change running unprotected.

    Raises:
        DeployerLockRequired: no lock taken, released, or held by another session now.
    """
    database = engine.url.database or "?"
    if lock is None:
        raise DeployerLockRequired(action, database, target, run_id, "did not take the deployer lock")
    if not lock.held:
        raise DeployerLockRequired(action, lock.database, target, run_id, "released its deployer lock already")
    holder = deployer_lock_holder(engine, lock.key)
    if holder is None or holder.pid != lock.holder_pid:
        now = f"it is held by {holder.describe()}" if holder else "nobody holds it now"
        raise DeployerLockRequired(action, lock.database, target, run_id,
                                   f"lost its deployer lock (session pid {lock.holder_pid} ended; {now})")


def _server_of(engine: Engine) -> tuple:
    u = engine.url
    return (u.host, u.port, u.database, str(u.query))


def _hand_over(engine: Engine, run_id: str, database: str) -> None:
    for old in list(_HELD):
        if old.held and old.run_id == run_id and getattr(old, "_server", None) == _server_of(engine) \
                and old.database == database:
            log.info("handing the deployer lock of %s over to a new session of run %s", database, run_id)
            old.release()


def _lock_held(holder: LockHolder, database: str, target: str, wait: float) -> DeployerLockHeld:
    on = f" on target '{target}'" if target else ""
    status = f"dbrunbook run status -t {target}" if target else "dbrunbook run status"
    err = DeployerLockHeld(
        f"Database '{database}'{on} is being changed by another dbrunbook run: {holder.describe()}; "
        f"waited {wait:g}s for its deployer lock. Wait for that run to finish and check the result with "
        f"'{status}'. If that run is dead but its session lingers, end the session "
        f"(README, 'The deployer lock': SELECT pg_terminate_backend({holder.pid}))."
    )
    err.holder = holder
    err.database, err.target, err.pid = database, target, holder.pid
    err.run_id, err.runbook, err.operator, err.since = holder.run_id, holder.runbook, holder.operator, holder.since
    return err


# --- lock-timeout retries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a step that failed on a lock timeout is tried again.

    Pause after failed attempt n (0-based): ``min(base_delay * 2**n, max_delay) * uniform(0.5, 1.5)``. The
    cap is short on purpose: it bounds how long the migration lags behind the end of whatever blocked it.
    """

    retries: int = 5
    base_delay: float = 0.2
    max_delay: float = 1.0

    @classmethod
    def for_target(cls, target: Any) -> RetryPolicy:
        return cls(retries=max(int(getattr(target, "retries", cls.retries)), 0))

    def delay(self, failed: int, rand: float = 0.5) -> float:
        """Seconds to pause after ``failed`` failed attempts (1 = after the first); ``rand`` in [0, 1)."""
        return min(self.base_delay * 2 ** max(failed - 1, 0), self.max_delay) * (0.5 + rand)


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock an attempt waited for (one sample of pg_blocking_pids)."""

    pid: int
    application_name: str
    state: str | None
    xact_age_seconds: float | None
    query: str | None


@dataclass(frozen=True)
class Attempt:
    """One try of a step, how it ended and who was in its way."""

    migration_set: str
    number: int
    started_at: dt.datetime
    seconds: float
    outcome: str  # "succeeded", "lock timeout", "failed"
    revision: str | None  # the revision it stopped at (or the last it applied)
    applied: tuple[str, ...]
    reason: str
    blockers: tuple[Blocker, ...] = ()
    pause: float | None = None  # seconds waited before the next attempt

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        out["applied"] = list(self.applied)
        return out


def _blocker_text(b: Blocker) -> str:
    age = f", transaction open {b.xact_age_seconds:.1f}s" if b.xact_age_seconds is not None else ""
    query = f": {b.query}" if b.query else ""
    return f"pid {b.pid} '{b.application_name}' ({b.state or 'state not visible'}{age}){query}"


def attempts_frame(attempts: list[Attempt]) -> pd.DataFrame:
    """One row per attempt, blockers joined into one readable cell."""
    rows = [{"migration_set": a.migration_set, "attempt": a.number, "started_at": a.started_at,
             "seconds": round(a.seconds, 3), "outcome": a.outcome, "revision": a.revision,
             "applied": ", ".join(a.applied), "blocked_by": "; ".join(_blocker_text(b) for b in a.blockers),
             "pause": None if a.pause is None else round(a.pause, 3), "reason": a.reason}
            for a in attempts]
    import pandas as pd

    return pd.DataFrame(rows, columns=["migration_set", "attempt", "started_at", "seconds", "outcome", "revision",
                                       "applied", "blocked_by", "pause", "reason"])


def save_attempts(session: Any, attempts: list[Attempt], name: str = "attempts.json") -> str | None:
    """Write the attempts into the run's artifacts as JSON; a second call in the same run gets ``-2``, ``-3`` …"""
    if not attempts:
        return None
    chosen, n = name, 1
    if session.record_dir is not None:
        stem, _, ext = name.rpartition(".")
        while (session.record_dir / ARTIFACTS_DIR / chosen).exists():
            n += 1
            chosen = f"{stem}-{n}.{ext}"
    body = json.dumps([a.as_dict() for a in attempts], indent=1, sort_keys=True, default=str) + "\n"
    return session.save_artifact(chosen, body)


def is_lock_timeout(err: BaseException | None) -> bool:
    """True when ``err`` or anything in its ``__cause__``/``__context__`` chain is SQLSTATE 55P03."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for candidate in (err, getattr(err, "orig", None)):
            if getattr(candidate, "sqlstate", None) == LOCK_TIMEOUT_SQLSTATE:
                return True
        err = err.__cause__ or err.__context__
    return False


_BLOCKERS_SQL = sa.text("""
    SELECT pid, application_name, state, extract(epoch FROM now() - xact_start)::float8 AS xact_age,
           left(regexp_replace(query, '\\s+', ' ', 'g'), :n) AS query
    FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(:pid))
""")


class _Watcher:
    """Samples pg_blocking_pids(pid) on its own connection until stopped; never fails the attempt it watches."""

    def __init__(self, engine: Engine, pid: int, interval: float = _WATCH_INTERVAL):
        self.engine, self.pid, self.interval = engine, pid, interval
        self.blockers: dict[int, Blocker] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dbrunbook-watch-{pid}", daemon=True)

    def __enter__(self) -> _Watcher:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                while True:
                    self._sample(conn)
                    if self._stop.wait(self.interval):
                        break
        except sa.exc.SQLAlchemyError as err:
            log.warning("blocker watcher for pid %s stopped: %s", self.pid, err)

    def _sample(self, conn: Connection) -> None:
        for row in conn.execute(_BLOCKERS_SQL, {"pid": self.pid, "n": _QUERY_SNIPPET}).mappings():
            old = self.blockers.get(row["pid"])
            age = row["xact_age"]
            if old is not None and old.xact_age_seconds is not None and (age is None or age < old.xact_age_seconds):
                continue  # keep the sample that shows the transaction oldest
            self.blockers[row["pid"]] = Blocker(pid=row["pid"], application_name=row["application_name"] or "",
                                                state=row["state"], xact_age_seconds=age, query=row["query"])


def _applied_in(err: BaseException) -> tuple[str, ...]:
    return tuple(s.revision for s in getattr(err, "steps", []) or [])


def with_lock_retries(fn: Callable[[Connection], T], engine: Engine, *, policy: RetryPolicy,
                      migration_set: str = "", attempts: list[Attempt] | None = None,
                      report: Callable[[str], None] | None = print, sleep: Callable[[float], None] = time.sleep,
                      rand: Callable[[], float] = random.random) -> T:
    """Run ``fn(connection)`` on a fresh connection, again after each lock timeout, up to ``policy.retries`` times.

    Args:
        fn: one call of migrations.upgrade/downgrade/stamp on the connection it is given; the revisions it
            committed before a failure stay committed, so the next attempt carries on from there.
        engine: where connections come from (its lock_timeout is the length of one attempt's wait).
        attempts: every attempt is appended here as it ends (a Session's list, visible while this runs).
        report: called with one line per attempt (the notebook shows them as the step runs).

    A step that ran outside a transaction (an autocommit block, ``CREATE INDEX CONCURRENTLY``) and timed out
    may have left an INVALID index; before the next attempt those are dropped (``DROP INDEX CONCURRENTLY``),
    and when one cannot be dropped there is no retry (invalid indexes that were there before the first attempt
    are not this run's to drop). When steps were applied, any invalid index in the database then fails the
    run: a ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` passes over one an earlier run left, so "new since the
    start" would miss exactly that case.

    Raises:
        MigrationFailed: after the last attempt; ``completed`` is where the database is, ``attempts`` every try,
            the message names the blockers. Any error that is not a lock timeout is raised at once, unchanged
            but for an ``attempts`` attribute.
        InvalidIndex: an attempt left an invalid index that could not be dropped, or a successful attempt
            left one (``indexes`` names them with the fix).
    """
    attempts = [] if attempts is None else attempts
    mine: list[Attempt] = []
    committed: list = []  # StepResults of revisions committed by attempts that then timed out
    total = policy.retries + 1
    known_invalid = {i["oid"] for i in indexes.invalid_indexes(engine)}  # not this run's: never dropped here
    for number in range(1, total + 1):
        started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            conn.rollback()
            with _Watcher(engine, pid) as watcher:
                try:
                    result = fn(conn)
                    error = None
                except Exception as err:  # noqa: BLE001 - classified right below, re-raised unless a lock timeout
                    error = err
        seconds = time.perf_counter() - t0
        blockers = tuple(sorted(watcher.blockers.values(), key=lambda b: b.pid))
        if error is None:
            applied = tuple(getattr(s, "revision", str(s)) for s in (result or []))
            attempt = Attempt(migration_set, number, started, seconds, "succeeded",
                              applied[-1] if applied else None, applied, "", blockers)
            note_attempt(attempts, mine, attempt, report, total)
            steps = committed + list(result) if isinstance(result, list) else committed
            # Every invalid index, not only this run's: a CIC with IF NOT EXISTS skips one an earlier run left.
            left = indexes.invalid_indexes(engine) if steps else []
            for index in left:
                index["before_this_run"] = index["oid"] in known_invalid
            if left:
                done = tuple(getattr(s, "revision", str(s)) for s in steps)
                raise _invalid(migration_set, done[-1], done[-1:], steps, left, mine)
            return committed + list(result) if isinstance(result, list) else result
        timed_out = is_lock_timeout(error)
        last = not timed_out or number == total
        pause = None if last else policy.delay(number, rand())
        attempt = Attempt(migration_set, number, started, seconds, "lock timeout" if timed_out else "failed",
                          getattr(error, "revision", None), _applied_in(error),
                          getattr(error, "reason", None) or str(error), blockers, pause)
        note_attempt(attempts, mine, attempt, report, total)
        committed += list(getattr(error, "steps", None) or [])
        if not timed_out:
            error.attempts = list(mine)
            raise error
        left = [i for i in indexes.invalid_indexes(engine) if i["oid"] not in known_invalid]
        if left:
            stuck = indexes.drop_invalid_indexes(engine, left)
            if report is not None:
                dropped = [indexes.qualified(i) for i in left if i["oid"] not in {x["oid"] for x in stuck}]
                if dropped:
                    report(f"attempt {number} left invalid index(es) {', '.join(dropped)}: dropped with "
                           f"DROP INDEX CONCURRENTLY{'' if last else ' before trying again'}")
            if stuck:
                raise _invalid(migration_set, getattr(error, "revision", None), getattr(error, "completed", ()),
                               committed, stuck, mine) from error
        if last:
            raise _gave_up(error, mine, committed, policy) from error
        sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _invalid(migration_set: str, revision: str | None, completed: tuple, steps: list, left: list[dict],
             mine: list[Attempt]) -> InvalidIndex:
    """The error for invalid indexes a run left: carries the steps committed so far and the attempts."""
    failed = InvalidIndex(migration_set, revision, tuple(completed), left)
    failed.steps = steps
    failed.attempts = list(mine)
    return failed


def note_attempt(attempts: list[Attempt], mine: list[Attempt], attempt: Attempt, report: Callable | None,
          total: int) -> None:
    attempts.append(attempt)
    mine.append(attempt)
    if report is None:
        return
    where = f"{attempt.migration_set}: " if attempt.migration_set else ""
    line = f"attempt {attempt.number}/{total} {where}{attempt.outcome} after {attempt.seconds:.2f}s"
    if attempt.applied:
        line += f", applied {', '.join(attempt.applied)}"
    if attempt.outcome != "succeeded" and attempt.revision:
        line += f", at {attempt.revision}"
    if attempt.blockers:
        line += "; blocked by " + "; ".join(_blocker_text(b) for b in attempt.blockers)
    if attempt.pause is not None:
        line += f"; next attempt in {attempt.pause:.2f}s"
    report(line)


def _gave_up(error: BaseException, mine: list[Attempt], committed: list, policy: RetryPolicy) -> MigrationFailed:
    blockers = {b.pid: b for a in mine for b in a.blockers}
    who = ("; blocked by " + "; ".join(_blocker_text(b) for b in blockers.values())) if blockers else ""
    spent = sum(a.seconds + (a.pause or 0) for a in mine)
    reason = (f"{getattr(error, 'reason', None) or error}, {len(mine)} attempts in {spent:.1f}s "
              f"(retries = {policy.retries}){who}")
    if isinstance(error, MigrationFailed):
        failed = MigrationFailed(error.migration_set, error.revision, error.completed, reason)
    else:
        failed = MigrationFailed(mine[-1].migration_set, None, (), reason)
    failed.steps = committed
    failed.attempts = list(mine)
    return failed
