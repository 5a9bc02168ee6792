"""Invalid indexes: what an interrupted ``CREATE INDEX CONCURRENTLY`` leaves behind, found and dropped.

A ``CREATE INDEX CONCURRENTLY`` commits its catalog entry first and then waits, under ``lock_timeout``, for
the transactions that could still write to or see the table. When that wait times out the statement fails but
the index stays, marked ``pg_index.indisvalid = false``: queries do not use it, every write still maintains
it, and a retry with ``IF NOT EXISTS`` (dbrunbook's own advice for autocommit blocks) succeeds without
building anything. So a retry first drops what the failed attempt left, and every upgrade ends by checking
that it left no invalid index behind.

An index another session is building right now is also invalid until it finishes; those (listed in
``pg_stat_progress_create_index``) are never reported or dropped.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

__all__ = ["INVALID_INDEXES_SQL", "drop_invalid_indexes", "fix_command", "invalid_indexes"]

INVALID_INDEXES_SQL = sa.text("""
    SELECT n.nspname AS schema, i.relname AS index, t.relname AS "table", i.oid::bigint AS oid,
           pg_size_pretty(pg_relation_size(i.oid)) AS size, x.indisready AS ready,
           pg_get_indexdef(i.oid) AS definition
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = i.relnamespace
    WHERE NOT x.indisvalid
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
      AND i.oid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index WHERE index_relid IS NOT NULL)
    ORDER BY n.nspname, t.relname, i.relname
""")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(index: dict) -> str:
    """``schema.index``, each part quoted only when it has to be."""
    parts = [index["schema"], index["index"]]
    return ".".join(p if p.isidentifier() and p == p.lower() else _quoted(p) for p in parts)


def fix_command(index: dict) -> str:
    """The statement that removes an invalid index without blocking writes (then the migration can build it)."""
    return f"DROP INDEX CONCURRENTLY IF EXISTS {qualified(index)}"


def invalid_indexes(bind: Connection | Engine) -> list[dict]:
    """Every invalid index of the database that no session is building now: schema, index, table, oid, fix."""
    def read(conn: Connection) -> list[dict]:
        rows = [dict(r) for r in conn.execute(INVALID_INDEXES_SQL).mappings()]
        for row in rows:
            row["fix"] = fix_command(row)
        return rows

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return read(conn)
    return read(bind)


def drop_invalid_indexes(engine: Engine, indexes: list[dict]) -> list[dict]:
    """Drop ``indexes`` with ``DROP INDEX CONCURRENTLY`` (autocommit; it cannot run in a transaction).

    Returns the ones that could not be dropped, each with an ``error`` (a lock timeout: the same blocker that
    stopped the build is still there).
    """
    failed = []
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for index in indexes:
            try:
                conn.execute(sa.text(fix_command(index)))
                log.info("dropped invalid index %s", qualified(index))
            except sa.exc.DBAPIError as err:
                reason = " ".join(str(err.orig if err.orig is not None else err).split())
                failed.append({**index, "error": reason})
    return failed
