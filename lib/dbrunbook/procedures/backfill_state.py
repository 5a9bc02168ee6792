"""Where a backfill keeps its progress and how its SQL is built: ``dbrunbook.backfills``, names, batch SQL.

The progress row is updated in the transaction of each batch (``backfill.run_backfill``), so what it says was
done is exactly what the table holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import sqlalchemy as sa

from dbrunbook.config import Backfill
from dbrunbook.errors import BackfillFailed

__all__ = ["progress", "quote_name", "set_columns"]

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS dbrunbook",
    """CREATE TABLE IF NOT EXISTS dbrunbook.backfills (
        name text PRIMARY KEY, table_name text NOT NULL, definition text NOT NULL, cursor text[],
        batches bigint NOT NULL DEFAULT 0, rows_changed bigint NOT NULL DEFAULT 0, passes int NOT NULL DEFAULT 1,
        status text NOT NULL DEFAULT 'running', remaining bigint, run_ids text[] NOT NULL DEFAULT '{}',
        started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz)""",
]



# --- names ----------------------------------------------------------------------------------------------
def quote_name(name: str) -> str:
    """A (schema-qualified) name as SQL: unquoted parts fold to lower case, as PostgreSQL reads them."""
    parts = re.findall(r'"(?:[^"]|"")*"|[^."]+', name.strip())
    return ".".join(p if p.startswith('"') else '"' + p.strip().lower().replace('"', '""') + '"' for p in parts)


def plain_name(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.strip().lower()


def set_columns(set_sql: str) -> list[str]:
    """The columns a SET list assigns (``score = 0, n = n + 1`` -> ``['score', 'n']``), commas in () kept."""
    parts, depth, current = [], 0, ""
    for ch in set_sql:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [plain_name(m.group(1)) for p in parts if (m := re.match(r'\s*("(?:[^"]|"")*"|[\w$]+)\s*=', p))]


def spec_definition(spec: Backfill) -> str:
    return json.dumps({"table": spec.table, "key": list(spec.key), "set": spec.set, "where": spec.where},
                      sort_keys=True)


# --- SQL --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    spec: Backfill
    table: str  # quoted
    oid: int
    keys: tuple[str, ...]  # quoted
    types: tuple[str, ...]

    def _row(self, prefix: str) -> str:
        return "(" + ", ".join(f"CAST(:{prefix}{i} AS {t})" for i, t in enumerate(self.types)) + ")"

    def bounds_sql(self, with_cursor: bool) -> sa.TextClause:
        """The next batch's last key, its number of keys (an index-only walk of at most ``:n`` keys), and where
        the WAL stands before the batch writes (``lsn``, for the batch's WAL bytes)."""
        cols = ", ".join(f"{k} AS _k{i}" for i, k in enumerate(self.keys))
        order = ", ".join(self.keys)
        after = f"WHERE ({order}) > {self._row('c')}" if with_cursor else ""
        last = ", ".join(f"_k{i}::text" for i in range(len(self.keys)))
        desc = ", ".join(f"_k{i} DESC" for i in range(len(self.keys)))
        return sa.text(f"SELECT ARRAY[{last}] AS last, count(*) OVER () AS scanned, "
                       f"pg_current_wal_insert_lsn()::text AS lsn "
                       f"FROM (SELECT {cols} FROM {self.table} {after} ORDER BY {order} LIMIT :n) AS batch "
                       f"ORDER BY {desc} LIMIT 1")

    def update_sql(self, with_cursor: bool) -> sa.TextClause:
        """The UPDATE of the rows between the cursor (exclusive) and the batch's last key (inclusive).

        A key range, not a join with the batch's keys: the planner then reads the range through the key's
        index, where a join is planned as a scan of the whole table in every batch.
        """
        order = ", ".join(self.keys)
        after = f"({order}) > {self._row('c')} AND " if with_cursor else ""
        return sa.text(f"UPDATE {self.table} SET {self.spec.set} "
                       f"WHERE {after}({order}) <= {self._row('h')} AND ({self.spec.where})")

    def remaining_sql(self) -> sa.TextClause:
        return sa.text(f"SELECT count(*) FROM {self.table} WHERE ({self.spec.where})")


def make_plan(conn, spec: Backfill) -> Plan:
    table = quote_name(spec.table)
    oid = conn.execute(sa.text("SELECT CAST(to_regclass(:t) AS oid)"), {"t": table}).scalar()
    if oid is None:
        raise BackfillFailed(spec.name, 0, f"table {spec.table} does not exist in this database")
    names = [plain_name(k) for k in spec.key]
    found = dict(conn.execute(sa.text(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = :oid AND attname = ANY(:cols) AND attnum > 0 AND NOT attisdropped"),
        {"oid": oid, "cols": names}).all())
    missing = [n for n in names if n not in found]
    if missing:
        raise BackfillFailed(spec.name, 0, f"table {spec.table} has no column {', '.join(missing)} (key)")
    return Plan(spec, table, oid, tuple(quote_name(f'"{n}"') for n in names), tuple(found[n] for n in names))


def ensure_state(conn, spec: Backfill) -> dict:
    for ddl in _DDL:
        conn.execute(sa.text(ddl))
    conn.execute(sa.text("INSERT INTO dbrunbook.backfills (name, table_name, definition) VALUES (:n, :t, :d) "
                         "ON CONFLICT (name) DO NOTHING"),
                 {"n": spec.name, "t": spec.table, "d": spec_definition(spec)})
    return dict(conn.execute(sa.text("SELECT * FROM dbrunbook.backfills WHERE name = :n FOR UPDATE"),
                             {"n": spec.name}).mappings().one())


def progress(engine, name: str) -> dict | None:
    """The stored progress of backfill ``name`` in the target database (None: never run there)."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('dbrunbook.backfills')")).scalar() is None:
            return None
        row = conn.execute(sa.text("SELECT * FROM dbrunbook.backfills WHERE name = :n"), {"n": name}).mappings().first()
        return dict(row) if row else None
