"""What a SQL statement does, read by PostgreSQL's own grammar (pglast, i.e. libpg_query).

One place that turns a statement into facts: its kind, the tables it touches with the lock it takes on each
(PostgreSQL's "Table-Level Locks" table), the columns it names, what it destroys (for the downgrade data-loss
count) and what it breaks for code still running against the old schema. Names come out canonical, the way
``regclass::text`` spells them: unquoted names folded to lower case, quotes kept only where PostgreSQL needs
them (``"my table"``, ``"My_Table"``), ``public.`` dropped; so a name read here can be looked up live with
``to_regclass`` and compared with one read from the catalog.

Text the parser rejects is described as ``kind="UNPARSED"`` with the parser's message, never guessed at.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from pglast import ast, parser
from pglast.enums import AlterTableType as AT
from pglast.enums import ConstrType, DropBehavior, ObjectType, ReindexObjectType
from pglast.keywords import UNRESERVED_KEYWORDS
from pglast.parser import ParseError
from pglast.stream import RawStream

__all__ = ["Described", "Loss", "UNPARSED", "breaking", "describe", "losses", "normalize_name", "qualified"]

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
    return ".".join(p if _SIMPLE.match(p) and (p not in _KEYWORDS or p in UNRESERVED_KEYWORDS)
                    else '"' + p.replace('"', '""') + '"' for p in names)


def normalize_name(name: str) -> str:
    """A name as written in SQL (``Crm."My Table"``) in canonical spelling (``crm."My Table"``)."""
    parts = re.findall(r'"(?:[^"]|"")*"|[^."\s]+', name.strip())
    return qualified(*(p[1:-1].replace('""', '"') if p.startswith('"') else p.lower() for p in parts))


def _keywords() -> frozenset[str]:
    from pglast import keywords
    return frozenset(keywords.RESERVED_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS | keywords.COL_NAME_KEYWORDS
                     | keywords.UNRESERVED_KEYWORDS)


_KEYWORDS = _keywords()


def _rv(node) -> str:
    """Canonical name of a RangeVar."""
    return qualified(node.schemaname, node.relname)


def _strings(items) -> str:
    return qualified(*(getattr(i, "sval", None) for i in items))


def _text(node) -> str:
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
    node: object = field(default=None, compare=False, repr=False)

    @property
    def parsed(self) -> bool:
        return self.kind != UNPARSED

    @property
    def lock(self) -> str:
        """The strongest lock the statement takes on its main table ("" when it takes none worth naming)."""
        return max((lk for t, lk in self.tables if t in (self.table, self.index)), key=_LOCK_ORDER.index,
                   default="")


@functools.lru_cache(maxsize=4096)
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
    out = handler(node) if handler else Described(_kind_of(node))
    return Described(out.kind, out.table, out.index, out.tables, out.columns, node=node)


def _kind_of(node) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__.removesuffix("Stmt")).upper()


def _alter_table(node: ast.AlterTableStmt) -> Described:
    if node.objtype == ObjectType.OBJECT_INDEX:
        return Described("ALTER INDEX", index=_rv(node.relation), tables=((_rv(node.relation), AE),))
    if node.objtype not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_FOREIGN_TABLE):
        return Described("ALTER " + node.objtype.name.removeprefix("OBJECT_").replace("_", " "))
    table = _rv(node.relation)
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
            others.append(_rv(definition.name))  # the partition being attached: ACCESS EXCLUSIVE (see below)
        locks.append(lock)
        column = cmd.name or (definition.colname if isinstance(definition, ast.ColumnDef) else None)
        if column and sub not in (AT.AT_DropConstraint, AT.AT_ValidateConstraint, AT.AT_AlterConstraint,
                                  AT.AT_EnableTrig, AT.AT_DisableTrig, AT.AT_ClusterOn):
            columns.append((table, qualified(column)))
    attach = {_rv(c.def_.name) for c in node.cmds or () if c.subtype == AT.AT_AttachPartition}
    mode = max(locks, key=_LOCK_ORDER.index, default=AE)
    return Described("ALTER TABLE", table, tables=((table, mode), *((o, AE if o in attach else SRE)
                                                                    for o in others)), columns=tuple(columns))


def _references(definition) -> list[str]:
    """Tables a column definition or constraint references (a foreign key locks them SHARE ROW EXCLUSIVE)."""
    found = []
    constraints = (definition.constraints or ()) if isinstance(definition, ast.ColumnDef) else (definition,)
    for c in constraints:
        if isinstance(c, ast.Constraint) and c.contype == ConstrType.CONSTR_FOREIGN and c.pktable is not None:
            found.append(_rv(c.pktable))
    return found


def _index(node: ast.IndexStmt) -> Described:
    kind = "CREATE INDEX CONCURRENTLY" if node.concurrent else "CREATE INDEX"
    table = _rv(node.relation)
    return Described(kind, table, tables=((table, SUE if node.concurrent else "SHARE"),))


_DROP_KINDS = {ObjectType.OBJECT_TABLE: "DROP TABLE", ObjectType.OBJECT_VIEW: "DROP VIEW",
               ObjectType.OBJECT_MATVIEW: "DROP MATERIALIZED VIEW", ObjectType.OBJECT_INDEX: "DROP INDEX",
               ObjectType.OBJECT_FOREIGN_TABLE: "DROP FOREIGN TABLE"}


def _drop_names(node: ast.DropStmt) -> list[str]:
    names = []
    for obj in node.objects or ():
        if isinstance(obj, ast.TypeName):
            names.append(_strings(obj.names))
        elif isinstance(obj, ast.String):
            names.append(qualified(obj.sval))
        elif isinstance(obj, tuple):
            names.append(_strings(obj))
    return names


def _drop(node: ast.DropStmt) -> Described:
    names = _drop_names(node)
    kind = _DROP_KINDS.get(node.removeType)
    if kind is None:
        return Described("DROP " + node.removeType.name.removeprefix("OBJECT_").replace("_", " "))
    if node.removeType == ObjectType.OBJECT_INDEX:
        kind += " CONCURRENTLY" if node.concurrent else ""
        lock = SUE if node.concurrent else AE
        return Described(kind, index=names[0] if names else None, tables=tuple((n, lock) for n in names))
    return Described(kind, names[0] if names else None, tables=tuple((n, AE) for n in names))


def _create(node: ast.CreateStmt) -> Described:
    table = _rv(node.relation)
    refs = [r for elt in node.tableElts or () for r in _references(elt)]
    if node.partbound is not None and node.inhRelations:
        parent = _rv(node.inhRelations[0])
        return Described("CREATE TABLE PARTITION OF", table, tables=((parent, AE), *((r, SRE) for r in refs)))
    return Described("CREATE TABLE", table, tables=tuple((r, SRE) for r in refs))


def _dml_target(node) -> tuple[str, object] | None:
    """(kind, relation) of a data-changing statement, looking into its CTEs (``WITH d AS (DELETE ...)``)."""
    kinds = {"UpdateStmt": "UPDATE", "DeleteStmt": "DELETE FROM", "InsertStmt": "INSERT INTO",
             "MergeStmt": "MERGE INTO"}
    if type(node).__name__ in kinds:
        return kinds[type(node).__name__], node
    for cte in getattr(getattr(node, "withClause", None), "ctes", None) or ():
        if (found := _dml_target(cte.ctequery)) is not None:
            return found
    return None


def _reads(items) -> list[str]:
    """Tables named in FROM / USING lists (read: ACCESS SHARE)."""
    out = []
    for item in items or ():
        if isinstance(item, ast.RangeVar):
            out.append(_rv(item))
        elif isinstance(item, ast.JoinExpr):
            out += _reads((item.larg, item.rarg))
    return out


def _dml(node) -> Described:
    found = _dml_target(node)
    if found is None:
        return Described(_kind_of(node))
    kind, stmt = found
    table = _rv(stmt.relation)
    reads = _reads(getattr(stmt, "usingClause", None) or getattr(stmt, "fromClause", None))
    if isinstance(stmt, ast.MergeStmt) and isinstance(stmt.sourceRelation, ast.RangeVar):
        reads.append(_rv(stmt.sourceRelation))
    columns = tuple((table, qualified(t.name)) for t in stmt.targetList or ()) if isinstance(stmt, ast.UpdateStmt) \
        else ()
    return Described(kind, table, tables=((table, "ROW EXCLUSIVE"), *((r, "ACCESS SHARE") for r in reads
                                                                      if r != table)), columns=columns)


def _select(node: ast.SelectStmt) -> Described:
    return _dml(node) if _dml_target(node) else Described("SELECT")


def _truncate(node: ast.TruncateStmt) -> Described:
    names = [_rv(r) for r in node.relations]
    return Described("TRUNCATE", names[0] if names else None, tables=tuple((n, AE) for n in names))


def _lock(node: ast.LockStmt) -> Described:
    names = [_rv(r) for r in node.relations]
    mode = _LOCK_NUMBERS[node.mode] if 0 < node.mode < len(_LOCK_NUMBERS) else AE
    return Described("LOCK", names[0] if names else None, tables=tuple((n, mode) for n in names))


def _trigger(node: ast.CreateTrigStmt) -> Described:
    table = _rv(node.relation)
    return Described("CREATE TRIGGER", table, tables=((table, SRE),))


def _refresh(node: ast.RefreshMatViewStmt) -> Described:
    name = _rv(node.relation)
    return Described("REFRESH MATERIALIZED VIEW", name, tables=((name, "EXCLUSIVE" if node.concurrent else AE),))


def _comment(node: ast.CommentStmt) -> Described:
    if node.objtype == ObjectType.OBJECT_TABLE:
        name = _strings(node.object)
    elif node.objtype == ObjectType.OBJECT_COLUMN:
        name = _strings(node.object[:-1])
    else:
        return Described("COMMENT")
    return Described("COMMENT", name, tables=((name, SUE),))


def _rename(node: ast.RenameStmt) -> Described:
    if node.relation is None:
        return Described("RENAME")
    name = _rv(node.relation)
    if node.renameType == ObjectType.OBJECT_INDEX:
        return Described("ALTER INDEX", index=name, tables=((name, SUE),))
    columns = ((name, qualified(node.subname)),) if node.renameType == ObjectType.OBJECT_COLUMN else ()
    on_table = ObjectType.OBJECT_TABLE in (node.relationType, node.renameType)
    kind = "ALTER TABLE" if on_table or node.renameType == ObjectType.OBJECT_TABCONSTRAINT else "RENAME"
    return Described(kind, name, tables=((name, AE),), columns=columns)


def _options(items) -> set[str]:
    return {d.defname for d in items or () if isinstance(d, ast.DefElem)}


def _vacuum(node: ast.VacuumStmt) -> Described:
    full = "full" in _options(node.options)
    kind = ("VACUUM FULL" if full else "VACUUM") if node.is_vacuumcmd else "ANALYZE"
    names = [_rv(r.relation) for r in node.rels or () if r.relation is not None]
    return Described(kind, names[0] if names else None, tables=tuple((n, AE if full else SUE) for n in names))


def _cluster(node: ast.ClusterStmt) -> Described:
    name = _rv(node.relation) if node.relation is not None else None
    return Described("CLUSTER", name, tables=((name, AE),) if name else ())


def _reindex(node: ast.ReindexStmt) -> Described:
    concurrent = "concurrently" in _options(node.params)
    kind = "REINDEX" + (" CONCURRENTLY" if concurrent else "")
    if node.relation is None:
        return Described(kind)
    name = _rv(node.relation)
    if node.kind == ReindexObjectType.REINDEX_OBJECT_INDEX:
        return Described(kind, index=name, tables=((name, SUE if concurrent else AE),))
    return Described(kind, name, tables=((name, SUE if concurrent else "SHARE"),))


def _set_schema(node: ast.AlterObjectSchemaStmt) -> Described:
    if node.relation is None:
        return Described("ALTER SET SCHEMA")
    name = _rv(node.relation)
    return Described("ALTER SET SCHEMA", name, tables=((name, AE),))


_HANDLERS = {
    "AlterTableStmt": _alter_table, "IndexStmt": _index, "DropStmt": _drop, "CreateStmt": _create,
    "UpdateStmt": _dml, "DeleteStmt": _dml, "InsertStmt": _dml, "MergeStmt": _dml, "SelectStmt": _select,
    "TruncateStmt": _truncate, "LockStmt": _lock, "CreateTrigStmt": _trigger, "RefreshMatViewStmt": _refresh,
    "CommentStmt": _comment, "RenameStmt": _rename, "VacuumStmt": _vacuum, "ClusterStmt": _cluster,
    "ReindexStmt": _reindex, "AlterObjectSchemaStmt": _set_schema,
}


# --- data loss ---------------------------------------------------------------------------------------------
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


def _pred(node) -> str:
    return _text(node)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def losses(sql: str) -> list[Loss]:
    """What one statement destroys, from its parse tree; [] for a statement the parser rejects."""
    d = describe(sql)
    node = d.node
    if isinstance(node, ast.DropStmt):
        cascade = node.behavior == DropBehavior.DROP_CASCADE
        if node.removeType == ObjectType.OBJECT_TABLE:
            return [Loss("table", n) for n in _drop_names(node)]
        if node.removeType == ObjectType.OBJECT_SCHEMA and cascade:
            return [Loss("schema", n) for n in _drop_names(node)]
        if node.removeType in (ObjectType.OBJECT_TYPE, ObjectType.OBJECT_DOMAIN) and cascade:
            return [Loss("type", n) for n in _drop_names(node)]
        return []
    if isinstance(node, ast.TruncateStmt):
        return [Loss("truncate", _rv(r)) for r in node.relations]
    found = _dml_target(node) if node is not None else None
    if found is not None and found[0] == "DELETE FROM":
        stmt = found[1]
        return [Loss("delete", _rv(stmt.relation), None, _scoped(stmt, stmt.usingClause))]
    if found is not None and found[0] == "UPDATE":
        stmt = found[1]
        nulled = [t.name for t in stmt.targetList or () if _is_null(t)]
        if not nulled:
            return []
        where = _scoped(stmt, stmt.fromClause)
        return [Loss("set null", _rv(stmt.relation), qualified(c),
                     (f"({where}) AND " if where else "") + f"{_ident(c)} IS NOT NULL") for c in nulled]
    if isinstance(node, ast.AlterTableStmt) and d.kind == "ALTER TABLE":
        out = []
        for cmd in node.cmds or ():
            if cmd.subtype == AT.AT_DropColumn:
                out.append(Loss("column", d.table, qualified(cmd.name)))
            elif cmd.subtype == AT.AT_AlterColumnType and (cut := _cannot_keep(cmd.name, cmd.def_.typeName)):
                out.append(Loss("narrow", d.table, qualified(cmd.name), cut))
        return out
    return []


def _is_null(target) -> bool:
    val = target.val
    if isinstance(val, ast.MultiAssignRef):
        args = getattr(val.source, "args", None) or ()
        val = args[val.colno - 1] if 0 < val.colno <= len(args) else None
    return isinstance(val, ast.A_Const) and val.isnull


def _scoped(stmt, extra) -> str | None:
    """The WHERE of a DELETE/UPDATE as a predicate on the bare table, even with an alias or USING/FROM."""
    if stmt.whereClause is None:
        return None
    where = _pred(stmt.whereClause)
    alias = stmt.relation.alias.aliasname if stmt.relation.alias is not None else None
    if not extra and alias is None:
        return where
    # Count through the table's own row identity so the migration's aliases and joins keep their meaning.
    me = _ident(alias) if alias else _text(stmt.relation)
    source = _text(stmt.relation) + "".join(", " + _text(x) for x in extra or ())
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
        if node.renameType == ObjectType.OBJECT_COLUMN:
            out.append(("renames a column or table", "running code that uses the old name fails"))
        elif node.renameType == ObjectType.OBJECT_TABLE:
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
