"""What the troubleshoot checks read in a migration's SQL: the objects it creates, the rows it inserts.

PostgreSQL's own parser (``sqlimpact``) reads each statement; the patterns here only read text the parser
rejects (a rendered migration with a typo still shows what it meant to create).
"""

from __future__ import annotations

import re
from typing import Any

from dbrunbook.config import MigrationSet
from dbrunbook.postgres import sqlimpact, sqltext
from dbrunbook.procedures.backfill_state import plain_name

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_NAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script, comments dropped, literals kept as written: ``sqltext``'s splitter.

    The code of each ``sqltext.Statement``, for callers that want text (a runbook cell, a test); the checks
    here read the Statements themselves.
    """
    return [statement.code for statement in sqltext.split_statements(sql)]


def _schema_of(name: str) -> str | None:
    parts = re.findall(_IDENT, name)
    return parts[0] if len(parts) == 2 else None


_CREATED = [
    ("table", re.compile(rf"^CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})",
                         re.IGNORECASE)),
    ("view", re.compile(rf"^CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})",
                        re.IGNORECASE)),
    ("sequence", re.compile(rf"^CREATE\s+SEQUENCE\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})", re.IGNORECASE)),
    ("schema", re.compile(rf"^CREATE\s+SCHEMA\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_IDENT})", re.IGNORECASE)),
    ("type", re.compile(rf"^CREATE\s+TYPE\s+(?P<name>{_NAME})", re.IGNORECASE)),
    ("index", re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?!IF\s+NOT\s+EXISTS)"
                         rf"(?P<name>{_IDENT})\s+ON\s+(?:ONLY\s+)?(?P<table>{_NAME})", re.IGNORECASE)),
]
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_NAME})\s+(?P<rest>.*)$",
                    re.IGNORECASE | re.DOTALL)
_ADD_COLUMN = re.compile(rf"^ADD\s+(?:COLUMN\s+)?(?!IF\s+NOT\s+EXISTS|CONSTRAINT\b)(?P<col>{_IDENT})\s+(?P<type>.+)$",
                         re.IGNORECASE | re.DOTALL)
_ADD_CONSTRAINT = re.compile(rf"^ADD\s+CONSTRAINT\s+(?P<name>{_IDENT})\s+(?P<def>.+)$", re.IGNORECASE | re.DOTALL)


def is_version_table(mset: MigrationSet, name: str) -> bool:
    """Alembic creates and fills the version table itself: not an object or a row a revision adds."""
    return plain_name(re.findall(_IDENT, name)[-1]) == mset.version_table.lower()


def created_objects(sql: str) -> list[dict[str, str]]:
    """The objects a piece of SQL creates: ``{kind, name, table, expected}``, in order.

    Only statements that would fail when the object exists are listed (``IF NOT EXISTS`` ones are not).
    """
    found: list[dict[str, str]] = []
    for statement in (st.code for st in sqltext.split_statements(sql)):
        parsed = sqlimpact.creates(statement)
        if parsed is not None:  # read by PostgreSQL's parser; the patterns below only for text it rejects
            found += parsed
            continue
        flat = " ".join(statement.split())
        for kind, pattern in _CREATED:
            m = pattern.match(flat)
            if m:
                table = m.groupdict().get("table") or ""
                name = m.group("name")
                if kind == "index" and _schema_of(table):
                    name = f"{_schema_of(table)}.{name}"
                found.append({"kind": kind, "name": name, "table": table, "expected": flat[:120]})
                break
        else:
            m = _ALTER.match(flat)
            if not m:
                continue
            # One ALTER TABLE may add several things, comma separated at the top level.
            for clause in _top_level_split(m.group("rest")):
                col = _ADD_COLUMN.match(clause)
                con = _ADD_CONSTRAINT.match(clause)
                if con:
                    found.append({"kind": "constraint", "name": con.group("name"), "table": m.group("table"),
                                  "expected": con.group("def")[:120]})
                elif col:
                    found.append({"kind": "column", "name": col.group("col"), "table": m.group("table"),
                                  "expected": col.group("type")[:120]})
    return found


def _top_level_split(text: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    depth, quote = 0, None
    for ch in text:
        if quote:
            buf.append(ch)
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


_INSERT = re.compile(rf"^INSERT\s+INTO\s+(?P<table>{_NAME})\s*\((?P<cols>[^)]*)\)\s*VALUES\s*(?P<values>.+)$",
                     re.IGNORECASE | re.DOTALL)


def parse_inserts(sql: str) -> list[dict[str, Any]]:
    """``INSERT INTO t (cols) VALUES ...`` statements: ``{table, columns, values, on_conflict}``.

    ``values`` is the SQL text of the row list, to be used verbatim as a ``VALUES`` list; INSERT … SELECT
    and INSERT without a column list are not listed (their rows cannot be known without running them).
    """
    found = []
    for statement in (st.code for st in sqltext.split_statements(sql)):
        if sqlimpact.describe(statement).parsed:  # read by PostgreSQL's parser; the pattern only as fallback
            if (row := sqlimpact.inserted_rows(statement)) is not None:
                found.append(row)
            continue
        m = _INSERT.match(statement.strip())
        if not m:
            continue
        values = m.group("values")
        on_conflict = re.search(r"\bON\s+CONFLICT\b", values, re.IGNORECASE)
        values = values[:on_conflict.start()] if on_conflict else values
        values = re.split(r"\bRETURNING\b", values, flags=re.IGNORECASE)[0].strip()
        found.append({"table": m.group("table"), "columns": [plain_name(c.strip()) for c in m.group("cols").split(",")],
                      "values": values, "on_conflict": bool(on_conflict)})
    return found

