"""dbrunbook's own SQL rules: rewrites, scans and backfills under lock that squawk does not see or weighs wrong.

squawk flags every type change; PostgreSQL rewrites only some (varchar widening does not). These rules read
the canonical ALTER TABLE actions, know the live column types and the NOT NULL checks a run adds, and
produce ``SqlIssue`` values that ``weigh_issue`` turns into a level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dbrunbook.postgres import sqlparse
from dbrunbook.postgres.sqltext import Statement
from dbrunbook.safety.catalog import Catalog, TableSize
from dbrunbook.safety.sql_reading import IDENT, alter_actions, normalize_name, statement_kind, table_of
from dbrunbook.safety.squawk_rules import INSTEAD, weigh_by_size

# --- dbrunbook's own SQL rules -------------------------------------------------------------------------
VOLATILE_DEFAULT = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v[14]\w*|nextval|txid_current)\s*\(",
    re.IGNORECASE)
_INT_RANK = {"smallint": 1, "int2": 1, "integer": 2, "int": 2, "int4": 2, "bigint": 3, "int8": 3}
#: squawk rules whose finding a dbrunbook rewrite finding on the same statement replaces.
ABSORBED = frozenset({"changing-column-type", "adding-not-nullable-field", "adding-field-with-default"})


@dataclass(frozen=True)
class SqlIssue:
    """A finding of dbrunbook's SQL rules before weighing: rule, table, why, instead, statement."""

    rule: str
    table: str | None
    why: str
    instead: str
    statement: Statement
    category: str = "deploy risk"
    weighed: bool = True


def _type_parts(type_text: str) -> tuple[str, tuple[int, ...]]:
    t = " ".join(type_text.lower().replace('"', "").split())
    t = re.sub(r"\s+using\s.*$", "", t)
    m = re.match(r"^([a-z_ ]+?)\s*(?:\(([\d,\s]+)\))?(\s*\[\])?$", t)
    if not m:
        return t, ()
    base = m.group(1).strip()
    base = {"character varying": "varchar", "character": "char", "bpchar": "char", "decimal": "numeric",
            "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz",
            "time without time zone": "time", "double precision": "float8", "real": "float4"}.get(base, base)
    args = tuple(int(x) for x in (m.group(2) or "").replace(" ", "").split(",") if x)
    return base, args


def type_change(old: str | None, new: str) -> tuple[bool, bool]:
    """(rewrites, narrows) for ALTER COLUMN TYPE from ``old`` (None: unknown) to ``new``."""
    if old is None:
        return True, False
    (ob, oa), (nb, na) = _type_parts(old), _type_parts(new)
    texty = {"varchar", "text", "char"}
    if ob in texty and nb in texty:
        # PostgreSQL skips the rewrite for varchar widening and for dropping the limit; a new or smaller
        # limit (or a change to/from char) rewrites every row.
        unbounded_new = nb == "text" or (nb == "varchar" and not na)
        unbounded_old = ob == "text" or (ob == "varchar" and not oa)
        if unbounded_new:
            return ob == "char", False
        if unbounded_old:
            return True, True
        narrows = na[0] < oa[0]
        return narrows or ob != nb, narrows
    if ob in _INT_RANK and nb in _INT_RANK:
        return _INT_RANK[ob] != _INT_RANK[nb], _INT_RANK[nb] < _INT_RANK[ob]
    if ob == "numeric" and nb == "numeric":
        if not na:
            return False, False
        if not oa:
            return True, True
        narrows = na[0] < oa[0] or (len(na) > 1 and na[1] < (oa[1] if len(oa) > 1 else 0))
        same_scale = (na[1] if len(na) > 1 else 0) == (oa[1] if len(oa) > 1 else 0)
        return narrows or not same_scale, narrows
    if ob == nb and oa == na:
        return False, False
    narrows = (ob, nb) in {("timestamptz", "date"), ("timestamp", "date"), ("float8", "float4"),
                           ("numeric", "float4"), ("bigint", "float4")}
    return True, narrows


def _not_null_checks_added(flat: str, table: str) -> set[tuple[str, str]]:
    """(table, column) pairs a statement proves NOT NULL by a validated CHECK (added without NOT VALID)."""
    found = set()
    for m in re.finditer(rf'CHECK\s*\(\s*\(?\s*{IDENT}\s+IS\s+NOT\s+NULL\s*\)?\s*\)(\s+NOT\s+VALID)?',
                         flat, re.IGNORECASE):
        if not m.group(2):
            found.add((table, normalize_name(m.group(1))))
    return found


def check_sql(statements: Sequence[Statement], catalog: Catalog, created: set[str],
              validated: set[tuple[str, str]]) -> list[SqlIssue]:
    """dbrunbook's rules on one revision's statements (run in one transaction), in order.

    ``created`` (tables created earlier in the run) and ``validated`` (NOT NULL proven by a CHECK earlier in
    the run) are updated as the statements go by.
    """
    issues: list[SqlIssue] = []
    locked: set[str] = set()  # tables this revision's transaction holds ACCESS EXCLUSIVE on
    not_valid: dict[str, tuple[str, str]] = {}
    for stmt in statements:
        flat = stmt.flat
        kind = statement_kind(flat)
        table = table_of(flat, catalog)
        if kind in ("CREATE TABLE", "CREATE TABLE PARTITION OF") and table:
            created.add(table)
            continue
        if kind in ("VACUUM FULL", "CLUSTER"):
            issues.append(SqlIssue("table-rewrite", table, f"{kind} rewrites the whole table under ACCESS "
                                   f"EXCLUSIVE; no lock_timeout helps once it runs",
                                   "pg_repack, or a maintenance window", stmt))
            continue
        if kind in ("UPDATE", "DELETE FROM") and table:
            verb = kind.split()[0]
            if table in locked:
                issues.append(SqlIssue(
                    "backfill-under-lock", table,
                    f"{verb} of {table} runs in the same transaction as an ALTER TABLE of it, so the "
                    f"ACCESS EXCLUSIVE lock is held until every row is written",
                    "move the backfill to its own revision and update in batches (WHERE id BETWEEN ...)", stmt))
            else:
                issues.append(SqlIssue(
                    "large-data-change", table,
                    f"{verb} in a migration writes the rows in one transaction: row locks and "
                    f"dead tuples for the whole table until commit",
                    "update in batches in their own revision, or outside the migration", stmt))
            continue
        if kind != "ALTER TABLE" or not table:
            continue
        locked.add(table)
        actions = alter_actions(flat)
        for action in actions:
            validated |= _not_null_checks_added(action, table)
            if m := re.match(rf'^ADD CONSTRAINT {IDENT} CHECK .*? NOT VALID', action, re.IGNORECASE):
                for col in re.findall(rf'\(\s*\(?\s*{IDENT}\s+IS\s+NOT\s+NULL', m.group(0), re.IGNORECASE):
                    not_valid[normalize_name(m.group(1))] = (table, normalize_name(col))
            for name in re.findall(rf'^VALIDATE CONSTRAINT {IDENT}', action, re.IGNORECASE):
                if normalize_name(name) in not_valid:
                    validated.add(not_valid[normalize_name(name)])
        for action in actions:
            issues += _action_issues(action, table, stmt, catalog, validated)
    return issues


def _action_issues(action: str, table: str, stmt: Statement, catalog: Catalog,
                   validated: set[tuple[str, str]]) -> list[SqlIssue]:
    up = action.upper()
    if m := re.match(rf'^ALTER (?:COLUMN )?{IDENT} (?:SET DATA )?TYPE (.+)$', action, re.IGNORECASE):
        column, new = normalize_name(m.group(1)), m.group(2)
        old = catalog.column_types.get((table, column))
        rewrites, narrows = type_change(old, new)
        out = []
        if narrows:
            out.append(SqlIssue("type-narrowing", table,
                                f"{table}.{column} goes from {old} to {new.split(' USING')[0]}: values that do not "
                                f"fit are cut or make the statement fail",
                                "check max(length(col)) / the value range first; widen instead, or copy to a new "
                                "column", stmt, category="destructive", weighed=False))
        if rewrites:
            out.append(SqlIssue("table-rewrite", table,
                                f"ALTER COLUMN {column} TYPE rewrites the whole table (and its indexes) under "
                                f"ACCESS EXCLUSIVE; no lock_timeout helps once it runs",
                                INSTEAD["changing-column-type"], stmt))
        return out
    if re.match(r"^ADD (?:COLUMN )?", up) and not re.match(r"^ADD (CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK)",
                                                           up):
        what = _rewriting_column(action)
        if what:
            return [SqlIssue("table-rewrite", table, f"adding {what} writes a value into every row: the whole "
                             f"table is rewritten under ACCESS EXCLUSIVE",
                             "add it without default (or a constant one), backfill in batches, then set the "
                             "default", stmt)]
        return []
    if m := re.match(rf'^ALTER (?:COLUMN )?{IDENT} SET NOT NULL', action, re.IGNORECASE):
        column = normalize_name(m.group(1))
        if (table, column) in validated or (table, column) in catalog.not_null_checks:
            return []
        return [SqlIssue("not-null-scan", table,
                         f"SET NOT NULL on {table}.{column} scans every row under ACCESS EXCLUSIVE (no validated "
                         f"CHECK ({column} IS NOT NULL) proves it first)",
                         INSTEAD["adding-not-nullable-field"], stmt)]
    if re.match(r"^SET (TABLESPACE|LOGGED|UNLOGGED)\b", up):
        return [SqlIssue("table-rewrite", table, f"{action} rewrites the whole table under ACCESS EXCLUSIVE",
                         "a maintenance window", stmt)]
    return []


_SERIALS = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


def _rewriting_column(action: str) -> str | None:
    """What makes an ADD COLUMN write every row (a stored generated column, a serial, a volatile DEFAULT), read
    from the parse: a type name or function name inside a literal is not one. By the text only when the parser
    rejects it."""
    statement = f"ALTER TABLE x {action}"
    d = sqlparse.describe(statement)
    if d.parsed and isinstance(d.node, sqlparse.ast.AlterTableStmt) and d.node.cmds:
        column = d.node.cmds[0].def_
        if not isinstance(column, sqlparse.ast.ColumnDef):
            return None
        constraints = [c for c in column.constraints or () if isinstance(c, sqlparse.ast.Constraint)]
        if any(c.contype == sqlparse.ConstrType.CONSTR_GENERATED and c.generated_kind == "s" for c in constraints):
            return "a stored generated column"  # a virtual one (PostgreSQL 18's default) is computed on read
        if any(c.contype == sqlparse.ConstrType.CONSTR_IDENTITY for c in constraints):
            return "an identity column"
        type_names = column.typeName.names if column.typeName is not None else None
        if type_names is not None and type_names[-1].sval.lower() in _SERIALS:
            return "a serial column"
        if any(VOLATILE_DEFAULT.search(f"{name}(") for name in sqlparse.functions_called(statement)):
            return "a column with a volatile DEFAULT"
        return None
    up = action.upper()
    if re.search(r"GENERATED ALWAYS AS .* STORED", up):
        return "a stored generated column"
    if re.search(r"\b(SMALL|BIG)?SERIAL\d?\b", up):
        return "a serial column"
    default = re.search(r"\bDEFAULT (.+)$", action, re.IGNORECASE)
    return "a column with a volatile DEFAULT" if default and VOLATILE_DEFAULT.search(default.group(1)) else None


def weigh_issue(issue: SqlIssue, catalog: Catalog, created: set[str], protected: bool) -> tuple[str, str]:
    """(level, why) of a dbrunbook SQL finding."""
    if issue.category == "destructive":
        return ("error" if protected else "warning"), issue.why
    size = catalog.size(issue.table)
    if size is None:
        return "warning", issue.why
    if issue.table in created:
        size = TableSize(size.name, exists=False)
    level, why = weigh_by_size(issue.rule, size, catalog, issue.why)
    if issue.rule == "large-data-change" and level == "error":
        level = "warning"  # slow and bloating, but it blocks no reader
    return level, why


def weigh_absorbed(rule: str, flat: str, table: str, catalog: Catalog, level: str, why: str) -> tuple[str, str]:
    """(level, why) of a squawk finding in ``ABSORBED``: info when dbrunbook finds it does not rewrite or scan.

    squawk flags every type change and SET NOT NULL; a varchar widening or a NOT NULL a validated CHECK
    proves is harmless.
    """
    if rule == "adding-not-nullable-field" and "SET NOT NULL" in flat.upper():
        return "info", f"{why}; harmless here: a validated CHECK (... IS NOT NULL) proves it, so nothing is scanned"
    if rule == "changing-column-type":
        return _coercible(flat, table, catalog, level, why)
    return level, why


def _coercible(flat: str, table: str, catalog: Catalog, level: str, why: str) -> tuple[str, str]:
    """A type change PostgreSQL does without a rewrite (varchar widening, to text) is harmless."""
    for action in alter_actions(flat):
        m = re.match(rf'^ALTER (?:COLUMN )?{IDENT} (?:SET DATA )?TYPE (.+)$', action, re.IGNORECASE)
        if m and (old := catalog.column_types.get((table, normalize_name(m.group(1))))):
            rewrites, _ = type_change(old, m.group(2))
            if not rewrites:
                return "info", f"{why}; harmless here: {old} to {m.group(2)} needs no rewrite"
    return level, why
