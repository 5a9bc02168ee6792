"""Live preflight: before a migration asks for strong locks, who holds locks on the tables it touches.

An ``ALTER TABLE`` waiting behind one forgotten ``idle in transaction`` session blocks every later query on
that table for as long as it waits. So before the change, the pending migrations' rendered SQL is read for
the tables each statement touches and the lock it needs; the live database is asked how big those tables are
and which sessions hold locks on them; and on a protected target a conflicting session older than the target's
``blocker_max_age`` stops the run (``BlockersPresent``) unless the operator says ``ignore_blockers``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa

from dbrunbook.config import parse_duration
from dbrunbook.errors import BlockersPresent
from dbrunbook.postgres import sqlparse, sqltext
from dbrunbook.protocol import SessionLike

__all__ = [
    "LOCK_MODES", "PreflightResult", "StatementLock", "conflicts", "live_preflight",
    "require_no_blockers", "split_statements", "statement_locks",
]

#: Table lock modes, weakest first (PostgreSQL docs, "Table-Level Locks").
LOCK_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
              "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")
_CONFLICTS = {
    "ACCESS SHARE": {"ACCESS EXCLUSIVE"},
    "ROW SHARE": {"EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "ROW EXCLUSIVE": {"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE UPDATE EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                               "ACCESS EXCLUSIVE"},
    "SHARE": {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE ROW EXCLUSIVE": {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                            "ACCESS EXCLUSIVE"},
    "EXCLUSIVE": set(LOCK_MODES) - {"ACCESS SHARE"},
    "ACCESS EXCLUSIVE": set(LOCK_MODES),
}
#: pg_locks.mode spelling -> SQL spelling.
_PG_MODE = {m.title().replace(" ", "") + "Lock": m for m in LOCK_MODES}


def conflicts(held: str, wanted: str) -> bool:
    """True when a lock ``held`` (SQL or pg_locks spelling) makes a request for ``wanted`` wait."""
    held, wanted = _PG_MODE.get(held, held), _PG_MODE.get(wanted, wanted)
    return wanted in _CONFLICTS.get(held, set())


def _strongest(modes: list[str]) -> str:
    return max(modes, key=LOCK_MODES.index) if modes else ""


# --- reading the SQL ----------------------------------------------------------------------------------------
def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script on one line each, comments dropped (see ``sqltext``)."""
    return [statement.flat for statement in sqltext.split_statements(sql)]


_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_QNAME = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_I = re.IGNORECASE


def _clean(name: str) -> str:
    return re.sub(r"\s*\.\s*", ".", name)


def _names(listing: str) -> list[str]:
    return [_clean(m.group(1)) for m in re.finditer(_QNAME, listing)
            if m.group(1).upper() not in {"CASCADE", "RESTRICT", "ONLY", "TABLE"}]


def _alter_table_lock(rest: str) -> tuple[str, list[str]]:
    """The lock an ALTER TABLE takes, from its subcommands, and the other tables it locks (FK targets)."""
    upper = rest.upper()
    others = [_clean(m.group(1)) for m in re.finditer(rf"\bREFERENCES\s+{_QNAME}", rest, _I)]
    subcommands = [s.strip() for s in re.split(r",(?![^()]*\))", upper)]
    modes = []
    for sub in subcommands:
        if re.search(r"\bFOREIGN\s+KEY\b", sub) and sub.startswith("ADD"):
            modes.append("SHARE ROW EXCLUSIVE")
        elif sub.startswith(("VALIDATE CONSTRAINT", "CLUSTER ON", "SET WITHOUT CLUSTER", "ATTACH PARTITION")) \
                or re.search(r"\bSET\s+STATISTICS\b", sub):
            modes.append("SHARE UPDATE EXCLUSIVE")
        elif sub.startswith(("ENABLE TRIGGER", "DISABLE TRIGGER", "ENABLE ALWAYS TRIGGER",
                             "ENABLE REPLICA TRIGGER")):
            modes.append("SHARE ROW EXCLUSIVE")
        else:
            modes.append("ACCESS EXCLUSIVE")
    return _strongest(modes) or "ACCESS EXCLUSIVE", others


def statement_locks(statement: str) -> list[tuple[str, str, str]]:
    """[(table, lock mode, kind)] for one statement: the tables it touches and the lock it asks for on each.

    Read by PostgreSQL's parser (``sqlparse``): table names canonical (``"my table"``, ``crm.customers``),
    tables in CTEs (``WITH d AS (DELETE FROM big ...)``), tables read by ``USING``/``FROM`` (ACCESS SHARE).
    Tables it creates are not listed (nobody else can hold a lock on them yet), except those a new table
    references (a foreign key locks the referenced table in SHARE ROW EXCLUSIVE) and the parent of a new
    partition (ACCESS EXCLUSIVE). For DROP INDEX the "table" is the index name; the live preflight resolves
    it to its table. Text the parser rejects is read by the patterns of ``_fallback_locks``.
    """
    version_row = _VERSION_UPDATE.match(statement)
    if version_row and sqlparse.qualified(version_row["table"]) == version_row["table"]:  # not a keyword
        return [(version_row["table"], "ROW EXCLUSIVE", "UPDATE")]
    d = sqlparse.describe(statement)
    if not d.parsed:  # said in the kind, so the preflight table shows the lock was read from the first words
        return [(table, lock, f"{kind} (could not parse)") for table, lock, kind in _fallback_locks(statement)]
    kind = {"CREATE TABLE": "CREATE TABLE (foreign key)", "ALTER INDEX": "ALTER INDEX"}.get(d.kind, d.kind)
    return [(table, lock, kind) for table, lock in d.tables]


#: Alembic's move of its version row, exactly as it renders it: what the parser would say, without parsing
#: 1,000 of them for a 1,000-revision preview. Any other spelling goes to the parser.
_VERSION_UPDATE = re.compile(r"^UPDATE (?P<table>[a-z_][a-z0-9_]*) SET version_num='[^']*' "
                             r"WHERE (?P=table)\.version_num = '[^']*';?$")


def _fallback_locks(statement: str) -> list[tuple[str, str, str]]:
    """``statement_locks`` for text PostgreSQL's parser rejects: patterns on its first words."""
    s = statement.strip()
    m = re.match(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_QNAME}\s*\*?\s*(.*)$", s, _I | re.DOTALL)
    if m:
        lock, others = _alter_table_lock(m.group(2))
        return [(_clean(m.group(1)), lock, "ALTER TABLE")] + [(o, "SHARE ROW EXCLUSIVE", "ALTER TABLE")
                                                               for o in others]
    m = re.match(rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:{_NAME}\s+)?"
                 rf"ON\s+(?:ONLY\s+)?{_QNAME}", s, _I)
    if m:
        concurrent = bool(m.group(1))
        return [(_clean(m.group(2)), "SHARE UPDATE EXCLUSIVE" if concurrent else "SHARE",
                 "CREATE INDEX CONCURRENTLY" if concurrent else "CREATE INDEX")]
    m = re.match(r"DROP\s+INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(.*)$", s, _I | re.DOTALL)
    if m:
        concurrent = bool(m.group(1))
        return [(n, "SHARE UPDATE EXCLUSIVE" if concurrent else "ACCESS EXCLUSIVE",
                 "DROP INDEX CONCURRENTLY" if concurrent else "DROP INDEX") for n in _names(m.group(2))]
    m = re.match(r"(DROP\s+(?:TABLE|MATERIALIZED\s+VIEW|VIEW))\s+(?:IF\s+EXISTS\s+)?(.*)$", s, _I | re.DOTALL)
    if m:
        kind = " ".join(m.group(1).upper().split())
        return [(n, "ACCESS EXCLUSIVE", kind) for n in _names(m.group(2))]
    m = re.match(r"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(.*?)(?:\s+(?:RESTART|CONTINUE)\s+IDENTITY.*)?$", s,
                 _I | re.DOTALL)
    if m:
        return [(n, "ACCESS EXCLUSIVE", "TRUNCATE") for n in _names(m.group(1))]
    m = re.match(rf"CREATE\s+(?:UNLOGGED\s+|TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QNAME}(.*)$",
                 s, _I | re.DOTALL)
    if m:
        return [(_clean(r.group(1)), "SHARE ROW EXCLUSIVE", "CREATE TABLE (foreign key)")
                for r in re.finditer(rf"\bREFERENCES\s+{_QNAME}", m.group(2), _I)]
    m = re.match(rf"(UPDATE|DELETE\s+FROM|INSERT\s+INTO|MERGE\s+INTO)\s+(?:ONLY\s+)?{_QNAME}", s, _I)
    if m:
        return [(_clean(m.group(2)), "ROW EXCLUSIVE", " ".join(m.group(1).upper().split()))]
    m = re.match(r"LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?(.*?)(?:\s+IN\s+([A-Z ]+?)\s+MODE)?(?:\s+NOWAIT)?$", s,
                 _I | re.DOTALL)
    if m:
        mode = " ".join((m.group(2) or "ACCESS EXCLUSIVE").upper().split())
        return [(n, mode, "LOCK") for n in _names(m.group(1))]
    m = re.match(rf"CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+.*?\bON\s+{_QNAME}", s, _I | re.DOTALL)
    if m:
        return [(_clean(m.group(1)), "SHARE ROW EXCLUSIVE", "CREATE TRIGGER")]
    m = re.match(rf"REFRESH\s+MATERIALIZED\s+VIEW\s+(CONCURRENTLY\s+)?{_QNAME}", s, _I)
    if m:
        return [(_clean(m.group(2)), "EXCLUSIVE" if m.group(1) else "ACCESS EXCLUSIVE", "REFRESH MATERIALIZED VIEW")]
    m = re.match(rf"COMMENT\s+ON\s+(?:TABLE|COLUMN)\s+{_QNAME}", s, _I)
    if m:
        name = _clean(m.group(1))
        if s.upper().split()[2] == "COLUMN":
            name = name.rsplit(".", 1)[0] if "." in name else name
        return [(name, "SHARE UPDATE EXCLUSIVE", "COMMENT")]
    return []


@dataclass(frozen=True)
class StatementLock:
    """One statement of a pending revision, a table it touches and the lock it takes there."""

    migration_set: str
    revision: str
    kind: str
    table: str
    lock: str
    statement: str


def _statement_rows(preview: Any) -> list[StatementLock]:
    rows = []
    for set_name, steps in getattr(preview, "steps", {}).items():
        for step in steps:
            for statement in split_statements(step.sql):
                for table, lock, kind in statement_locks(statement):
                    rows.append(StatementLock(set_name, step.revision, kind, table, lock, statement[:200]))
    return rows


# --- the live part ------------------------------------------------------------------------------------------
# Every name at once (1,000 pending revisions name 1,000 tables): one round trip, not one a table.
_RESOLVE_SQL = sa.text("""
    SELECT n.name AS key, c.oid::bigint AS oid, c.oid::regclass::text AS name, c.relkind::text AS relkind,
           CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS rows_estimate,
           pg_total_relation_size(c.oid) AS size_bytes, pg_size_pretty(pg_total_relation_size(c.oid)) AS size,
           t.oid::bigint AS index_table_oid, t.oid::regclass::text AS index_table
    FROM unnest(CAST(:names AS text[])) AS n(name) JOIN pg_class c ON c.oid = to_regclass(n.name)
    LEFT JOIN pg_index i ON i.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = i.indrelid
""")


def _resolve(conn, names) -> dict:
    """The pg_class facts of each name that exists, by the name as given."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    return {r["key"]: r for r in conn.execute(_RESOLVE_SQL, {"names": wanted}).mappings()}

_SESSIONS_SQL = sa.text("""
    SELECT l.relation::bigint AS oid, l.relation::regclass::text AS table, l.mode, l.granted, a.pid,
           a.application_name, a.state, a.usename AS user, a.client_addr::text AS client,
           extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
           extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
           left(regexp_replace(a.query, '\\s+', ' ', 'g'), 200) AS query
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation::bigint = ANY(CAST(:oids AS bigint[]))
      AND a.pid <> pg_backend_pid()
      AND coalesce(a.application_name, '') NOT LIKE :ours
    ORDER BY a.xact_start NULLS LAST, a.pid, l.relation
""")


def _esc_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, eq=False)
class PreflightResult:
    """What the live preflight found: statements and their locks, the tables, the sessions holding locks."""

    statements: pd.DataFrame
    tables: pd.DataFrame
    sessions: pd.DataFrame
    target: str
    protected: bool
    blocker_max_age: str

    @property
    def blockers(self) -> pd.DataFrame:
        """Sessions holding a lock that conflicts with one the migrations need, older than blocker_max_age."""
        return self.sessions[self.sessions["blocker"]].reset_index(drop=True) if len(self.sessions) \
            else self.sessions

    def __repr__(self) -> str:
        return (f"PreflightResult(target {self.target!r}: {len(self.blockers)} blocker(s), {len(self.sessions)} "
                f"session(s), {len(self.tables)} table(s), {len(self.statements)} statement(s))")

    def _repr_html_(self) -> str:
        from dbrunbook.views.summaries import Shown, frame_html

        parts = [(f"<p>Target <b>{html.escape(self.target)}</b> (protected: {self.protected}); a blocker is a "
                  f"session holding a conflicting lock for longer than {html.escape(self.blocker_max_age)}: "
                  f"<b>{len(self.blockers)}</b> found.</p>")]
        # 1,000 pending revisions touch 1,000 tables: the oldest sessions and the biggest tables first.
        for title, frame, by in (("Sessions holding locks on these tables", self.sessions, "xact_age_s"),
                                 ("Tables the pending migrations touch", self.tables, "size_bytes"),
                                 ("Statements and the locks they take", self.statements, None)):
            body = frame_html(frame, Shown(by=by))  # an empty table reads "none"
            parts.append(f"<h4>{title}</h4>{body}")
        return "\n".join(parts)


_STATEMENT_COLUMNS = ["migration_set", "revision", "kind", "table", "lock", "statement"]
_TABLE_COLUMNS = ["table", "exists", "rows_estimate", "size", "size_bytes", "lock", "statements"]
_SESSION_COLUMNS = ["pid", "application_name", "state", "xact_age_s", "query_age_s", "table", "mode", "granted",
                    "needed", "conflicts", "blocker", "user", "client", "query"]


def live_preflight(session: SessionLike, preview: Any) -> PreflightResult:
    """Read the pending SQL for tables and locks, then ask the live database about those tables.

    Args:
        session: a dbrunbook Session (its engine, target and run id are used).
        preview: what ``session.preview()`` returned (its ``steps`` per migration set).

    Sessions of this run are left out (``application_name`` starting with ``dbrunbook:<run-id>``).
    """
    statements = _statement_rows(preview)
    max_age = session.target.blocker_max_age
    max_age_s = parse_duration(max_age, key="blocker_max_age")
    tables: dict[str, dict] = {}  # resolved name -> row
    needed: dict[int, list[str]] = {}  # table oid -> modes the migrations need
    with session.engine.connect() as conn:
        resolved = _resolve(conn, [st.table for st in statements])
        # DROP INDEX: the lock is taken on its table too
        index_tables = _resolve(conn, [r["index_table"] for r in resolved.values() if r["index_table"]])
        for st in statements:
            info = resolved.get(st.table)
            if info is not None and info["index_table"]:
                info = index_tables.get(info["index_table"])
            name = info["name"] if info else st.table
            row = tables.setdefault(name, {
                "table": name, "exists": info is not None,
                "rows_estimate": info["rows_estimate"] if info else None, "size": info["size"] if info else None,
                "size_bytes": info["size_bytes"] if info else None, "lock": "", "statements": 0, "_oid": None})
            row["statements"] += 1
            row["lock"] = _strongest([m for m in (row["lock"], st.lock) if m])
            if info is not None:
                row["_oid"] = info["oid"]
                needed.setdefault(info["oid"], []).append(st.lock)
        session_rows = []
        if needed:
            ours = f"dbrunbook:{_esc_like(session.run_id)}%"
            for r in conn.execute(_SESSIONS_SQL, {"oids": list(needed), "ours": ours}).mappings():
                want = _strongest(needed[r["oid"]])
                mode = _PG_MODE.get(r["mode"], r["mode"])
                hit = any(conflicts(mode, w) for w in needed[r["oid"]])
                age = r["xact_age_s"] if r["xact_age_s"] is not None else r["query_age_s"]
                session_rows.append({
                    "pid": r["pid"], "application_name": r["application_name"], "state": r["state"],
                    "xact_age_s": _round(r["xact_age_s"]), "query_age_s": _round(r["query_age_s"]),
                    "table": r["table"], "mode": mode, "granted": r["granted"], "needed": want,
                    "conflicts": hit, "blocker": bool(hit and r["granted"] and age is not None and age >= max_age_s),
                    "user": r["user"], "client": r["client"], "query": r["query"]})
        conn.rollback()
    return PreflightResult(
        statements=pd.DataFrame([vars(s) for s in statements], columns=_STATEMENT_COLUMNS),
        tables=pd.DataFrame([{k: v for k, v in t.items() if k != "_oid"} for t in tables.values()],
                            columns=_TABLE_COLUMNS),
        sessions=pd.DataFrame(session_rows, columns=_SESSION_COLUMNS).astype({"conflicts": bool, "blocker": bool}),
        target=session.target.name, protected=session.target.protected, blocker_max_age=max_age,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def require_no_blockers(session: SessionLike, result: PreflightResult, ignore_blockers: bool = False) -> pd.DataFrame:
    """Guard: stop a protected target while a blocker older than its ``blocker_max_age`` is present.

    On an unprotected target, or with ``ignore_blockers``, the blockers are listed and the run goes on: the
    migration then waits at most ``lock_timeout`` per attempt, and retries.

    Returns:
        The blockers (empty when there are none).

    Raises:
        BlockersPresent: protected target, blockers present, ``ignore_blockers`` false.
    """
    blockers = result.blockers
    if blockers.empty:
        print(f"No session holds a conflicting lock for longer than {result.blocker_max_age} on the tables "
              f"the pending migrations touch.")
        return blockers
    if session.target.protected and not ignore_blockers:
        raise BlockersPresent(session.target.name, blockers.to_dict("records"), result.blocker_max_age)
    why = "ignore_blockers is set" if ignore_blockers else f"target '{session.target.name}' is not protected"
    print(f"{len(blockers)} blocker(s) present; going on because {why}.")
    return blockers
