"""Lock-timeout retries: a step that failed on ``lock_timeout`` is tried again with growing, jittered pauses.

Every migration runs with the target's short ``lock_timeout``. A statement waiting for a lock blocks every
later query on that table, so a short timeout followed by a pause lets the application's queue drain, where
one long wait would stall it for the whole wait. When a step fails on a lock timeout (SQLSTATE 55P03) it is
retried up to the target's ``retries``; every attempt is recorded with who was in its way (``blockers``).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbrunbook.errors import InvalidIndex, MigrationFailed
from dbrunbook.postgres import indexes
from dbrunbook.protocol import ARTIFACTS_DIR, SessionLike, artifact_json
from dbrunbook.safety.blockers import Blocker, BlockerWatcher, blocker_text

if TYPE_CHECKING:  # pandas is imported where a frame is built: the launcher never needs it
    import pandas as pd


LOCK_TIMEOUT_SQLSTATE = "55P03"  # lock_not_available


T = TypeVar("T")


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


def attempts_frame(attempts: list[Attempt]) -> pd.DataFrame:
    """One row per attempt, blockers joined into one readable cell."""
    rows = [{"migration_set": a.migration_set, "attempt": a.number, "started_at": a.started_at,
             "seconds": round(a.seconds, 3), "outcome": a.outcome, "revision": a.revision,
             "applied": ", ".join(a.applied), "blocked_by": "; ".join(blocker_text(b) for b in a.blockers),
             "pause": None if a.pause is None else round(a.pause, 3), "reason": a.reason}
            for a in attempts]
    import pandas as pd

    return pd.DataFrame(rows, columns=["migration_set", "attempt", "started_at", "seconds", "outcome", "revision",
                                       "applied", "blocked_by", "pause", "reason"])


def save_attempts(session: SessionLike, attempts: list[Attempt], name: str = "attempts.json") -> str | None:
    """Write the attempts into the run's artifacts as JSON; a second call in the same run gets ``-2``, ``-3`` …"""
    if not attempts:
        return None
    chosen, n = name, 1
    if session.record_dir is not None:
        stem, _, ext = name.rpartition(".")
        while (session.record_dir / ARTIFACTS_DIR / chosen).exists():
            n += 1
            chosen = f"{stem}-{n}.{ext}"
    return session.save_artifact(chosen, artifact_json([a.as_dict() for a in attempts], depth=2))


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
        result, error, blockers = _try_once(fn, engine)
        seconds = time.perf_counter() - t0
        if error is None:
            applied = tuple(getattr(s, "revision", str(s)) for s in (cast(Iterable[Any], result) or []))
            attempt = Attempt(migration_set, number, started, seconds, "succeeded",
                              applied[-1] if applied else None, applied, "", blockers)
            note_attempt(attempts, mine, attempt, report, total)
            return _succeeded(result, committed, engine, known_invalid, migration_set, mine)
        timed_out = is_lock_timeout(error)
        last = not timed_out or number == total
        pause = None if last else policy.delay(number, rand())
        attempt = Attempt(migration_set, number, started, seconds, "lock timeout" if timed_out else "failed",
                          getattr(error, "revision", None), _applied_in(error),
                          getattr(error, "reason", None) or str(error), blockers, pause)
        note_attempt(attempts, mine, attempt, report, total)
        committed += list(getattr(error, "steps", None) or [])
        if not timed_out:
            if isinstance(error, MigrationFailed):  # a failed step carries the attempts that led to it
                error.attempts = list(mine)
            raise error
        left = [i for i in indexes.invalid_indexes(engine) if i["oid"] not in known_invalid]
        if left and (stuck := _drop_left_invalid(engine, left, number, last, report)):
            raise _invalid(migration_set, getattr(error, "revision", None), getattr(error, "completed", ()),
                           committed, stuck, mine) from error
        if last:
            raise _gave_up(error, mine, committed, policy) from error
        sleep(cast(float, pause))  # set: this is not the last attempt
    raise AssertionError("unreachable")  # pragma: no cover


def _try_once(fn: Callable[[Connection], T], engine: Engine) -> tuple[T | None, Exception | None,
                                                                        tuple[Blocker, ...]]:
    """One attempt on a fresh connection under a blocker watcher: (result, error, who was in its way)."""
    result, error = None, None
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        conn.rollback()
        with BlockerWatcher(engine, pid) as watcher:
            try:
                result = fn(conn)
            except Exception as err:  # noqa: BLE001 - classified by the caller, re-raised unless a lock timeout
                error = err
    return result, error, tuple(sorted(watcher.blockers.values(), key=lambda b: b.pid))


def _succeeded(result: Any, committed: list, engine: Engine, known_invalid: set, migration_set: str,
               mine: list[Attempt]) -> Any:
    """What ``with_lock_retries`` returns after a successful attempt, unless the run left an invalid index.

    Every invalid index counts, not only this run's: a CIC with IF NOT EXISTS skips one an earlier run left.
    """
    steps = committed + list(result) if isinstance(result, list) else committed
    left = indexes.invalid_indexes(engine) if steps else []
    for index in left:
        index["before_this_run"] = index["oid"] in known_invalid
    if left:
        done = tuple(getattr(s, "revision", str(s)) for s in steps)
        raise _invalid(migration_set, done[-1], done[-1:], steps, left, mine)
    return committed + list(result) if isinstance(result, list) else result


def _drop_left_invalid(engine: Engine, left: list[dict], number: int, last: bool,
                       report: Callable[[str], None] | None) -> list[dict]:
    """Drop the invalid indexes a timed-out attempt left (``DROP INDEX CONCURRENTLY``); those that stay."""
    stuck = indexes.drop_invalid_indexes(engine, left)
    if report is not None:
        dropped = [indexes.qualified(i) for i in left if i["oid"] not in {x["oid"] for x in stuck}]
        if dropped:
            report(f"attempt {number} left invalid index(es) {', '.join(dropped)}: dropped with "
                   f"DROP INDEX CONCURRENTLY{'' if last else ' before trying again'}")
    return stuck


def _invalid(migration_set: str, revision: str | None, completed: tuple, steps: list, left: list[dict],
             mine: list[Attempt]) -> InvalidIndex:
    """The error for invalid indexes a run left: carries the steps committed so far and the attempts."""
    return InvalidIndex(migration_set, revision, tuple(completed), left, steps=steps, attempts=list(mine))


def _listed(revisions: tuple[str, ...], head: int = 3, tail: int = 2) -> str:
    """The revisions in a line a person reads: all of a few, else the first and last with the count between."""
    if len(revisions) <= head + tail + 1:
        return ", ".join(revisions)
    return (f"{len(revisions):,} revisions: {', '.join(revisions[:head])}, … {len(revisions) - head - tail:,} "
            f"more …, {', '.join(revisions[-tail:])}")


def note_attempt(attempts: list[Attempt], mine: list[Attempt], attempt: Attempt, report: Callable | None,
          total: int) -> None:
    attempts.append(attempt)
    mine.append(attempt)
    if report is None:
        return
    where = f"{attempt.migration_set}: " if attempt.migration_set else ""
    line = f"attempt {attempt.number}/{total} {where}{attempt.outcome} after {attempt.seconds:.2f}s"
    if attempt.applied:
        line += f", applied {_listed(attempt.applied)}"
    if attempt.outcome != "succeeded" and attempt.revision:
        line += f", at {attempt.revision}"
    if attempt.blockers:
        line += "; blocked by " + "; ".join(blocker_text(b) for b in attempt.blockers)
    if attempt.pause is not None:
        line += f"; next attempt in {attempt.pause:.2f}s"
    report(line)


def _gave_up(error: BaseException, mine: list[Attempt], committed: list, policy: RetryPolicy) -> MigrationFailed:
    blockers = {b.pid: b for a in mine for b in a.blockers}
    who = ("; blocked by " + "; ".join(blocker_text(b) for b in blockers.values())) if blockers else ""
    spent = sum(a.seconds + (a.pause or 0) for a in mine)
    reason = (f"{getattr(error, 'reason', None) or error}, {len(mine)} attempts in {spent:.1f}s "
              f"(retries = {policy.retries}){who}")
    if isinstance(error, MigrationFailed):
        return MigrationFailed(error.migration_set, error.revision, error.completed, reason, steps=committed,
                               attempts=list(mine))
    return MigrationFailed(mine[-1].migration_set, None, (), reason, steps=committed, attempts=list(mine))
