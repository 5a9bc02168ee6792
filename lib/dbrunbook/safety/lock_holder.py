"""Who holds the deployer lock: the holder's application_name, the lock statement's comment, pg_locks.

The deployer lock's connection names its holder in ``application_name`` (``dbrunbook:<run-id>:<runbook>:
<operator>``), cut at PostgreSQL's 63 bytes, and carries the full names in a comment of its try-lock statement,
which stays in ``pg_stat_activity.query`` while the connection sits idle. Reading both back, and the run's
ledger row when the role may, is what lets a second run say exactly who is in its way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)


DEPLOYER_LOCK_NAMESPACE = "dbrunbook-deployer"
#: The advisory lock key: the first 8 bytes of sha256(namespace), made positive. Computed here rather than
#: with ``hashtext()``, an internal function whose values are not promised to stay the same across releases.
DEPLOYER_LOCK_KEY = int.from_bytes(hashlib.sha256(DEPLOYER_LOCK_NAMESPACE.encode()).digest()[:8], "big") \
    & 0x7FFF_FFFF_FFFF_FFFF
#: PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name and silently cuts the rest.
APPLICATION_NAME_MAX = 63


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


def lock_query(run_id: str, runbook: str, operator: str) -> sa.TextClause:
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
