"""The rules behind ``safety.lint``: squawk's findings classified, dbrunbook's own SQL and revision-file checks.

Raw squawk output on a real Alembic chain is noise (1,399 findings on 123 revisions, measured in
shared/notes/lint-on-a-real-chain.md), so every finding gets a category and a level an operator can act on:

* **deploy risk** is weighed by the live table: a blocking index, rewrite or validating constraint on a table
  created in the same run, or on a small one, is harmless (info); on a table over the thresholds it is an
  outage (error). The sizes come in a ``Catalog`` so that the weighing is testable without a database.
* **destructive** (drop table/column, type narrowing) always stays visible: warning, error on a protected
  target.
* **timeouts** (``require-*-timeout``) are satisfied by construction, since dbrunbook sets lock_timeout and
  statement_timeout on every connection: dropped and counted.
* **style** (text vs varchar, bigint, identity): info.

Everything here works on text (the offline SQL of each revision, the revision files) and needs no database.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dbrunbook.errors import ConfigError
from dbrunbook.postgres import sqlparse
from dbrunbook.postgres.sqltext import Statement, split_statements

__all__ = [
    "CATEGORIES", "REVISION_RULES", "Catalog", "Finding", "RevisionIssue", "TableSize", "check_sql",
    "classify_squawk", "revision_file_findings", "revision_issues", "run_squawk", "split_statements",
    "squawk_binary", "statement_kind", "table_of",
]

CATEGORIES = ("deploy risk", "destructive", "rollback", "preview", "compatibility", "style")
LEVELS = ("error", "warning", "info")
ROWS_THRESHOLD = 10_000
BYTES_THRESHOLD = 10 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One problem lint found: which rule, how bad, in which revision, and what to do instead."""

    rule: str
    level: str  # error | warning | info
    category: str
    migration_set: str
    revision: str
    statement: str
    why: str
    instead: str
    source: str  # squawk | dbrunbook

    def matches(self, entry: str) -> bool:
        """True when an ``allow`` entry (``rule`` or ``rule@revision``) covers this finding."""
        rule, _, revision = entry.partition("@")
        return rule == self.rule and (not revision or revision == self.revision)


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
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def normalize_name(name: str) -> str:
    """A name as written in SQL in canonical spelling: ``My_Table`` is ``my_table``, ``"my table"`` keeps its
    quotes, ``public.`` is dropped (the way ``regclass::text`` spells it; see ``sqlparse.normalize_name``)."""
    return sqlparse.normalize_name(name)


def _split_name(name: str) -> list[str]:
    return re.findall(r'"(?:[^"]|"")*"|[^."]+', name.strip())


# --- statements: see sqltext ---------------------------------------------------------------------------


def squawk_offset(sql: str, line: int, column: int) -> int:
    """Offset of squawk's 0-based line and column in ``sql``."""
    lines = sql.splitlines(keepends=True)
    return sum(len(x) for x in lines[:line]) + min(column, len(lines[line]) if line < len(lines) else 0)


def statement_at(statements: Sequence[Statement], offset: int) -> Statement | None:
    for s in statements:
        if s.start <= offset < s.end:
            return s
    following = [s for s in statements if s.start >= offset]
    return following[0] if following else (statements[-1] if statements else None)


def display_statement(stmt: Statement | None, sql: str, offset: int) -> str:
    """The statement, shortened: its head and, for a long one, the line the finding points at."""
    if stmt is None:
        return ""
    flat = stmt.flat
    if len(flat) <= 160:
        return flat
    line_start = sql.rfind("\n", 0, offset) + 1
    line_end = sql.find("\n", offset)
    line = " ".join(sql[line_start:line_end if line_end >= 0 else len(sql)].split()).rstrip(",")
    head = flat[:70].rsplit(" ", 1)[0]
    if not line or len(line) > 90 or flat.startswith(line[:40]):
        return flat[:157] + "…"
    return f"{head} … {line}"


_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)(?:\.(?:"(?:[^"]|"")*"|[\w$]+))?'
_TABLE_PATTERNS = [
    re.compile(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:(?:IF NOT EXISTS )?{_NAME} )?ON (?:ONLY )?"
               rf"({_NAME})", re.IGNORECASE),
    re.compile(rf"^CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE (?:IF NOT EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^DROP TABLE (?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^UPDATE (?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^DELETE FROM (?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^INSERT INTO ({_NAME})", re.IGNORECASE),
    re.compile(rf"^TRUNCATE (?:TABLE )?(?:ONLY )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^VACUUM (?:\([^)]*\) |FULL |FREEZE |VERBOSE |ANALYZE )*({_NAME})", re.IGNORECASE),
    re.compile(rf"^CLUSTER (?:VERBOSE )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^REINDEX (?:\([^)]*\) )?TABLE (?:CONCURRENTLY )?({_NAME})", re.IGNORECASE),
]
_INDEX_PATTERNS = [
    re.compile(rf"^DROP INDEX (?:CONCURRENTLY )?(?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^ALTER INDEX (?:IF EXISTS )?({_NAME})", re.IGNORECASE),
    re.compile(rf"^REINDEX (?:\([^)]*\) )?INDEX (?:CONCURRENTLY )?({_NAME})", re.IGNORECASE),
]


def table_of(flat: str, catalog: Catalog | None = None) -> str | None:
    """The table a statement works on (canonical name), read by PostgreSQL's parser.

    An index the statement names (``DROP INDEX``, ``ALTER INDEX``) is looked up in ``catalog``; one the live
    database does not have is created in this run and weighed as not existing. Text the parser rejects is
    read by the patterns below, the fallback.
    """
    d = sqlparse.describe(flat)
    if d.parsed:
        if d.table:
            return d.table
        if d.index and catalog is not None:
            return catalog.index_tables.get(d.index, d.index)
        return None
    for pattern in _TABLE_PATTERNS:
        if m := pattern.match(flat):
            return normalize_name(m.group(1))
    for pattern in _INDEX_PATTERNS:
        if (m := pattern.match(flat)) and catalog is not None:
            return catalog.index_tables.get(normalize_name(m.group(1)), normalize_name(m.group(1)))
    return None


_ANY_TABLE = sqlparse.ast.RangeVar(relname="x", inh=True, relpersistence="p")


def alter_actions(flat: str) -> list[str]:
    """The actions of an ALTER TABLE, each as PostgreSQL's grammar reads it, printed canonically.

    ``alter x type int`` comes back as ``ALTER COLUMN x TYPE integer``, names quoted where needed: the rules
    below match that canonical text, not what the author typed. Unparsable text: split at top-level commas.
    """
    d = sqlparse.describe(flat)
    if d.parsed:
        if d.kind != "ALTER TABLE" or not isinstance(d.node, sqlparse.ast.AlterTableStmt):
            return []
        out = []
        for cmd in d.node.cmds or ():
            one = sqlparse.ast.AlterTableStmt(relation=_ANY_TABLE, cmds=(cmd,), objtype=d.node.objtype)
            try:
                out.append(sqlparse.deparse(one).removeprefix("ALTER TABLE x "))
            except Exception:  # noqa: BLE001 (a printer gap in pglast: keep the action, unprinted)
                out.append(sqlparse.kind_of(cmd))
        return out
    return _split_actions(flat)


#: A column or constraint name in the canonical text of an action (quoted names may hold spaces).
IDENT = r'("(?:[^"]|"")+"|[\w$]+)'
_FALLBACK_KINDS = [(re.compile(p, re.IGNORECASE), k) for p, k in (
    (r"^CREATE (?:UNLOGGED |TEMP |TEMPORARY )?TABLE\b", "CREATE TABLE"), (r"^VACUUM\b.*\bFULL\b", "VACUUM FULL"),
    (r"^CLUSTER\b", "CLUSTER"), (r"^UPDATE\b", "UPDATE"), (r"^DELETE\b", "DELETE FROM"),
    (r"^ALTER TABLE\b", "ALTER TABLE"))]


def statement_kind(flat: str) -> str:
    """The statement's kind by PostgreSQL's parser (``ALTER TABLE``, ``DELETE FROM``, ``VACUUM FULL``, ...);
    for text it rejects, the kind its first words suggest (the fallback), or ``UNPARSED``."""
    d = sqlparse.describe(flat)
    if d.parsed:
        return d.kind
    return next((k for p, k in _FALLBACK_KINDS if p.match(flat)), sqlparse.UNPARSED)


def _split_actions(flat: str) -> list[str]:
    m = re.match(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{_NAME} (.*?);?$", flat, re.IGNORECASE | re.DOTALL)
    if not m:
        return []
    parts, depth, current = [], 0, ""
    for ch in m.group(1):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current.strip()] if p]


# --- squawk ---------------------------------------------------------------------------------------------
def squawk_binary() -> Path:
    """squawk from the ``squawk-cli`` package, next to this interpreter (the venv's bin) or on PATH.

    Raises:
        ConfigError: squawk is not installed.
    """
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if not found:
        raise ConfigError(f"squawk is not installed next to {sys.executable} nor on PATH. "
                          f"Install it with '{sys.executable} -m pip install squawk-cli'.")
    return Path(found)


def run_squawk(sqls: Sequence[str], pg_version: str | None = None) -> list[list[dict]]:
    """Lint each SQL text with ``squawk --reporter json`` in one call; the findings of each, in order."""
    if not sqls:
        return []
    with tempfile.TemporaryDirectory(prefix="dbrunbook-lint-") as folder:
        paths = []
        for i, sql in enumerate(sqls):
            path = Path(folder) / f"{i:05d}.sql"
            path.write_text(sql, encoding="utf-8")
            paths.append(path)
        args = [str(squawk_binary()), "--reporter", "json", "--no-error-on-unmatched-pattern"]
        if pg_version:
            args.append(f"--pg-version={pg_version}")
        done = subprocess.run([*args, *map(str, paths)], capture_output=True, text=True, check=False)
        try:
            found = json.loads(done.stdout or "[]")
        except ValueError as err:
            raise ConfigError(f"squawk did not return JSON (exit {done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[:300]}") from err
    by_file: dict[str, list[dict]] = {}
    for item in found:
        by_file.setdefault(Path(item.get("file", "")).name, []).append(item)
    return [by_file.get(p.name, []) for p in paths]


#: squawk rule -> (category, weighed by the live table's size). Rules not listed: deploy risk, unweighed.
SQUAWK_RULES: dict[str, tuple[str, bool]] = {
    **{r: ("deploy risk", True) for r in (
        "require-concurrent-index-creation", "require-concurrent-index-deletion", "constraint-missing-not-valid",
        "adding-foreign-key-constraint", "adding-not-nullable-field", "adding-field-with-default",
        "adding-primary-key-constraint", "adding-serial-primary-key-field", "disallowed-unique-constraint",
        "changing-column-type", "adding-required-field", "require-concurrent-reindex",
        "require-concurrent-partition-detach", "prefer-repack")},
    **{r: ("deploy risk", False) for r in (
        "ban-concurrent-index-creation-in-transaction", "transaction-nesting", "ban-uncommitted-transaction",
        "ban-alter-domain-with-add-constraint", "ban-create-domain-with-constraint")},
    **{r: ("destructive", False) for r in (
        "ban-drop-column", "ban-drop-table", "ban-drop-database", "ban-drop-schema", "ban-truncate-cascade",
        "ban-drop-sequence")},
    **{r: ("compatibility", False) for r in (
        "renaming-column", "renaming-table", "renaming-object", "ban-drop-constraint", "ban-drop-not-null",
        "ban-drop-domain", "ban-drop-extension", "ban-alter-identity", "ban-set-schema", "ban-drop-index",
        "ban-drop-generated-expression", "identifier-too-long")},
    **{r: ("style", False) for r in (
        "prefer-text-field", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-big-int",
        "prefer-identity", "prefer-timestamptz", "ban-char-field", "prefer-robust-stmts",
        "require-enum-value-ordering", "require-table-schema")},
    "syntax-error": ("preview", False),
}
TIMEOUT_RULES = frozenset({"require-lock-timeout", "require-statement-timeout", "require-timeout-settings"})
#: Always an error: the statement fails when it runs, whatever the table.
FAILS_ALWAYS = frozenset({"ban-concurrent-index-creation-in-transaction"})

#: What to do instead, in Alembic's words, where squawk's help is generic.
INSTEAD: dict[str, str] = {
    "require-concurrent-index-creation": "op.create_index(..., postgresql_concurrently=True) inside "
                                         "`with op.get_context().autocommit_block():`, in its own revision",
    "require-concurrent-index-deletion": "op.drop_index(..., postgresql_concurrently=True) inside "
                                         "`with op.get_context().autocommit_block():`",
    "constraint-missing-not-valid": "add it with postgresql_not_valid=True, then VALIDATE CONSTRAINT in a "
                                    "later revision (takes only SHARE UPDATE EXCLUSIVE)",
    "adding-foreign-key-constraint": "op.create_foreign_key(..., postgresql_not_valid=True), then "
                                     "op.execute('ALTER TABLE ... VALIDATE CONSTRAINT ...') in a later revision",
    "adding-not-nullable-field": "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL "
                                 "(PostgreSQL 12+ skips the scan), each in its own revision",
    "disallowed-unique-constraint": "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING "
                                    "INDEX",
    "changing-column-type": "add a new column, backfill it in batches, switch the application, drop the old "
                            "one",
    "adding-required-field": "add the column nullable (or with a constant server_default), backfill, then "
                             "SET NOT NULL",
    "ban-drop-column": "stop using the column in the application first; back it up if its values matter",
    "ban-drop-table": "stop using the table first; back it up (pg_dump -t) if its rows matter",
    "ban-concurrent-index-creation-in-transaction": "wrap it in `with op.get_context().autocommit_block():`",
}


def classify_squawk(rule: str, *, size: TableSize | None, catalog: Catalog, protected: bool,
                    message: str = "") -> tuple[str, str, str] | None:
    """(category, level, why) for one squawk finding on a table of ``size``; None for a timeout rule."""
    if rule in TIMEOUT_RULES:
        return None
    category, weighed = SQUAWK_RULES.get(rule, ("deploy risk", False))
    message = message.rstrip(".")
    if category == "style":
        return category, "info", message
    if category == "preview":
        return category, "warning", (f"squawk cannot parse this statement ({message}), so it was not linted; "
                                     f"read it yourself")
    if category == "destructive":
        where = f"; the table has {size.describe()} now" if size is not None and size.exists else ""
        return category, "error" if protected else "warning", f"{message}{where}"
    if category == "compatibility":
        return category, "warning", message
    if rule in FAILS_ALWAYS:
        return category, "error", f"{message}: this statement fails when it runs"
    if not weighed or size is None:
        return category, "warning", message
    return (category, *_weigh(rule, size, catalog, message))


def _weigh(rule: str, size: TableSize, catalog: Catalog, message: str) -> tuple[str, str]:
    """(level, why) of a lock or scan on a table, by its live size and whether it exists before the run."""
    if not size.exists:
        return "info", f"{message}; harmless here: {size.name} does not exist before this run"
    if rule == "adding-required-field":
        if size.rows:
            return "error", (f"{message}; table {size.name} has {size.describe()}: the statement fails on "
                             f"existing rows")
        return "info", f"{message}; harmless here: table {size.name} is empty"
    if catalog.is_big(size):
        return "error", (f"{message}; table {size.name} has {size.describe()}: every read or write waits "
                         f"for the whole operation")
    return "info", f"{message}; harmless at this size: table {size.name} has {size.describe()}"


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
        if column.typeName is not None and column.typeName.names[-1].sval.lower() in _SERIALS:
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
    level, why = _weigh(issue.rule, size, catalog, issue.why)
    if issue.rule == "large-data-change" and level == "error":
        level = "warning"  # slow and bloating, but it blocks no reader
    return level, why


# --- revision files (ast) ------------------------------------------------------------------------------
# The one place that reads revision files: the deploy lint (``revision_file_findings``) and review
# (``authoring.lint_python``, which adds its own review-only rules and its levels) both call ``revision_issues``.
_ONLINE_ONLY_CALLS = {"get_bind": "op.get_bind()", "inspect": "sa.inspect()", "reflect": "MetaData.reflect()",
                      "from_engine": "Inspector.from_engine()", "fetchall": ".fetchall()",
                      "fetchone": ".fetchone()", "scalar": ".scalar()", "scalar_one": ".scalar_one()",
                      "first": ".first()"}
#: The rules ``revision_issues`` reports, each with its deploy-lint level and category.
REVISION_RULES = {
    "empty-downgrade": ("warning", "rollback"),
    "irreversible-downgrade": ("info", "rollback"),
    "online-only-call": ("warning", "preview"),
    "autocommit-block": ("warning", "deploy risk"),
}


@dataclass(frozen=True)
class RevisionIssue:
    """A finding of the revision-file rules before it becomes a deploy-lint or review finding."""

    rule: str  # a key of REVISION_RULES
    line: int | None  # 1-based; None when the issue is a missing function
    why: str
    instead: str

    @property
    def level(self) -> str:
        return REVISION_RULES[self.rule][0]

    @property
    def category(self) -> str:
        return REVISION_RULES[self.rule][1]


def _is_trivial(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))


def _checks_offline_mode(tree: ast.Module) -> bool:
    """True when the revision asks whether it runs offline (``context.is_offline_mode()``, ``.as_sql``)."""
    return any((isinstance(n, ast.Attribute) and n.attr in ("is_offline_mode", "as_sql")) or
               (isinstance(n, ast.Name) and n.id == "is_offline_mode") for n in ast.walk(tree))


def revision_issues(source: str, *, filename: str = "<revision>", with_downgrade: bool = False,
                    trust_offline_guard: bool = False) -> list[RevisionIssue]:
    """The ast checks of one revision's source: empty or raising downgrade, online-only calls, autocommit_block.

    The deploy lint asks "is the previewed upgrade what will run", so by default downgrade() is not read and
    a revision that checks offline mode still has its online-only calls reported (the preview shows the
    offline branch). Review asks "does it render offline, both ways": ``with_downgrade`` also reads
    downgrade() (the rollback preview renders it offline) and ``trust_offline_guard`` accepts a revision
    that checks offline mode before reaching for the connection.

    Raises:
        SyntaxError: the source is not Python.
    """
    tree = ast.parse(source, filename=filename)
    out: list[RevisionIssue] = []
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    down, up = functions.get("downgrade"), functions.get("upgrade")
    # A revision whose upgrade does nothing (a merge point, a marker) rightly has nothing to undo.
    if up is None or all(_is_trivial(s) for s in up.body):
        pass
    elif down is None:
        out.append(RevisionIssue("empty-downgrade", None, "the revision has no downgrade(): it cannot be rolled "
                                 "back", "write downgrade() so that it reverts upgrade()"))
    elif all(_is_trivial(s) for s in down.body):
        out.append(RevisionIssue(
            "empty-downgrade", down.lineno,
            "downgrade() does nothing: 'alembic downgrade' would move the version pointer back and leave the "
            "schema as it is, so the database then lies about its revision",
            "write downgrade() so that it reverts upgrade(), or raise NotImplementedError to say it cannot"))
    elif any(isinstance(s, ast.Raise) for s in down.body):
        out.append(RevisionIssue("irreversible-downgrade", down.lineno,
                                 "downgrade() raises: this revision cannot be rolled back, only restored from a "
                                 "backup", "take a backup before applying it"))
    tops = [top for top in tree.body if with_downgrade or not (isinstance(top, ast.FunctionDef) and
                                                                top.name == "downgrade")]
    online: list[tuple[ast.AST, str]] = []
    for node in (n for top in tops for n in ast.walk(top)):
        if isinstance(node, ast.keyword) and node.arg == "autoload_with":
            online.append((node.value, "table reflection (autoload_with)"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "autocommit_block":
            out.append(RevisionIssue(
                "autocommit-block", node.lineno,
                "autocommit_block() commits Alembic's transaction mid-revision: if a later statement fails, what "
                "ran before stays and the version table does not say so",
                "keep the autocommit block alone in its own revision, with IF NOT EXISTS / IF EXISTS"))
        elif name in _ONLINE_ONLY_CALLS and (name != "inspect" or _inspects_connection(node)) and \
                (name not in {"scalar", "first"} or _on_execute(func)):
            online.append((node, _ONLINE_ONLY_CALLS[name]))
    if online and not (trust_offline_guard and _checks_offline_mode(tree)):
        calls = ", ".join(dict.fromkeys(what for _, what in online))
        first = min((n for n, _ in online), key=lambda n: getattr(n, "lineno", 0))
        out.append(RevisionIssue(
            "online-only-call", getattr(first, "lineno", None),
            f"{calls} need(s) a live connection: in offline mode (the reviewed preview) the revision fails or "
            f"takes another branch, so the preview is not what will run",
            "express the change as SQL the preview can show (op.execute with literal SQL), or keep the "
            "data-dependent part out of the migration"))
    return out


def revision_file_findings(path: Path, *, migration_set: str, revision: str) -> list[Finding]:
    """The deploy lint's findings on one revision file (``revision_issues`` on its upgrade)."""
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    out = []
    for issue in revision_issues(source, filename=str(path)):
        where = f"{path.name}:{issue.line}: {lines[issue.line - 1].strip()}" if issue.line else f"{path.name}: "
        out.append(Finding(issue.rule, issue.level, issue.category, migration_set, revision, where, issue.why,
                           issue.instead, "dbrunbook"))
    return out


def _inspects_connection(node: ast.Call) -> bool:
    func = node.func
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    return owner in ("sa", "sqlalchemy", "") or isinstance(func, ast.Name)


def _on_execute(func: ast.expr) -> bool:
    value = func.value if isinstance(func, ast.Attribute) else None
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "execute"


def heads_finding(migration_set: str, heads: Iterable[str], *, protected: bool) -> Finding | None:
    """``multiple-heads`` when a migration set has unmerged branches."""
    heads = sorted(heads)
    if len(heads) < 2:
        return None
    return Finding("multiple-heads", "error" if protected else "warning", "deploy risk", migration_set,
                   ",".join(heads), f"heads: {', '.join(heads)}",
                   f"{len(heads)} heads: the branches were never merged, so their order on this database is "
                   f"Alembic's choice and 'alembic upgrade head' fails",
                   "alembic merge -m 'merge' " + " ".join(heads), "dbrunbook")
