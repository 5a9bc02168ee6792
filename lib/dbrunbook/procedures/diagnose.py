"""Troubleshoot a target: recognise the guide's problems with their evidence, cause and an auditable next step.

Each ``check_*`` function looks at one problem of the guide's *Troubleshooting* section (and three more the
guide warns about elsewhere: multiple heads, drift, edited applied migrations) for every migration set of a
target, and returns a ``CheckResult``: the problems it found, each with the queries it ran and what they
returned, or a one-line all-clear saying what it looked at. Nothing here changes the database or ends a
session: the troubleshoot runbook reads, the operator decides. ``diagnose(session)`` runs every check.

A check that raises on a project (an env.py or models module that needs something, SQL that cannot be
rendered) does not end the diagnosis: its result says "could not run: <reason>" (per migration set when
only one set fails) and the other checks still run.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError, DbRunbookError, GuardStop
from dbrunbook.execution.protocol import STATEMENT_FILE
from dbrunbook.postgres import sqlimpact, sqltext
from dbrunbook.procedures.checks import CouldNotRun

log = logging.getLogger(__name__)

__all__ = [
    "CheckResult", "Diagnosis", "Problem", "check_blocking", "check_drift", "check_duplicate_keys",
    "check_edited_migrations", "check_invalid_indexes", "check_multiple_heads", "check_objects_exist", "check_unknown_revision",
    "check_up_to_date", "created_objects", "describe_diff", "diagnose", "parse_inserts", "split_statements", "summary",
]

DIAGNOSIS_ARTIFACT = "diagnosis.json"

#: The guide's wording for each problem (its Troubleshooting headings, or the best-practice it breaks).
TITLES = {
    "not_up_to_date": "Target database is not up to date",
    "unknown_revision": "Can't locate revision identified by '{revision}'",
    "already_exists": "Column already exists",
    "duplicate_key": "Duplicate key value violates unique constraint",
    "blocked": "Migration takes too long",
    "multiple_heads": "Multiple head revisions are present",
    "drift": "Database schema differs from the models (alembic check)",
    "edited_migration": "Never edit applied migrations",
    "invalid_index": "Invalid index left by CREATE INDEX CONCURRENTLY",
}


# --- value objects --------------------------------------------------------------------------------------
def _frame_html(evidence: pd.DataFrame | str) -> str:
    if isinstance(evidence, pd.DataFrame):
        from dbrunbook.views.tables import frame_html

        return frame_html(evidence, empty="(no rows)")
    return f"<pre>{html.escape(str(evidence))}</pre>"


@dataclass(frozen=True)
class Problem:
    """One problem found on a target: what (the guide's title), the evidence, why, and what to run next."""

    code: str
    title: str
    migration_set: str | None
    evidence: pd.DataFrame | str = field(compare=False)
    cause: str
    next_step: str
    queries: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        evidence = (self.evidence.astype(object).where(self.evidence.notna(), None).to_dict("records")
                    if isinstance(self.evidence, pd.DataFrame) else self.evidence)
        return {"code": self.code, "title": self.title, "migration_set": self.migration_set,
                "evidence": evidence, "cause": self.cause, "next_step": self.next_step,
                "queries": list(self.queries)}

    def _repr_html_(self) -> str:
        where = f" — migration set <code>{html.escape(self.migration_set)}</code>" if self.migration_set else ""
        queries = "".join(f"<pre>{html.escape(q)}</pre>" for q in self.queries)
        return (f"<h4>⚠ {html.escape(self.title)}{where}</h4>"
                f"<p><b>Evidence</b></p>{queries}{_frame_html(self.evidence)}"
                f"<p><b>Cause</b>: {html.escape(self.cause)}</p>"
                f"<p><b>Next step</b>: <code>{html.escape(self.next_step)}</code></p>")


@dataclass(frozen=True)
class CheckResult:
    """What one check found: its problems, or what it looked at when there were none."""

    code: str
    title: str
    problems: tuple[Problem, ...]
    checked: str
    #: Why the check (or its part for some migration sets) could not run; empty when it ran.
    could_not_run: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.could_not_run

    def _repr_html_(self) -> str:
        if self.ok:
            return f"<p>✔ <b>{html.escape(self.title)}</b>: no problem. {html.escape(self.checked)}</p>"
        failed = (f"<p>⚠ <b>{html.escape(self.title)}</b>: could not run: {html.escape(self.could_not_run)}. "
                  f"The other checks still ran. {html.escape(self.checked)}</p>" if self.could_not_run else "")
        return failed + "\n".join(p._repr_html_() for p in self.problems)


@dataclass(frozen=True)
class Diagnosis:
    """Every check run on a target; ``problems`` empty means all clear."""

    target: str
    checks: tuple[CheckResult, ...]

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for c in self.checks for p in c.problems)

    @property
    def could_not_run(self) -> tuple[CheckResult, ...]:
        """The checks that raised (wholly or for some migration sets): what this diagnosis could not see."""
        return tuple(c for c in self.checks if c.could_not_run)

    @property
    def all_clear(self) -> bool:
        return not self.problems and not self.could_not_run

    def as_frame(self) -> pd.DataFrame:
        rows = [{"problem": p.title, "migration_set": p.migration_set, "next_step": p.next_step}
                for p in self.problems]
        rows += [{"problem": f"{c.title}: could not run: {c.could_not_run}", "migration_set": None,
                  "next_step": f"{_again(self.target)}  (once the cause is fixed)"} for c in self.could_not_run]
        return pd.DataFrame(rows, columns=["problem", "migration_set", "next_step"])

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "all_clear": self.all_clear,
                "could_not_run": [c.code for c in self.could_not_run],
                "checks": [{"code": c.code, "title": c.title, "checked": c.checked,
                            "could_not_run": c.could_not_run or None,
                            "problems": [p.as_dict() for p in c.problems]} for c in self.checks]}

    def _repr_html_(self) -> str:
        if self.all_clear:
            looked = "".join(f"<li>{html.escape(c.title)}: {html.escape(c.checked)}</li>" for c in self.checks)
            return (f"<p>✔ <b>All clear</b> on target <code>{html.escape(self.target)}</code>: "
                    f"{len(self.checks)} checks, no problem found.</p><ul>{looked}</ul>")
        head = (f"<p><b>{len(self.problems)} problem(s)</b> on target <code>{html.escape(self.target)}</code>, "
                f"in the order to deal with them"
                + (f"; {len(self.could_not_run)} check(s) could not run" if self.could_not_run else "")
                + ":</p>")
        return head + self.as_frame().to_html(index=False) + "\n".join(
            f"<h3>{i}. {html.escape(p.title)}</h3>{p._repr_html_()}" for i, p in enumerate(self.problems, 1)
        ) + "\n".join(c._repr_html_() for c in self.could_not_run if not c.problems)


# --- helpers --------------------------------------------------------------------------------------------
def _again(target: str) -> str:
    return f"dbrunbook run troubleshoot -t {target}"


def _completes(code: str, title: str) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """A check that raises returns "could not run: <reason>" instead; the diagnosis goes on.

    When the check covers several migration sets and fails, it is run again set by set, so the sets it can
    look at are still diagnosed and the row names the set(s) it could not.
    """
    def wrap(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        @functools.wraps(fn)
        def inner(s: Any, *args: Any, **kwargs: Any) -> CheckResult:
            try:
                return fn(s, *args, **kwargs)
            except GuardStop:
                raise
            except Exception as err:  # anything a project's code or SQL raises: the reason is the result
                whole = CouldNotRun.of(title, err)
                log.debug("check %s could not run", code, exc_info=True)
            if code == "blocked":
                return CheckResult(code, title, (), f"could not run: {whole.reason}", whole.reason)
            selection = args[0] if args else kwargs.get("migration_set", "all")
            try:
                sets = s.sets(selection)
            except Exception:  # noqa: BLE001 - the selection itself is what failed
                sets = []
            if len(sets) < 2:
                return CheckResult(code, title, (), f"could not run: {whole.reason}", whole.reason)
            problems: list[Problem] = []
            notes, failed = [], []
            for m in sets:
                try:
                    one = fn(s, m.name, *args[1:], **{k: v for k, v in kwargs.items() if k != "migration_set"})
                except GuardStop:
                    raise
                except Exception as err:  # noqa: BLE001 - as above, for this set only
                    reason = CouldNotRun.of(title, err).reason
                    notes.append(f"{m.name}: could not run: {reason}")
                    failed.append(f"{m.name}: {reason}")
                    continue
                problems += one.problems
                notes.append(one.checked)
            return CheckResult(code, title, tuple(problems), "; ".join(n for n in notes if n), "; ".join(failed))
        return inner
    return wrap


def _command(s: Any, runbook: str, **parameters: Any) -> str:
    parts = [f"dbrunbook run {runbook} -t {s.target.name}"]
    for name, value in parameters.items():
        if isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"-p {name} {value}")
    return " ".join(parts)


def _version_query(mset: MigrationSet) -> str:
    table = f"{mset.version_table_schema}.{mset.version_table}" if mset.version_table_schema else mset.version_table
    return f"SELECT version_num FROM {table}"


def _known(mset: MigrationSet) -> dict[str, migrations.RevisionInfo]:
    return {r.revision: r for r in migrations.history(mset)}


def _ancestry(known: dict[str, migrations.RevisionInfo], revisions: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(revisions)
    while stack:
        rev = stack.pop()
        if rev in seen or rev not in known:
            continue
        seen.add(rev)
        stack.extend(known[rev].down_revisions)
    return seen


def _state(s: Any, mset: MigrationSet) -> tuple[tuple[str, ...], dict[str, migrations.RevisionInfo]]:
    return migrations.current(mset, s.engine), _known(mset)


def _pending_steps(s: Any, mset: MigrationSet) -> tuple[list[migrations.SqlStep], str]:
    """The offline SQL of what ``upgrade heads`` would run, or ``[]`` and why not."""
    cur, known = _state(s, mset)
    if any(c not in known for c in cur):
        return [], f"{mset.name}: skipped, the version table names an unknown revision (check 2)"
    if not migrations.pending(mset, s.engine):
        return [], f"{mset.name}: nothing pending"
    try:
        return migrations.offline_sql(mset, ",".join(cur) or None, "heads"), ""
    except DbRunbookError as err:
        return [], f"{mset.name}: the pending SQL could not be rendered offline ({err})"


def _is_version_table(mset: MigrationSet, name: str) -> bool:
    """Alembic creates and fills the version table itself: not an object or a row a revision adds."""
    return _column_name(re.findall(_IDENT, name)[-1]) == mset.version_table.lower()


def _raw_rows(conn: Connection, sql: str) -> list[tuple]:
    """Run SQL taken verbatim from a rendered migration: no bind-parameter parsing of its ':' and '%'."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


# --- SQL reading ----------------------------------------------------------------------------------------
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_NAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script, comments dropped, literals kept as written (see ``sqltext``)."""
    return [statement.code for statement in sqltext.split_statements(sql)]


def _schema_of(name: str) -> str | None:
    parts = re.findall(_IDENT, name)
    return parts[0] if len(parts) == 2 else None


def _column_name(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.lower()


_CREATED = [
    ("table", re.compile(rf"^CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})", re.IGNORECASE)),
    ("view", re.compile(rf"^CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})", re.IGNORECASE)),
    ("sequence", re.compile(rf"^CREATE\s+SEQUENCE\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_NAME})", re.IGNORECASE)),
    ("schema", re.compile(rf"^CREATE\s+SCHEMA\s+(?!IF\s+NOT\s+EXISTS)(?P<name>{_IDENT})", re.IGNORECASE)),
    ("type", re.compile(rf"^CREATE\s+TYPE\s+(?P<name>{_NAME})", re.IGNORECASE)),
    ("index", re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?!IF\s+NOT\s+EXISTS)"
                         rf"(?P<name>{_IDENT})\s+ON\s+(?:ONLY\s+)?(?P<table>{_NAME})", re.IGNORECASE)),
]
_ALTER = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_NAME})\s+(?P<rest>.*)$",
                    re.IGNORECASE | re.DOTALL)
_ADD_COLUMN = re.compile(rf"^ADD\s+(?:COLUMN\s+)?(?!IF\s+NOT\s+EXISTS|CONSTRAINT\b)(?P<col>{_IDENT})\s+(?P<type>.+)$",
                         re.IGNORECASE | re.DOTALL)
_ADD_CONSTRAINT = re.compile(rf"^ADD\s+CONSTRAINT\s+(?P<name>{_IDENT})\s+(?P<def>.+)$", re.IGNORECASE | re.DOTALL)


def created_objects(sql: str) -> list[dict[str, str]]:
    """The objects a piece of SQL creates: ``{kind, name, table, expected}``, in order.

    Only statements that would fail when the object exists are listed (``IF NOT EXISTS`` ones are not).
    """
    found: list[dict[str, str]] = []
    for statement in split_statements(sql):
        parsed = sqlimpact.creates(statement)
        if parsed is not None:  # read by PostgreSQL's parser; the patterns below only for text it rejects
            found += parsed
            continue
        flat = " ".join(statement.split())
        for kind, pattern in _CREATED:
            m = pattern.match(flat)
            if m:
                table = m.groupdict().get("table") or ""
                name = m.group("name")
                if kind == "index" and _schema_of(table):
                    name = f"{_schema_of(table)}.{name}"
                found.append({"kind": kind, "name": name, "table": table, "expected": flat[:120]})
                break
        else:
            m = _ALTER.match(flat)
            if not m:
                continue
            # One ALTER TABLE may add several things, comma separated at the top level.
            for clause in _top_level_split(m.group("rest")):
                col = _ADD_COLUMN.match(clause)
                con = _ADD_CONSTRAINT.match(clause)
                if con:
                    found.append({"kind": "constraint", "name": con.group("name"), "table": m.group("table"),
                                  "expected": con.group("def")[:120]})
                elif col:
                    found.append({"kind": "column", "name": col.group("col"), "table": m.group("table"),
                                  "expected": col.group("type")[:120]})
    return found


def _top_level_split(text: str) -> list[str]:
    parts, depth, buf, quote = [], 0, [], None
    for ch in text:
        if quote:
            buf.append(ch)
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


_INSERT = re.compile(rf"^INSERT\s+INTO\s+(?P<table>{_NAME})\s*\((?P<cols>[^)]*)\)\s*VALUES\s*(?P<values>.+)$",
                     re.IGNORECASE | re.DOTALL)


def parse_inserts(sql: str) -> list[dict[str, Any]]:
    """``INSERT INTO t (cols) VALUES ...`` statements: ``{table, columns, values, on_conflict}``.

    ``values`` is the SQL text of the row list, to be used verbatim as a ``VALUES`` list; INSERT … SELECT
    and INSERT without a column list are not listed (their rows cannot be known without running them).
    """
    found = []
    for statement in split_statements(sql):
        if sqlimpact.describe(statement).parsed:  # read by PostgreSQL's parser; the pattern only as fallback
            if (row := sqlimpact.inserted_rows(statement)) is not None:
                found.append(row)
            continue
        m = _INSERT.match(statement.strip())
        if not m:
            continue
        values = m.group("values")
        on_conflict = re.search(r"\bON\s+CONFLICT\b", values, re.IGNORECASE)
        values = values[:on_conflict.start()] if on_conflict else values
        values = re.split(r"\bRETURNING\b", values, flags=re.IGNORECASE)[0].strip()
        found.append({"table": m.group("table"), "columns": [_column_name(c.strip()) for c in m.group("cols").split(",")],
                      "values": values, "on_conflict": bool(on_conflict)})
    return found


# --- 1. not up to date ----------------------------------------------------------------------------------
@_completes("not_up_to_date", TITLES["not_up_to_date"])
def check_up_to_date(s: Any, migration_set: str = "all") -> CheckResult:
    """The guide's *Target database is not up to date*: ``alembic current`` differs from ``alembic heads``."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = _state(s, m)
        hd = migrations.heads(m)
        if any(c not in known for c in cur):
            notes.append(f"{m.name}: skipped, unknown revision in the version table (check 2)")
            continue
        pend = migrations.pending(m, s.engine)
        if not pend:
            notes.append(f"{m.name}: at {', '.join(cur) or 'base'} = heads")
            continue
        evidence = pd.DataFrame([{"revision": r.revision, "description": r.message, "merge": r.is_merge,
                                  "file": r.path.name} for r in pend],
                                columns=["revision", "description", "merge", "file"])
        runbook = "deploy" if s.target.protected else "apply"
        several = (f"The database has {len(cur)} current revisions: a partial downgrade of a merge (or an "
                   f"interrupted upgrade of several branches) left one version row per branch; upgrading "
                   f"joins them again. " if len(cur) > 1 else "")
        problems.append(Problem(
            code="not_up_to_date", title=TITLES["not_up_to_date"], migration_set=m.name, evidence=evidence,
            cause=(f"alembic current is {', '.join(cur) or '(base)'}; alembic heads is {', '.join(hd)}: "
                   f"{len(pend)} revision(s) are pending. {several}Review them with "
                   f"'{_command(s, 'preview', migration_set=m.name)}' before applying."),
            next_step=_command(s, runbook, migration_set=m.name, dry_run=False),
            queries=(_version_query(m),),
        ))
    return CheckResult("not_up_to_date", TITLES["not_up_to_date"], tuple(problems), "; ".join(notes))


# --- 2. unknown revision --------------------------------------------------------------------------------
def _sightings(s: Any, mset: MigrationSet) -> list[dict[str, Any]]:
    """Every run (ledger rows of this database, records under outputs/) that moved this set's heads."""
    rows = []
    for row in records.ledger_rows(s.engine):
        before = (row.get("heads_before") or {}).get(mset.name)
        after = (row.get("heads_after") or {}).get(mset.name)
        if after is not None:
            rows.append({"source": "ledger", "run_id": row["run_id"], "runbook": row["runbook"],
                         "when": str(row.get("finished_at") or row.get("started_at") or ""),
                         "heads_before": list(before or []), "heads_after": list(after or [])})
    ident = s.identity
    for run_dir in records.find_records(s.config.outputs_dir):
        path = run_dir / STATEMENT_FILE
        if not path.is_file():
            continue
        try:
            predicate = json.loads(path.read_text(encoding="utf-8"))["predicate"]
        except (ValueError, KeyError):
            continue
        database = predicate.get("database") or {}
        if (database.get("system_identifier"), database.get("database")) != (ident.system_identifier,
                                                                             ident.database):
            continue
        after = (predicate.get("heads_after") or {}).get(mset.name)
        if after is not None:
            rows.append({"source": f"record {run_dir}", "run_id": predicate.get("run_id"),
                         "runbook": predicate.get("runbook"), "when": str(predicate.get("finished_at")),
                         "heads_before": list((predicate.get("heads_before") or {}).get(mset.name) or []),
                         "heads_after": list(after)})
    return rows


def _nearest_known(revision: str, sightings: list[dict], known: dict) -> str | None:
    """Follow 'run went from heads_before to heads_after' edges down from ``revision`` to a known one."""
    frontier, seen = [revision], set()
    while frontier:
        rev = frontier.pop(0)
        if rev in seen:
            continue
        seen.add(rev)
        for row in sightings:
            if rev in row["heads_after"] and rev not in row["heads_before"]:
                for parent in row["heads_before"]:
                    if parent in known:
                        return parent
                    frontier.append(parent)
    return None


@_completes("unknown_revision", "Can't locate revision")
def check_unknown_revision(s: Any, migration_set: str = "all") -> CheckResult:
    """The guide's *Can't locate revision identified by …*: the version table names a revision no script has.

    The ledger and the signed records say which run put the unknown id there and from which heads, so the
    nearest known ancestor (what to stamp to) can often be named rather than guessed.
    """
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = _state(s, m)
        unknown = [c for c in cur if c not in known]
        if not unknown:
            notes.append(f"{m.name}: every id in {m.version_table} has a script")
            continue
        sightings = _sightings(s, m)
        for rev in unknown:
            seen = [r for r in sightings if rev in r["heads_after"] or rev in r["heads_before"]]
            evidence = pd.DataFrame(
                [{**r, "heads_before": ", ".join(r["heads_before"]), "heads_after": ", ".join(r["heads_after"])}
                 for r in seen], columns=["source", "run_id", "runbook", "when", "heads_before", "heads_after"])
            ancestor = _nearest_known(rev, sightings, known)
            others = [c for c in cur if c != rev]
            where = m.alembic_ini.parent if m.alembic_ini else m.script_location
            if ancestor:
                stamp_to = ",".join(sorted(set(others) | {ancestor}))
                later = [r for r in _known(m) if r not in _ancestry(known, [ancestor, *others])]
                cause = (f"The version table {m.version_table} says '{rev}', which no script under {where} "
                         f"defines: a rolled-back application or a deleted file. Run "
                         f"'{seen[-1]['run_id'] if seen else '?'}' put it there on top of '{ancestor}'. "
                         f"Stamping to '{ancestor}' records the database as at '{ancestor}' without touching "
                         f"the schema: what '{rev}' changed stays, unknown to the scripts (check drift), and "
                         f"the next upgrade would run {len(later)} revision(s)"
                         f"{': ' + ', '.join(later) if later else ''}. First restore the file (git log "
                         f"--all -- '*{rev}*'); stamp only if it is gone for good.")
                next_step = _command(s, "stamp", migration_set=m.name, revision=stamp_to, dry_run=False)
            else:
                cause = (f"The version table {m.version_table} says '{rev}', which no script under {where} "
                         f"defines, and no ledger row or record of this database mentions it: the migration "
                         f"file is missing from this checkout (pull the branch that has it), or the database "
                         f"was migrated by another tool. Stamp only once you know which revision the schema "
                         f"really matches (compare with the drift check).")
                next_step = _command(s, "status", migration_set=m.name)
            problems.append(Problem(
                code="unknown_revision", title=TITLES["unknown_revision"].format(revision=rev),
                migration_set=m.name, evidence=evidence if not evidence.empty else
                f"{_version_query(m)} -> {', '.join(cur)}; '{rev}' appears in no ledger row or record.",
                cause=cause, next_step=next_step,
                queries=(_version_query(m), "SELECT run_id, runbook, heads_before, heads_after FROM dbrunbook.ledger"),
            ))
    return CheckResult("unknown_revision", "Can't locate revision", tuple(problems), "; ".join(notes))


# --- 3. objects already exist ---------------------------------------------------------------------------
def _live(conn: Connection, obj: dict[str, str]) -> str | None:
    """What the live database has for an object a migration would create (None: absent)."""
    kind, name, table = obj["kind"], obj["name"], obj["table"]
    if kind == "schema":
        found = conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :n"),
                             {"n": _column_name(name)}).first()
        return "schema" if found else None
    if kind == "type":
        return conn.execute(sa.text("SELECT to_regtype(:n)::text"), {"n": name}).scalar()
    if kind in ("table", "view", "sequence", "index"):
        return conn.execute(sa.text("SELECT to_regclass(:n)::text"), {"n": name}).scalar()
    if kind == "column":
        row = conn.execute(sa.text(
            "SELECT format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' NOT NULL' ELSE '' END "
            "FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c AND NOT attisdropped"),
            {"t": table, "c": _column_name(name)}).first()
        return row[0] if row else None
    row = conn.execute(sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                               "WHERE conrelid = to_regclass(:t) AND conname = :c"),
                       {"t": table, "c": _column_name(name)}).first()
    return row[0] if row else None


@_completes("already_exists", TITLES["already_exists"])
def check_objects_exist(s: Any, migration_set: str = "all") -> CheckResult:
    """The guide's *Column already exists*: pending revisions create objects the live schema already has.

    The database is then ahead of its version pointer. Each pending revision is classed as present (all its
    objects exist), absent, or partial; stamping is safe up to the last revision of an unbroken run of present
    ones, never past a partial one.
    """
    problems, notes = [], []
    for m in s.sets(migration_set):
        steps, why = _pending_steps(s, m)
        if not steps:
            notes.append(why)
            continue
        rows = []
        with s.engine.connect() as conn:
            for step in steps:
                for obj in created_objects(step.sql):
                    if obj["kind"] == "table" and _is_version_table(m, obj["name"]):
                        continue
                    live = _live(conn, obj)
                    rows.append({"revision": step.revision, "kind": obj["kind"],
                                 "object": f"{obj['table']}.{obj['name']}" if obj["kind"] in ("column", "constraint")
                                 else obj["name"], "exists": live is not None, "live": live,
                                 "migration_creates": obj["expected"]})
            conn.rollback()
        evidence = pd.DataFrame(rows, columns=["revision", "kind", "object", "exists", "live", "migration_creates"])
        if evidence.empty or not evidence["exists"].any():
            notes.append(f"{m.name}: none of the {len(evidence)} object(s) pending revisions create exists yet")
            continue
        status = {}
        for step in steps:
            mine = evidence[evidence["revision"] == step.revision]["exists"]
            status[step.revision] = ("no objects" if mine.empty else "present" if mine.all()
                                     else "absent" if not mine.any() else "partial")
        stamp_to, blocked_by = None, None
        for step in steps:
            state = status[step.revision]
            if state == "present":
                stamp_to = step.revision
            elif state != "no objects":
                blocked_by = step.revision if state == "partial" else None
                break
        summary_ = ", ".join(f"{rev}: {state}" for rev, state in status.items())
        existing = int(evidence["exists"].sum())
        if blocked_by:
            cause = (f"{existing} object(s) that pending revisions create already exist ({summary_}). Revision "
                     f"'{blocked_by}' is partly applied: stamping past it is not safe. Finish or undo its "
                     f"objects by hand first, then stamp to the last fully present revision and upgrade.")
        else:
            cause = (f"{existing} object(s) that pending revisions create already exist: the database is "
                     f"ahead of its version pointer ({summary_}). Someone ran the SQL by hand, or the version "
                     f"table was moved back. "
                     + (f"Every object up to '{stamp_to}' exists (compare the 'live' and 'migration_creates' "
                        f"columns): stamping to it is safe, then upgrade the rest." if stamp_to else ""))
        next_step = (_command(s, "stamp", migration_set=m.name, revision=stamp_to, dry_run=False) if stamp_to
                     else _command(s, "status", migration_set=m.name))
        problems.append(Problem(
            code="already_exists", title=TITLES["already_exists"], migration_set=m.name, evidence=evidence,
            cause=cause, next_step=next_step,
            queries=("SELECT to_regclass(:name)  -- tables, views, indexes, sequences",
                     "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                     "WHERE attrelid = to_regclass(:table) AND attname = :column",
                     "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(:table) "
                     "AND conname = :name"),
        ))
    return CheckResult("already_exists", TITLES["already_exists"], tuple(problems), "; ".join(notes))


# --- 4. duplicate keys in a data migration --------------------------------------------------------------
_UNIQUE_KEYS = sa.text("""
    SELECT i.relname AS name, array_agg(a.attname ORDER BY k.ord) AS columns,
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) AS types
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
    WHERE x.indrelid = to_regclass(:t) AND x.indisunique AND x.indpred IS NULL AND x.indexprs IS NULL
    GROUP BY i.relname ORDER BY i.relname
""")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@_completes("duplicate_key", TITLES["duplicate_key"])
def check_duplicate_keys(s: Any, migration_set: str = "all") -> CheckResult:
    """The guide's *Duplicate key value violates unique constraint*, found before the data migration runs.

    The INSERT … VALUES statements of the pending revisions' offline SQL are matched against the target
    table's unique indexes (primary key included) and its live rows, in a read-only transaction.
    """
    problems, notes = [], []
    for m in s.sets(migration_set):
        steps, why = _pending_steps(s, m)
        if not steps:
            notes.append(why)
            continue
        rows, skipped, queries, checked = [], [], [], 0
        with s.engine.connect() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            for step in steps:
                for ins in parse_inserts(step.sql):
                    if _is_version_table(m, ins["table"]):
                        continue
                    if ins["on_conflict"]:
                        skipped.append(f"{step.revision}: INSERT INTO {ins['table']} has ON CONFLICT")
                        continue
                    keys = conn.execute(_UNIQUE_KEYS, {"t": ins["table"]}).all()
                    if not keys:
                        skipped.append(f"{step.revision}: {ins['table']} does not exist yet or has no unique key")
                        continue
                    alias = ", ".join(_quote_ident(c) for c in ins["columns"])
                    for key in keys:
                        if not set(key.columns) <= set(ins["columns"]):
                            continue
                        checked += 1
                        cols = ", ".join(f"v.{_quote_ident(c)}::{t}" for c, t in zip(key.columns, key.types, strict=False))
                        on = " AND ".join(f"t.{_quote_ident(c)} = v.{_quote_ident(c)}::{t}"
                                          for c, t in zip(key.columns, key.types, strict=False))
                        source = f"(VALUES {ins['values']}) AS v({alias})"
                        existing = (f"SELECT DISTINCT {cols} FROM {source} JOIN {ins['table']} t ON {on}")
                        twice = f"SELECT {cols} FROM {source} GROUP BY {cols} HAVING count(*) > 1"
                        queries += [existing, twice]
                        try:
                            with conn.begin_nested():
                                found = [(r, "already in the table") for r in _raw_rows(conn, existing)]
                                found += [(r, "twice in this INSERT") for r in _raw_rows(conn, twice)]
                        except sa.exc.DBAPIError as err:
                            skipped.append(f"{step.revision}: could not check {ins['table']}: "
                                           f"{str(err.orig).splitlines()[0]}")
                            continue
                        rows += [{"revision": step.revision, "table": ins["table"], "constraint": key.name,
                                  "key": ", ".join(key.columns),
                                  "value": ", ".join(map(str, r)), "conflict": why_} for r, why_ in found]
            conn.rollback()
        if not rows:
            notes.append(f"{m.name}: {checked} unique key(s) checked against pending INSERTs, no conflict"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
            continue
        evidence = pd.DataFrame(rows, columns=["revision", "table", "constraint", "key", "value", "conflict"])
        first = rows[0]
        problems.append(Problem(
            code="duplicate_key", title=TITLES["duplicate_key"], migration_set=m.name, evidence=evidence,
            cause=(f"Pending revision '{first['revision']}' inserts {len(rows)} row(s) whose key already exists: "
                   f"the upgrade would fail with 'duplicate key value violates unique constraint "
                   f"\"{first['constraint']}\"' and roll back. Make the insert idempotent, the guide's fix: "
                   f"INSERT INTO {first['table']} (...) VALUES (...) ON CONFLICT ({first['key']}) DO NOTHING "
                   f"(or DO UPDATE), in that revision if no database has applied it, else in a new one."),
            next_step=_command(s, "review", migration_set=m.name, revision=first["revision"]),
            queries=tuple(dict.fromkeys(queries)),
        ))
    return CheckResult("duplicate_key", TITLES["duplicate_key"], tuple(problems), "; ".join(notes))


# --- 5. blocked / long-running --------------------------------------------------------------------------
_ACTIVITY = sa.text("""
    SELECT a.pid, a.usename AS "user", a.application_name, a.state, a.wait_event_type, a.wait_event,
           pg_blocking_pids(a.pid) AS blocked_by,
           floor(extract(epoch FROM now() - a.xact_start))::bigint AS transaction_seconds,
           floor(extract(epoch FROM now() - a.state_change))::bigint AS state_seconds,
           (SELECT string_agg(l.mode || ' on ' || coalesce(l.relation::regclass::text, l.locktype), ', ')
              FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted) AS waiting_for,
           left(a.query, 200) AS query
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
    ORDER BY a.pid
""")


@_completes("blocked", TITLES["blocked"])
def check_blocking(s: Any, max_age: str | None = None) -> CheckResult:
    """The guide's *Migration takes too long*: the blocking tree, long transactions, idle-in-transaction sessions.

    Reads pg_stat_activity and pg_locks (pg_blocking_pids) of the target database. Lists the pids an operator
    could end (root blockers, idle-in-transaction sessions older than ``max_age``, default the target's
    ``blocker_max_age``); dbrunbook never ends a session itself.
    """
    max_age = max_age or s.target.blocker_max_age
    with s.engine.connect() as conn:
        limit = float(conn.execute(sa.text("SELECT extract(epoch FROM CAST(:a AS interval))"), {"a": max_age}).scalar())
        sessions = [dict(r) for r in conn.execute(_ACTIVITY).mappings()]
        conn.rollback()
    blockers = {p for r in sessions for p in (r["blocked_by"] or [])}
    blocked = {r["pid"] for r in sessions if r["blocked_by"]}
    rows = []
    for r in sessions:
        idle_tx = (r["state"] or "").startswith("idle in transaction")
        long_tx = r["transaction_seconds"] is not None and r["transaction_seconds"] > limit
        roles = []
        if r["pid"] in blocked:
            roles.append(f"blocked by {', '.join(map(str, r['blocked_by']))}")
        if r["pid"] in blockers:
            n = sum(1 for x in sessions if r["pid"] in (x["blocked_by"] or []))
            roles.append(f"blocks {n} session(s)")
        if long_tx:
            roles.append(f"transaction open {r['transaction_seconds']}s")
        if idle_tx and (r["pid"] in blockers or (r["state_seconds"] or 0) > limit):
            roles.append("idle in transaction")
        if not roles:
            continue
        root = r["pid"] in blockers and r["pid"] not in blocked
        could_end = root or (idle_tx and (r["state_seconds"] or 0) > limit)
        rows.append({"pid": r["pid"], "role": "; ".join(roles), "could_end": could_end, "user": r["user"],
                     "application_name": r["application_name"], "state": r["state"],
                     "waiting_for": r["waiting_for"], "transaction_seconds": r["transaction_seconds"],
                     "query": r["query"]})
    checked = f"{len(sessions)} other session(s) on database '{s.identity.database}', limit {max_age}"
    if not rows:
        return CheckResult("blocked", TITLES["blocked"], (), checked)
    evidence = pd.DataFrame(rows)
    pids = [int(p) for p in evidence.loc[evidence["could_end"], "pid"]]
    cause = (f"{len(blocked)} session(s) wait on locks held by others"
             f"{' (root blockers: ' + ', '.join(map(str, sorted(blockers - blocked))) + ')' if blocked else ''}; "
             f"{sum(1 for r in rows if 'transaction open' in r['role'])} transaction(s) open longer than {max_age}. "
             f"A migration waiting behind them queues every query on the table behind itself (lock_timeout "
             f"'{s.target.lock_timeout}' bounds that). Ask the owners to finish; an operator may end "
             f"pid(s) {', '.join(map(str, pids)) or '(none)'} with SELECT pg_terminate_backend(pid). "
             f"dbrunbook never ends sessions itself. For slow rather than blocked migrations, the guide: "
             f"CREATE INDEX CONCURRENTLY, add columns in several steps, a maintenance window.")
    return CheckResult("blocked", TITLES["blocked"], (Problem(
        code="blocked", title=TITLES["blocked"], migration_set=None, evidence=evidence, cause=cause,
        next_step=_command(s, "troubleshoot") + "  (again, once the sessions are gone)",
        queries=(str(_ACTIVITY).strip(),),
    ),), checked)


# --- 6. multiple heads ----------------------------------------------------------------------------------
@_completes("multiple_heads", TITLES["multiple_heads"])
def check_multiple_heads(s: Any, migration_set: str = "all") -> CheckResult:
    """More than one head: two lines of development never merged; ``upgrade head`` refuses to choose."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        hd = migrations.heads(m)
        if len(hd) < 2:
            notes.append(f"{m.name}: one head ({', '.join(hd)})")
            continue
        known = _known(m)
        lines = {h: _ancestry(known, [h]) for h in hd}
        common = set.intersection(*lines.values())
        cur = set(migrations.current(m, s.engine))
        applied = _ancestry(known, cur)
        order = list(known)
        evidence = pd.DataFrame([
            {"head": h, "description": known[h].message,
             "branch": " -> ".join(r for r in order if r in lines[h] - common),
             "branches_from": ", ".join(sorted({p for r in lines[h] - common for p in known[r].down_revisions
                                                if p in common})) or "(base)",
             "applied": h in applied}
            for h in hd], columns=["head", "description", "branch", "branches_from", "applied"])
        heads_ = " ".join(hd)
        problems.append(Problem(
            code="multiple_heads", title=TITLES["multiple_heads"], migration_set=m.name, evidence=evidence,
            cause=(f"Migration set '{m.name}' has {len(hd)} heads ({', '.join(hd)}): two developers branched "
                   f"off the same revision and nobody merged. 'alembic upgrade head' refuses; 'upgrade heads' "
                   f"applies the branches in an order no one reviewed. Merge them: "
                   f"alembic merge -m \"merge heads\" {heads_}"),
            next_step=f"dbrunbook new \"merge heads\" --merge -m {m.name}",
            queries=(),
        ))
    return CheckResult("multiple_heads", TITLES["multiple_heads"], tuple(problems), "; ".join(notes))


# --- 7. drift -------------------------------------------------------------------------------------------
def _name_of(obj: Any) -> str:
    if obj is None:
        return ""
    table = getattr(obj, "table", None)
    name = getattr(obj, "name", None)
    if table is not None and name is not None and hasattr(table, "fullname"):
        return f"{table.fullname}.{name}"
    if hasattr(obj, "fullname"):
        return obj.fullname
    return str(name if name is not None else obj)


def describe_diff(diff: tuple) -> dict[str, str]:
    """One of Alembic's compare_metadata diffs as {change, object, detail}."""
    kind, *rest = diff
    if kind.startswith("modify_"):
        schema, table, column = rest[0], rest[1], rest[2]
        existing, new = rest[-2], rest[-1]
        obj = ".".join(x for x in (schema, table, column) if x)
        return {"change": kind, "object": obj, "detail": f"database: {existing!s}; models: {new!s}"}
    if kind in ("add_column", "remove_column"):
        schema, table, column = rest
        obj = ".".join(x for x in (schema, table, column.name) if x)
        return {"change": kind, "object": obj, "detail": str(column.type)}
    target = rest[0] if rest else None
    return {"change": kind, "object": _name_of(target), "detail": ""}


@_completes("drift", TITLES["drift"])
def check_drift(s: Any, migration_set: str = "all") -> CheckResult:
    """``alembic check`` at head: the live schema against the models, one row per differing object."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = _state(s, m)
        if set(cur) != set(migrations.heads(m)):
            notes.append(f"{m.name}: skipped, not at head (the models describe the head)")
            continue
        try:
            diffs = migrations.check(m, s.engine)
        except ConfigError as err:
            notes.append(f"{m.name}: skipped, {err}")
            continue
        if not diffs:
            notes.append(f"{m.name}: models and schema agree")
            continue
        evidence = pd.DataFrame([describe_diff(d) for d in diffs], columns=["change", "object", "detail"])
        problems.append(Problem(
            code="drift", title=TITLES["drift"], migration_set=m.name, evidence=evidence,
            cause=(f"The live schema differs from the models at head '{', '.join(cur)}' in {len(diffs)} "
                   f"place(s) ('add_*': in the models, not in the database; 'remove_*': in the database, not in "
                   f"the models). Someone changed the database by hand, or the models changed without a "
                   f"revision. If the models are right, generate one; if the database is, fix the models."),
            next_step=f"dbrunbook new \"<describe the change>\" --autogenerate -m {m.name}",
            queries=("alembic check  (compare_metadata on the target, via the set's env.py)",),
        ))
    return CheckResult("drift", TITLES["drift"], tuple(problems), "; ".join(notes))


# --- 8. edited applied migrations -----------------------------------------------------------------------
@_completes("edited_migration", TITLES["edited_migration"])
def check_edited_migrations(s: Any, migration_set: str = "all") -> CheckResult:
    """The guide's *Never edit applied migrations*: a script whose sha256 changed since a run applied it.

    The launcher stores, in ``dbrunbook.ledger.migration_files``, the sha256 of each migration file a run
    applied; this compares the newest of those with the files now (``migrations.file_digests``).
    """
    ledger = records.ledger_rows(s.engine)
    problems, notes = [], []
    for m in s.sets(migration_set):
        applied: dict[str, dict[str, Any]] = {}
        for row in ledger:
            for rev, digest in ((row.get("migration_files") or {}).get(m.name) or {}).items():
                applied[rev] = {"sha256": digest, "run_id": row["run_id"],
                                "when": str(row.get("finished_at") or row.get("started_at") or "")}
        if not applied:
            notes.append(f"{m.name}: no applied file recorded in dbrunbook.ledger")
            continue
        now = migrations.file_digests(m)
        known = _known(m)
        rows = []
        for rev, was in applied.items():
            if now.get(rev) == was["sha256"]:
                continue
            rows.append({"revision": rev, "file": known[rev].path.name if rev in known else "(missing)",
                         "applied_sha256": was["sha256"][:16], "current_sha256": (now.get(rev) or "")[:16],
                         "applied_by": was["run_id"], "applied_at": was["when"]})
        if not rows:
            notes.append(f"{m.name}: {len(applied)} applied file(s) unchanged")
            continue
        evidence = pd.DataFrame(rows, columns=["revision", "file", "applied_sha256", "current_sha256",
                                               "applied_by", "applied_at"])
        revs = ", ".join(r["revision"] for r in rows)
        problems.append(Problem(
            code="edited_migration", title=TITLES["edited_migration"], migration_set=m.name, evidence=evidence,
            cause=(f"The file(s) of revision(s) {revs} changed after run '{rows[0]['applied_by']}' applied them: "
                   f"this database ran the old content, a fresh one would run the new, and nothing re-runs the "
                   f"difference here. Restore the applied content (git log -p on the file) and put the change "
                   f"in a new revision (the guide: create a new migration instead)."),
            next_step=f"dbrunbook new \"<what the edit changes>\" -m {m.name}",
            queries=("SELECT run_id, migration_files FROM dbrunbook.ledger ORDER BY id",),
        ))
    return CheckResult("edited_migration", TITLES["edited_migration"], tuple(problems), "; ".join(notes))


# --- 9. invalid indexes ---------------------------------------------------------------------------------
def check_invalid_indexes(s: Any, migration_set: str = "all") -> CheckResult:
    """Indexes marked invalid (``pg_index.indisvalid = false``), typically a ``CREATE INDEX CONCURRENTLY`` that
    timed out or failed: unused by queries, still maintained by writes, skipped by ``IF NOT EXISTS``.

    ``migration_set`` is accepted for the common signature; indexes belong to the database, not to a set.
    """
    from dbrunbook.postgres import indexes

    found = indexes.invalid_indexes(s.engine)
    checked = f"pg_index of database '{s.identity.database}' (indexes being built right now are not counted)"
    if not found:
        return CheckResult("invalid_index", TITLES["invalid_index"], (), checked)
    evidence = pd.DataFrame([{k: i[k] for k in ("schema", "index", "table", "size", "definition", "fix")}
                             for i in found])
    fixes = "; ".join(i["fix"] for i in found)
    cause = (f"{len(found)} invalid index(es): {', '.join(i['index'] + ' on ' + i['table'] for i in found)}. "
             f"A CREATE INDEX CONCURRENTLY that times out or fails leaves its index behind, invalid: queries do "
             f"not use it, every write still maintains it, and a migration with IF NOT EXISTS skips it. Drop it "
             f"without blocking writes ({fixes}), then run the migration again to build it.")
    return CheckResult("invalid_index", TITLES["invalid_index"], (Problem(
        code="invalid_index", title=TITLES["invalid_index"], migration_set=None, evidence=evidence, cause=cause,
        next_step=fixes, queries=(str(indexes.INVALID_INDEXES_SQL).strip(),),
    ),), checked)


# --- all together ---------------------------------------------------------------------------------------
#: In the order the runbook shows them and an operator should deal with them.
CHECKS: tuple[Callable[..., CheckResult], ...] = (
    check_up_to_date, check_unknown_revision, check_objects_exist, check_duplicate_keys, check_blocking,
    check_multiple_heads, check_drift, check_edited_migrations, check_invalid_indexes,
)


def summary(s: Any, *checks: CheckResult, save: bool = True) -> Diagnosis:
    """Gather check results into a Diagnosis; save it as artifacts/diagnosis.json of the run's record."""
    result = Diagnosis(target=s.target.name, checks=tuple(checks))
    if save:
        s.save_artifact(DIAGNOSIS_ARTIFACT, json.dumps(result.as_dict(), indent=1, sort_keys=True,
                                                       default=str) + "\n")
    return result


def diagnose(s: Any, migration_set: str = "all") -> Diagnosis:
    """Run every check on the session's target (nothing saved)."""
    results = [check(s) if check is check_blocking else check(s, migration_set) for check in CHECKS]
    return summary(s, *results, save=False)
