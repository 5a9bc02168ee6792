"""Troubleshoot checks of the pending SQL against the live database: objects that exist, keys already taken.

Both read the offline SQL of what ``upgrade heads`` would run and look up, read-only, what the live schema
and rows already hold, so the failure is found before the upgrade runs into it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.procedures.backfill_state import plain_name
from dbrunbook.procedures.troubleshoot.results import TITLES, CheckResult, Problem, completes, run_command
from dbrunbook.procedures.troubleshoot.sqlread import created_objects, is_version_table, parse_inserts
from dbrunbook.procedures.troubleshoot.state import pending_steps
from dbrunbook.protocol import SessionLike

# --- 3. objects already exist ---------------------------------------------------------------------------

def _with_pending(s: SessionLike, migration_set: str, notes: list[str]) -> Iterator[tuple[MigrationSet, list]]:
    """Each set with pending offline SQL and its steps; why a set has none goes into ``notes``."""
    for m in s.sets(migration_set):
        steps, why = pending_steps(s, m)
        if not steps:
            notes.append(why)
            continue
        yield m, steps

def _live(conn: Connection, obj: dict[str, str]) -> str | None:
    """What the live database has for an object a migration would create (None: absent)."""
    kind, name, table = obj["kind"], obj["name"], obj["table"]
    if kind == "schema":
        found = conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :n"),
                             {"n": plain_name(name)}).first()
        return "schema" if found else None
    if kind == "type":
        return conn.execute(sa.text("SELECT to_regtype(:n)::text"), {"n": name}).scalar()
    if kind in ("table", "view", "sequence", "index"):
        return conn.execute(sa.text("SELECT to_regclass(:n)::text"), {"n": name}).scalar()
    if kind == "column":
        row = conn.execute(sa.text(
            "SELECT format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' NOT NULL' ELSE '' END "
            "FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c AND NOT attisdropped"),
            {"t": table, "c": plain_name(name)}).first()
        return row[0] if row else None
    row = conn.execute(sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                               "WHERE conrelid = to_regclass(:t) AND conname = :c"),
                       {"t": table, "c": plain_name(name)}).first()
    return row[0] if row else None


def _created_rows(s: SessionLike, mset: MigrationSet, steps: list[migrations.SqlStep]) -> list[dict[str, Any]]:
    """One row per object the pending steps create (the version table aside), with what the live database has."""
    rows = []
    with s.engine.connect() as conn:
        for step in steps:
            for obj in created_objects(step.sql):
                if obj["kind"] == "table" and is_version_table(mset, obj["name"]):
                    continue
                live = _live(conn, obj)
                rows.append({"revision": step.revision, "kind": obj["kind"],
                             "object": f"{obj['table']}.{obj['name']}" if obj["kind"] in ("column", "constraint")
                             else obj["name"], "exists": live is not None, "live": live,
                             "migration_creates": obj["expected"]})
        conn.rollback()
    return rows


def _stamp_point(steps: list[migrations.SqlStep], evidence: pd.DataFrame
                 ) -> tuple[dict[str, str], str | None, str | None]:
    """Each pending revision's state (present, absent, partial, no objects); the last revision of the unbroken
    run of present ones (safe to stamp to); the partly applied revision that ends the run, if one does."""
    status = {}
    for step in steps:
        mine = evidence[evidence["revision"] == step.revision]["exists"]
        status[step.revision] = ("no objects" if mine.empty else "present" if mine.all()
                                 else "absent" if not mine.any() else "partial")
    stamp_to, blocked_by = None, None
    for step in steps:
        state = status[step.revision]
        if state == "present":
            stamp_to = step.revision
        elif state != "no objects":
            blocked_by = step.revision if state == "partial" else None
            break
    return status, stamp_to, blocked_by


@completes("already_exists", TITLES["already_exists"])
def check_objects_exist(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """The guide's *Column already exists*: pending revisions create objects the live schema already has.

    The database is then ahead of its version pointer. Each pending revision is classed as present (all its
    objects exist), absent, or partial; stamping is safe up to the last revision of an unbroken run of present
    ones, never past a partial one.
    """
    problems: list = []
    notes: list[str] = []
    for m, steps in _with_pending(s, migration_set, notes):
        evidence = pd.DataFrame(_created_rows(s, m, steps),
                                columns=["revision", "kind", "object", "exists", "live", "migration_creates"])
        if evidence.empty or not evidence["exists"].any():
            notes.append(f"{m.name}: none of the {len(evidence)} object(s) pending revisions create exists yet")
            continue
        status, stamp_to, blocked_by = _stamp_point(steps, evidence)
        summary_ = ", ".join(f"{rev}: {state}" for rev, state in status.items())
        existing = int(evidence["exists"].sum())
        if blocked_by:
            cause = (f"{existing} object(s) that pending revisions create already exist ({summary_}). Revision "
                     f"'{blocked_by}' is partly applied: stamping past it is not safe. Finish or undo its "
                     f"objects by hand first, then stamp to the last fully present revision and upgrade.")
        else:
            cause = (f"{existing} object(s) that pending revisions create already exist: the database is "
                     f"ahead of its version pointer ({summary_}). Someone ran the SQL by hand, or the version "
                     f"table was moved back. "
                     + (f"Every object up to '{stamp_to}' exists (compare the 'live' and 'migration_creates' "
                        f"columns): stamping to it is safe, then upgrade the rest." if stamp_to else ""))
        next_step = (run_command(s, "stamp", migration_set=m.name, revision=stamp_to, dry_run=False) if stamp_to
                     else run_command(s, "status", migration_set=m.name))
        problems.append(Problem(
            code="already_exists", title=TITLES["already_exists"], migration_set=m.name, evidence=evidence,
            cause=cause, next_step=next_step,
            queries=("SELECT to_regclass(:name)  -- tables, views, indexes, sequences",
                     "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                     "WHERE attrelid = to_regclass(:table) AND attname = :column",
                     "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(:table) "
                     "AND conname = :name"),
        ))
    return CheckResult("already_exists", TITLES["already_exists"], tuple(problems), "; ".join(notes))


def _raw_rows(conn: Connection, sql: str) -> list[tuple]:
    """Run SQL taken verbatim from a rendered migration: no bind-parameter parsing of its ':' and '%'."""
    # A connection checked out of the pool always has its driver connection; the type allows None.
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


# --- 4. duplicate keys in a data migration --------------------------------------------------------------
_UNIQUE_KEYS = sa.text("""
    SELECT i.relname AS name, array_agg(a.attname ORDER BY k.ord) AS columns,
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) AS types
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
    WHERE x.indrelid = to_regclass(:t) AND x.indisunique AND x.indpred IS NULL AND x.indexprs IS NULL
    GROUP BY i.relname ORDER BY i.relname
""")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _key_queries(ins: dict[str, Any], key: Any) -> tuple[str, str]:
    """The two queries of one unique key against an INSERT's rows: keys already in the table, keys it repeats."""
    alias = ", ".join(_quote_ident(c) for c in ins["columns"])
    cols = ", ".join(f"v.{_quote_ident(c)}::{t}" for c, t in zip(key.columns, key.types, strict=False))
    on = " AND ".join(f"t.{_quote_ident(c)} = v.{_quote_ident(c)}::{t}"
                      for c, t in zip(key.columns, key.types, strict=False))
    source = f"(VALUES {ins['values']}) AS v({alias})"
    existing = (f"SELECT DISTINCT {cols} FROM {source} JOIN {ins['table']} t ON {on}")
    twice = f"SELECT {cols} FROM {source} GROUP BY {cols} HAVING count(*) > 1"
    return existing, twice


def _conflicts(s: SessionLike, mset: MigrationSet, steps: list[migrations.SqlStep]
               ) -> tuple[list[dict[str, Any]], list[str], list[str], int]:
    """The pending INSERTs' rows whose unique key is taken or repeated, read-only; with the INSERTs skipped and
    why, the queries run, and how many unique keys were checked."""
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    queries: list[str] = []
    checked = 0
    with s.engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        for step in steps:
            for ins in parse_inserts(step.sql):
                if is_version_table(mset, ins["table"]):
                    continue
                if ins["on_conflict"]:
                    skipped.append(f"{step.revision}: INSERT INTO {ins['table']} has ON CONFLICT")
                    continue
                keys = conn.execute(_UNIQUE_KEYS, {"t": ins["table"]}).all()
                if not keys:
                    skipped.append(f"{step.revision}: {ins['table']} does not exist yet or has no unique key")
                    continue
                for key in keys:
                    if not set(key.columns) <= set(ins["columns"]):
                        continue
                    checked += 1
                    existing, twice = _key_queries(ins, key)
                    queries += [existing, twice]
                    try:
                        with conn.begin_nested():
                            found = [(r, "already in the table") for r in _raw_rows(conn, existing)]
                            found += [(r, "twice in this INSERT") for r in _raw_rows(conn, twice)]
                    except sa.exc.DBAPIError as err:
                        skipped.append(f"{step.revision}: could not check {ins['table']}: "
                                       f"{str(err.orig).splitlines()[0]}")
                        continue
                    rows += [{"revision": step.revision, "table": ins["table"], "constraint": key.name,
                              "key": ", ".join(key.columns),
                              "value": ", ".join(map(str, r)), "conflict": why} for r, why in found]
        conn.rollback()
    return rows, skipped, queries, checked


@completes("duplicate_key", TITLES["duplicate_key"])
def check_duplicate_keys(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """The guide's *Duplicate key value violates unique constraint*, found before the data migration runs.

    The INSERT … VALUES statements of the pending revisions' offline SQL are matched against the target
    table's unique indexes (primary key included) and its live rows, in a read-only transaction.
    """
    problems: list = []
    notes: list[str] = []
    for m, steps in _with_pending(s, migration_set, notes):
        rows, skipped, queries, checked = _conflicts(s, m, steps)
        if not rows:
            notes.append(f"{m.name}: {checked} unique key(s) checked against pending INSERTs, no conflict"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
            continue
        evidence = pd.DataFrame(rows, columns=["revision", "table", "constraint", "key", "value", "conflict"])
        first = rows[0]
        problems.append(Problem(
            code="duplicate_key", title=TITLES["duplicate_key"], migration_set=m.name, evidence=evidence,
            cause=(f"Pending revision '{first['revision']}' inserts {len(rows)} row(s) whose key already exists: "
                   f"the upgrade would fail with 'duplicate key value violates unique constraint "
                   f"\"{first['constraint']}\"' and roll back. Make the insert idempotent, the guide's fix: "
                   f"INSERT INTO {first['table']} (...) VALUES (...) ON CONFLICT ({first['key']}) DO NOTHING "
                   f"(or DO UPDATE), in that revision if no database has applied it, else in a new one."),
            next_step=run_command(s, "review", migration_set=m.name, revision=first["revision"]),
            queries=tuple(dict.fromkeys(queries)),
        ))
    return CheckResult("duplicate_key", TITLES["duplicate_key"], tuple(problems), "; ".join(notes))

