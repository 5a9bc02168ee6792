"""Who was in an attempt's way: a watcher thread sampling ``pg_blocking_pids`` while the attempt runs.

A statement waiting for a lock says nothing about who holds it once it times out; sampled on another
connection while it waits, ``pg_blocking_pids`` does. Each attempt of ``with_lock_retries`` runs under a
watcher, so its record names the sessions, their state, transaction age and query.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)


_WATCH_INTERVAL = 0.05  # how often the watcher samples pg_blocking_pids while an attempt runs
_QUERY_SNIPPET = 200


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock an attempt waited for (one sample of pg_blocking_pids)."""

    pid: int
    application_name: str
    state: str | None
    xact_age_seconds: float | None
    query: str | None


def blocker_text(b: Blocker) -> str:
    """One blocker in one line: pid, application_name, state, transaction age and query."""
    age = f", transaction open {b.xact_age_seconds:.1f}s" if b.xact_age_seconds is not None else ""
    query = f": {b.query}" if b.query else ""
    return f"pid {b.pid} '{b.application_name}' ({b.state or 'state not visible'}{age}){query}"


_BLOCKERS_SQL = sa.text("""
    SELECT pid, application_name, state, extract(epoch FROM now() - xact_start)::float8 AS xact_age,
           left(regexp_replace(query, '\\s+', ' ', 'g'), :n) AS query
    FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(:pid))
""")


class BlockerWatcher:
    """Samples pg_blocking_pids(pid) on its own connection until stopped; never fails the attempt it watches."""

    def __init__(self, engine: Engine, pid: int, interval: float = _WATCH_INTERVAL):
        self.engine, self.pid, self.interval = engine, pid, interval
        self.blockers: dict[int, Blocker] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dbrunbook-watch-{pid}", daemon=True)

    def __enter__(self) -> BlockerWatcher:  # noqa: PYI034
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
