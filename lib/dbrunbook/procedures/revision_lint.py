"""The revision under review, what review finds in it, and its two lints: the Python source and the rendered SQL.

Review reads a revision before it runs it: ``lint_python`` walks the script's ast for what the guide says
autogenerate and offline rendering cannot handle, ``lint_sql`` renders the upgrade offline and hands it to
squawk. Both answer in ``ReviewFinding``s of one revision, which the round trip, the stairway and the checklist
use as well, so the source and the finding live here, below them.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dbrunbook.chain import migrations
from dbrunbook.config import Config, MigrationSet
from dbrunbook.errors import ConfigError, ParameterError
from dbrunbook.protocol import SessionLike
from dbrunbook.safety.lint_rules import LEVELS, revision_issues, squawk_binary, squawk_output, squawk_said

__all__ = [
    "LEVELS",
    "PYTHON_RULES",
    "REVIEW_LEVELS",
    "SQUAWK_EXCLUDED",
    "ReviewFinding",
    "Lint",
    "RevisionSource",
    "findings_frame",
    "lint_python",
    "lint_sql",
    "revision_source",
]


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


def revision_source(s: SessionLike | Config, revision: str = "", migration_set: str = "main") -> RevisionSource:
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
@dataclass(frozen=True)
class ReviewFinding:
    """One thing review found: ``error`` fails the review, ``warning`` and ``info`` are for the reviewer."""

    rule: str
    level: str
    revision: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def findings_frame(findings: tuple[ReviewFinding, ...]) -> pd.DataFrame:
    """Findings as a table, one row each, in the columns a reviewer reads them by."""
    return pd.DataFrame([f.as_dict() for f in findings], columns=["rule", "level", "revision", "line", "message"])


@dataclass(frozen=True)
class Lint:
    """Findings of one linter on one revision, with what it read (Python source or rendered SQL)."""

    kind: str
    revision: str
    findings: tuple[ReviewFinding, ...]
    text: str = ""

    @property
    def errors(self) -> tuple[ReviewFinding, ...]:
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


def _finding(rule: str, revision: str, node: ast.AST | None = None, **what: Any) -> ReviewFinding:
    level, message = PYTHON_RULES[rule]
    return ReviewFinding(rule, level, revision, message.format(**what), getattr(node, "lineno", None))


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _const(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _kw(node: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _function_findings(fn: ast.FunctionDef, name: str, revision: str) -> list[ReviewFinding]:
    """Review's own ``PYTHON_RULES`` on one of the revision's functions (``upgrade`` or ``downgrade``)."""
    found: list[ReviewFinding] = []
    dropped_cols: dict[Any, ast.Call] = {}
    added_cols: dict[Any, ast.Call] = {}
    dropped_tables: dict[Any, ast.Call] = {}
    created_tables: dict[Any, ast.Call] = {}
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
                    column_name = _const(column.args[0]) if column.args else "?"
                    found.append(_finding("not-null-without-default", revision, node,
                                          what=f"{_const(args[0])}.{column_name}"))
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
    return found


def lint_python(source: RevisionSource | str, revision: str = "") -> Lint:
    """Lint a revision's Python for what the guide says autogenerate and offline rendering cannot handle.

    The revision-file rules shared with the deploy lint (empty or raising downgrade, online-only calls,
    autocommit_block) come from ``lint_rules.revision_issues`` at review's levels (``REVIEW_LEVELS``),
    read in both directions and trusting an offline-mode check; then review's own ``PYTHON_RULES``.
    A revision whose upgrade() is empty (a merge point) legitimately has an empty downgrade().
    """
    text = source.text if isinstance(source, RevisionSource) else source
    revision = source.revision if isinstance(source, RevisionSource) else revision
    found = [ReviewFinding(i.rule, REVIEW_LEVELS.get(i.rule, i.level), revision, f"{i.why}; {i.instead}", i.line)
             for i in revision_issues(text, with_downgrade=True, trust_offline_guard=True)]
    tree = ast.parse(text)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("upgrade", "downgrade"):
        fn = functions.get(name)
        if fn is not None:
            found += _function_findings(fn, name, revision)
    return Lint("Python lint", revision, tuple(found), text)


# --- SQL lint (squawk) ----------------------------------------------------------------------------------
#: dbrunbook's engines set lock_timeout and statement_timeout on every connection, so squawk's rules asking
#: for them in the SQL are noise here.
SQUAWK_EXCLUDED = ("require-timeout-settings",)


def _squawk_binary() -> str | None:
    """The deploy lint's squawk (next to this interpreter or on PATH); None when it is not installed."""
    try:
        return str(squawk_binary())
    except ConfigError:
        return None


def _offline_step(mset: MigrationSet, info: migrations.RevisionInfo) -> migrations.SqlStep:
    """The revision's offline SQL; for an online-only revision, a comment that says why there is none."""
    steps = migrations.offline_sql(mset, ",".join(info.down_revisions) or None, info.revision)
    step = next(st for st in steps if st.revision == info.revision)
    if getattr(step, "online_only", False):
        # Its real SQL is seen where it runs: review's round trip on a scratch database.
        return dataclasses.replace(step, sql=f"-- {step.problem}\n", sha256="")
    return step


def lint_sql(source: RevisionSource, s: SessionLike | None = None) -> Lint:
    """Render the revision's upgrade SQL offline and run ``squawk --reporter json`` on it.

    With a session ``s``, the SQL is saved as artifact ``review-REVISION.sql`` of the run and squawk is told
    the server's version. A revision that cannot be rendered offline is an error finding (the preview and
    deploy runbooks need that SQL).
    """
    try:
        step = _offline_step(source.migration_set, source.info)
    except Exception as err:  # anything env.py or the migration raises while rendering offline
        return Lint("SQL lint", source.revision, (ReviewFinding(
            "offline-render-failed", "error", source.revision,
            f"'alembic upgrade --sql' fails for this revision: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"),))
    if s is not None:
        s.save_artifact(f"review-{source.revision}.sql", step.sql)
    findings = tuple(_squawk(step.sql, source.revision, s.identity.server_version if s is not None else None))
    return Lint("SQL lint", source.revision, findings, step.sql)


def _squawk(sql: str, revision: str, pg_version: str | None = None) -> list[ReviewFinding]:
    binary = _squawk_binary()
    if binary is None:
        return [ReviewFinding("squawk-missing", "info", revision, "squawk is not installed (pip install squawk-cli)")]
    cmd = [binary, "--reporter", "json", "--stdin-filepath", f"{revision}.sql"]
    cmd += [f"--exclude={','.join(SQUAWK_EXCLUDED)}"]
    if pg_version:
        cmd.append(f"--pg-version={pg_version.split()[0]}")
    proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
    reports = squawk_output(proc.returncode, proc.stdout)
    if reports is None:  # the SQL went unlinted: the reviewer is told, the rest of the review goes on
        return [ReviewFinding("squawk-failed", "warning", revision, f"squawk exited {proc.returncode} "
                              f"({squawk_said(proc.stdout, proc.stderr, 200)}): the SQL was not linted by squawk")]
    # One finding per rule, with how often and where: squawk repeats itself for every column of a table.
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        grouped.setdefault(str(r.get("rule_name")), []).append(r)
    out = []
    for rule, hits in grouped.items():
        lines = sorted({h["line"] for h in hits if h.get("line") is not None})
        where = f" ({len(hits)} times, lines {', '.join(map(str, lines))})" if len(hits) > 1 else ""
        out.append(ReviewFinding(f"squawk:{rule}", "warning", revision,
                           f"{hits[0].get('message')} {hits[0].get('help') or ''}".strip() + where,
                           lines[0] if lines else None))
    return out
