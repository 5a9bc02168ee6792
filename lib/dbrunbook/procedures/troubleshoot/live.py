"""Troubleshoot checks of what the live server holds: blocking sessions and long transactions, invalid indexes.

Neither depends on a migration set: they read pg_stat_activity, pg_locks and pg_index of the target
database, and name what an operator may end or drop; dbrunbook never does either itself.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa

from dbrunbook.procedures.troubleshoot.results import TITLES, CheckResult, Problem, completes, run_command
from dbrunbook.protocol import SessionLike

# --- 5. blocked / long-running --------------------------------------------------------------------------
_ACTIVITY = sa.text("""
    SELECT a.pid, a.usename AS "user", a.application_name, a.state, a.wait_event_type, a.wait_event,
           pg_blocking_pids(a.pid) AS blocked_by,
           floor(extract(epoch FROM now() - a.xact_start))::bigint AS transaction_seconds,
           floor(extract(epoch FROM now() - a.state_change))::bigint AS state_seconds,
           (SELECT string_agg(l.mode || ' on ' || coalesce(l.relation::regclass::text, l.locktype), ', ')
              FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted) AS waiting_for,
           left(a.query, 200) AS query
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
    ORDER BY a.pid
""")


def _blocking_rows(sessions: list[dict[str, Any]], blockers: set[int], blocked: set[int], limit: float
                   ) -> list[dict[str, Any]]:
    """The sessions worth a row: blocked, blocking, in a transaction open longer than ``limit`` seconds, or
    idle in one; with their roles and whether an operator could end them."""
    rows = []
    for r in sessions:
        idle_tx = (r["state"] or "").startswith("idle in transaction")
        long_tx = r["transaction_seconds"] is not None and r["transaction_seconds"] > limit
        roles = []
        if r["pid"] in blocked:
            roles.append(f"blocked by {', '.join(map(str, r['blocked_by']))}")
        if r["pid"] in blockers:
            n = sum(1 for x in sessions if r["pid"] in (x["blocked_by"] or []))
            roles.append(f"blocks {n} session(s)")
        if long_tx:
            roles.append(f"transaction open {r['transaction_seconds']}s")
        if idle_tx and (r["pid"] in blockers or (r["state_seconds"] or 0) > limit):
            roles.append("idle in transaction")
        if not roles:
            continue
        root = r["pid"] in blockers and r["pid"] not in blocked
        could_end = root or (idle_tx and (r["state_seconds"] or 0) > limit)
        rows.append({"pid": r["pid"], "role": "; ".join(roles), "could_end": could_end, "user": r["user"],
                     "application_name": r["application_name"], "state": r["state"],
                     "waiting_for": r["waiting_for"], "transaction_seconds": r["transaction_seconds"],
                     "query": r["query"]})
    return rows


@completes("blocked", TITLES["blocked"])
def check_blocking(s: SessionLike, max_age: str | None = None) -> CheckResult:
    """The guide's *Migration takes too long*: the blocking tree, long transactions, idle-in-transaction sessions.

    Reads pg_stat_activity and pg_locks (pg_blocking_pids) of the target database. Lists the pids an operator
    could end (root blockers, idle-in-transaction sessions older than ``max_age``, default the target's
    ``blocker_max_age``); dbrunbook never ends a session itself.
    """
    max_age = max_age or s.target.blocker_max_age
    with s.engine.connect() as conn:
        seconds = sa.text("SELECT extract(epoch FROM CAST(:a AS interval))")
        limit = float(conn.execute(seconds, {"a": max_age}).scalar_one())
        sessions = [dict(r) for r in conn.execute(_ACTIVITY).mappings()]
        conn.rollback()
    blockers = {p for r in sessions for p in (r["blocked_by"] or [])}
    blocked = {r["pid"] for r in sessions if r["blocked_by"]}
    rows = _blocking_rows(sessions, blockers, blocked, limit)
    checked = f"{len(sessions)} other session(s) on database '{s.identity.database}', limit {max_age}"
    if not rows:
        return CheckResult("blocked", TITLES["blocked"], (), checked)
    evidence = pd.DataFrame(rows)
    pids = [int(p) for p in evidence.loc[evidence["could_end"], "pid"]]
    cause = (f"{len(blocked)} session(s) wait on locks held by others"
             f"{' (root blockers: ' + ', '.join(map(str, sorted(blockers - blocked))) + ')' if blocked else ''}; "
             f"{sum(1 for r in rows if 'transaction open' in r['role'])} transaction(s) open longer than {max_age}. "
             f"A migration waiting behind them queues every query on the table behind itself (lock_timeout "
             f"'{s.target.lock_timeout}' bounds that). Ask the owners to finish; an operator may end "
             f"pid(s) {', '.join(map(str, pids)) or '(none)'} with SELECT pg_terminate_backend(pid). "
             f"dbrunbook never ends sessions itself. For slow rather than blocked migrations, the guide: "
             f"CREATE INDEX CONCURRENTLY, add columns in several steps, a maintenance window.")
    return CheckResult("blocked", TITLES["blocked"], (Problem(
        code="blocked", title=TITLES["blocked"], migration_set=None, evidence=evidence, cause=cause,
        next_step=run_command(s, "troubleshoot") + "  (again, once the sessions are gone)",
        queries=(str(_ACTIVITY).strip(),),
    ),), checked)



# --- 9. invalid indexes ---------------------------------------------------------------------------------
def check_invalid_indexes(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """Indexes marked invalid (``pg_index.indisvalid = false``), typically a ``CREATE INDEX CONCURRENTLY`` that
    timed out or failed: unused by queries, still maintained by writes, skipped by ``IF NOT EXISTS``.

    ``migration_set`` is accepted for the common signature; indexes belong to the database, not to a set.
    """
    from dbrunbook.postgres import indexes

    found = indexes.invalid_indexes(s.engine)
    checked = f"pg_index of database '{s.identity.database}' (indexes being built right now are not counted)"
    if not found:
        return CheckResult("invalid_index", TITLES["invalid_index"], (), checked)
    evidence = pd.DataFrame([{k: i[k] for k in ("schema", "index", "table", "size", "definition", "fix")}
                             for i in found])
    fixes = "; ".join(i["fix"] for i in found)
    cause = (f"{len(found)} invalid index(es): {', '.join(i['index'] + ' on ' + i['table'] for i in found)}. "
             f"A CREATE INDEX CONCURRENTLY that times out or fails leaves its index behind, invalid: queries do "
             f"not use it, every write still maintains it, and a migration with IF NOT EXISTS skips it. Drop it "
             f"without blocking writes ({fixes}), then run the migration again to build it.")
    return CheckResult("invalid_index", TITLES["invalid_index"], (Problem(
        code="invalid_index", title=TITLES["invalid_index"], migration_set=None, evidence=evidence, cause=cause,
        next_step=fixes, queries=(str(indexes.INVALID_INDEXES_SQL).strip(),),
    ),), checked)

