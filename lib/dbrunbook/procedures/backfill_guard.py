"""The guard in ``apply``: no ``SET NOT NULL`` on a column whose declared backfill is not complete.

The guide's pattern is add nullable, backfill, then SET NOT NULL. Applied too early, SET NOT NULL scans the
table under ACCESS EXCLUSIVE and then fails on the first NULL; the guard stops before that, naming the
backfill to finish.
"""

from __future__ import annotations

import re

import pandas as pd
import sqlalchemy as sa

from dbrunbook.errors import BackfillNotComplete
from dbrunbook.postgres import sqltext
from dbrunbook.procedures.backfill import progress, quote_name, set_columns
from dbrunbook.protocol import SessionLike
from dbrunbook.safety.sql_reading import alter_actions, normalize_name, table_of

__all__ = ["not_null_columns", "require_backfills_complete"]

_COLUMNS = ["migration_set", "revision", "table", "column", "backfill", "status", "remaining", "ok"]


def not_null_columns(sql: str) -> list[tuple[str, str]]:
    """(table, column) of every ``ALTER TABLE ... ALTER COLUMN c SET NOT NULL`` in ``sql`` (names normalized)."""
    found = []
    for stmt in sqltext.split_statements(sql):
        flat = stmt.flat
        if not flat.upper().startswith("ALTER TABLE") or not (table := table_of(flat)):
            continue
        for action in alter_actions(flat):
            if m := re.match(r'^ALTER (?:COLUMN )?("?[\w$]+"?) SET NOT NULL', action, re.IGNORECASE):
                found.append((table, normalize_name(m.group(1))))
    return found


def _remaining(engine, spec) -> int | None:
    with engine.connect() as conn:
        try:
            return conn.execute(sa.text(f"SELECT count(*) FROM {quote_name(spec.table)} WHERE ({spec.where})")).scalar()
        except sa.exc.DBAPIError:  # the column is added by the pending migrations: nothing is backfilled yet
            return None


def require_backfills_complete(session: SessionLike, preview, *, dry_run: bool = False) -> pd.DataFrame:
    """Guard: each pending SET NOT NULL whose column a declared backfill sets needs that backfill complete.

    Complete means its progress row in ``dbrunbook.backfills`` says so and no row matches its WHERE now.
    In a dry run the refusal is printed instead.

    Raises:
        BackfillNotComplete: the first such column whose backfill is not complete.
    """
    by_column = {(normalize_name(b.table), col): b for b in session.config.backfills.values()
                 for col in set_columns(b.set)}
    rows, refused = [], None
    for set_name, steps in preview.steps.items():
        for step in steps:
            for table, column in not_null_columns(step.sql):
                spec = by_column.get((table, column))
                if spec is None:
                    continue
                state = progress(session.engine, spec.name)
                status = state["status"] if state else "never run"
                remaining = _remaining(session.engine, spec)
                ok = status == "complete" and remaining == 0
                rows.append({"migration_set": set_name, "revision": step.revision, "table": table,
                             "column": column, "backfill": spec.name, "status": status, "remaining": remaining,
                             "ok": ok})
                if not ok and refused is None:
                    refused = BackfillNotComplete(spec.name, table, column,
                                                  "not complete" if status == "complete" else status, remaining)
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    if refused is not None:
        if not dry_run:
            raise refused
        print(f"dry_run=True: apply would stop here: {refused}")
    elif rows:
        print("Every SET NOT NULL of a backfilled column follows its complete backfill.")
    return frame
