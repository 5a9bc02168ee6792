"""Safety guards around a change: lint before apply, reviewed preview = applied change, rollback and stamp.

Each check returns a value object that renders as a table; each ``require_*`` guard takes it, saves its
evidence as an artifact of the run (so the record's signature covers it) and raises a ``GuardStop`` subclass
when the run must not go on. The rules themselves live in ``lint_rules``.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import secrets
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dbrunbook import errors, records
from dbrunbook.chain import migrations
from dbrunbook.execution.protocol import ARTIFACTS_DIR
from dbrunbook.postgres import db, snapshots, sqlimpact, sqlparse
from dbrunbook.records import signing
from dbrunbook.safety.lint_rules import (
    ABSORBED,
    CATEGORIES,
    IDENT,
    INSTEAD,
    Catalog,
    Finding,
    TableSize,
    alter_actions,
    check_sql,
    classify_squawk,
    display_statement,
    heads_finding,
    normalize_name,
    revision_file_findings,
    run_squawk,
    split_statements,
    squawk_offset,
    statement_at,
    table_of,
    type_change,
    weigh_issue,
)

log = logging.getLogger(__name__)

__all__ = [
    "DataLossReport", "Finding", "LintReport", "LossItem", "StampCheck", "data_loss", "lint",
    "lint_revision_files", "require_approved_preview", "require_clean", "require_no_data_loss",
    "require_truthful_stamp", "stamp_check",
]

_COLUMNS = ["category", "level", "rule", "migration_set", "revision", "statement", "why", "instead", "source"]
_LEVEL_ORDER = {"error": 0, "warning": 1, "info": 2}


def _table_html(frame: pd.DataFrame) -> str:
    from dbrunbook.views.summaries import Shown, frame_html

    # Sorted by level already: the first rows are the errors; every finding is in lint.json (require_clean).
    return frame_html(frame, Shown(artifact="lint.json"))


def _few_revisions(revisions) -> str:
    """'a, b, c … and 997 more': a rule hit in 1,000 revisions does not list them all (lint.json does)."""
    names = sorted(set(revisions))
    return ", ".join(names[:5]) + (f" … and {len(names) - 5:,} more" if len(names) > 5 else "")


# --- 4. lint -----------------------------------------------------------------------------------------------
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
        return pd.DataFrame([asdict(f) for f in self.findings], columns=_COLUMNS)

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
                             f"{_table_html(grouped)}</details>")
                continue
            shown = rows[rows["level"] != "info"].drop(columns=["category"])
            quiet = rows[rows["level"] == "info"].drop(columns=["category"])
            if not shown.empty:
                parts.append(_table_html(shown))
            if not quiet.empty:
                parts.append(f"<details><summary>{len(quiet)} info (harmless on this database)</summary>"
                             f"{_table_html(quiet)}</details>")
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


def _bookkeeping(flat: str, version_tables: set[str]) -> bool:
    """Alembic's own statements (transaction, version table): not the migration author's to fix."""
    d = sqlparse.describe(flat)
    if d.kind == "TRANSACTION":
        return True
    upper = flat.upper().rstrip(";").strip()
    if not d.parsed and upper in ("BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION", "END"):
        return True
    table = table_of(flat)
    return table is not None and table.split(".")[-1] in version_tables


def lint(session, preview, *, rows_threshold: int = 10_000, bytes_threshold: int = 10 * 1024 * 1024
         ) -> LintReport:
    """Lint the preview's SQL per revision (squawk + dbrunbook's rules), weighed by the live tables.

    A blocking operation on a table created in this run or smaller than both thresholds is info; on a
    bigger one it is an error. Destructive statements are warnings, errors on a protected target.
    """
    protected = session.target.protected
    statements = [s for steps in preview.steps.values() for step in steps for s in split_statements(step.sql)]
    catalog = _catalog(session.engine, statements, rows_threshold, bytes_threshold)
    version = re.match(r"\d+(?:\.\d+)?", session.identity.server_version or "")
    findings: list[Finding] = []
    for name, steps in preview.steps.items():
        if steps:
            findings += lint_revision_files(session.config.migration_set(name), steps, protected=protected)
    found, omitted = lint_sql(preview.steps, catalog, protected=protected,
                              version_tables={m.version_table for m in session.config.migration_sets.values()},
                              pg_version=version.group(0) if version else None)
    target = session.target
    return LintReport(_sorted(findings + found), target.name, protected, omitted,
                      f"lock_timeout={target.lock_timeout} and statement_timeout={target.statement_timeout}",
                      sum(len(v) for v in preview.steps.values()))


def _sorted(findings: list[Finding]) -> tuple[Finding, ...]:
    return tuple(sorted(findings, key=lambda f: (CATEGORIES.index(f.category) if f.category in CATEGORIES
                                                 else 99, _LEVEL_ORDER.get(f.level, 9))))


def lint_sql(steps: dict[str, list], catalog: Catalog, *, protected: bool = False,
             version_tables=frozenset({"alembic_version"}), pg_version: str | None = None
             ) -> tuple[list[Finding], int]:
    """Lint rendered SQL, ``{set: [SqlStep]}`` in run order, against the live facts in ``catalog``.

    Returns the findings and the number of require-*-timeout findings left out. No database needed.
    """
    parsed = [(name, step, split_statements(step.sql)) for name, ss in steps.items() for step in ss]
    results = run_squawk([step.sql for _, step, _ in parsed], pg_version)
    findings: list[Finding] = []
    created: set[str] = set()
    validated: set[tuple[str, str]] = set()
    omitted = 0
    for (name, step, stmts), items in zip(parsed, results, strict=False):
        if step.notes.strip():
            first = " ".join(step.notes.split())[:120]
            findings.append(Finding(
                "printed-offline", "warning", "preview", name, step.revision, f"printed: {first}",
                "the revision printed text in offline mode: it cannot be previewed faithfully (its output is "
                "kept out of the SQL and shown here, it is not SQL)",
                "log with the logging module, and keep data-dependent logic out of migrations", "dbrunbook"))
        mine = [s for s in stmts if not _bookkeeping(s.flat, version_tables)]
        findings += _unparsed_findings(name, step.revision, mine)
        issues = check_sql(mine, catalog, created, validated)
        rewritten = {i.statement.start for i in issues if i.rule in ("table-rewrite", "not-null-scan")}
        for issue in issues:
            level, why = weigh_issue(issue, catalog, created, protected)
            findings.append(Finding(issue.rule, level, issue.category, name, step.revision,
                                    display_statement(issue.statement, step.sql, issue.statement.start), why,
                                    issue.instead, "dbrunbook"))
        seen: set[tuple] = set()
        for item in items:
            rule = item.get("rule_name", "")
            offset = squawk_offset(step.sql, int(item.get("line", 0)), int(item.get("column", 0)))
            stmt = statement_at(stmts, offset)
            if stmt is not None and _bookkeeping(stmt.flat, version_tables):
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
                level, why = _no_rewrite(rule, stmt.flat, table, catalog, level, why)
            statement = display_statement(stmt, step.sql, offset)
            if (rule, statement) in seen:
                continue
            seen.add((rule, statement))
            findings.append(Finding(rule, level, category, name, step.revision, statement, why,
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


def _no_rewrite(rule: str, flat: str, table: str, catalog: Catalog, level: str, why: str) -> tuple[str, str]:
    """squawk flags every type change and SET NOT NULL; dbrunbook found this one does not rewrite or scan."""
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


def _catalog(engine, statements, rows_threshold: int, bytes_threshold: int) -> Catalog:
    """Sizes, column types, NOT NULL checks and index owners of the tables the statements name."""
    indexes, columns, tables = set(), set(), set()
    for s in statements:
        flat = s.flat
        d = sqlparse.describe(flat)
        if d.index:
            indexes.add(d.index)
        table = table_of(flat)
        if table:
            tables.add(table)
            if d.parsed:
                columns |= {c for c in d.columns if d.kind == "ALTER TABLE"}
            for action in alter_actions(flat) if not d.parsed else ():
                if c := re.match(rf'^ALTER (?:COLUMN )?{IDENT} ', action, re.IGNORECASE):
                    columns.add((table, normalize_name(c.group(1))))
    index_tables: dict[str, str] = {}
    sizes: dict[str, TableSize] = {}
    types: dict[tuple[str, str], str] = {}
    checks: set[tuple[str, str]] = set()
    with engine.connect() as conn:
        for index in sorted(indexes):
            owner = conn.execute(sa.text(
                "SELECT x.indrelid::regclass::text FROM pg_index x WHERE x.indexrelid = to_regclass(:i)"),
                {"i": index}).scalar()
            if owner:
                index_tables[index] = normalize_name(owner)
                tables.add(normalize_name(owner))
        for table in sorted(tables):
            sizes[table] = _table_size(conn, table, rows_threshold)
            if not sizes[table].exists:
                continue
            for expr in conn.execute(sa.text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(:t) "
                    "AND contype = 'c' AND convalidated"), {"t": table}).scalars():
                for col in re.findall(rf'\(\s*\(?\s*{IDENT}\s+IS\s+NOT\s+NULL\s*\)?\s*\)', expr, re.IGNORECASE):
                    checks.add((table, normalize_name(col)))
        for table, column in sorted(columns):
            if sizes.get(table) and sizes[table].exists:
                found = conn.execute(sa.text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                    "AND attname = :c AND NOT attisdropped"), {"t": table, "c": _unquote(column)}).scalar()
                if found:
                    types[(table, column)] = found
        conn.rollback()
    return Catalog(sizes, types, frozenset(checks), index_tables, rows_threshold, bytes_threshold)


def _table_size(conn, table: str, limit: int) -> TableSize:
    """Rows (counted up to ``limit``, so the cost is bounded) and total bytes of a live table."""
    row = conn.execute(sa.text(
        "SELECT c.oid::regclass::text, greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid) "
        "FROM pg_class c WHERE c.oid = to_regclass(:t) AND c.relkind IN ('r', 'p', 'm')"), {"t": table}).first()
    if row is None:
        return TableSize(table, exists=False)
    name, estimate, size = row
    try:
        with conn.begin_nested():
            # A table locked by someone else: fall back to the planner's estimate rather than wait.
            conn.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
            counted = conn.execute(sa.text(
                f"SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT :n) s"), {"n": limit}).scalar_one()
    except sa.exc.DBAPIError:
        return TableSize(table, True, int(estimate), True, int(size))
    if counted >= limit:
        return TableSize(table, True, max(int(estimate), limit), True, int(size))
    return TableSize(table, True, int(counted), False, int(size))


def _allow_entries(allow: str) -> list[str]:
    return [e.strip() for e in (allow or "").split(",") if e.strip()]


def require_clean(session, report: LintReport, allow: str = "", *, dry_run: bool = False) -> pd.DataFrame:
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
    session.save_artifact("lint.json", json.dumps({
        "target": report.target, "protected": report.protected, "allow": entries, "unused_allow": unused,
        "omitted_timeouts": report.omitted_timeouts, "stopped": stops and not dry_run,
        "findings": [{**asdict(f), "allowed": ok} for f, ok in zip(report.findings, allowed, strict=False)],
    }, indent=1, sort_keys=True) + "\n")
    if unused:
        print(f"allow entries that match no finding (check the spelling): {', '.join(unused)}")
    if stops:
        ids = list(dict.fromkeys(f"{f.rule}@{f.revision}" for f in blocking))
        detail = "; ".join(f"{f.rule}@{f.revision}: {f.why}" for f in blocking[:5])
        err = errors.UnsafeMigration(
            f"Lint found {len(blocking)} error-level problem(s) on protected target '{session.target.name}': "
            f"{detail}{' …' if len(blocking) > 5 else ''}. Fix the revisions, or, having read the findings, run "
            f"again with -p allow {','.join(ids)} (the record keeps what was allowed).")
        err.findings = tuple(blocking)
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


# --- 5. reviewed preview = applied change ------------------------------------------------------------------
def _preview_files(preview) -> dict[str, str]:
    """sha256 of each preview-SET.sql, rendered exactly as ``Session.preview`` saves it."""
    out = {}
    for name, steps in preview.steps.items():
        if steps:
            text = preview.file_text(name)
            out[f"preview-{name}.sql"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return out


def find_run(outputs_dir: Path, run_id: str) -> Path | None:
    try:
        candidate = records.run_dir_for(outputs_dir, run_id)
        if candidate.is_dir():
            return candidate
    except ValueError:
        pass
    return next((p for p in records.find_records(outputs_dir) if p.name == run_id), None)


def require_approved_preview(session, preview, approved_preview: str = "", *, dry_run: bool = False
                             ) -> pd.DataFrame:
    """Guard: the SQL about to run is byte for byte the SQL of an approved (signed) preview record.

    On a protected target ``approved_preview`` (the run id of a ``preview`` record) is required; elsewhere it
    is checked when given and otherwise reported as not required. ``dry_run`` reports a refusal instead of
    raising it.

    Raises:
        PreviewNotApproved: none given on a protected target; record missing, not valid, not a succeeded
            preview, or of another database.
        PreviewMismatch: the preview's sha256 differs from the approved one.
    """
    try:
        return _approved_preview(session, preview, approved_preview)
    except (errors.PreviewNotApproved, errors.PreviewMismatch) as err:
        if not dry_run:
            raise
        print(f"dry_run=True: a real run would stop here. {err}")
        return pd.DataFrame([{"check": "approved preview", "result": f"would stop: {type(err).__name__}",
                              "detail": str(err)}])


def _approved_preview(session, preview, approved_preview: str) -> pd.DataFrame:
    target = session.target
    now = preview.sha256
    if not approved_preview:
        if target.protected:
            raise errors.PreviewNotApproved(
                f"Target '{target.name}' is protected: applying needs an approved preview. Run 'dbrunbook run "
                f"preview -t {target.name}', have its record reviewed, then run again with "
                f"-p approved_preview RUN_ID (the preview's run id).")
        return pd.DataFrame([{"check": "approved preview", "result": "not required",
                              "detail": f"target '{target.name}' is not protected; sha256 now {now}"}])
    run_dir = find_run(session.config.outputs_dir, approved_preview)
    if run_dir is None:
        raise errors.PreviewNotApproved(
            f"No record of run '{approved_preview}' under {session.config.outputs_dir}. Pass the run id of a "
            f"preview record of target '{target.name}' (see 'dbrunbook verify').")
    check = records.verify_record(run_dir, session.config.allowed_signers)
    if check.status != "valid":
        raise errors.PreviewNotApproved(
            f"Preview record {approved_preview} is {check.status}: {'; '.join(check.problems) or 'no detail'}. "
            f"Only a valid signed preview can approve a change; run 'dbrunbook run preview -t {target.name}' "
            f"again.")
    predicate = (check.statement or {}).get("predicate") or {}
    recorded_db = predicate.get("database") or {}
    ident = session.identity
    problems = []
    if predicate.get("runbook") != "preview":
        problems.append(f"it is a '{predicate.get('runbook')}' run, not a preview")
    if predicate.get("outcome") != "succeeded":
        problems.append(f"its outcome is '{predicate.get('outcome')}'")
    if (str(recorded_db.get("system_identifier")) != str(ident.system_identifier)
            or recorded_db.get("database") != ident.database):
        problems.append(f"it previewed database '{recorded_db.get('database')}' (system "
                        f"{recorded_db.get('system_identifier')}), not '{ident.database}' (system "
                        f"{ident.system_identifier})")
    if problems:
        raise errors.PreviewNotApproved(
            f"Run {approved_preview} cannot approve this change: {'; '.join(problems)}. Pass the run id of a "
            f"succeeded preview of target '{target.name}'.")
    if target.protected and predicate.get("mode") != "papermill":
        raise errors.PreviewNotApproved(
            f"Preview record {approved_preview} was run in mode '{predicate.get('mode')}': on protected target "
            f"'{target.name}' only a preview run by 'dbrunbook run preview' counts (an interactive notebook's "
            f"cells could have been edited). Run 'dbrunbook run preview -t {target.name}' and have it approved.")
    approved_path = run_dir / ARTIFACTS_DIR / "preview.json"
    if not approved_path.is_file():
        raise errors.PreviewNotApproved(f"Preview record {approved_preview} has no artifacts/preview.json. "
                                        f"Run 'dbrunbook run preview -t {target.name}' again.")
    approved = json.loads(approved_path.read_text(encoding="utf-8"))
    if approved.get("sha256") != now:
        changed = sorted(n for n, d in {**approved.get("files", {}), **_preview_files(preview)}.items()
                         if approved.get("files", {}).get(n) != _preview_files(preview).get(n))
        revs_then = approved.get("revisions", {})
        revs_now = {k: [s.revision for s in v] for k, v in preview.steps.items()}
        err = errors.PreviewMismatch(
            f"The SQL to apply differs from approved preview {approved_preview}: sha256 {approved.get('sha256')} "
            f"approved, {now} now (changed: {', '.join(changed) or 'the set of revisions'}; revisions approved "
            f"{revs_then}, now {revs_now}). A migration file or the database changed since the review. Run "
            f"'dbrunbook run preview -t {target.name}' again and have the new SQL reviewed.")
        err.approved_sha256, err.sha256 = approved.get("sha256"), now
        raise err
    rows = [
        {"check": "approved preview", "result": "ok", "detail": approved_preview},
        {"check": "record signature", "result": "valid", "detail": f"signed by {check.principal}"},
        {"check": "same database", "result": "ok", "detail": f"{ident.database} (system {ident.system_identifier})"},
        {"check": "sha256 of the SQL", "result": "identical", "detail": now},
    ]
    if target.protected:
        rows += _second_person(session, approved_preview, check, now)
    return pd.DataFrame(rows)


def _second_person(session, approved_preview: str, check, sql_sha256: str) -> list[dict]:
    """Four eyes: a valid approval of the preview by a trusted principal who is not the one applying it."""
    from datetime import datetime

    from dbrunbook.config import parse_duration
    from dbrunbook.safety import approvals

    config, target = session.config, session.target
    operator = records.operator_identity()
    max_age = parse_duration(target.approval_max_age, key="approval_max_age")
    now = datetime.now(UTC)
    found = approvals.approvals_of(config.outputs_dir, approved_preview, config.allowed_signers,
                                   check.statement_sha256)
    refused = []
    for approval in reversed(found):  # newest first
        if approval.status != "valid":
            refused.append(f"{approval.path.name} is {approval.status} ({'; '.join(approval.problems)})")
        elif signing.principal_matches(approval.approver, operator):
            refused.append(f"{approval.path.name} is by '{approval.approver}', who is applying it: "
                           f"self-approval does not count")
        elif approval.sql_sha256 != sql_sha256:
            refused.append(f"{approval.path.name} approved SQL sha256 {approval.sql_sha256}, not {sql_sha256}")
        elif approval.approved_at is None or (now - approval.approved_at).total_seconds() > max_age:
            refused.append(f"{approval.path.name} is from {approval.approved_at}, older than approval_max_age "
                           f"{target.approval_max_age}")
        else:
            previewed_by = ((check.statement or {}).get("predicate") or {}).get("operator")
            return [
                {"check": "approved by a second person", "result": "ok",
                 "detail": f"previewed by {previewed_by}, approved by {approval.approver} at "
                           f"{approval.approved_at:%Y-%m-%d %H:%M:%SZ}, applied by {operator}"
                           + (f" (note: {approval.note})" if approval.note else "")},
            ]
    raise errors.PreviewNotApproved(
        f"Preview record {approved_preview} has no approval that counts on protected target '{target.name}'"
        + (f": {'; '.join(refused)}" if refused else ": nobody has approved it")
        + f". Someone other than '{operator}' runs 'dbrunbook approve {approved_preview}' with their own key "
          f"(within {target.approval_max_age} of this run).")


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
        return head + uncounted + (_table_html(self.as_frame()) if self.items else "")


def _loss_statements(flat: str) -> list[tuple[str, str, str | None, str | None]]:
    """(kind, table, column, where) for each destructive part of a statement (see ``sqlimpact.losses``).

    ``where`` selects the lost rows of ``table``; kinds ``schema`` and ``type`` (a CASCADE drop) are expanded
    on the live database by ``_expand_cascades``. Text PostgreSQL's parser rejects: ``_fallback_losses``.
    """
    if sqlparse.describe(flat).parsed:
        return [(x.kind, x.table, x.column, x.where) for x in sqlimpact.losses(flat)]
    return _fallback_losses(flat)


def _fallback_losses(flat: str) -> list[tuple[str, str, str | None, str | None]]:
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


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') and name.endswith('"') else name


def _expand_cascades(conn, parts: list) -> list:
    """A ``DROP SCHEMA ... CASCADE`` loses its tables' rows, a ``DROP TYPE ... CASCADE`` the columns of that
    type: replace those items by the live tables and columns they take with them."""
    out = []
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


def data_loss(session, revision: str = "-1", migration_set: str = "main", *, save: bool = True
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
    items: list[LossItem] = []
    with session.engine.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        parts = _expand_cascades(conn, parts)
        dropped = {table for _, _, (kind, table, _, _) in parts if kind == "table"}
        for rev, flat, (kind, table, column, where) in parts:
            if kind == "column" and table in dropped:
                continue  # the table's own row counts these values
            name = conn.execute(sa.text("SELECT to_regclass(:t)::text"), {"t": table}).scalar()
            if name is None:
                continue
            if kind == "column":
                exists = conn.execute(sa.text(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = :c "
                    "AND NOT attisdropped"), {"t": table, "c": column.strip('"')}).first()
                if exists is None:
                    continue
                quoted = conn.dialect.identifier_preparer.quote(column.strip('"'))
                lost = conn.execute(sa.text(f"SELECT count({quoted}) FROM {name}")).scalar_one()
                obj = f"{table}.{column.strip(chr(34))}"
            else:
                # The WHERE is the migration's own; read in a READ ONLY transaction it cannot write.
                lost = conn.execute(sa.text(f"SELECT count(*) FROM {name}" + (f" WHERE {where}" if where else ""))
                                    ).scalar_one()
                obj = table
            items.append(LossItem(obj, kind, int(lost), rev, flat[:160]))
        conn.rollback()
    report = DataLossReport(mset.name, revision, tuple(current), tuple(s.revision for s in steps), tuple(items),
                            uncounted)
    if save:
        session.save_artifact("data_loss.json", json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    return report


def require_no_data_loss(session, report: DataLossReport, allow_data_loss: bool = False, *,
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
            f"drop, then run again with -p allow_data_loss true (recorded).")
        err.report = report
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    elif report.uncounted:
        print("Not counted: " + "; ".join(why for _, why in report.uncounted) + ".")
    if report.total and not allow_data_loss:
        what = ", ".join(f"{i.lost:,} {'values of' if i.kind == 'column' else 'rows of'} {i.object}"
                         for i in report.items if i.lost)
        err = errors.DataLossRefused(
            f"Downgrading '{report.migration_set}' from {', '.join(report.current) or 'base'} to "
            f"{report.revision} on target '{session.target.name}' would destroy {what} ({report.total:,} in "
            f"all). Back them up first (pg_dump -t TABLE), then run again with -p allow_data_loss true.")
        err.report = report
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    elif report.total:
        print(f"allow_data_loss=True: {report.total:,} rows/values will be destroyed (kept in the record).")
    else:
        print("The downgrade destroys no rows or values.")
    return frame


@dataclass(frozen=True)
class StampCheck:
    """Does the live schema look like the schema the migrations build at ``revision``?"""

    migration_set: str
    revision: str
    resolved: tuple[str, ...]
    current: tuple[str, ...]
    differences: tuple[dict, ...] = ()
    tables: tuple[str, ...] = ()  # tables the migration set owns, compared
    checked: bool = True
    reason: str = ""

    @property
    def truthful(self) -> bool:
        return self.checked and not self.differences

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.differences), columns=["object", "change", "at revision", "live"])

    def to_dict(self) -> dict:
        return {**asdict(self), "truthful": self.truthful}

    def _repr_html_(self) -> str:
        at = html.escape(", ".join(self.resolved) or "base")
        if not self.checked:
            return f"<p>Stamp to {at} <b>not checked</b>: {html.escape(self.reason)}</p>"
        if self.truthful:
            return (f"<p>Stamp to {at} tells the truth: the {len(self.tables)} tables of "
                    f"'{html.escape(self.migration_set)}' match the schema its migrations build.</p>")
        return (f"<p>Stamp to {at} would <b>lie</b>: {len(self.differences)} difference(s) between the live "
                f"schema and the schema at that revision.</p>" + _table_html(self.as_frame()))


def _scratch_schema(session, mset, revision: str) -> tuple[snapshots.SchemaSnapshot, snapshots.SchemaSnapshot]:
    """Schema at ``revision`` and at the heads, built on a throwaway embedded server.

    Never on the target's server, not even in a dry run: that would need CREATEDB on production and run the
    whole chain (data migrations included) on its resources. The scratch server is stopped and removed after.
    """
    from dbrunbook.chain import isolation
    from dbrunbook.procedures.backup import scratch_server

    with scratch_server(session.config, f"stamp-{session.run_id or secrets.token_hex(4)}") as server:
        admin = server.url()
        name = f"dbrunbook_stamp_{secrets.token_hex(4)}"
        db.create_database(admin, name)
        engine = db.make_engine(db.with_database(admin, name), run_id=session.run_id, poolclass=NullPool)
        try:
            return isolation.call(schemas_built_by_chain, mset, engine, revision,
                                  engine_options={"run_id": session.run_id})
        finally:
            engine.dispose()


def schemas_built_by_chain(mset, engine, revision: str) -> tuple[snapshots.SchemaSnapshot, snapshots.SchemaSnapshot]:
    """On an empty database: the schema the chain builds at ``revision`` (after the set's baseline), then at
    its heads (only to know which tables the set owns; the revision's own schema if that fails)."""
    migrations.build_baseline(mset, engine)
    if migrations.resolve(mset, revision):
        migrations.upgrade(mset, engine, revision)
    at_revision = snapshots.schema_snapshot(engine)
    try:
        migrations.upgrade(mset, engine, "heads")
        at_heads = snapshots.schema_snapshot(engine)
    except errors.DbRunbookError as err:
        log.warning("scratch upgrade to heads failed (%s); comparing the tables at %s only", err, revision)
        at_heads = at_revision
    return at_revision, at_heads


def stamp_check(session, revision: str, migration_set: str = "main") -> StampCheck:
    """Build the schema at ``revision`` on a throwaway embedded server and compare it with the live one.

    Only the tables the migration set creates (at any revision) are compared, version tables left out:
    another set's tables or the application's own are none of this stamp's business.
    """
    mset = session.config.migration_set(migration_set)
    resolved = migrations.resolve(mset, revision)
    current = migrations.current(mset, session.engine)
    try:
        expected, owned_at_heads = _scratch_schema(session, mset, revision)
    except (sa.exc.SQLAlchemyError, errors.DbRunbookError) as err:  # the check says why it could not run
        reason = f"could not build the schema at {revision} on a scratch server: {str(err).splitlines()[0]}"
        return StampCheck(mset.name, revision, resolved, current, checked=False, reason=db.mask_secrets(reason))
    version_tables = {m.version_table for m in session.config.migration_sets.values()}
    owned = sorted(t for t in set(expected.columns) | set(owned_at_heads.columns)
                   if t.split(".")[-1] not in version_tables)
    live = snapshots.schema_snapshot(session.engine)

    def only(snap: snapshots.SchemaSnapshot) -> snapshots.SchemaSnapshot:
        return snapshots.SchemaSnapshot({t: c for t, c in snap.columns.items() if t in owned},
                                        {t: i for t, i in snap.indexes.items() if t in owned})

    diff = snapshots.compare_schema(only(expected), only(live))
    rows = tuple({"object": r["object"], "change": r["change"], "at revision": r["before"], "live": r["after"]}
                 for r in diff.to_dict("records"))
    return StampCheck(mset.name, revision, resolved, current, rows, tuple(owned))


def require_truthful_stamp(session, check: StampCheck, force: bool = False, *, dry_run: bool = False
                           ) -> pd.DataFrame:
    """Guard: refuse a stamp whose revision the live schema does not match, unless ``force`` (recorded).

    Raises:
        StampWouldLie: differences (or no check possible) and ``force`` is false (``.check`` holds it).
    """
    session.save_artifact("stamp_check.json", json.dumps({**check.to_dict(), "force": force}, indent=1,
                                                         sort_keys=True, default=str) + "\n")
    at = ", ".join(check.resolved) or "base"
    if not check.truthful and not force:
        if check.checked:
            shown = "; ".join(f"{d['object']}: {d['change']}" for d in check.differences[:6])
            what = (f"the live schema differs from the schema migration set '{check.migration_set}' builds at "
                    f"{at} in {len(check.differences)} place(s): {shown}{' …' if len(check.differences) > 6 else ''}")
        else:
            what = f"the stamp could not be checked ({check.reason})"
        err = errors.StampWouldLie(
            f"Stamping target '{session.target.name}' to {at} would make its version table lie: {what}. Stamp "
            f"the revision the schema really is at, or, if you know better, run again with -p force true "
            f"(recorded).")
        err.check = check
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    elif not check.truthful:
        print(f"force=True: stamping to {at} although the schema does not match (kept in the record).")
    else:
        print(f"The live schema matches '{check.migration_set}' at {at}: the stamp tells the truth.")
    return check.as_frame()
