"""Lint before apply: ``lint`` of a preview's SQL per revision, the ``LintReport``, and the ``require_clean`` guard.

``lint`` runs squawk and dbrunbook's rules on each revision's offline SQL, weighs what they find by the live
tables (``catalog``) and adds the revision-file checks; ``require_clean`` stops a protected target on
error-level findings not waived in ``allow`` and saves the whole table as artifacts/lint.json, so the
record keeps what was waived.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from typing import cast

import pandas as pd

from dbrunbook import errors
from dbrunbook.chain import migrations
from dbrunbook.postgres import sqlparse
from dbrunbook.postgres.sqltext import Statement, split_statements
from dbrunbook.protocol import SessionLike
from dbrunbook.safety.catalog import Catalog, read_catalog
from dbrunbook.safety.findings import CATEGORIES, Finding, findings_json
from dbrunbook.safety.revision_rules import heads_finding, revision_file_findings
from dbrunbook.safety.sql_reading import (
    display_statement,
    squawk_offset,
    statement_at,
    table_of,
)
from dbrunbook.safety.sql_rules import ABSORBED, check_sql, weigh_absorbed, weigh_issue
from dbrunbook.safety.squawk_rules import INSTEAD, SquawkRun, classify_squawk

_COLUMNS = ["category", "level", "rule", "migration_set", "revision", "statement", "why", "instead", "source"]
_LEVEL_ORDER = {"error": 0, "warning": 1, "info": 2}


def table_html(frame: pd.DataFrame) -> str:
    """A frame of a guard's evidence as HTML, long ones cut with a note (the lint, data-loss and stamp tables)."""
    from dbrunbook.views.summaries import Shown, frame_html

    # Sorted by level already: the first rows are the errors; every finding is in lint.json (require_clean).
    return frame_html(frame, Shown(artifact="lint.json"))


def _few_revisions(revisions) -> str:
    """'a, b, c … and 997 more': a rule hit in 1,000 revisions does not list them all (lint.json does)."""
    names = sorted(set(revisions))
    return ", ".join(names[:5]) + (f" … and {len(names) - 5:,} more" if len(names) > 5 else "")


@dataclass(frozen=True)
class LintReport:
    """What lint found in a preview, per revision, classified; ``omitted_timeouts`` counts dropped findings."""

    findings: tuple[Finding, ...]
    target: str = ""
    protected: bool = False
    omitted_timeouts: int = 0
    timeouts: str = ""
    revisions: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == "error")

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.as_dict() for f in self.findings], columns=_COLUMNS)

    def summary(self) -> str:
        counts = Counter(f.level for f in self.findings)
        text = (f"{len(self.findings)} finding(s) in {self.revisions} revision(s): {counts['error']} error(s), "
                f"{counts['warning']} warning(s), {counts['info']} info.")
        if self.omitted_timeouts:
            text += (f" {self.omitted_timeouts} require-*-timeout finding(s) left out: dbrunbook runs every "
                     f"migration with {self.timeouts}.")
        return text

    def __repr__(self) -> str:
        return f"LintReport(target {self.target!r}: {self.summary()})"

    def _repr_html_(self) -> str:
        parts = [f"<p><b>Lint</b> (target {html.escape(self.target)}"
                 f"{', protected' if self.protected else ''}): {html.escape(self.summary())}</p>"]
        frame = self.as_frame()
        for category in CATEGORIES:
            rows = frame[frame["category"] == category]
            if rows.empty:
                continue
            counts = ", ".join(f"{n} {lvl}" for lvl, n in Counter(rows["level"]).most_common())
            parts.append(f"<h4>{html.escape(category)} ({counts})</h4>")
            if category == "style":
                grouped = (rows.groupby("rule").agg(findings=("rule", "size"),
                                                    revisions=("revision", _few_revisions))
                           .reset_index())
                parts.append(f"<details><summary>{len(rows)} style finding(s), by rule</summary>"
                             f"{table_html(grouped)}</details>")
                continue
            shown = rows[rows["level"] != "info"].drop(columns=["category"])
            quiet = rows[rows["level"] == "info"].drop(columns=["category"])
            if not shown.empty:
                parts.append(table_html(shown))
            if not quiet.empty:
                parts.append(f"<details><summary>{len(quiet)} info (harmless on this database)</summary>"
                             f"{table_html(quiet)}</details>")
        return "\n".join(parts)


def lint_revision_files(mset, revisions, *, protected: bool = False) -> list[Finding]:
    """The ast checks of the given revisions' files, plus ``multiple-heads`` for the set; no database needed.

    Args:
        mset: the migration set.
        revisions: revision ids, or objects with a ``revision`` attribute (RevisionInfo, SqlStep).
        protected: the target is protected (multiple heads are then an error).
    """
    wanted = [getattr(r, "revision", r) for r in revisions]
    paths = {info.revision: info.path for info in migrations.history(mset)}
    found: list[Finding] = []
    for rev in wanted:
        if rev in paths:
            found += revision_file_findings(paths[rev], migration_set=mset.name, revision=rev)
    heads = heads_finding(mset.name, migrations.heads(mset), protected=protected)
    return found + ([heads] if heads else [])


#: Alembic's version row statements, known without the parser (a 1,000-revision chain has 1,000 of them).
_VERSION_ROW = re.compile(r'^(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+(?:"?\w+"?\.)?"?(\w+)"?[\s(]')


def _bookkeeping(stmt: Statement, version_tables: set[str]) -> bool:
    """Alembic's own statements (transaction, version table): not the migration author's to fix."""
    if (m := _VERSION_ROW.match(stmt.code)) and m.group(1) in version_tables:
        return True  # read off the code: its flat form scans every token of the quoted revision ids
    flat = stmt.flat
    d = sqlparse.describe(flat)
    if d.kind == "TRANSACTION":
        return True
    upper = flat.upper().rstrip(";").strip()
    if not d.parsed and upper in ("BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION", "END"):
        return True
    table = table_of(flat)
    return table is not None and table.split(".")[-1] in version_tables


def lint(session: SessionLike, preview, *, rows_threshold: int = 10_000, bytes_threshold: int = 10 * 1024 * 1024
         ) -> LintReport:
    """Lint the preview's SQL per revision (squawk + dbrunbook's rules), weighed by the live tables.

    A blocking operation on a table created in this run or smaller than both thresholds is info; on a
    bigger one it is an error. Destructive statements are warnings, errors on a protected target.
    """
    protected = session.target.protected
    version_tables = {m.version_table for m in session.config.migration_sets.values()}
    version = re.match(r"\d+(?:\.\d+)?", session.identity.server_version or "")
    pg_version = version.group(0) if version else None
    # squawk first: it reads the SQL on the other core while the catalog and the revision files are read here.
    squawk = SquawkRun([step.sql for steps in preview.steps.values() for step in steps], pg_version)
    try:
        statements = [s for steps in preview.steps.values() for step in steps
                      for s in split_statements(step.sql) if not _bookkeeping(s, version_tables)]
        catalog = read_catalog(session.engine, statements, rows_threshold, bytes_threshold)
        findings: list[Finding] = []
        for name, steps in preview.steps.items():
            if steps:
                findings += lint_revision_files(session.config.migration_set(name), steps, protected=protected)
    except BaseException:
        squawk.stop()
        raise
    found, omitted = lint_sql(preview.steps, catalog, protected=protected, version_tables=version_tables,
                              pg_version=pg_version, squawk=squawk)
    target = session.target
    return LintReport(_sorted(findings + found), target.name, protected, omitted,
                      f"lock_timeout={target.lock_timeout} and statement_timeout={target.statement_timeout}",
                      sum(len(v) for v in preview.steps.values()))


def _sorted(findings: list[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(findings, key=lambda f: (CATEGORIES.index(f.category) if f.category in CATEGORIES
                                                 else 99, _LEVEL_ORDER.get(f.level, 9))))


def lint_sql(steps: dict[str, list], catalog: Catalog, *, protected: bool = False,
             version_tables=frozenset({"alembic_version"}), pg_version: str | None = None,
             squawk: SquawkRun | None = None) -> tuple[list[Finding], int]:
    """Lint rendered SQL, ``{set: [SqlStep]}`` in run order, against the live facts in ``catalog``.

    Returns the findings and the number of require-*-timeout findings left out. No database needed.
    ``squawk``: squawk already started on these steps' SQL, in this order (``lint`` starts it early).
    """
    parsed = [(name, step, split_statements(step.sql)) for name, ss in steps.items() for step in ss]
    results = (squawk or SquawkRun([step.sql for _, step, _ in parsed], pg_version)).results()
    findings: list[Finding] = []
    created: set[str] = set()
    validated: set[tuple[str, str]] = set()
    omitted = 0
    for (name, step, stmts), items in zip(parsed, results, strict=False):
        if step.notes.strip():
            findings.append(_printed_finding(name, step))
        mine = [s for s in stmts if not _bookkeeping(s, version_tables)]
        findings += _unparsed_findings(name, step.revision, mine)
        issues = check_sql(mine, catalog, created, validated)
        rewritten = {i.statement.start for i in issues if i.rule in ("table-rewrite", "not-null-scan")}
        for issue in issues:
            level, why = weigh_issue(issue, catalog, created, protected)
            findings.append(Finding(issue.rule, level, issue.category, name, step.revision,
                                    display_statement(issue.statement, step.sql, issue.statement.start), why,
                                    issue.instead, "dbrunbook"))
        found, left_out = _squawk_findings(name, step, stmts, items, catalog, protected=protected,
                                           version_tables=version_tables, rewritten=rewritten)
        findings += found
        omitted += left_out
    return findings, omitted


def _printed_finding(migration_set: str, step) -> Finding:
    """``printed-offline``: what a revision printed in offline mode, kept out of its SQL."""
    first = " ".join(step.notes.split())[:120]
    return Finding(
        "printed-offline", "warning", "preview", migration_set, step.revision, f"printed: {first}",
        "the revision printed text in offline mode: it cannot be previewed faithfully (its output is "
        "kept out of the SQL and shown here, it is not SQL)",
        "log with the logging module, and keep data-dependent logic out of migrations", "dbrunbook")


def _squawk_findings(migration_set: str, step, stmts: list, items: list[dict], catalog: Catalog, *,
                     protected: bool, version_tables, rewritten: set[int]) -> tuple[list[Finding], int]:
    """squawk's findings on one revision, classified and weighed; and how many timeout findings it dropped."""
    findings: list[Finding] = []
    omitted = 0
    seen: set[tuple] = set()
    for item in items:
        rule = item.get("rule_name", "")
        offset = squawk_offset(step.sql, int(item.get("line", 0)), int(item.get("column", 0)))
        stmt = statement_at(stmts, offset)
        if stmt is not None and _bookkeeping(stmt, version_tables):
            continue
        if rule in ABSORBED and stmt is not None and stmt.start in rewritten:
            continue  # dbrunbook's finding on the same statement says it better (weighed, CHECK-aware)
        table = table_of(stmt.flat, catalog) if stmt is not None else None
        size = catalog.size(table)
        classified = classify_squawk(rule, size=size, catalog=catalog, protected=protected,
                                     message=item.get("message", ""))
        if classified is None:
            omitted += 1
            continue
        category, level, why = classified
        if rule in ABSORBED and stmt is not None and size is not None and size.exists:
            level, why = weigh_absorbed(rule, stmt.flat, cast(str, table), catalog, level, why)  # sized: named
        statement = display_statement(stmt, step.sql, offset)
        if (rule, statement) in seen:
            continue
        seen.add((rule, statement))
        findings.append(Finding(rule, level, category, migration_set, step.revision, statement, why,
                                INSTEAD.get(rule) or (item.get("help") or "").rstrip("."), "squawk"))
    return findings, omitted


def _unparsed_findings(migration_set: str, revision: str, statements) -> list[Finding]:
    """What PostgreSQL's parser could not read: reported, since its tables, locks and losses are not known."""
    out = []
    for s in statements:
        if s.noise:
            out.append(Finding(
                "non-sql-text", "warning", "preview", migration_set, revision, " ".join(s.noise.split())[:160],
                "text that is not SQL stands before a statement in the offline SQL (left out of the statement)",
                "keep output out of offline SQL: log with the logging module, emit SQL only with op.execute",
                "dbrunbook"))
        if s.error:
            out.append(Finding(
                "unparsed-sql", "warning", "preview", migration_set, revision, s.flat[:160],
                f"PostgreSQL's parser could not parse this statement ({s.error}): its tables, locks and data "
                f"loss are guessed from its first words, or not known",
                "fix the SQL, or check it by hand on a scratch database ('alembic upgrade --sql' shows it)",
                "dbrunbook"))
    return out


def _allow_entries(allow: str) -> list[str]:
    return [e.strip() for e in (allow or "").split(",") if e.strip()]


def require_clean(session: SessionLike, report: LintReport, allow: str = "", *, dry_run: bool = False) -> pd.DataFrame:
    """Guard: on a protected target, stop on error-level findings not listed in ``allow``.

    ``allow`` is comma-separated ``rule`` or ``rule@revision`` entries; the findings it covers are marked
    ``allowed`` and the whole table is saved as artifacts/lint.json, so the record keeps what was waived.
    On a target that is not protected, errors are shown and the run goes on.

    Raises:
        UnsafeMigration: protected target, error findings not allowed (``.findings`` holds them).
    """
    entries = _allow_entries(allow)
    allowed = [any(f.matches(e) for e in entries) for f in report.findings]
    blocking = [f for f, ok in zip(report.findings, allowed, strict=False) if f.level == "error" and not ok]
    unused = [e for e in entries if not any(f.matches(e) for f in report.findings)]
    frame = report.as_frame()
    frame.insert(2, "allowed", allowed)
    stops = bool(blocking) and session.target.protected
    session.save_artifact("lint.json", findings_json({
        "target": report.target, "protected": report.protected, "allow": entries, "unused_allow": unused,
        "omitted_timeouts": report.omitted_timeouts, "stopped": stops and not dry_run,
    }, [{**f.as_dict(), "allowed": ok} for f, ok in zip(report.findings, allowed, strict=False)]))
    if unused:
        print(f"allow entries that match no finding (check the spelling): {', '.join(unused)}")
    if stops:
        ids = list(dict.fromkeys(f"{f.rule}@{f.revision}" for f in blocking))
        detail = "; ".join(f"{f.rule}@{f.revision}: {f.why}" for f in blocking[:5])
        err = errors.UnsafeMigration(
            f"Lint found {len(blocking)} error-level problem(s) on protected target '{session.target.name}': "
            f"{detail}{' …' if len(blocking) > 5 else ''}. Fix the revisions, or, having read the findings, run "
            f"again with -p allow {','.join(ids)} (the record keeps what was allowed).", findings=tuple(blocking))
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    elif blocking:
        print(f"{len(blocking)} error-level finding(s); target '{session.target.name}' is not protected, so the "
              f"run goes on.")
    # The guard's table shows what it judged (errors and warnings, allowed or not); info and style findings
    # are in the lint step above and in lint.json, and repeating them here buries the decision.
    judged = frame[frame["level"] != "info"]
    return judged.sort_values("level", key=lambda s: s.map(_LEVEL_ORDER), kind="stable").reset_index(drop=True)
