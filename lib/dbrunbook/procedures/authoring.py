"""Writing and reviewing migrations: ``dbrunbook new``, the review runbook, and the checks behind the pytest plugin.

The guide's *Creating Migrations* section, as code: a descriptive message (its "Migration Naming" rules),
``alembic revision [--autogenerate]`` on the set's own configuration, then the review — read the source, lint
what autogenerate cannot see, lint the rendered SQL (squawk), run the revision up, down and up again on a
scratch database and check the schema came back (its "Test Migration Locally"), a stairway over the whole
chain, and its five-point checklist answered from that evidence.

Scratch databases are created on the target's server (``CREATE DATABASE``, dropped afterwards) unless the
target is protected or the role may not create databases: then a throwaway embedded server is started. A
review never migrates the target itself.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import dataclasses
import html
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import RevisionContext
from alembic.runtime.migration import MigrationStep
from alembic.util import CommandError
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from dbrunbook.chain import isolation, migrations
from dbrunbook.config import Config, MigrationSet
from dbrunbook.errors import ConfigError, DbRunbookError, MigrationFailed, ParameterError, ReviewFailed
from dbrunbook.postgres import db, snapshots
from dbrunbook.procedures.checks import CouldNotRun
from dbrunbook.safety.lint_rules import revision_issues

log = logging.getLogger(__name__)

__all__ = [
    "Finding",
    "Lint",
    "Review",
    "RevisionSource",
    "RoundTrip",
    "Scratch",
    "Stairway",
    "StepCheck",
    "check_message",
    "checklist",
    "lint_python",
    "lint_sql",
    "merge_heads",
    "migration_set_for",
    "new_revision",
    "require_passing",
    "review",
    "revision_source",
    "round_trip",
    "scratch",
    "stairway",
]

# --- messages -------------------------------------------------------------------------------------------
#: Verbs that say nothing about what changed when they stand without an object (the guide's bad examples).
GENERIC_VERBS = frozenset({"update", "updates", "updated", "fix", "fixes", "fixed", "change", "changes",
                           "changed", "modify", "modified", "edit", "edits", "tweak", "tweaks", "adjust",
                           "cleanup", "clean", "refactor", "misc", "various", "minor", "wip", "tmp", "temp",
                           "test", "todo", "stuff", "things", "migration", "migrations", "new", "more", "some",
                           "work", "db", "database", "schema", "models", "model", "tables", "up", "it"})
#: Verbs that start a change; three or more in one message is three migrations in one.
CHANGE_VERBS = frozenset({"add", "drop", "remove", "rename", "create", "alter", "change", "update", "fix",
                          "make", "backfill", "split", "merge", "move", "replace", "index", "seed", "delete"})
MAX_MESSAGE = 72
_FILLERS = frozenset({"a", "an", "the", "to", "of", "and", "for", "in", "on", "with", "some", "all"})

#: (rule, reason): the reasons ``check_message`` gives; tests/unit/test_authoring.py has one row per rule.
MESSAGE_RULES = {
    "empty": "it is empty",
    "too-short": "it is shorter than two words or 10 characters",
    "too-long": f"it is longer than {MAX_MESSAGE} characters (it is a title; details go in the docstring)",
    "no-object": "it has generic words only ({words}): say what changes on which table or column",
    "too-many-changes": "it names {n} changes ({verbs}): one migration per logical change",
}


def check_message(message: str) -> str:
    """Return the message stripped, or raise ParameterError saying why it is too vague for a revision.

    Rules (the guide's *Migration Naming*): not empty; at least two words and 10 characters; at most 72;
    not made of generic words only ("Update database", "Fix stuff", "Changes"); at most two changes in one
    message ("Add preferences, fix indexes, update enums" is three migrations).

    Raises:
        ParameterError: with the rule and the reason.
    """
    text = " ".join((message or "").split())
    words = re.findall(r"[A-Za-z0-9_]+", text.lower())
    rule, extra = None, {}
    if not text:
        rule = "empty"
    elif len(words) >= 2 and all(w in GENERIC_VERBS or w in _FILLERS for w in words):
        rule, extra = "no-object", {"words": ", ".join(w for w in dict.fromkeys(words) if w not in _FILLERS)}
    elif len(words) < 2 or len(text) < 10:
        rule = "too-short"
    elif len(text) > MAX_MESSAGE:
        rule = "too-long"
    else:
        clauses = [c.strip() for c in re.split(r",|;|\band\b|&", text.lower()) if c.strip()]
        verbs = [c.split()[0] for c in clauses if c.split()[0] in CHANGE_VERBS]
        if len(verbs) >= 3:
            rule, extra = "too-many-changes", {"n": len(verbs), "verbs": ", ".join(verbs)}
    if rule is None:
        return text
    err = ParameterError(
        f"Migration message {message!r} is too vague: {MESSAGE_RULES[rule].format(**extra)}. Name the change "
        f"and its object, e.g. \"Add user preferences table\" or \"Add indexes to bookings table\"."
    )
    err.rule = rule
    raise err


# --- new revisions --------------------------------------------------------------------------------------
def _script_path(mset: MigrationSet, script: Any) -> Path:
    path = Path(script.path)
    return path if path.is_absolute() else (mset.base_dir / path).resolve()


def new_revision(config: Config, message: str, migration_set: str = "main", autogenerate: bool = False,
                 target: str | None = None) -> Path:
    """``alembic revision -m MESSAGE [--autogenerate]`` on a migration set; returns the new file's path.

    Autogenerate compares the models with a real database: the ``target``'s (default: the configured
    default target), reached through the set's env.py on dbrunbook's connection, with the same check that
    env.py really used it as for upgrades. Nothing is written to that database.

    Raises:
        ParameterError: the message is too vague (``check_message``).
        MigrationSetNotFound, ConfigError, DialectMismatch, DatabaseUnavailable.
    """
    text = check_message(message)
    mset = config.migration_set(migration_set)
    heads = migrations.heads(mset)
    if len(heads) > 1:
        raise ParameterError(
            f"Migration set '{mset.name}' has {len(heads)} heads ({', '.join(heads)}): a new revision would not "
            f"know which to follow. Merge them first: dbrunbook new \"merge heads\" --merge -m {mset.name}")
    if not autogenerate:
        with migrations.in_project(mset):
            try:
                script = command.revision(migrations.alembic_config(mset), message=text)
            except CommandError as err:
                raise ConfigError(f"Migration set '{mset.name}': alembic revision failed: {err}") from err
        return _script_path(mset, script)
    _target, engine = db.connect_target(config, target)
    try:
        with migrations.in_project(mset):
            cfg = migrations.alembic_config(mset)
            directory = migrations.script_directory(mset)
        context = RevisionContext(cfg, directory, {
            "message": text, "autogenerate": True, "sql": False, "head": "head", "splice": False,
            "branch_label": None, "version_path": None, "rev_id": None, "depends_on": None})

        def compare(script: Any, rev: tuple, ctx: Any) -> list:
            context.run_autogenerate(rev, ctx)
            return []

        # The project's env.py runs online on our connection, read-only (as for ``alembic check``).
        migrations.drive(mset, engine, compare, direction="check", dont_mutate=True,
                          template_args=context.template_args, revision_context=context)
        with migrations.in_project(mset):
            scripts = list(context.generate_scripts())
    finally:
        engine.dispose()
    return _script_path(mset, scripts[0])


def merge_heads(config: Config, migration_set: str = "main", message: str = "merge heads") -> Path:
    """``alembic merge -m MESSAGE heads``: one revision whose parents are all current heads.

    Raises:
        ParameterError: fewer than two heads (nothing to merge), or a vague message.
    """
    text = check_message(message)
    mset = config.migration_set(migration_set)
    heads = migrations.heads(mset)
    if len(heads) < 2:
        raise ParameterError(f"Migration set '{mset.name}' has one head ({', '.join(heads)}): nothing to merge.")
    with migrations.in_project(mset):
        try:
            script = command.merge(migrations.alembic_config(mset), list(heads), message=text)
        except CommandError as err:
            raise ConfigError(f"Migration set '{mset.name}': alembic merge failed: {err}") from err
    return _script_path(mset, script)


# --- the revision under review --------------------------------------------------------------------------
@dataclass(frozen=True)
class RevisionSource:
    """One revision script: its set, its place in the graph and its text."""

    migration_set: MigrationSet
    info: migrations.RevisionInfo
    text: str

    @property
    def revision(self) -> str:
        return self.info.revision

    def _repr_html_(self) -> str:
        i = self.info
        return (f"<p><b>{html.escape(i.revision)}</b> — {html.escape(i.message)} (migration set "
                f"<code>{html.escape(self.migration_set.name)}</code>, revises "
                f"{html.escape(', '.join(i.down_revisions) or 'base')}{', head' if i.is_head else ''})<br>"
                f"<code>{html.escape(str(i.path))}</code></p><pre>{html.escape(self.text)}</pre>")


def revision_source(s: Any, revision: str = "", migration_set: str = "main") -> RevisionSource:
    """The revision to review: ``revision`` (id or prefix), or the newest head when empty.

    Raises:
        RevisionNotFound: no such revision; ParameterError: no revision given and the set has several heads.
    """
    config = s.config if hasattr(s, "config") else s
    mset = config.migration_set(migration_set)
    history = {r.revision: r for r in migrations.history(mset)}
    if not revision:
        heads = migrations.heads(mset)
        if len(heads) > 1:
            raise ParameterError(f"Migration set '{mset.name}' has {len(heads)} heads ({', '.join(heads)}); "
                                 f"pass -p revision ID to say which one to review.")
        rev = heads[0]
    else:
        rev = migrations.resolve(mset, revision)[0]
    info = history[rev]
    return RevisionSource(mset, info, info.path.read_text(encoding="utf-8"))


# --- findings -------------------------------------------------------------------------------------------
LEVELS = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One thing review found: ``error`` fails the review, ``warning`` and ``info`` are for the reviewer."""

    rule: str
    level: str
    revision: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def findings_frame(findings: tuple[Finding, ...]) -> pd.DataFrame:
    """Findings as a table, one row each, in the columns a reviewer reads them by."""
    return pd.DataFrame([f.as_dict() for f in findings], columns=["rule", "level", "revision", "line", "message"])


@dataclass(frozen=True)
class Lint:
    """Findings of one linter on one revision, with what it read (Python source or rendered SQL)."""

    kind: str
    revision: str
    findings: tuple[Finding, ...]
    text: str = ""

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == "error")

    def as_frame(self) -> pd.DataFrame:
        return findings_frame(self.findings)

    def _repr_html_(self) -> str:
        head = (f"<p>{html.escape(self.kind)} of <b>{html.escape(self.revision)}</b>: {len(self.errors)} error(s), "
                f"{len(self.findings) - len(self.errors)} other finding(s)</p>")
        from dbrunbook.views.tables import frame_html, sql_html

        body = frame_html(self.as_frame()) if self.findings else "<p>✔ nothing found</p>"
        sql = sql_html(self.text) if self.kind == "SQL lint" and self.text else ""
        return head + body + sql


#: Review's level for the revision-file rules it shares with the deploy lint (the ast walk is
#: ``lint_rules.revision_issues``). Review can still send a revision back, so one that cannot be rolled back
#: fails it; the deploy lint meets revisions already merged and only warns. A revision that needs a live
#: connection only warns in review too: its SQL is captured on a scratch database (``capture``), so offline
#: rendering is evidence, not a condition (real chains ship many such revisions). Rules not listed keep the
#: deploy lint's level.
REVIEW_LEVELS = {"empty-downgrade": "error", "irreversible-downgrade": "error"}

#: rule -> (level, message): review's own rules, for what autogenerate cannot see; one test row per rule.
PYTHON_RULES = {
    "rename-as-drop-add": ("warning", "drops and adds in one revision on {what}: autogenerate sees a rename as "
                                      "drop + add and the data is lost; use op.alter_column(new_column_name=) or "
                                      "op.rename_table"),
    "server-default-change": ("warning", "changes a server_default: autogenerate does not detect these, check "
                                         "that the models say the same"),
    "check-constraint": ("info", "adds or drops a check constraint: autogenerate does not see check "
                                 "constraints, keep the models in step by hand"),
    "insert-without-on-conflict": ("warning", "inserts rows without ON CONFLICT: it fails with a duplicate key "
                                              "when the rows exist (the guide: use ON CONFLICT)"),
    "not-null-without-default": ("warning", "adds NOT NULL column {what} without a server_default: fails on a "
                                            "non-empty table (the guide: add nullable, backfill, then alter)"),
}


def _finding(rule: str, revision: str, node: ast.AST | None = None, **what: Any) -> Finding:
    level, message = PYTHON_RULES[rule]
    return Finding(rule, level, revision, message.format(**what), getattr(node, "lineno", None))


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _const(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _kw(node: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def lint_python(source: RevisionSource | str, revision: str = "") -> Lint:
    """Lint a revision's Python for what the guide says autogenerate and offline rendering cannot handle.

    The revision-file rules shared with the deploy lint (empty or raising downgrade, online-only calls,
    autocommit_block) come from ``lint_rules.revision_issues`` at review's levels (``REVIEW_LEVELS``),
    read in both directions and trusting an offline-mode check; then review's own ``PYTHON_RULES``.
    A revision whose upgrade() is empty (a merge point) legitimately has an empty downgrade().
    """
    text = source.text if isinstance(source, RevisionSource) else source
    revision = source.revision if isinstance(source, RevisionSource) else revision
    found = [Finding(i.rule, REVIEW_LEVELS.get(i.rule, i.level), revision, f"{i.why}; {i.instead}", i.line)
             for i in revision_issues(text, with_downgrade=True, trust_offline_guard=True)]
    tree = ast.parse(text)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("upgrade", "downgrade"):
        fn = functions.get(name)
        if fn is None:
            continue
        dropped_cols, added_cols, dropped_tables, created_tables = {}, {}, {}, {}
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            call, args = _call_name(node), node.args
            if call == "drop_column" and len(args) >= 2:
                dropped_cols.setdefault(_const(args[0]), node)
            elif call == "add_column" and args:
                added_cols.setdefault(_const(args[0]), node)
                column = args[1] if len(args) > 1 else None
                if isinstance(column, ast.Call) and _call_name(column) == "Column":
                    nullable, default = _kw(column, "nullable"), _kw(column, "server_default")
                    primary = _const(_kw(column, "primary_key")) is True
                    if _const(nullable) is False and default is None and not primary:
                        found.append(_finding("not-null-without-default", revision, node,
                                              what=f"{_const(args[0])}.{_const(column.args[0]) if column.args else '?'}"))
            elif call == "drop_table" and args:
                dropped_tables.setdefault(_const(args[0]), node)
            elif call == "create_table" and args:
                created_tables.setdefault(_const(args[0]), node)
            elif call == "alter_column" and _kw(node, "server_default") is not None:
                found.append(_finding("server-default-change", revision, node))
            elif call == "create_check_constraint" or (
                    call == "drop_constraint" and _const(_kw(node, "type_")) == "check"):
                found.append(_finding("check-constraint", revision, node))
            elif call == "bulk_insert" or (call == "execute" and args and isinstance(_const(args[0]), str)
                                           and re.match(r"\s*INSERT\b", _const(args[0]), re.IGNORECASE)
                                           and not re.search(r"\bON\s+CONFLICT\b", _const(args[0]), re.IGNORECASE)):
                found.append(_finding("insert-without-on-conflict", revision, node))
        for table in set(dropped_cols) & set(added_cols):
            found.append(_finding("rename-as-drop-add", revision, dropped_cols[table], what=f"table {table}"))
        if dropped_tables and created_tables and name == "upgrade":
            node = next(iter(dropped_tables.values()))
            found.append(_finding("rename-as-drop-add", revision, node,
                                  what=f"tables {', '.join(map(str, dropped_tables))} -> "
                                       f"{', '.join(map(str, created_tables))}"))
    return Lint("Python lint", revision, tuple(found), text)


# --- SQL lint (squawk) ----------------------------------------------------------------------------------
#: dbrunbook's engines set lock_timeout and statement_timeout on every connection, so squawk's rules asking
#: for them in the SQL are noise here.
SQUAWK_EXCLUDED = ("require-timeout-settings",)


def _squawk_binary() -> str | None:
    local = Path(sys.executable).with_name("squawk")
    return str(local) if local.exists() else shutil.which("squawk")


def _offline_step(mset: MigrationSet, info: migrations.RevisionInfo) -> migrations.SqlStep:
    """The revision's offline SQL; for an online-only revision, a comment that says why there is none."""
    steps = migrations.offline_sql(mset, ",".join(info.down_revisions) or None, info.revision)
    step = next(st for st in steps if st.revision == info.revision)
    if getattr(step, "online_only", False):
        # Its real SQL is seen where it runs: review's round trip on a scratch database.
        return dataclasses.replace(step, sql=f"-- {step.problem}\n", sha256="")
    return step


def lint_sql(source: RevisionSource, s: Any = None) -> Lint:
    """Render the revision's upgrade SQL offline and run ``squawk --reporter json`` on it.

    With a session ``s``, the SQL is saved as artifact ``review-REVISION.sql`` of the run and squawk is told
    the server's version. A revision that cannot be rendered offline is an error finding (the preview and
    deploy runbooks need that SQL).
    """
    try:
        step = _offline_step(source.migration_set, source.info)
    except Exception as err:  # anything env.py or the migration raises while rendering offline
        return Lint("SQL lint", source.revision, (Finding(
            "offline-render-failed", "error", source.revision,
            f"'alembic upgrade --sql' fails for this revision: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"),))
    if s is not None:
        s.save_artifact(f"review-{source.revision}.sql", step.sql)
    findings = tuple(_squawk(step.sql, source.revision, s.identity.server_version if s is not None else None))
    return Lint("SQL lint", source.revision, findings, step.sql)


def _squawk(sql: str, revision: str, pg_version: str | None = None) -> list[Finding]:
    binary = _squawk_binary()
    if binary is None:
        return [Finding("squawk-missing", "info", revision, "squawk is not installed (pip install squawk-cli)")]
    cmd = [binary, "--reporter", "json", "--stdin-filepath", f"{revision}.sql"]
    cmd += [f"--exclude={','.join(SQUAWK_EXCLUDED)}"]
    if pg_version:
        cmd.append(f"--pg-version={pg_version.split()[0]}")
    proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
    try:
        reports = json.loads(proc.stdout or "[]")
    except ValueError:
        return [Finding("squawk-failed", "info", revision,
                        f"squawk exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")]
    # One finding per rule, with how often and where: squawk repeats itself for every column of a table.
    grouped: dict[str, list[dict]] = {}
    for r in reports:
        grouped.setdefault(str(r.get("rule_name")), []).append(r)
    out = []
    for rule, hits in grouped.items():
        lines = sorted({h.get("line") for h in hits if h.get("line") is not None})
        where = f" ({len(hits)} times, lines {', '.join(map(str, lines))})" if len(hits) > 1 else ""
        out.append(Finding(f"squawk:{rule}", "warning", revision,
                           f"{hits[0].get('message')} {hits[0].get('help') or ''}".strip() + where,
                           lines[0] if lines else None))
    return out


# --- schema shape ---------------------------------------------------------------------------------------
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
    b, a = set(before.objects), set(after.objects)
    rows += [{"object": name, "change": f"{kind} dropped", "before": name, "after": None} for kind, name in sorted(b - a)]
    rows += [{"object": name, "change": f"{kind} added", "before": None, "after": name} for kind, name in sorted(a - b)]
    return pd.DataFrame(rows, columns=["object", "change", "before", "after"])


# --- up, down, up ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCheck:
    """One revision taken up, down and up again (the guide's Test Migration Locally), schema compared."""

    revision: str
    upgrade_ok: bool
    downgrade_ok: bool | None
    restored: bool | None
    reupgrade_ok: bool | None
    error: str = ""
    not_restored: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    #: Why the check itself could not run on this revision (not a verdict on the revision): env.py, the
    #: scratch database or the graph raised before or between the migration steps.
    could_not_run: str = ""

    @classmethod
    def failed_to_run(cls, revision: str, err: BaseException) -> StepCheck:
        reason = CouldNotRun.of("round trip", err).reason
        log.debug("round trip of %s could not run", revision, exc_info=True)
        return cls(revision, False, None, None, None, f"could not run: {reason}", could_not_run=reason)

    @property
    def ok(self) -> bool:
        return bool(self.upgrade_ok and self.downgrade_ok and self.restored and self.reupgrade_ok)

    def findings(self, prefix: str = "round-trip") -> list[Finding]:
        if self.could_not_run:
            # An error: review cannot vouch for a downgrade it could not run.
            return [Finding(f"{prefix}:could-not-run", "error", self.revision,
                            f"could not run: {self.could_not_run}")]
        out = []
        if not self.upgrade_ok:
            out.append(Finding(f"{prefix}:upgrade-failed", "error", self.revision, f"upgrade failed: {self.error}"))
        elif self.downgrade_ok is False:
            out.append(Finding(f"{prefix}:downgrade-failed", "error", self.revision, f"downgrade failed: {self.error}"))
        if self.restored is False:
            what = "; ".join(f"{r['change']} {r['object']}" + (f" ({r['after'] or r['before']})"
                                                                  if r["change"].startswith(("index", "constraint")) else "")
                             for r in self.not_restored.to_dict("records"))
            out.append(Finding(f"{prefix}:schema-not-restored", "error", self.revision,
                               f"the schema after downgrade differs from before upgrade: {what}"))
        if self.reupgrade_ok is False:
            out.append(Finding(f"{prefix}:reupgrade-failed", "error", self.revision,
                               f"upgrading again after the downgrade failed: {self.error}"))
        return out

    def as_row(self) -> dict[str, Any]:
        return {"revision": self.revision, "upgrade": self.upgrade_ok, "downgrade": self.downgrade_ok,
                "schema_restored": self.restored, "upgrade_again": self.reupgrade_ok, "error": self.error or None}


def _reason(err: BaseException) -> str:
    return getattr(err, "reason", None) or (str(err).splitlines() or [""])[0]


def _walk(mset: MigrationSet, engine: Engine, order: list[str]) -> tuple[list[StepCheck], list[str]]:
    """Take each revision of ``order`` up, down and up again, in one run of env.py; stop at the first failure.

    The steps are Alembic's own, one script each, so a single revision is undone even when the database has
    other heads (a branch, the other side of a merge), where ``downgrade -1`` is ambiguous; Alembic's head
    bookkeeping deletes or unmerges the version rows. Alembic commits each step before asking for the next,
    so the schema is read between steps from another connection. Running them in one env.py run rather than
    three per revision keeps a stairway over a long chain to seconds.
    """
    results: list[StepCheck] = []
    at: dict[str, Any] = {}

    def steps(script: Any, heads: tuple, ctx: Any) -> Iterator[Any]:
        for rev in order:
            revision = script.get_revision(rev)
            at.update(rev=rev, phase="upgrade", before=read_shape(engine, mset), changes=None, not_restored=None)
            yield MigrationStep.upgrade_from_script(script.revision_map, revision)
            at.update(phase="downgrade", changes=compare_shapes(at["before"], read_shape(engine, mset)))
            yield MigrationStep.downgrade_from_script(script.revision_map, revision)
            at.update(phase="reupgrade", not_restored=compare_shapes(at["before"], read_shape(engine, mset)))
            yield MigrationStep.upgrade_from_script(script.revision_map, revision)
            restored = at["not_restored"].empty
            results.append(StepCheck(rev, True, True, restored, True, "", at["not_restored"], at["changes"]))
            at.clear()
            if not restored:
                return

    try:
        migrations.drive(mset, engine, steps, direction="upgrade")
    except Exception as err:  # any failure is a result of the walk, named by revision and phase
        if at:
            failed_at = dict(at)
            confirmed = _finish_separately(mset, engine, at)
            if confirmed is not None:
                log.info("revision %s failed its %s in the shared env.py run and passed in runs of its own: %s",
                         confirmed.revision, failed_at["phase"], _reason(err))
                results.append(confirmed)
                rest = order[order.index(confirmed.revision) + 1:]
                if not confirmed.restored:
                    return results, rest
                more, not_run = _walk(mset, engine, rest)
                return results + more, not_run
            at = failed_at
        if not at:
            # Before the first step or between two: env.py, the graph or the connection, not a revision.
            rev = next((r for r in order if r not in {c.revision for c in results}), order[0] if order else "?")
            results.append(StepCheck.failed_to_run(rev, err))
            done = {r.revision for r in results}
            return results, [r for r in order if r not in done]
        phase = at["phase"]
        reason = _reason(err) if isinstance(err, MigrationFailed) else CouldNotRun.of("round trip", err).reason
        nr = at["not_restored"] if at["not_restored"] is not None else pd.DataFrame()
        changes = at["changes"] if at["changes"] is not None else pd.DataFrame()
        if phase == "upgrade":
            results.append(StepCheck(at["rev"], False, None, None, None, reason))
        elif phase == "downgrade":
            results.append(StepCheck(at["rev"], True, False, None, None, reason, changes=changes))
        else:
            results.append(StepCheck(at["rev"], True, True, nr.empty, False, reason, nr, changes))
    done = {r.revision for r in results}
    return results, [r for r in order if r not in done]


def _one_step(mset: MigrationSet, engine: Engine, rev: str, direction: str) -> None:
    """One Alembic step of ``rev`` (up or down), in an env.py run of its own."""
    make = MigrationStep.upgrade_from_script if direction == "upgrade" else MigrationStep.downgrade_from_script
    migrations.drive(mset, engine, lambda script, heads, ctx: [make(script.revision_map, script.get_revision(rev))],
                      direction=direction)


def _finish_separately(mset: MigrationSet, engine: Engine, at: dict[str, Any]) -> StepCheck | None:
    """The phases of ``at["rev"]`` from the one that failed on, each in an env.py run of its own.

    One env.py run for the whole walk is fast, but what lives as long as a run (SQLAlchemy's note that it
    created an ENUM type, an application's cache) can fail a step that passes in the separate runs a
    deployment makes; prefect's first revision re-creates its ``state_type`` enum only in a new run.
    Returns the revision's check when every remaining phase passes this way, None when the failure stands.
    """
    rev = at["rev"]
    try:
        if at["phase"] == "upgrade":
            _one_step(mset, engine, rev, "upgrade")
            at.update(phase="downgrade", changes=compare_shapes(at["before"], read_shape(engine, mset)))
        if at["phase"] == "downgrade":
            _one_step(mset, engine, rev, "downgrade")
            at.update(phase="reupgrade", not_restored=compare_shapes(at["before"], read_shape(engine, mset)))
        _one_step(mset, engine, rev, "upgrade")
    except Exception:  # noqa: BLE001 - the failure stands; the caller reports the first one
        return None
    return StepCheck(rev, True, True, at["not_restored"].empty, True, "", at["not_restored"], at["changes"])


@dataclass(frozen=True)
class RoundTrip:
    """The reviewed revision up, down, up on a database at its parent(s)."""

    migration_set: str
    step: StepCheck
    prepared: str = ""

    @property
    def ok(self) -> bool:
        return self.step.ok

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self.step.findings("round-trip"))

    def _repr_html_(self) -> str:
        verdict = "✔ schema restored, upgrade repeatable" if self.ok else "✘ " + "; ".join(
            f.message for f in self.findings)
        changes = self.step.changes.to_html(index=False) if not self.step.changes.empty else ""
        diff = (f"<p>Not restored by the downgrade:</p>{self.step.not_restored.to_html(index=False)}"
                if not self.step.not_restored.empty else "")
        return (f"<p>Round trip of <b>{html.escape(self.step.revision)}</b> ({html.escape(self.prepared)}): "
                f"{html.escape(verdict)}</p>{pd.DataFrame([self.step.as_row()]).to_html(index=False)}"
                f"<p>What the upgrade changed:</p>{changes}{diff}")


def round_trip(mset: MigrationSet, engine: Engine, revision: str = "heads") -> RoundTrip:
    """On an empty database: upgrade to the revision's parent(s), then upgrade, downgrade, upgrade it.

    The schema after the downgrade must equal the schema before the upgrade (columns, indexes, constraints,
    schemas, types), and the second upgrade must succeed. Migration failures are findings, not exceptions.
    """
    rev = migrations.resolve(mset, revision)[0] if revision else migrations.heads(mset)[0]
    info = {r.revision: r for r in migrations.history(mset)}[rev]
    prepared = ["the baseline"] if migrations.build_baseline(mset, engine) else []
    for parent in info.down_revisions:
        try:
            migrations.upgrade(mset, engine, parent)
            prepared.append(parent)
        except Exception as err:  # env.py or a parent revision: the reviewed revision never ran
            reason = _reason(err) if isinstance(err, DbRunbookError) else CouldNotRun.of("round trip", err).reason
            step = StepCheck(rev, False, None, None, None, f"could not run: preparing parent {parent}: {reason}",
                             could_not_run=f"preparing parent {parent}: {reason}")
            return RoundTrip(mset.name, step, "parents could not be applied")
    checks, _ = _walk(mset, engine, [rev])
    return RoundTrip(mset.name, checks[0], f"database prepared at {', '.join(prepared) or 'base'}")


@dataclass(frozen=True)
class Stairway:
    """Every revision of the chain, base first, up / down / up one step at a time (stops at the first failure)."""

    migration_set: str
    steps: tuple[StepCheck, ...]
    not_run: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and not self.not_run

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for s in self.steps for f in s.findings("stairway"))

    def as_frame(self) -> pd.DataFrame:
        rows = [s.as_row() for s in self.steps] + [
            {"revision": r, "upgrade": None, "downgrade": None, "schema_restored": None, "upgrade_again": None,
             "error": "not run (an earlier step failed)"} for r in self.not_run]
        return pd.DataFrame(rows, columns=["revision", "upgrade", "downgrade", "schema_restored", "upgrade_again",
                                           "error"])

    def _repr_html_(self) -> str:
        verdict = (f"✔ all {len(self.steps)} revisions go up, down and up again" if self.ok
                   else f"✘ {len(self.findings)} finding(s)")
        from dbrunbook.views.tables import frame_html

        return f"<p>Stairway of <code>{html.escape(self.migration_set)}</code>: {verdict}</p>" + \
            frame_html(self.as_frame())


def stairway(mset: MigrationSet, engine: Engine) -> Stairway:
    """The stairway test on an empty database: each revision, in dependency order, up, down and up."""
    migrations.build_baseline(mset, engine)
    checks, not_run = _walk(mset, engine, [r.revision for r in migrations.history(mset)])
    return Stairway(mset.name, tuple(checks), tuple(not_run))


# --- scratch databases ----------------------------------------------------------------------------------
class Scratch:
    """Where review runs migrations: fresh databases on the target's server, or on a throwaway server.

    Not a value object: it may own a running embedded server, stopped by ``close()`` (and at exit).
    """

    def __init__(self, admin_url: str, kind: str, *, run_id: str = "", server: Any = None,
                 folder: Path | None = None, reason: str = ""):
        self._admin_url, self.kind, self.run_id, self.reason = admin_url, kind, run_id, reason
        self._server, self._folder = server, folder
        if server is not None:
            atexit.register(self.close)

    @property
    def server(self) -> str:
        return db.mask_url(self._admin_url)

    @property
    def _engine_options(self) -> dict[str, Any]:
        return {"run_id": self.run_id or None, "lock_timeout": "10s", "statement_timeout": "10min"}

    @contextlib.contextmanager
    def database(self) -> Iterator[Engine]:
        """A fresh empty database for one check, dropped afterwards whatever happens."""
        name = f"dbrunbook_scratch_{uuid.uuid4().hex[:10]}"
        db.create_database(self._admin_url, name)
        engine = db.make_engine(db.with_database(self._admin_url, name), poolclass=NullPool,
                                **self._engine_options)
        try:
            yield engine
        finally:
            engine.dispose()
            db.drop_database(self._admin_url, name)

    def round_trip(self, source: RevisionSource) -> RoundTrip:
        """``round_trip`` on a fresh database; whatever raises is the result ("could not run: …"), not a crash."""
        try:
            with self.database() as engine:
                return isolation.call(round_trip, source.migration_set, engine, source.revision,
                                      engine_options=self._engine_options)
        except Exception as err:  # the scratch database, env.py, the graph: the review goes on
            return RoundTrip(source.migration_set.name, StepCheck.failed_to_run(source.revision, err),
                             "could not run")

    def stairway(self, source: RevisionSource | MigrationSet) -> Stairway:
        """``stairway`` on a fresh database; whatever raises is the result ("could not run: …"), not a crash."""
        mset = source.migration_set if isinstance(source, RevisionSource) else source
        try:
            with self.database() as engine:
                return isolation.call(stairway, mset, engine, engine_options=self._engine_options)
        except Exception as err:  # as for round_trip
            try:
                order = [r.revision for r in migrations.history(mset)]
            except Exception:  # noqa: BLE001 - the graph itself may be what failed
                order = []
            first = order[0] if order else "(chain)"
            return Stairway(mset.name, (StepCheck.failed_to_run(first, err),), tuple(order[1:]))

    def close(self) -> None:
        """Stop the throwaway server, if this scratch started one, and remove its files."""
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(DbRunbookError):
                server.stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _repr_html_(self) -> str:
        return (f"<p>Scratch databases: <b>{html.escape(self.kind)}</b> at <code>{html.escape(self.server)}</code>"
                f"{' — ' + html.escape(self.reason) if self.reason else ''}. Each check gets a fresh database, "
                f"dropped afterwards; the target is never migrated.</p>")


def scratch(s: Any) -> Scratch:
    """Choose where review runs: the target's server unless it is protected or we may not create databases."""
    reason = ""
    if s.target.protected:
        reason = f"target '{s.target.name}' is protected"
    else:
        with s.engine.connect() as conn:
            may = conn.execute(sa.text("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                               ).scalar()
            conn.rollback()
        if not may:
            reason = f"role '{s.identity.user}' may not create databases"
    if not reason:
        url = s.engine.url.render_as_string(hide_password=False)
        return Scratch(url, "databases on the target's server", run_id=s.run_id)
    from dbrunbook.postgres.embedded import EmbeddedServer

    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-scratch-"))
    server = EmbeddedServer(folder / "data", durable=False)
    try:
        url = server.start()
    except DbRunbookError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Scratch(url, "a throwaway embedded server", run_id=s.run_id, server=server, folder=folder,
                   reason=reason)


# --- the checklist --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Review:
    """The guide's review checklist for one revision, answered from the evidence, and every finding."""

    revision: str
    migration_set: str
    checklist: pd.DataFrame = field(compare=False)
    findings: tuple[Finding, ...] = ()

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == "error")

    @property
    def passed(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "migration_set": self.migration_set, "passed": self.passed,
                "checklist": self.checklist.to_dict("records"), "findings": [f.as_dict() for f in self.findings]}

    def _repr_html_(self) -> str:
        verdict = ("✔ passes review" if self.passed else f"✘ fails review: {len(self.errors)} error(s)")
        errors = findings_frame(self.errors).to_html(index=False) if self.errors else ""
        return (f"<p><b>{html.escape(self.revision)}</b> {verdict}</p>{self.checklist.to_html(index=False)}"
                f"{errors}")


_TYPE_FLAGS = [
    (re.compile(r"^character varying$"), "VARCHAR without a length"),
    (re.compile(r"^timestamp without time zone"), "timestamp without time zone (prefer timestamptz)"),
    (re.compile(r"^json$"), "json (prefer jsonb)"),
]


def _answer(status: str, evidence: list[str], empty: str) -> tuple[str, str]:
    return status, "; ".join(evidence) if evidence else empty


def checklist(source: RevisionSource, python: Lint, sql: Lint, trip: RoundTrip, stairs: Stairway,
              s: Any = None) -> Review:
    """Answer the guide's five review questions from the evidence; with a session, save artifacts/review.json.

    1. column types, 2. nullability, 3. foreign keys, 4. indexes, 5. downgrade. Each row says ok, warning or
    problem with the objects it is about, so the reviewer reads a verdict per question, not a diff.
    """
    changes = trip.step.changes
    added = changes[changes["change"].isin(["column added", "column changed"])] if not changes.empty else changes
    columns = [f"{r['object']} {r['after']}" for r in added.to_dict("records")] if not added.empty else []
    flags = []
    for r in (added.to_dict("records") if not added.empty else []):
        col_type = (r["after"] or "").replace(" NOT NULL", "")
        flags += [f"{r['object']}: {why}" for pattern, why in _TYPE_FLAGS if pattern.match(col_type)]
    rows = []
    status, text = _answer("warning" if flags else "ok", flags or columns, "no column added or changed")
    rows.append({"question": "1. Column types are correct", "answer": status, "evidence": text})

    not_null = [c for c in columns if c.endswith("NOT NULL")]
    risky = [f.message for f in python.findings if f.rule == "not-null-without-default"]
    risky += [f.message for f in sql.findings if f.rule == "squawk:adding-required-field"]
    status, text = _answer("warning" if risky else "ok", risky or [f"NOT NULL: {c}" for c in not_null],
                           "no NOT NULL column added")
    rows.append({"question": "2. Nullable constraints match your intent", "answer": status, "evidence": text})

    constraints = changes[changes["change"] == "constraint added"] if not changes.empty else changes
    fks = [f"{r['object']}: {r['after']}" for r in constraints.to_dict("records")
           if "FOREIGN KEY" in (r["after"] or "")] if not constraints.empty else []
    status, text = _answer("ok", fks, "no foreign key added")
    rows.append({"question": "3. Foreign keys reference correct tables", "answer": status, "evidence": text})

    indexes = changes[changes["change"] == "index added"] if not changes.empty else changes
    index_rows = indexes.to_dict("records") if not indexes.empty else []
    new_tables = set(changes[changes["change"] == "table added"]["object"]) if not changes.empty else set()
    unindexed = []
    for fk in fks:
        table, definition = fk.split(": ", 1)
        m = re.search(r"FOREIGN KEY \(([^)]+)\)", definition)
        first = m.group(1).split(",")[0].strip() if m else ""
        covered = any(r["object"] == table and re.search(rf"USING \w+ \({re.escape(first)}[,)]", r["after"])
                      for r in index_rows)
        # Only a table this revision creates has all its indexes in the diff; older tables may have one already.
        if first and not covered and table in new_tables:
            unindexed.append(f"{table}.{first}: foreign key without an index (joins and ON DELETE scan the table)")
    slow = [f"squawk: {f.message}" for f in sql.findings if f.rule == "squawk:require-concurrent-index-creation"]
    status, text = _answer("warning" if unindexed else "ok",
                           unindexed + [r["after"] for r in index_rows] + slow, "no index added")
    rows.append({"question": "4. Indexes are created where needed", "answer": status, "evidence": text})

    down = [f.message for f in python.errors if f.rule in ("empty-downgrade", "irreversible-downgrade")]
    down += [f.message for f in trip.findings]
    status, text = _answer("problem" if down else "ok", down,
                           "downgrade ran, the schema came back, and upgrading again worked")
    rows.append({"question": "5. Downgrade function properly reverts changes", "answer": status, "evidence": text})

    findings = python.findings + sql.findings + trip.findings + stairs.findings
    result = Review(source.revision, source.migration_set.name,
                    pd.DataFrame(rows, columns=["question", "answer", "evidence"]), findings)
    if s is not None:
        s.save_artifact("review.json", json.dumps(result.as_dict(), indent=1, sort_keys=True, default=str) + "\n")
    return result


def require_passing(review: Review) -> None:
    """Guard: stop the runbook (exit 3) when review found errors.

    Raises:
        ReviewFailed: with every error finding.
    """
    if review.passed:
        print(f"Revision {review.revision} passes review.")
        return
    listed = "; ".join(f"{f.rule} ({f.revision}): {f.message}" for f in review.errors)
    raise ReviewFailed(
        f"Revision '{review.revision}' of migration set '{review.migration_set}' fails review with "
        f"{len(review.errors)} error(s): {listed}. Fix the revision, then run 'dbrunbook run review -p "
        f"migration_set {review.migration_set} -p revision {review.revision}' again."
    )


def review(s: Any, revision: str = "", migration_set: str = "main") -> Review:
    """Everything the review runbook does, in one call (for scripts and tests); saves no artifact itself."""
    source = revision_source(s, revision, migration_set)
    place = scratch(s)
    try:
        trip, stairs = place.round_trip(source), place.stairway(source)
    finally:
        place.close()
    return checklist(source, lint_python(source), lint_sql(source), trip, stairs)


def migration_set_for(alembic_ini: str | Path, *, section: str = "alembic", version_table: str = "alembic_version",
                      env: dict[str, str] | None = None, name: str = "project") -> MigrationSet:
    """A MigrationSet for an alembic.ini outside any dbrunbook.toml (the pytest plugin's way in)."""
    path = Path(alembic_ini).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. Pass the path of your alembic.ini (or pyproject.toml).")
    return MigrationSet(name=name, alembic_ini=path, section=section, version_table=version_table,
                        env=dict(env or {}))
