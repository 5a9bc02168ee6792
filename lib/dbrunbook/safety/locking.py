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

The names live in ``lock_holder``, ``deployer_lock``, ``lock_retries`` and ``blockers``; this module is
their one face (``locking.acquire_deployer_lock``, ``locking.with_lock_retries``).
"""

from __future__ import annotations

from dbrunbook.safety.blockers import Blocker
from dbrunbook.safety.deployer_lock import (
    LAUNCHER_LOCK_ENV,
    DeployerLock,
    acquire_deployer_lock,
    check_deployer_lock,
    launcher_lock_env,
)
from dbrunbook.safety.lock_holder import (
    APPLICATION_NAME_MAX,
    DEPLOYER_LOCK_KEY,
    DEPLOYER_LOCK_NAMESPACE,
    LockHolder,
    application_name,
    deployer_lock_holder,
    parse_application_name,
)
from dbrunbook.safety.lock_retries import (
    LOCK_TIMEOUT_SQLSTATE,
    Attempt,
    RetryPolicy,
    attempts_frame,
    is_lock_timeout,
    note_attempt,
    save_attempts,
    with_lock_retries,
)

__all__ = [
    "APPLICATION_NAME_MAX",
    "DEPLOYER_LOCK_KEY",
    "DEPLOYER_LOCK_NAMESPACE",
    "LAUNCHER_LOCK_ENV",
    "LOCK_TIMEOUT_SQLSTATE",
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
    "note_attempt",
    "parse_application_name",
    "save_attempts",
    "with_lock_retries",
]
