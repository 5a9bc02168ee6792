"""The schema as a round trip compares it: columns, indexes, constraints, schemas and types, and their diff.

``snapshots.schema_snapshot`` holds columns and indexes; a downgrade that forgets a constraint, an enum or a
schema leaves the database different all the same, so the round trip reads those too, and leaves out the
migration set's version table (Alembic creates it with the first revision and keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dbrunbook.config import MigrationSet
from dbrunbook.postgres import snapshots

__all__ = ["SchemaShape", "compare_shapes", "read_shape"]

_EXCLUDED = list(snapshots.SYSTEM_SCHEMAS + snapshots.OWN_SCHEMAS)
_CONSTRAINTS = sa.text("""
    SELECT n.nspname || '.' || c.relname AS tbl, con.conname || ' ' || pg_get_constraintdef(con.oid) AS def
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN :excluded AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2
""").bindparams(sa.bindparam("excluded", expanding=True))
_OBJECTS = sa.text("""
    SELECT 'schema' AS kind, nspname AS name FROM pg_namespace
     WHERE nspname NOT IN :excluded AND nspname NOT LIKE 'pg\\_%'
    UNION ALL
    SELECT 'type', n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'd') AND n.nspname NOT IN :excluded AND n.nspname NOT LIKE 'pg\\_%'
    ORDER BY 1, 2
""").bindparams(sa.bindparam("excluded", expanding=True))


@dataclass(frozen=True)
class SchemaShape:
    """What a round trip compares: columns and indexes, constraints, schemas and types (enums, domains)."""

    schema: snapshots.SchemaSnapshot
    constraints: dict[str, list[str]]
    objects: list[tuple[str, str]]


def read_shape(engine: Engine, mset: MigrationSet) -> SchemaShape:
    """The schema, without the set's version table (Alembic creates it with the first revision, keeps it)."""
    version = f"{mset.version_table_schema or 'public'}.{mset.version_table}"
    full = snapshots.schema_snapshot(engine)
    schema = snapshots.SchemaSnapshot(columns={k: v for k, v in full.columns.items() if k != version},
                                      indexes={k: v for k, v in full.indexes.items() if k != version})
    constraints: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table, definition in conn.execute(_CONSTRAINTS, {"excluded": _EXCLUDED}):
            if table != version:
                constraints.setdefault(table, []).append(definition)
        objects = [tuple(r) for r in conn.execute(_OBJECTS, {"excluded": _EXCLUDED})]
        conn.rollback()
    return SchemaShape(schema, constraints, objects)


def compare_shapes(before: SchemaShape, after: SchemaShape) -> pd.DataFrame:
    """Schema differences: columns and indexes (snapshots.compare_schema), constraints, schemas and types."""
    rows = snapshots.compare_schema(before.schema, after.schema).to_dict("records")
    for table in sorted(set(before.constraints) | set(after.constraints)):
        b, a = set(before.constraints.get(table, [])), set(after.constraints.get(table, []))
        rows += [{"object": table, "change": "constraint dropped", "before": d, "after": None} for d in sorted(b - a)]
        rows += [{"object": table, "change": "constraint added", "before": None, "after": d} for d in sorted(a - b)]
    old, new = set(before.objects), set(after.objects)
    rows += [{"object": name, "change": f"{kind} dropped", "before": name, "after": None}
             for kind, name in sorted(old - new)]
    rows += [{"object": name, "change": f"{kind} added", "before": None, "after": name}
             for kind, name in sorted(new - old)]
    return pd.DataFrame(rows, columns=["object", "change", "before", "after"])
