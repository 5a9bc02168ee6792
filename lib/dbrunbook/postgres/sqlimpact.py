"""What a SQL statement destroys, breaks and creates, read from PostgreSQL's parse tree (see ``sqlparse``).

* ``losses``: for the downgrade data-loss count, each destructive part with a predicate selecting the lost
  rows or values, written so the count is right whatever the old schema was.
* ``breaking``: the guide's "Check for breaking changes" for code still running on the old schema.
* ``creates``: the objects a statement creates and fails on when they exist (troubleshoot's "already exists").
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast
from pglast.enums import AlterTableType as AT
from pglast.enums import DropBehavior, ObjectType

from dbrunbook.postgres.sqlparse import deparse, describe, dml_target, dotted, drop_names, name_of, qualified

__all__ = ["Loss", "breaking", "creates", "losses"]


@dataclass(frozen=True)
class Loss:
    """One destructive part of a statement: ``where`` is a predicate on ``table`` selecting the lost rows.

    kind: table | truncate | delete | column (a dropped column: its non-null values) | set null (values an
    UPDATE overwrites with NULL) | narrow (values a narrowing type change cannot keep) | schema | type (a
    CASCADE drop: what goes with it is found on the live database).
    """

    kind: str
    table: str
    column: str | None = None
    where: str | None = None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def losses(sql: str) -> list[Loss]:
    """What one statement destroys, from its parse tree; [] for a statement the parser rejects."""
    d = describe(sql)
    node = d.node
    if isinstance(node, ast.DropStmt):
        cascade = node.behavior == DropBehavior.DROP_CASCADE
        if node.removeType == ObjectType.OBJECT_TABLE:
            return [Loss("table", n) for n in drop_names(node)]
        if node.removeType == ObjectType.OBJECT_SCHEMA and cascade:
            return [Loss("schema", n) for n in drop_names(node)]
        if node.removeType in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN) and cascade:
            return [Loss("type", n) for n in drop_names(node)]
        return []
    if isinstance(node, ast.TruncateStmt):
        return [Loss("truncate", name_of(r)) for r in node.relations]  # type: ignore[union-attr]  # pglast: fields the parser sets
    found = dml_target(node) if node is not None else None
    if found is not None and found[0] == "DELETE FROM":
        stmt = found[1]
        return [Loss("delete", name_of(stmt.relation), None, _scoped(stmt, stmt.usingClause))]
    if found is not None and found[0] == "UPDATE":
        stmt = found[1]
        nulled = [t.name for t in stmt.targetList or () if _is_null(t)]
        if not nulled:
            return []
        where = _scoped(stmt, stmt.fromClause)
        return [Loss("set null", name_of(stmt.relation), qualified(c),
                     (f"({where}) AND " if where else "") + f"{_ident(c)} IS NOT NULL") for c in nulled]
    if isinstance(node, ast.AlterTableStmt) and d.kind == "ALTER TABLE":
        out = []
        for cmd in node.cmds or ():
            if cmd.subtype == AT.AT_DropColumn:
                out.append(Loss("column", d.table, qualified(cmd.name)))  # type: ignore[arg-type]  # pglast: fields the parser sets
            elif cmd.subtype == AT.AT_AlterColumnType and (cut := _cannot_keep(cmd.name, cmd.def_.typeName)):
                out.append(Loss("narrow", d.table, qualified(cmd.name), cut))  # type: ignore[arg-type]  # pglast: fields the parser sets
        return out
    return []


def _is_null(target) -> bool:
    val = target.val
    if isinstance(val, ast.MultiAssignRef):
        args = getattr(val.source, "args", None) or ()
        val = args[val.colno - 1] if 0 < val.colno <= len(args) else None  # type: ignore[operator]  # pglast: fields the parser sets
    return isinstance(val, ast.A_Const) and val.isnull  # type: ignore[return-value]  # pglast: fields the parser sets


def _scoped(stmt, extra) -> str | None:
    """The WHERE of a DELETE/UPDATE as a predicate on the bare table, even with an alias or USING/FROM."""
    if stmt.whereClause is None:
        return None
    where = deparse(stmt.whereClause)
    alias = stmt.relation.alias.aliasname if stmt.relation.alias is not None else None
    if not extra and alias is None:
        return where
    # Count through the table's own row identity so the migration's aliases and joins keep their meaning.
    me = _ident(alias) if alias else deparse(stmt.relation)
    source = deparse(stmt.relation) + "".join(", " + deparse(x) for x in extra or ())
    return f"(tableoid, ctid) IN (SELECT {me}.tableoid, {me}.ctid FROM {source} WHERE {where})"


_INT_RANGE = {"int2": 2 ** 15, "smallint": 2 ** 15, "int4": 2 ** 31, "int": 2 ** 31, "integer": 2 ** 31}


def _cannot_keep(column: str, type_name) -> str | None:
    """A predicate selecting the values of ``column`` a change to ``type_name`` cannot keep; None if all fit.

    Written so it is right whatever the old type was: a value longer than a new length limit, an integer
    outside a new integer range.
    """
    base = (type_name.names[-1].sval if type_name.names else "").lower()
    mods = [m.val.ival for m in type_name.typmods or () if isinstance(m, ast.A_Const)
            and isinstance(m.val, ast.Integer)]
    col = _ident(column)
    if base in ("varchar", "bpchar", "char", "bit", "varbit") and mods and not type_name.arrayBounds:
        return f"length({col}::text) > {mods[0]}"
    if base in _INT_RANGE and not type_name.arrayBounds:
        n = _INT_RANGE[base]
        return f"{col}::numeric NOT BETWEEN {-n} AND {n - 1}"
    return None


# --- breaking changes --------------------------------------------------------------------------------------
def breaking(sql: str) -> list[tuple[str, str]]:
    """(change, why it matters) for each part of a statement that breaks code running on the old schema."""
    d = describe(sql)
    node = d.node
    out: list[tuple[str, str]] = []
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
        out.append(("drops a table", "code that reads it fails"))
    elif isinstance(node, ast.RenameStmt):
        if node.renameType == ObjectType.OBJECT_COLUMN or node.renameType == ObjectType.OBJECT_TABLE:
            out.append(("renames a column or table", "running code that uses the old name fails"))
        else:
            out.append(("renames an object", "running code that uses the old name fails"))
    elif isinstance(node, ast.AlterEnumStmt) and node.oldVal:
        out.append(("changes enum values", "rows or code using the old value break"))
    elif isinstance(node, ast.AlterTableStmt) and d.kind == "ALTER TABLE":
        for cmd in node.cmds or ():
            if cmd.subtype == AT.AT_DropColumn:
                out.append(("drops a column", "running code that still selects it fails"))
            elif cmd.subtype == AT.AT_AlterColumnType:
                out.append(("changes a column type", "may rewrite the table and break code expecting the old type"))
            elif cmd.subtype == AT.AT_SetNotNull:
                out.append(("makes a column NOT NULL",
                            "old code inserting NULL fails; existing NULLs fail the migration"))
    return list(dict.fromkeys(out))


# --- objects created -----------------------------------------------------------------------------------------
def creates(sql: str) -> list[dict[str, str]] | None:
    """``{kind, name, table, expected}`` for each object the statement creates and fails on if it exists.

    ``IF NOT EXISTS`` and ``OR REPLACE`` statements are left out (they do not fail). None when the parser
    rejects the statement (the caller falls back to reading it by its first words).
    """
    d = describe(sql)
    if not d.parsed:
        return None
    node, flat = d.node, " ".join(sql.split())[:120]

    def one(kind: str, name: str, table: str = "", expected: str = flat) -> list[dict[str, str]]:
        return [{"kind": kind, "name": name, "table": table, "expected": expected}]

    if isinstance(node, ast.CreateStmt) and not node.if_not_exists:
        return one("table", name_of(node.relation))
    if isinstance(node, ast.ViewStmt) and not node.replace:
        return one("view", name_of(node.view))
    if isinstance(node, ast.CreateTableAsStmt) and not node.if_not_exists:
        return one("view" if node.objtype == ObjectType.OBJECT_MATVIEW else "table", name_of(node.into.rel))  # type: ignore[union-attr]  # pglast: fields the parser sets
    if isinstance(node, ast.CreateSeqStmt) and not node.if_not_exists:
        return one("sequence", name_of(node.sequence))
    if isinstance(node, ast.CreateSchemaStmt) and not node.if_not_exists and node.schemaname:
        return one("schema", qualified(node.schemaname))
    if isinstance(node, ast.CreateEnumStmt):
        return one("type", dotted(node.typeName))
    if isinstance(node, ast.CompositeTypeStmt):
        return one("type", name_of(node.typevar))
    if isinstance(node, ast.CreateDomainStmt):
        return one("type", dotted(node.domainname))
    if isinstance(node, ast.IndexStmt) and not node.if_not_exists and node.idxname:
        table = name_of(node.relation)
        return one("index", qualified(node.relation.schemaname, node.idxname), table)  # type: ignore[union-attr]  # pglast: fields the parser sets
    if isinstance(node, ast.AlterTableStmt) and d.kind == "ALTER TABLE":
        out = []
        for cmd in node.cmds or ():
            if cmd.subtype == AT.AT_AddColumn and not cmd.missing_ok:
                name = qualified(cmd.def_.colname)
                out += one("column", name, d.table, deparse(cmd.def_).removeprefix(name).strip()[:120])  # type: ignore[arg-type]  # pglast: fields the parser sets
            elif cmd.subtype == AT.AT_AddConstraint and getattr(cmd.def_, "conname", None):
                name = qualified(cmd.def_.conname)
                out += one("constraint", name, d.table,  # type: ignore[arg-type]  # pglast: fields the parser sets
                           deparse(cmd.def_).removeprefix(f"CONSTRAINT {name}").strip()[:120])
        return out
    return []


def inserted_rows(sql: str) -> dict | None:
    """``{table, columns, values, on_conflict}`` of an ``INSERT INTO t (cols) VALUES ...``; None otherwise.

    ``values`` is the row list printed by the parser (``('a', 1), ('b', 2)``), usable verbatim as a ``VALUES``
    list; INSERT … SELECT and INSERT without a column list give None (their rows are not known before running).
    """
    node = describe(sql).node
    if not isinstance(node, ast.InsertStmt) or not node.cols or node.withClause is not None:
        return None
    select = node.selectStmt
    if not isinstance(select, ast.SelectStmt) or not select.valuesLists:
        return None
    return {"table": name_of(node.relation), "columns": [c.name for c in node.cols],
            "values": deparse(select).removeprefix("VALUES ").strip(), "on_conflict": node.onConflictClause is not None}
