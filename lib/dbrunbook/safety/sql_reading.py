"""What a statement works on: its table, its kind, its ALTER TABLE actions, and how a finding shows it.

Read by PostgreSQL's own parser (``sqlparse``); text it rejects is read by the patterns here, the fallback.
The rules (``sql_rules``), squawk's findings (``squawk_rules``) and data loss all name tables and actions
the same way through these functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbrunbook.postgres import sqlparse
from dbrunbook.postgres.sqltext import Statement

if TYPE_CHECKING:
    from dbrunbook.safety.catalog import Catalog


def normalize_name(name: str) -> str:
    """A name as written in SQL in canonical spelling: ``My_Table`` is ``my_table``, ``"my table"`` keeps its
    quotes, ``public.`` is dropped (the way ``regclass::text`` spells it; see ``sqlparse.normalize_name``)."""
    return sqlparse.normalize_name(name)


def _split_name(name: str) -> list[str]:
    return re.findall(r'"(?:[^"]|"")*"|[^."]+', name.strip())


def squawk_offset(sql: str, line: int, column: int) -> int:
    """Offset of squawk's 0-based line and column in ``sql``."""
    lines = sql.splitlines(keepends=True)
    return sum(len(x) for x in lines[:line]) + min(column, len(lines[line]) if line < len(lines) else 0)


def statement_at(statements: Sequence[Statement], offset: int) -> Statement | None:
    for s in statements:
        if s.start <= offset < s.end:
            return s
    following = [s for s in statements if s.start >= offset]
    return following[0] if following else (statements[-1] if statements else None)


def display_statement(stmt: Statement | None, sql: str, offset: int) -> str:
    """The statement, shortened: its head and, for a long one, the line the finding points at."""
    if stmt is None:
        return ""
    flat = stmt.flat
    if len(flat) <= 160:
        return flat
    line_start = sql.rfind("\n", 0, offset) + 1
    line_end = sql.find("\n", offset)
    line = " ".join(sql[line_start:line_end if line_end >= 0 else len(sql)].split()).rstrip(",")
    head = flat[:70].rsplit(" ", 1)[0]
    if not line or len(line) > 90 or flat.startswith(line[:40]):
        return flat[:157] + "…"
    return f"{head} … {line}"


_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)(?:\.(?:"(?:[^"]|"")*"|[\w$]+))?'
_TABLE_PATTERNS = [
    re.compile(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:(?:IF NOT EXISTS )?{_NAME} )?ON (?:ONLY )?"
               rf"({_NAME})", re.IGNORECASE),
    re.compile(rf"^CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE (?:IF NOT EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^DROP TABLE (?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^UPDATE (?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^DELETE FROM (?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^INSERT INTO ({_NAME})", re.IGNORECASE),
    re.compile(rf"^TRUNCATE (?:TABLE )?(?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^VACUUM (?:\([^)]*\) |FULL |FREEZE |VERBOSE |ANALYZE )*({_NAME})", re.IGNORECASE),
    re.compile(rf"^CLUSTER (?:VERBOSE )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^REINDEX (?:\([^)]*\) )?TABLE (?:CONCURRENTLY )?({_NAME})", re.IGNORECASE),
]
_INDEX_PATTERNS = [
    re.compile(rf"^DROP INDEX (?:CONCURRENTLY )?(?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^ALTER INDEX (?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^REINDEX (?:\([^)]*\) )?INDEX (?:CONCURRENTLY )?({_NAME})", re.IGNORECASE),
]


def table_of(flat: str, catalog: Catalog | None = None) -> str | None:
    """The table a statement works on (canonical name), read by PostgreSQL's parser.

    An index the statement names (``DROP INDEX``, ``ALTER INDEX``) is looked up in ``catalog``; one the live
    database does not have is created in this run and weighed as not existing. Text the parser rejects is
    read by the patterns below, the fallback.
    """
    d = sqlparse.describe(flat)
    if d.parsed:
        if d.table:
            return d.table
        if d.index and catalog is not None:
            return catalog.index_tables.get(d.index, d.index)
        return None
    for pattern in _TABLE_PATTERNS:
        if m := pattern.match(flat):
            return normalize_name(m.group(1))
    for pattern in _INDEX_PATTERNS:
        if (m := pattern.match(flat)) and catalog is not None:
            return catalog.index_tables.get(normalize_name(m.group(1)), normalize_name(m.group(1)))
    return None


_ANY_TABLE = sqlparse.ast.RangeVar(relname="x", inh=True, relpersistence="p")


def alter_actions(flat: str) -> list[str]:
    """The actions of an ALTER TABLE, each as PostgreSQL's grammar reads it, printed canonically.

    ``alter x type int`` comes back as ``ALTER COLUMN x TYPE integer``, names quoted where needed: the rules
    below match that canonical text, not what the author typed. Unparsable text: split at top-level commas.
    """
    d = sqlparse.describe(flat)
    if d.parsed:
        if d.kind != "ALTER TABLE" or not isinstance(d.node, sqlparse.ast.AlterTableStmt):
            return []
        out = []
        for cmd in d.node.cmds or ():
            one = sqlparse.ast.AlterTableStmt(relation=_ANY_TABLE, cmds=(cmd,), objtype=d.node.objtype)
            try:
                out.append(sqlparse.deparse(one).removeprefix("ALTER TABLE x "))
            except Exception:  # noqa: BLE001 (a printer gap in pglast: keep the action, unprinted)
                out.append(sqlparse.kind_of(cmd))
        return out
    return _split_actions(flat)


#: A column or constraint name in the canonical text of an action (quoted names may hold spaces).
IDENT = r'("(?:[^"]|"")+"|[\w$]+)'
_FALLBACK_KINDS = [(re.compile(p, re.IGNORECASE), k) for p, k in (
    (r"^CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE\b", "CREATE TABLE"), (r"^VACUUM\b.*\bFULL\b", "VACUUM FULL"),
    (r"^CLUSTER\b", "CLUSTER"), (r"^UPDATE\b", "UPDATE"), (r"^DELETE\b", "DELETE FROM"),
    (r"^ALTER TABLE\b", "ALTER TABLE"))]


def statement_kind(flat: str) -> str:
    """The statement's kind by PostgreSQL's parser (``ALTER TABLE``, ``DELETE FROM``, ``VACUUM FULL``, ...);
    for text it rejects, the kind its first words suggest (the fallback), or ``UNPARSED``."""
    d = sqlparse.describe(flat)
    if d.parsed:
        return d.kind
    return next((k for p, k in _FALLBACK_KINDS if p.match(flat)), sqlparse.UNPARSED)


def _split_actions(flat: str) -> list[str]:
    m = re.match(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{_NAME} (.*?);?$", flat, re.IGNORECASE | re.DOTALL)
    if not m:
        return []
    parts, depth, current = [], 0, ""
    for ch in m.group(1):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current.strip()] if p]
