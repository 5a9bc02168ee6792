"""The deployer lock: one session-level advisory lock per database, held by a run for its whole length.

A runbook that changes a database holds the lock on a dedicated connection. It is taken by spinning on
``pg_try_advisory_lock``, never by waiting in ``pg_advisory_lock``: a session waiting for an advisory lock
while it has a snapshot open would deadlock with ``CREATE INDEX CONCURRENTLY``, which waits for every older
snapshot to end. The lock goes away with the holder's session, so a run that died releases it with its
connection; a launcher's lock is borrowed by its kernel, and a re-run first cell hands it over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import logging
import os
import random
import time
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from dbrunbook import records
from dbrunbook.errors import DeployerLockHeld, DeployerLockRequired
from dbrunbook.postgres import db
from dbrunbook.safety.lock_holder import (
    DEPLOYER_LOCK_KEY,
    LockHolder,
    application_name,
    deployer_lock_holder,
    lock_query,
)

log = logging.getLogger(__name__)


#: Set by the launcher for its kernel: ``{"run_id", "pid", "database"}`` of the session holding the run's lock.
LAUNCHER_LOCK_ENV = "DBRUNBOOK_LAUNCHER_LOCK"

_LOCK_WAIT = 5.0  # seconds a second run spins before it gives up
_LOCK_POLL = 0.1


class DeployerLock:
    """The deployer lock of one database, held by a dedicated idle connection until ``release()``.

    The connection runs in autocommit: an idle session holds no snapshot, so it never holds back vacuum and
    never stalls ``CREATE INDEX CONCURRENTLY``, and ``idle_in_transaction_session_timeout`` cannot end it.
    """

    def __init__(self, engine: Engine, conn: Connection, *, key: int, database: str, run_id: str,
                 application_name: str, pid: int, holder_pid: int | None = None, server: tuple | None = None):
        self._engine, self._conn = engine, conn
        self.server = server  # (host, port, database, query) of the engine it was taken for: see _hand_over
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
        deadline, try_lock = time.monotonic() + wait, lock_query(run_id, runbook, operator)
        while True:
            if conn.execute(try_lock, {"k": key}).scalar():
                lock = DeployerLock(lock_engine, conn, key=key, database=database, run_id=run_id,
                                    application_name=name, pid=pid, server=_server_of(engine))
                _HELD.add(lock)
                return lock
            holder = deployer_lock_holder(conn, key)
            if holder is not None and _held_by_launcher(holder, run_id, database):
                log.info("deployer lock of %s is held by the launcher of run %s (pid %s)", database, run_id,
                         holder.pid)
                lock = DeployerLock(lock_engine, conn, key=key, database=database, run_id=run_id,
                                    application_name=name, pid=pid, holder_pid=holder.pid,
                                    server=_server_of(engine))
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
        if old.held and old.run_id == run_id and old.server == _server_of(engine) \
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
        f"(README, 'The deployer lock': SELECT pg_terminate_backend({holder.pid})).",
        holder=holder, database=database, target=target, pid=holder.pid, run_id=holder.run_id,
        runbook=holder.runbook, operator=holder.operator, since=holder.since,
    )
    return err
