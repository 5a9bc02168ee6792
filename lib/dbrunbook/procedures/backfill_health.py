"""Health signals a backfill pauses on: replication lag, autovacuum on its table, WAL archiving, lock waiters,
and checkpoints its own WAL would force.

GitLab's batched background migrations stop on the same signals: a standby replaying far behind, an
autovacuum of the table (an anti-wraparound one must never be fought), WAL archiving falling behind (a
backfill writes WAL at full speed), and the application's sessions queueing for locks on the table. Each is
one query of PostgreSQL's statistics views, read between two batches; the limits are target policy keys
(``backfill_max_lag``, ``backfill_max_wal_backlog``, ``backfill_checkpoint_percent``).

The checkpoint signal is dbrunbook's own, from bench/backfill.py: what the application feels during a large
backfill is the sync phase of the checkpoints the backfill's WAL forces (with max_wal_size 1 GB, one every
~0.5 GB of WAL). With a max_wal_size that fits the write volume the same backfill left the application's
p99 at 2.6-3.8 ms, against 22 ms at 1 GB (bench/RESULTS.md). So a batch that would take the WAL since the
last checkpoint past ``backfill_checkpoint_percent`` of the distance at which the server checkpoints by itself
(max_wal_size / (1 + checkpoint_completion_target), xlog.c) waits for the server's next checkpoint instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbrunbook.config import Target, parse_duration

log = logging.getLogger(__name__)

__all__ = ["Signal", "checkpoint_distance", "health_signals", "wal_segment_number"]


@dataclass(frozen=True)
class Signal:
    """One bad health signal: its kind (``replication lag``, ``autovacuum``, ``wal archive``, ``lock waiters``)."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


_LAG_SQL = sa.text("""
    SELECT coalesce(application_name, '') AS name, client_addr::text AS client,
           extract(epoch FROM greatest(replay_lag, write_lag, flush_lag))::float8 AS lag
    FROM pg_stat_replication
""")

_VACUUM_SQL = sa.text("""
    SELECT p.pid, p.phase, coalesce(a.query, '') AS query
    FROM pg_stat_progress_vacuum p LEFT JOIN pg_stat_activity a ON a.pid = p.pid
    WHERE p.relid = :oid AND p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (a.backend_type = 'autovacuum worker' OR a.query ILIKE 'autovacuum:%')
""")

_ARCHIVER_SQL = sa.text("""
    SELECT current_setting('archive_mode') AS mode, last_archived_wal, last_failed_wal,
           last_failed_time > coalesce(last_archived_time, '-infinity') AS failing,
           pg_walfile_name(pg_current_wal_lsn()) AS current_wal,
           pg_size_bytes(current_setting('wal_segment_size')) AS segment_size
    FROM pg_stat_archiver
""")

_CHECKPOINT_SQL = sa.text("""
    SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), c.redo_lsn)::float8 AS since,
           current_setting('max_wal_size') AS max_wal_size,
           pg_size_bytes(current_setting('max_wal_size'))::float8 AS max_wal,
           current_setting('checkpoint_completion_target')::float8 AS completion
    FROM pg_control_checkpoint() c
""")

# A session waiting for a lock (wait_event_type 'Lock') that holds or wants a lock on the table: waiting for
# the table itself, or holding ROW EXCLUSIVE on it while it waits for a row another transaction locked.
_WAITERS_SQL = sa.text("""
    SELECT DISTINCT a.pid, coalesce(a.application_name, '') AS name,
           extract(epoch FROM now() - a.state_change)::float8 AS waiting
    FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
    WHERE a.wait_event_type = 'Lock' AND l.relation = :oid AND a.pid <> pg_backend_pid()
      AND NOT a.pid = ANY(CAST(:mine AS int[]))
    ORDER BY a.pid
""")


def wal_segment_number(name: str, segment_size: int) -> int:
    """The position of WAL file ``name`` (24 hex digits: timeline, log, segment) in the WAL stream."""
    per_log = 0x1_0000_0000 // segment_size
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def checkpoint_distance(max_wal_bytes: float, completion_target: float) -> float:
    """The WAL bytes after a checkpoint's redo point at which the server starts the next one by itself."""
    return max_wal_bytes / (1.0 + completion_target)


def health_signals(conn: Connection, table_oid: int, target: Target, *, own_pids: tuple[int, ...] = (),
                   next_wal: int = 0) -> list[Signal]:
    """The health signals that are bad right now, for a backfill of the table ``table_oid`` on ``target``.

    A signal that cannot be read (a role without pg_monitor sees no other sessions' details, a standby has no
    current WAL position) is logged and counted as good: a backfill must not pause forever on a view it
    cannot read. ``own_pids`` are this run's own sessions, never counted as waiters; ``next_wal`` is the WAL
    the next batch is expected to write (the last full batch's; 0 when unknown or when the table's end was
    reached), for the checkpoint signal.
    """
    found: list[Signal] = []
    max_lag = parse_duration(target.backfill_max_lag, key="backfill_max_lag")
    for check in (_lag, _vacuum, _archive, _waiters, _checkpoint):
        try:
            found += check(conn, table_oid=table_oid, max_lag=max_lag, target=target, own_pids=own_pids,
                           next_wal=next_wal)
        except sa.exc.DBAPIError as err:
            log.info("health signal %s could not be read: %s", check.__name__, err.orig)
            conn.rollback()
    return found


def _lag(conn: Connection, *, max_lag: float, **_: object) -> list[Signal]:
    return [Signal("replication lag", f"standby '{r.name or r.client}' is {r.lag:.1f}s behind "
                                      f"(backfill_max_lag {max_lag:g}s)")
            for r in conn.execute(_LAG_SQL) if r.lag is not None and r.lag > max_lag]


def _vacuum(conn: Connection, *, table_oid: int, **_: object) -> list[Signal]:
    out = []
    for r in conn.execute(_VACUUM_SQL, {"oid": table_oid}):
        kind = "anti-wraparound autovacuum" if "wraparound" in r.query else "autovacuum"
        out.append(Signal("autovacuum", f"{kind} of the table running (pid {r.pid}, phase {r.phase})"))
    return out


def _archive(conn: Connection, *, target: Target, **_: object) -> list[Signal]:
    row = conn.execute(_ARCHIVER_SQL).one()
    if row.mode == "off":
        return []
    if row.failing:
        return [Signal("wal archive", f"archiving is failing (last failed WAL file {row.last_failed_wal})")]
    if not row.last_archived_wal:
        return []
    behind = (wal_segment_number(row.current_wal, row.segment_size)
              - wal_segment_number(row.last_archived_wal, row.segment_size) - 1)
    limit = int(target.backfill_max_wal_backlog)
    if behind > limit:
        return [Signal("wal archive", f"{behind} WAL segments wait to be archived "
                                      f"(backfill_max_wal_backlog {limit})")]
    return []


def _waiters(conn: Connection, *, table_oid: int, own_pids: tuple[int, ...], **_: object) -> list[Signal]:
    rows = conn.execute(_WAITERS_SQL, {"oid": table_oid, "mine": list(own_pids)}).all()
    if not rows:
        return []
    who = ", ".join(f"pid {r.pid}" + (f" '{r.name}'" if r.name else "") for r in rows)
    return [Signal("lock waiters", f"{len(rows)} session(s) wait for locks on the table: {who}")]


def _checkpoint(conn: Connection, *, target: Target, next_wal: int, **_: object) -> list[Signal]:
    percent = int(target.backfill_checkpoint_percent)
    if not percent or next_wal <= 0:  # off, or no batch expected to write (the first one, or the last sweep)
        return []
    row = conn.execute(_CHECKPOINT_SQL).one()
    distance = checkpoint_distance(row.max_wal, row.completion)
    limit = distance * percent / 100
    # A batch bigger than the whole allowance runs right after a checkpoint rather than never: since counts
    # at least the last batch's WAL unless a checkpoint came after it.
    if row.since + next_wal <= limit or row.since < next_wal:
        return []
    mb = 1024 * 1024
    return [Signal("checkpoint", f"{row.since / mb:,.0f} MB of WAL since the last checkpoint; the next batch "
                                 f"(~{next_wal / mb:,.0f} MB) would pass {percent}% of the "
                                 f"{distance / mb:,.0f} MB at which the "
                                 f"server checkpoints by itself (max_wal_size {row.max_wal_size}): waiting for "
                                 f"its next checkpoint (a larger max_wal_size lets the backfill run through; "
                                 f"backfill_checkpoint_percent = 0 turns this signal off)")]
