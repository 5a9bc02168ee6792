"""Rollback safety: what a downgrade would destroy, counted on the live database before it runs, and its guard.

``data_loss`` reads each destructive part of the downgrade's SQL (dropped tables and columns, TRUNCATE,
DELETE, CASCADE drops expanded on the live catalog) and counts the rows and values that go with it in a
read-only transaction; ``require_no_data_loss`` stops the downgrade unless ``allow_data_loss``.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass
from typing import cast

import pandas as pd
import sqlalchemy as sa

from dbrunbook import errors
from dbrunbook.chain import migrations
from dbrunbook.postgres import sqlimpact, sqlparse
from dbrunbook.postgres.sqltext import split_statements
from dbrunbook.protocol import SessionLike
from dbrunbook.safety.lint_guard import table_html
from dbrunbook.safety.sql_reading import IDENT, alter_actions, normalize_name, table_of


# --- 8. rollback safety ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossItem:
    """One object a downgrade destroys and how much data goes with it."""

    object: str
    kind: str  # table | column | truncate | delete
    lost: int
    revision: str
    statement: str


@dataclass(frozen=True)
class DataLossReport:
    """What a downgrade would destroy on the live database, counted before it runs."""

    migration_set: str
    revision: str
    current: tuple[str, ...]
    steps: tuple[str, ...]
    items: tuple[LossItem, ...] = ()
    uncounted: tuple[tuple[str, str], ...] = ()  # (revision, why) of online-only steps whose SQL is unknown

    @property
    def total(self) -> int:
        return sum(i.lost for i in self.items)

    def as_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([asdict(i) for i in self.items],
                             columns=["object", "kind", "lost", "revision", "statement"])
        return frame.rename(columns={"lost": "rows/values lost"})

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def _repr_html_(self) -> str:
        head = (f"<p>Downgrade of <b>{html.escape(self.migration_set)}</b> from "
                f"{html.escape(', '.join(self.current) or 'base')} to {html.escape(self.revision)} "
                f"({len(self.steps)} revision(s)): <b>{self.total:,}</b> rows/values would be destroyed.</p>")
        uncounted = "".join(f"<p><b>Not counted</b>: {html.escape(why)}</p>" for _, why in self.uncounted)
        return head + uncounted + (table_html(self.as_frame()) if self.items else "")


#: (kind, table, column, where): one destructive part of a statement.
Loss = tuple[str, str, str | None, str | None]


def _loss_statements(flat: str) -> list[Loss]:
    """(kind, table, column, where) for each destructive part of a statement (see ``sqlimpact.losses``).

    ``where`` selects the lost rows of ``table``; kinds ``schema`` and ``type`` (a CASCADE drop) are expanded
    on the live database by ``_expand_cascades``. Text PostgreSQL's parser rejects: ``_fallback_losses``.
    """
    if sqlparse.describe(flat).parsed:
        return [(x.kind, x.table, x.column, x.where) for x in sqlimpact.losses(flat)]
    return _fallback_losses(flat)


def _fallback_losses(flat: str) -> list[Loss]:
    up = flat.upper()
    if m := re.match(r"^DROP TABLE (?:IF EXISTS )?(.+?)(?: CASCADE| RESTRICT)?;?$", flat, re.IGNORECASE):
        return [("table", normalize_name(t.strip()), None, None) for t in m.group(1).split(",") if t.strip()]
    if m := re.match(r"^TRUNCATE (?:TABLE )?(?:ONLY )?(.+?)(?: RESTART IDENTITY| CONTINUE IDENTITY)?"
                     r"(?: CASCADE| RESTRICT)?;?$", flat, re.IGNORECASE):
        return [("truncate", normalize_name(t.strip()), None, None) for t in m.group(1).split(",") if t.strip()]
    if up.startswith("ALTER TABLE") and (table := table_of(flat)):
        return [("column", table, normalize_name(c.group(1)), None) for a in alter_actions(flat)
                if (c := re.match(rf'^DROP (?:COLUMN )?(?:IF EXISTS )?{IDENT}', a, re.IGNORECASE))
                and not re.match(r"^DROP (CONSTRAINT|DEFAULT|NOT NULL|EXPRESSION|IDENTITY)\b", a, re.IGNORECASE)]
    return []


def _expand_cascades(conn, parts: list[tuple[str, str, Loss]]) -> list[tuple[str, str, Loss]]:
    """A ``DROP SCHEMA ... CASCADE`` loses its tables' rows, a ``DROP TYPE ... CASCADE`` the columns of that
    type: replace those items by the live tables and columns they take with them."""
    out: list[tuple[str, str, Loss]] = []
    for rev, flat, (kind, name, column, where) in parts:
        if kind == "schema":
            found = conn.execute(sa.text(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = to_regnamespace(:s) "
                "AND c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition ORDER BY 1"), {"s": name}).scalars()
            out += [(rev, flat, ("table", sqlparse.normalize_name(t), None, None)) for t in found]
        elif kind == "type":
            found = conn.execute(sa.text(
                "SELECT a.attrelid::regclass::text, a.attname FROM pg_attribute a JOIN pg_class c ON "
                "c.oid = a.attrelid WHERE a.atttypid IN (SELECT oid FROM pg_type WHERE oid = to_regtype(:t) "
                "OR typelem = to_regtype(:t) OR typbasetype = to_regtype(:t)) AND a.attnum > 0 AND NOT "
                "a.attisdropped AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1, 2"),
                {"t": name}).all()
            out += [(rev, flat, ("column", sqlparse.normalize_name(t), sqlparse.qualified(c), None))
                    for t, c in found]
        else:
            out.append((rev, flat, (kind, name, column, where)))
    return out


def data_loss(session: SessionLike, revision: str = "-1", migration_set: str = "main", *, save: bool = True
              ) -> DataLossReport:
    """Count what ``alembic downgrade REVISION`` would destroy: rows of dropped or truncated tables, rows a
    DELETE removes, non-null values of dropped columns. Saved as artifacts/data_loss.json.

    The SQL of a revision that cannot be rendered offline is captured on a scratch database (``capture``)
    and counted like the rest; one whose SQL could not be captured is listed in ``uncounted``.
    """
    from dbrunbook.chain import capture

    mset = session.config.migration_set(migration_set)
    current = migrations.current(mset, session.engine)
    if hasattr(session, "downgrade_sql"):
        steps = session.downgrade_sql(revision, mset.name).steps[mset.name]
    else:
        steps = migrations.offline_sql(mset, ",".join(current) or None, revision, direction="downgrade")
        steps = capture.capture_steps(session, mset, steps, revision, direction="downgrade")
    uncounted = tuple((s.revision, s.problem) for s in steps if s.online_only and s.source != "captured")
    parts = [(step.revision, stmt.flat, item) for step in steps for stmt in split_statements(step.sql)
             for item in _loss_statements(stmt.flat)]
    with session.engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        parts = _expand_cascades(conn, parts)
        items = _count_losses(conn, parts)
        conn.rollback()
    report = DataLossReport(mset.name, revision, tuple(current), tuple(s.revision for s in steps), tuple(items),
                            uncounted)
    if save:
        session.save_artifact("data_loss.json", json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    return report


def _count_losses(conn, parts: list[tuple[str, str, Loss]]) -> list[LossItem]:
    """Rows and non-null values each part destroys, counted on the live tables (a read-only transaction)."""
    items: list[LossItem] = []
    dropped = {table for _, _, (kind, table, _, _) in parts if kind == "table"}
    for rev, flat, (kind, table, column, where) in parts:
        if kind == "column" and table in dropped:
            continue  # the table's own row counts these values
        name = conn.execute(sa.text("SELECT to_regclass(:t)::text"), {"t": table}).scalar()
        if name is None:
            continue
        if kind == "column":
            unquoted = cast(str, column).strip('"')  # a column item always names its column
            exists = conn.execute(sa.text(
                "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c "
                "AND NOT attisdropped"), {"t": table, "c": unquoted}).first()
            if exists is None:
                continue
            quoted = conn.dialect.identifier_preparer.quote(unquoted)
            lost = conn.execute(sa.text(f"SELECT count({quoted}) FROM {name}")).scalar_one()
            obj = f"{table}.{unquoted}"
        else:
            # The WHERE is the migration's own; read in a READ ONLY transaction it cannot write.
            lost = conn.execute(sa.text(f"SELECT count(*) FROM {name}" + (f" WHERE {where}" if where else ""))
                                ).scalar_one()
            obj = table
        items.append(LossItem(obj, kind, int(lost), rev, flat[:160]))
    return items


def require_no_data_loss(session: SessionLike, report: DataLossReport, allow_data_loss: bool = False, *,
                         dry_run: bool = False) -> pd.DataFrame:
    """Guard: stop a downgrade that would destroy rows or values, unless ``allow_data_loss``.

    Raises:
        DataLossRefused: the report counts any loss and ``allow_data_loss`` is false (``.report`` holds it).
    """
    frame = report.as_frame()
    if report.uncounted and not allow_data_loss and session.target.protected:
        err = errors.DataLossRefused(
            f"Downgrading '{report.migration_set}' to {report.revision} on protected target "
            f"'{session.target.name}': what {len(report.uncounted)} revision(s) would destroy is unknown: "
            f"{'; '.join(why for _, why in report.uncounted)}. Read their downgrade() and back up what they "
            f"drop, then run again with -p allow_data_loss true (recorded).", report=report)
        _refuse(err, dry_run)
    elif report.uncounted:
        print("Not counted: " + "; ".join(why for _, why in report.uncounted) + ".")
    if report.total and not allow_data_loss:
        what = ", ".join(f"{i.lost:,} {'values of' if i.kind == 'column' else 'rows of'} {i.object}"
                         for i in report.items if i.lost)
        err = errors.DataLossRefused(
            f"Downgrading '{report.migration_set}' from {', '.join(report.current) or 'base'} to "
            f"{report.revision} on target '{session.target.name}' would destroy {what} ({report.total:,} in "
            f"all). Back them up first (pg_dump -t TABLE), then run again with -p allow_data_loss true.",
            report=report)
        _refuse(err, dry_run)
    elif report.total:
        print(f"allow_data_loss=True: {report.total:,} rows/values will be destroyed (kept in the record).")
    else:
        print("The downgrade destroys no rows or values.")
    return frame


def _refuse(err: errors.DataLossRefused, dry_run: bool) -> None:
    """Raise the refusal (which carries its report); in a dry run, say that a real run would stop here."""
    if not dry_run:
        raise err
    print(f"dry_run=True: a real run would stop here. {err}")
