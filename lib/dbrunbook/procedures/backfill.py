"""Large-table backfills: the middle step of the guide's "Keep Migrations Fast", in short keyset batches.

``UPDATE users SET score = 0 WHERE score IS NULL`` in one statement holds row locks on every matching row and
writes the whole table's WAL in one transaction. A declared backfill runs the same change in batches over the
key (``WHERE key > last key ORDER BY key LIMIT n``, never OFFSET), each batch its own transaction with the
target's lock and statement timeouts, retried on lock timeouts. The batch size adapts toward
``batch_seconds``; between batches the run pauses while a health signal is bad (``backfill_health``).

Progress lives in ``dbrunbook.backfills`` in the target database, updated in the transaction of each batch:
a run killed at any point resumes after the last committed batch, and no batch is applied twice. One run per
backfill at a time: a per-backfill advisory lock, whose holder a second run names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import time
from typing import cast

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dbrunbook.config import Backfill
from dbrunbook.errors import (
    BackfillFailed,
    BackfillLockHeld,
    BackfillNotFound,
    BackfillUnfinished,
    ConfigError,
)
from dbrunbook.postgres import db
from dbrunbook.procedures.backfill_health import health_signals
from dbrunbook.procedures.backfill_progress import Progress, StopSignals
from dbrunbook.procedures.backfill_result import BackfillResult, Batch, Pause
from dbrunbook.procedures.backfill_state import (
    Plan,
    ensure_state,
    make_plan,
    plain_name,
    progress,
    quote_name,
    set_columns,
    spec_definition,
)
from dbrunbook.safety import locking

log = logging.getLogger(__name__)

__all__ = [
    "BACKFILL_LOCK_NAMESPACE",
    "BackfillResult",
    "Batch",
    "Pause",
    "declared",
    "estimate",
    "finish_backfill",
    "progress",
    "quote_name",
    "run_backfill",
    "set_columns",
]

BACKFILL_LOCK_NAMESPACE = "dbrunbook-backfill:"
MIN_BATCH, MAX_BATCH = 1, 200_000
_PAUSE_POLL = 0.5  # seconds between two looks at the health signals while paused


def declared(session, name: str, *, table: str = "", key: str = "", set: str = "",
             where: str = "") -> Backfill | None:
    """The backfill ``name`` of dbrunbook.toml, or one given whole by the runbook's parameters.

    No name and nothing given: None, after printing the declared backfills (the runbook's defaults then only
    list them, and each later step shows that nothing was chosen).

    Raises:
        BackfillNotFound: not declared, and table/key/set/where not all given.
        ConfigError: declared and also given by parameters (one source only, so the record is unambiguous).
    """
    given = {"table": table, "key": key, "set": set, "where": where}
    known = session.config.backfills
    if not name and not any(given.values()):
        print(f"No backfill chosen (-p name NAME). Declared in {session.config.path}: "
              f"{', '.join(sorted(known)) or '(none)'}.")
        return None
    if name in known:
        if any(given.values()):
            raise ConfigError(f"Backfill '{name}' is declared in {session.config.path}; do not also pass "
                              f"{', '.join(k for k, v in given.items() if v)}. Change the declaration instead.")
        return known[name]
    if not all(given.values()):
        raise BackfillNotFound(name, sorted(known), str(session.config.path))
    keys = tuple(k.strip() for k in key.split(",") if k.strip())
    return Backfill(name=name, table=table, key=keys, set=set, where=where, description="given as parameters")


def estimate(session, spec: Backfill | None) -> pd.DataFrame:
    """Rows of the table and rows still to do (the planner's estimate, exact on tables under 1M rows).

    ``spec`` None: one row per declared backfill with its stored status (nothing is counted).
    """
    if spec is None:
        frame = pd.DataFrame([{"backfill": b.name, "table": b.table, "set": b.set, "where": b.where,
                               "status": (progress(session.engine, b.name) or {}).get("status", "never run")}
                              for b in session.config.backfills.values()],
                             columns=["backfill", "table", "set", "where", "status"])
        frame.attrs["rows_to_do"] = None
        return frame
    with session.engine.connect() as conn:
        plan = make_plan(conn, spec)
        total = conn.execute(sa.text("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = :o"),
                             {"o": plan.oid}).scalar()
        if total < 1_000_000:
            todo, how = conn.execute(plan.remaining_sql()).scalar(), "counted"
        else:
            explained = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {plan.table} "
                                             f"WHERE ({spec.where})")).scalar()
            todo, how = int(explained[0]["Plan"]["Plan Rows"]), "planner estimate"
    state = progress(session.engine, spec.name)
    frame = pd.DataFrame([{"backfill": spec.name, "table": spec.table, "key": ", ".join(spec.key),
                           "set": spec.set, "where": spec.where, "table_rows": total, "rows_to_do": todo,
                           "how": how, "status": state["status"] if state else "never run",
                           "resumes_after": ", ".join(state["cursor"] or []) if state else ""}])
    frame.attrs["rows_to_do"] = int(todo)
    return frame


# --- the lock -----------------------------------------------------------------------------------------------
def _lock_key(name: str) -> int:
    digest = hashlib.sha256((BACKFILL_LOCK_NAMESPACE + name).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _take_lock(session, name: str):
    """The backfill's advisory lock on its own idle autocommit connection (no snapshot held meanwhile)."""
    url = session.engine.url.render_as_string(hide_password=False)
    engine = db.make_engine(url, run_id=session.run_id, poolclass=NullPool)
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    key = _lock_key(name)
    conn.execute(sa.text("SELECT set_config('application_name', :n, false)"),
                 {"n": locking.application_name(session.run_id, f"backfill {name}")})
    if conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        return engine, conn
    holder = locking.deployer_lock_holder(conn, key)
    conn.close()
    engine.dispose()
    who = holder.describe() if holder else "another session (it ended just now: run again)"
    raise BackfillLockHeld(name, session.identity.database, who)


# --- the run ------------------------------------------------------------------------------------------------
def run_backfill(session, spec: Backfill | None, *, batch_seconds: float = 0.5, batch_size: int = 1000,
                 max_rows: int = 0, dry_run: bool = True, estimate_rows: int | None = None,
                 rest_seconds: float = 0.0) -> BackfillResult:
    """Run ``spec`` in batches until no key is left, ``max_rows`` rows are changed, or a stop signal arrives.

    After each batch the run rests ``rest_seconds`` (GitLab's ``pause_ms``; none by default, as rests did not
    lower the application's p99 in bench/backfill.py); its batch connection writes back the pages it dirties
    as it goes (``backend_flush_after`` = the target's ``backfill_flush_after``), so that a checkpoint's sync
    does not have to flush them all at once while the application's commits wait behind it.

    SIGTERM and Ctrl-C (SIGINT) stop the run after the batch under way commits. Each batch and each pause
    is printed and kept in the result; ``finish_backfill`` saves them and checks that nothing is left.

    Raises:
        BackfillLockHeld: another session runs this backfill.
        BackfillFailed: a batch failed (lock timeouts beyond the target's retries, or an SQL error).
    """
    if spec is None:
        if not dry_run:
            raise BackfillNotFound("", sorted(session.config.backfills), str(session.config.path))
        print("No backfill chosen: nothing to run.")
        return BackfillResult("", "", session.run_id, dry_run, "nothing chosen")
    result = BackfillResult(spec.name, spec.table, session.run_id, dry_run, "dry run", estimate=estimate_rows)
    if dry_run:
        print(f"dry_run=True: nothing was changed; backfill '{spec.name}' would update about "
              f"{estimate_rows if estimate_rows is not None else '?'} row(s) of {spec.table} in batches "
              f"sized toward {batch_seconds}s.")
        return result
    locking.check_deployer_lock(session.engine, session.lock, action=f"run_backfill('{spec.name}', dry_run=False)",
                                run_id=session.run_id, target=session.target.name)
    lock_engine, lock_conn = _take_lock(session, spec.name)
    policy = locking.RetryPolicy.for_target(session.target)
    size = max(MIN_BATCH, min(int(batch_size), MAX_BATCH))
    try:
        with session.engine.connect() as conn:
            plan = make_plan(conn, spec)
            cursor = _begin_pass(conn, spec, session.run_id)
        result.resumed_from, result.status = cursor, "running"
        bar = Progress(spec.name, estimate_rows)
        started, swept = time.perf_counter(), False
        with StopSignals() as stop, session.engine.connect() as conn:
            own = (conn.execute(sa.text("SELECT pg_backend_pid()")).scalar(), _pid(lock_conn))
            result.write_back = _write_back_as_it_goes(conn, session.target)
            conn.rollback()
            while not stop.reason:
                if max_rows and result.rows >= max_rows:
                    result.stopped = f"max_rows {max_rows:,} reached"
                    break
                _pause_while_unhealthy(session, conn, plan, own, result, stop, next_wal=_next_wal(result.batches))
                if stop.reason:
                    break
                limit = min(size, max_rows - result.rows) if max_rows else size
                batch = _one_batch(conn, plan, cursor, limit, len(result.batches) + 1, policy, session.run_id)
                if batch.scanned == 0:
                    swept = True
                    break
                result.batches.append(batch)
                result.rows += batch.rows
                cursor = batch.cursor
                size = _next_size(size, batch.seconds, batch_seconds)
                bar.update(result.rows, len(result.batches), time.perf_counter() - started)
                if rest_seconds > 0 and not stop.reason:
                    time.sleep(rest_seconds)
                    result.rest_seconds += rest_seconds
            result.stopped = result.stopped or (f"stopped by {stop.reason} after batch {len(result.batches)}"
                                                if stop.reason else "")
            result.seconds = time.perf_counter() - started
            if swept:
                result.remaining = conn.execute(plan.remaining_sql()).scalar()
                result.status = "complete" if result.remaining == 0 else "incomplete"
                conn.execute(sa.text("UPDATE dbrunbook.backfills SET status = :s, remaining = :r, "
                                     "finished_at = now(), updated_at = now() WHERE name = :n"),
                             {"s": result.status, "r": result.remaining, "n": spec.name})
                conn.commit()
            bar.done(result.rows, len(result.batches), result.seconds, result.status)
        row = cast(dict, progress(session.engine, spec.name))  # ensure_state made the row
        result.total_rows, result.total_batches = row["rows_changed"], row["batches"]
        return result
    finally:
        lock_conn.close()
        lock_engine.dispose()


def _begin_pass(conn, spec: Backfill, run_id: str) -> tuple[str, ...] | None:
    """The key this run resumes after, None for the start: a new pass when the definition changed or one ended.

    The run's id joins the backfill's runs in the same committed transaction, before the first batch.
    """
    state = ensure_state(conn, spec)
    changed = state["definition"] != spec_definition(spec)
    if changed or state["status"] in ("complete", "incomplete"):
        why = "its definition changed" if changed else "the last pass ended"
        print(f"backfill '{spec.name}': a new pass from the start of {spec.table} ({why}).")
        conn.execute(sa.text("UPDATE dbrunbook.backfills SET cursor = NULL, passes = passes + 1, "
                             "status = 'running', definition = :d, finished_at = NULL WHERE name = :n"),
                     {"n": spec.name, "d": spec_definition(spec)})
        state["cursor"] = None
    conn.execute(sa.text("UPDATE dbrunbook.backfills SET run_ids = array_append(run_ids, :r) "
                         "WHERE name = :n AND NOT :r = ANY(run_ids)"), {"n": spec.name, "r": run_id})
    conn.commit()
    return tuple(state["cursor"]) if state["cursor"] else None


def _write_back_as_it_goes(conn, target) -> str:
    """``SET backend_flush_after`` for the batch connection (a user setting; 0 keeps the server's own).

    Returns the setting as the server now shows it (``256kB``), kept in the result.
    """
    blocks = int(target.backfill_flush_after)
    if blocks:
        conn.execute(sa.text("SELECT set_config('backend_flush_after', :v, false)"), {"v": str(blocks)})
        conn.commit()
    return str(conn.execute(sa.text("SHOW backend_flush_after")).scalar())


def _pid(conn) -> int:
    return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()


def _next_wal(batches: list[Batch]) -> int:
    """The WAL the next batch should write: the last one's if it was full, else 0 (the table's end is near)."""
    last = batches[-1] if batches else None
    return last.wal_bytes if last is not None and last.scanned >= last.size else 0


def _next_size(size: int, seconds: float, target: float) -> int:
    """Toward ``target`` seconds a batch, at most doubling or halving at once (GitLab: 90-95% of the target)."""
    if 0.9 * target <= seconds <= 0.95 * target:
        return size
    factor = min(2.0, max(0.5, (0.925 * target) / max(seconds, 1e-3)))
    return max(MIN_BATCH, min(int(size * factor), MAX_BATCH))


def _one_batch(conn, plan: Plan, cursor, limit: int, number: int, policy, run_id: str) -> Batch:
    """One batch and its progress row in one transaction, tried again after each lock timeout."""
    bounds, update = plan.bounds_sql(cursor is not None), plan.update_sql(cursor is not None)
    after = {f"c{i}": v for i, v in enumerate(cursor)} if cursor else {}
    for attempt in range(policy.retries + 1):
        started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
        try:
            found = conn.execute(bounds, {"n": limit, **after}).first()
            scanned, new, rows = (found.scanned, tuple(found.last), 0) if found else (0, cursor, 0)
            wal = 0
            if scanned:
                rows = conn.execute(update, {**after, **{f"h{i}": v for i, v in enumerate(new)}}).rowcount
                moved = conn.execute(sa.text(
                    "UPDATE dbrunbook.backfills SET cursor = :c, batches = batches + 1, "
                    "rows_changed = rows_changed + :r, updated_at = now() "
                    "WHERE name = :n AND cursor IS NOT DISTINCT FROM CAST(:old AS text[]) "
                    "RETURNING pg_wal_lsn_diff(pg_current_wal_insert_lsn(), CAST(:lsn AS pg_lsn))::bigint"),
                    {"c": list(new), "r": rows, "n": plan.spec.name, "lsn": found.lsn,
                     "old": list(cursor) if cursor else None}).all()
                if len(moved) != 1:
                    raise BackfillFailed(plan.spec.name, number, "its stored cursor moved under this run "
                                         "(another runner without the backfill lock?); nothing of this batch "
                                         "was committed")
                wal = int(moved[0][0])
            conn.commit()
            return Batch(number, started.isoformat(), limit, scanned, rows,
                         round(time.perf_counter() - t0, 4), attempt, new, wal)
        except sa.exc.DBAPIError as err:
            conn.rollback()
            if not locking.is_lock_timeout(err) or attempt == policy.retries:
                url = conn.engine.url.render_as_string(hide_password=False)
                reason = db.scrub_driver_message(str(err.orig).strip(), url)
                raise BackfillFailed(plan.spec.name, number, f"{reason} (attempt {attempt + 1} of "
                                     f"{policy.retries + 1})") from err
            pause = policy.delay(attempt + 1, random.random())
            print(f"backfill '{plan.spec.name}' batch {number}: lock timeout, attempt {attempt + 1} of "
                  f"{policy.retries + 1}; next in {pause:.2f}s")
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _pause_while_unhealthy(session, conn, plan: Plan, own, result: BackfillResult, stop, *, next_wal: int = 0
                           ) -> None:
    signals = health_signals(conn, plan.oid, session.target, own_pids=own, next_wal=next_wal)
    conn.rollback()
    if not signals:
        return
    started, t0, reasons = dt.datetime.now(dt.UTC), time.perf_counter(), []
    print(f"backfill '{plan.spec.name}': paused before batch {len(result.batches) + 1}: "
          + "; ".join(map(str, signals)))
    while signals and not stop.reason:
        reasons += [str(s) for s in signals if str(s) not in reasons]
        time.sleep(_PAUSE_POLL)
        signals = health_signals(conn, plan.oid, session.target, own_pids=own, next_wal=next_wal)
        conn.rollback()
    pause = Pause(len(result.batches) + 1, started.isoformat(), round(time.perf_counter() - t0, 3), tuple(reasons))
    result.pauses.append(pause)
    print(f"backfill '{plan.spec.name}': resumed after {pause.seconds:.1f}s")


# --- the end of the pattern ---------------------------------------------------------------------------------
def recommended_sql(spec: Backfill) -> str:
    """The guide's third step in its safe form, for each column the backfill sets."""
    table = quote_name(spec.table)
    base = plain_name(spec.table.split(".")[-1])
    out = []
    for col in set_columns(spec.set):
        check = quote_name(f'"{base}_{col}_not_null"')
        out += [f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({quote_name(chr(34) + col + chr(34))} "
                f"IS NOT NULL) NOT VALID;  -- instant",
                f"ALTER TABLE {table} VALIDATE CONSTRAINT {check};  -- scans, but lets reads and writes go on",
                f"ALTER TABLE {table} ALTER COLUMN {quote_name(chr(34) + col + chr(34))} SET NOT NULL;  "
                f"-- no scan: the valid CHECK proves it",
                f"ALTER TABLE {table} DROP CONSTRAINT {check};"]
    return "\n".join(out)


def finish_backfill(session, spec: Backfill | None, result: BackfillResult) -> BackfillResult:
    """Save the run's figures (artifacts/backfill-NAME.json), then stop unless no row still matches the WHERE.

    Raises:
        BackfillUnfinished: rows still match (the run stopped early, or rows arrived behind the cursor).
    """
    if spec is None:
        return result
    session.save_artifact(f"backfill-{spec.name}.json",
                          json.dumps(result.as_dict(), indent=1, sort_keys=True, default=str) + "\n")
    if result.dry_run:
        print("dry_run=True: nothing to check. Then, in a new migration:\n" + recommended_sql(spec))
        return result
    if result.remaining is None:
        with session.engine.connect() as conn:
            result.remaining = conn.execute(make_plan(conn, spec).remaining_sql()).scalar()
    if result.remaining:
        why = result.stopped or "rows arrived behind the cursor during the run; a new pass picks them up"
        raise BackfillUnfinished(spec.name, spec.table, result.remaining, why)
    print(f"No row of {spec.table} matches '{spec.where}' any more. Next, in a new migration (the guide's "
          f"third step, safely):\n{recommended_sql(spec)}")
    return result
