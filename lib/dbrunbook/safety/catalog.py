"""The live facts lint weighs findings by: ``TableSize`` and ``Catalog``, and reading them from the database.

A blocking operation is an outage on a big table and harmless on a small or new one, so the rules need sizes,
column types, validated NOT NULL checks and index owners. They come in a ``Catalog`` value, so that the rules
are testable on fixed inputs; ``read_catalog`` reads one from the live database, bounded and read only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlalchemy as sa

from dbrunbook.postgres import sqlparse
from dbrunbook.safety.sql_reading import IDENT, alter_actions, normalize_name, table_of

ROWS_THRESHOLD = 10_000
BYTES_THRESHOLD = 10 * 1024 * 1024


@dataclass(frozen=True)
class TableSize:
    """What the live database says about a table before the run."""

    name: str
    exists: bool
    rows: int = 0
    rows_at_least: bool = False  # rows is a lower bound (the count stopped at the threshold)
    bytes: int = 0

    def describe(self) -> str:
        rows = f"{'at least ' if self.rows_at_least else ''}{self.rows:,} rows"
        return f"{rows}, {_human_bytes(self.bytes)}"


@dataclass(frozen=True)
class Catalog:
    """The facts of the live database the rules weigh findings with (empty: nothing exists yet).

    Keys are table names as the SQL spells them (``users``, ``crm.customers``).
    """

    tables: dict[str, TableSize] = field(default_factory=dict)
    column_types: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, column) -> type
    not_null_checks: frozenset[tuple[str, str]] = frozenset()  # validated CHECK (col IS NOT NULL)
    index_tables: dict[str, str] = field(default_factory=dict)  # index name -> table name
    rows_threshold: int = ROWS_THRESHOLD
    bytes_threshold: int = BYTES_THRESHOLD

    def size(self, table: str | None) -> TableSize | None:
        if table is None:
            return None
        return self.tables.get(normalize_name(table)) or TableSize(normalize_name(table), exists=False)

    def is_big(self, size: TableSize) -> bool:
        return size.exists and (size.rows >= self.rows_threshold or size.bytes >= self.bytes_threshold)


def _human_bytes(n: int) -> str:
    amount: float = n  # still the int for "bytes": "1,000 bytes", not "1,000.0 bytes"
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if amount < 1024 or unit == "TB":
            return f"{amount:,} {unit}" if unit == "bytes" else f"{amount:,.1f} {unit}"
        amount /= 1024
    return str(amount)


def read_catalog(engine, statements, rows_threshold: int, bytes_threshold: int) -> Catalog:
    """Sizes, column types, NOT NULL checks and index owners of the tables the statements name."""
    indexes, columns, tables = set(), set(), set()
    for s in statements:
        flat = s.flat
        d = sqlparse.describe(flat)
        if d.index:
            indexes.add(d.index)
        table = table_of(flat)
        if table:
            tables.add(table)
            if d.parsed:
                columns |= {c for c in d.columns if d.kind == "ALTER TABLE"}
            for action in alter_actions(flat) if not d.parsed else ():
                if c := re.match(rf'^ALTER (?:COLUMN )?{IDENT} ', action, re.IGNORECASE):
                    columns.add((table, normalize_name(c.group(1))))
    index_tables: dict[str, str] = {}
    sizes: dict[str, TableSize] = {}
    types: dict[tuple[str, str], str] = {}
    checks: set[tuple[str, str]] = set()
    with engine.connect() as conn:
        for index in sorted(indexes):
            owner = conn.execute(sa.text(
                "SELECT x.indrelid::regclass::text FROM pg_index x WHERE x.indexrelid = to_regclass(:i)"),
                {"i": index}).scalar()
            if owner:
                index_tables[index] = normalize_name(owner)
                tables.add(normalize_name(owner))
        # One query for every table's existence and size (a 1,000-revision chain names 1,000 new tables);
        # only the live ones are then counted, each in its own bounded statement.
        live = {r.name: r for r in conn.execute(_SIZES_SQL, {"names": sorted(tables)})}
        spellings: dict[int, list[str]] = {}
        for table in sorted(tables):
            sizes[table] = _table_size(conn, table, live.get(table), rows_threshold)
            if sizes[table].exists:
                spellings.setdefault(live[table].oid, []).append(table)
        if spellings:
            for oid, expr in conn.execute(_CHECKS_SQL, {"oids": sorted(spellings)}):
                for col in re.findall(rf'\(\s*\(?\s*{IDENT}\s+IS\s+NOT\s+NULL\s*\)?\s*\)', expr, re.IGNORECASE):
                    checks.update((table, normalize_name(col)) for table in spellings[oid])
        for table, column in sorted(columns):
            if sizes.get(table) and sizes[table].exists:
                found = conn.execute(sa.text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                    "AND attname = :c AND NOT attisdropped"), {"t": table, "c": _unquote(column)}).scalar()
                if found:
                    types[(table, column)] = found
        conn.rollback()
    return Catalog(sizes, types, frozenset(checks), index_tables, rows_threshold, bytes_threshold)


_SIZES_SQL = sa.text("""
    SELECT t.name, c.oid::bigint AS oid, c.oid::regclass::text AS regname,
           greatest(c.reltuples, 0)::bigint AS estimate, pg_total_relation_size(c.oid) AS bytes
    FROM unnest(CAST(:names AS text[])) AS t(name)
    JOIN pg_class c ON c.oid = to_regclass(t.name) AND c.relkind IN ('r', 'p', 'm')
""")
_CHECKS_SQL = sa.text("""
    SELECT conrelid::bigint, pg_get_constraintdef(oid) FROM pg_constraint
    WHERE conrelid = ANY(CAST(:oids AS oid[])) AND contype = 'c' AND convalidated
""")


def _table_size(conn, table: str, live, limit: int) -> TableSize:
    """Rows (counted up to ``limit``, so the cost is bounded) and total bytes of a live table (``live``: its
    row of ``_SIZES_SQL``, None when the table does not exist)."""
    if live is None:
        return TableSize(table, exists=False)
    name, estimate, size = live.regname, live.estimate, live.bytes
    try:
        with conn.begin_nested():
            # A table locked by someone else: fall back to the planner's estimate rather than wait.
            conn.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
            counted = conn.execute(sa.text(
                f"SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT :n) s"), {"n": limit}).scalar_one()
    except sa.exc.DBAPIError:
        return TableSize(table, True, int(estimate), True, int(size))
    if counted >= limit:
        return TableSize(table, True, max(int(estimate), limit), True, int(size))
    return TableSize(table, True, int(counted), False, int(size))


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') and name.endswith('"') else name
