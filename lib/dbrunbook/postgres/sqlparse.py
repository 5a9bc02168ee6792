"""What a SQL statement does, read by PostgreSQL's own grammar (pglast, i.e. libpg_query).

One place that turns a statement into facts: its kind, the tables it touches with the lock it takes on each
(PostgreSQL's "Table-Level Locks" table) and the columns it names. What it destroys, breaks and creates is
read from the same parse in ``sqlimpact``. Names come out canonical, the way
``regclass::text`` spells them: unquoted names folded to lower case, quotes kept only where PostgreSQL needs
them (``"my table"``, ``"My_Table"``), ``public.`` dropped; so a name read here can be looked up live with
``to_regclass`` and compared with one read from the catalog.

Text the parser rejects is described as ``kind="UNPARSED"`` with the parser's message, never guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, keywords, parser, visitors
from pglast.enums import AlterTableType as AT
from pglast.enums import ConstrType, ObjectType, ReindexObjectType
from pglast.parser import ParseError
from pglast.stream import RawStream

__all__ = ["UNPARSED", "Described", "describe", "functions_called", "normalize_name", "qualified"]
# Also used by ``sqlimpact``, which reads the same trees: deparse, dml_target, dotted, drop_names, kind_of, name_of.

UNPARSED = "UNPARSED"
AE, SRE, SUE = "ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE"
#: LOCK's mode numbers (lockdefs.h), AccessShareLock = 1.
_LOCK_NUMBERS = ("", "ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", SUE, "SHARE", SRE, "EXCLUSIVE", AE)
_SIMPLE = re.compile(r"^[a-z_][a-z0-9_$]*$")

# AlterTableGetLockLevel (tablecmds.c): the subcommands that take less than ACCESS EXCLUSIVE.
_ALTER_LOCKS = {
    **{t: SUE for t in (AT.AT_SetStatistics, AT.AT_ClusterOn, AT.AT_DropCluster, AT.AT_SetRelOptions,
                        AT.AT_ResetRelOptions, AT.AT_ReplaceRelOptions, AT.AT_ValidateConstraint,
                        AT.AT_AttachPartition, AT.AT_SetOptions, AT.AT_ResetOptions)},
    **{t: SRE for t in (AT.AT_EnableTrig, AT.AT_EnableAlwaysTrig, AT.AT_EnableReplicaTrig, AT.AT_EnableTrigAll,
                        AT.AT_EnableTrigUser, AT.AT_DisableTrig, AT.AT_DisableTrigAll, AT.AT_DisableTrigUser)},
}
_LOCK_ORDER = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", SUE, "SHARE", SRE, "EXCLUSIVE", AE)


def qualified(*parts: str | None) -> str:
    """The canonical spelling of a (schema-)qualified name from its parts as PostgreSQL stores them."""
    names = [p for p in parts if p]
    if len(names) == 2 and names[0] == "public":
        names = names[1:]
    return ".".join(p if _SIMPLE.match(p) and (p not in _KEYWORDS or p in keywords.UNRESERVED_KEYWORDS)
                    else '"' + p.replace('"', '""') + '"' for p in names)


def normalize_name(name: str) -> str:
    """A name as written in SQL (``Crm."My Table"``) in canonical spelling (``crm."My Table"``)."""
    parts = re.findall(r'"(?:[^"]|"")*"|[^."\s]+', name.strip())
    return qualified(*(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts))


_KEYWORDS = frozenset(keywords.RESERVED_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS | keywords.COL_NAME_KEYWORDS
                      | keywords.UNRESERVED_KEYWORDS)


def name_of(node) -> str:
    """Canonical name of a RangeVar (a table as a statement names it)."""
    return qualified(node.schemaname, node.relname)


def dotted(items) -> str:
    """Canonical name from a list of String nodes (``DROP``, ``COMMENT ON``, type names)."""
    return qualified(*(getattr(i, "sval", None) for i in items))


def deparse(node) -> str:
    """The node printed back as SQL by pglast (canonical spelling)."""
    return RawStream()(node) if node is not None else ""


@dataclass(frozen=True)
class Described:
    """The facts of one statement. ``tables`` lists (table, lock) in statement order, main table first.

    ``table`` is the table the statement works on, ``index`` the index it names when it names one instead
    (``DROP INDEX``, ``ALTER INDEX``, ``REINDEX INDEX``: the caller resolves its table live).
    """

    kind: str
    table: str | None = None
    index: str | None = None
    tables: tuple[tuple[str, str], ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # (table, column) named by ALTER TABLE / UPDATE SET
    error: str = ""  # the parser's message when kind is UNPARSED
    node: Any = field(default=None, compare=False, repr=False)  # the pglast statement node

    @property
    def parsed(self) -> bool:
        return self.kind != UNPARSED



@functools.lru_cache(maxsize=16384)  # parsing builds Python objects: ~0.5 ms a statement
def describe(sql: str) -> Described:
    """Parse one statement (the first, if ``sql`` holds several) and say what it does."""
    try:
        stmts = parser.parse_sql(sql)
    except ParseError as err:
        return Described(UNPARSED, error=str(err))
    if not stmts:
        return Described("EMPTY")
    node = stmts[0].stmt
    handler = _HANDLERS.get(type(node).__name__)
    out = handler(node) if handler else Described(kind_of(node))
    return Described(out.kind, out.table, out.index, out.tables, out.columns, node=node)


class _Calls(visitors.Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_FuncCall(self, ancestors, node) -> None:
        self.names.add(node.funcname[-1].sval.lower())


@functools.lru_cache(maxsize=4096)
def functions_called(sql: str) -> frozenset[str]:
    """Names (lower case, schema dropped) of the functions a statement calls; empty if it does not parse."""
    d = describe(sql)
    if not d.parsed or d.node is None:
        return frozenset()
    calls = _Calls()
    calls(d.node)
    return frozenset(calls.names)


def kind_of(node) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__.removesuffix("Stmt")).upper()


def _alter_table(node: ast.AlterTableStmt) -> Described:
    if node.objtype == ObjectType.OBJECT_INDEX:
        return Described("ALTER INDEX", index=name_of(node.relation), tables=((name_of(node.relation), AE),))
    if node.objtype not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE):
        return Described("ALTER " + node.objtype.name.removeprefix("OBJECT_").replace("_", " "))  # type: ignore[union-attr]  # pglast: fields the parser sets
    table = name_of(node.relation)
    locks, others, columns = [], [], []
    for cmd in node.cmds or ():
        sub, definition = cmd.subtype, cmd.def_
        lock = _ALTER_LOCKS.get(sub, AE)
        if sub == AT.AT_DetachPartition and definition is not None and definition.concurrent:
            lock = SUE
        for ref in _references(definition):
            others.append(ref)
            if sub == AT.AT_AddConstraint:
                lock = SRE
        if sub == AT.AT_AttachPartition and definition is not None:
            others.append(name_of(definition.name))  # the partition being attached: ACCESS EXCLUSIVE (see below)
        locks.append(lock)
        column = cmd.name or (definition.colname if isinstance(definition, ast.ColumnDef) else None)
        if column and sub not in (AT.AT_DropConstraint, AT.AT_ValidateConstraint, AT.AT_AlterConstraint,
                                  AT.AT_EnableTrig, AT.AT_DisableTrig, AT.AT_ClusterOn):
            columns.append((table, qualified(column)))
    attach = {name_of(c.def_.name) for c in node.cmds or () if c.subtype == AT.AT_AttachPartition}
    mode = max(locks, key=_LOCK_ORDER.index, default=AE)
    return Described("ALTER TABLE", table, tables=((table, mode), *((o, AE if o in attach else SRE)
                                                                    for o in others)), columns=tuple(columns))


def _references(definition) -> list[str]:
    """Tables a column definition or constraint references (a foreign key locks them SHARE ROW EXCLUSIVE)."""
    found = []
    constraints = (definition.constraints or ()) if isinstance(definition, ast.ColumnDef) else (definition,)
    for c in constraints:
        if isinstance(c, ast.Constraint) and c.contype == ConstrType.CONSTR_FOREIGN and c.pktable is not None:
            found.append(name_of(c.pktable))
    return found


def _index(node: ast.IndexStmt) -> Described:
    kind = "CREATE INDEX CONCURRENTLY" if node.concurrent else "CREATE INDEX"
    table = name_of(node.relation)
    return Described(kind, table, tables=((table, SUE if node.concurrent else "SHARE"),))


_DROP_KINDS = {ObjectType.OBJECT_TABLE: "DROP TABLE", ObjectType.OBJECT_VIEW: "DROP VIEW",
               ObjectType.OBJECT_MATVIEW: "DROP MATERIALIZED VIEW", ObjectType.OBJECT_INDEX: "DROP INDEX",
               ObjectType.OBJECT_FOREIGN_TABLE: "DROP FOREIGN TABLE"}


def drop_names(node: ast.DropStmt) -> list[str]:
    names = []
    for obj in node.objects or ():
        if isinstance(obj, ast.TypeName):
            names.append(dotted(obj.names))
        elif isinstance(obj, ast.String):
            names.append(qualified(obj.sval))
        elif isinstance(obj, tuple):
            names.append(dotted(obj))
    return names


def _drop(node: ast.DropStmt) -> Described:
    names = drop_names(node)
    kind = _DROP_KINDS.get(node.removeType)  # type: ignore[arg-type]  # pglast: fields the parser sets
    if kind is None:
        return Described("DROP " + node.removeType.name.removeprefix("OBJECT_").replace("_", " "))  # type: ignore[union-attr]  # pglast: fields the parser sets
    if node.removeType == ObjectType.OBJECT_INDEX:
        kind += " CONCURRENTLY" if node.concurrent else ""
        lock = SUE if node.concurrent else AE
        return Described(kind, index=names[0] if names else None, tables=tuple((n, lock) for n in names))
    return Described(kind, names[0] if names else None, tables=tuple((n, AE) for n in names))


def _create(node: ast.CreateStmt) -> Described:
    table = name_of(node.relation)
    refs = [r for elt in node.tableElts or () for r in _references(elt)]
    if node.partbound is not None and node.inhRelations:
        parent = name_of(node.inhRelations[0])
        return Described("CREATE TABLE PARTITION OF", table, tables=((parent, AE), *((r, SRE) for r in refs)))
    return Described("CREATE TABLE", table, tables=tuple((r, SRE) for r in refs))


def dml_target(node) -> tuple[str, Any] | None:
    """(kind, relation) of a data-changing statement, looking into its CTEs (``WITH d AS (DELETE ...)``)."""
    kinds = {"UpdateStmt": "UPDATE", "DeleteStmt": "DELETE FROM", "InsertStmt": "INSERT INTO",
             "MergeStmt": "MERGE INTO"}
    if type(node).__name__ in kinds:
        return kinds[type(node).__name__], node
    for cte in getattr(getattr(node, "withClause", None), "ctes", None) or ():
        if (found := dml_target(cte.ctequery)) is not None:
            return found
    return None


def _reads(items) -> list[str]:
    """Tables named in FROM / USING lists (read: ACCESS SHARE)."""
    out = []
    for item in items or ():
        if isinstance(item, ast.RangeVar):
            out.append(name_of(item))
        elif isinstance(item, ast.JoinExpr):
            out += _reads((item.larg, item.rarg))
    return out


def _dml(node) -> Described:
    found = dml_target(node)
    if found is None:
        return Described(kind_of(node))
    kind, stmt = found
    table = name_of(stmt.relation)
    reads = _reads(getattr(stmt, "usingClause", None) or getattr(stmt, "fromClause", None))
    if isinstance(stmt, ast.MergeStmt) and isinstance(stmt.sourceRelation, ast.RangeVar):
        reads.append(name_of(stmt.sourceRelation))
    columns = tuple((table, qualified(t.name)) for t in stmt.targetList or ()) if isinstance(stmt, ast.UpdateStmt) \
        else ()
    return Described(kind, table, tables=((table, "ROW EXCLUSIVE"), *((r, "ACCESS SHARE") for r in reads
                                                                      if r != table)), columns=columns)


def _select(node: ast.SelectStmt) -> Described:
    return _dml(node) if dml_target(node) else Described("SELECT")


def _truncate(node: ast.TruncateStmt) -> Described:
    names = [name_of(r) for r in node.relations]  # type: ignore[union-attr]  # pglast: fields the parser sets
    return Described("TRUNCATE", names[0] if names else None, tables=tuple((n, AE) for n in names))


def _lock(node: ast.LockStmt) -> Described:
    names = [name_of(r) for r in node.relations]  # type: ignore[union-attr]  # pglast: fields the parser sets
    mode = _LOCK_NUMBERS[node.mode] if 0 < node.mode < len(_LOCK_NUMBERS) else AE  # type: ignore[index,operator]  # pglast: fields the parser sets
    return Described("LOCK", names[0] if names else None, tables=tuple((n, mode) for n in names))


def _trigger(node: ast.CreateTrigStmt) -> Described:
    table = name_of(node.relation)
    return Described("CREATE TRIGGER", table, tables=((table, SRE),))


def _refresh(node: ast.RefreshMatViewStmt) -> Described:
    name = name_of(node.relation)
    return Described("REFRESH MATERIALIZED VIEW", name, tables=((name, "EXCLUSIVE" if node.concurrent else AE),))


def _comment(node: ast.CommentStmt) -> Described:
    if node.objtype == ObjectType.OBJECT_TABLE:
        name = dotted(node.object)
    elif node.objtype == ObjectType.OBJECT_COLUMN:
        name = dotted(node.object[:-1])  # type: ignore[index]  # pglast: fields the parser sets
    else:
        return Described("COMMENT")
    return Described("COMMENT", name, tables=((name, SUE),))


def _rename(node: ast.RenameStmt) -> Described:
    if node.relation is None:
        return Described("RENAME")
    name = name_of(node.relation)
    if node.renameType == ObjectType.OBJECT_INDEX:
        return Described("ALTER INDEX", index=name, tables=((name, SUE),))
    columns = ((name, qualified(node.subname)),) if node.renameType == ObjectType.OBJECT_COLUMN else ()
    on_table = ObjectType.OBJECT_TABLE in (node.relationType, node.renameType)
    kind = "ALTER TABLE" if on_table or node.renameType == ObjectType.OBJECT_TABCONSTRAINT else "RENAME"
    return Described(kind, name, tables=((name, AE),), columns=columns)


def _options(items) -> set[str]:
    return {d.defname for d in items or () if isinstance(d, ast.DefElem)}  # type: ignore[misc]  # pglast: fields the parser sets


def _vacuum(node: ast.VacuumStmt) -> Described:
    full = "full" in _options(node.options)
    kind = ("VACUUM FULL" if full else "VACUUM") if node.is_vacuumcmd else "ANALYZE"
    names = [name_of(r.relation) for r in node.rels or () if r.relation is not None]
    return Described(kind, names[0] if names else None, tables=tuple((n, AE if full else SUE) for n in names))


def _cluster(node: ast.ClusterStmt) -> Described:
    name = name_of(node.relation) if node.relation is not None else None
    return Described("CLUSTER", name, tables=((name, AE),) if name else ())


def _reindex(node: ast.ReindexStmt) -> Described:
    concurrent = "concurrently" in _options(node.params)
    kind = "REINDEX" + (" CONCURRENTLY" if concurrent else "")
    if node.relation is None:
        return Described(kind)
    name = name_of(node.relation)
    if node.kind == ReindexObjectType.REINDEX_OBJECT_INDEX:
        return Described(kind, index=name, tables=((name, SUE if concurrent else AE),))
    return Described(kind, name, tables=((name, SUE if concurrent else "SHARE"),))


def _set_schema(node: ast.AlterObjectSchemaStmt) -> Described:
    if node.relation is None:
        return Described("ALTER SET SCHEMA")
    name = name_of(node.relation)
    return Described("ALTER SET SCHEMA", name, tables=((name, AE),))


_HANDLERS: dict[str, Callable[[Any], Described]] = {
    "AlterTableStmt": _alter_table, "IndexStmt": _index, "DropStmt": _drop, "CreateStmt": _create,
    "UpdateStmt": _dml, "DeleteStmt": _dml, "InsertStmt": _dml, "MergeStmt": _dml, "SelectStmt": _select,
    "TruncateStmt": _truncate, "LockStmt": _lock, "CreateTrigStmt": _trigger, "RefreshMatViewStmt": _refresh,
    "CommentStmt": _comment, "RenameStmt": _rename, "VacuumStmt": _vacuum, "ClusterStmt": _cluster,
    "ReindexStmt": _reindex, "AlterObjectSchemaStmt": _set_schema,
}
