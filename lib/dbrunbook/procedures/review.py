"""The guide's five-point review checklist, answered from the evidence, and the review's verdict.

The review runbook gathers its evidence cell by cell (the source, its two lints, the round trip, the
stairway); ``checklist`` answers each question from it with the objects it is about, so the reviewer reads
a verdict per question, not a diff. ``review`` is the same in one call, for scripts and tests.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dbrunbook.errors import ReviewFailed
from dbrunbook.procedures.revision_lint import (
    Lint,
    ReviewFinding,
    RevisionSource,
    findings_frame,
    lint_python,
    lint_sql,
    revision_source,
)
from dbrunbook.procedures.roundtrip import RoundTrip, Stairway
from dbrunbook.procedures.scratch import scratch
from dbrunbook.protocol import SessionLike

__all__ = ["Review", "checklist", "require_passing", "review"]


# --- the checklist --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Review:
    """The guide's review checklist for one revision, answered from the evidence, and every finding."""

    revision: str
    migration_set: str
    checklist: pd.DataFrame = field(compare=False)
    findings: tuple[ReviewFinding, ...] = ()

    @property
    def errors(self) -> tuple[ReviewFinding, ...]:
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


def _unindexed_foreign_keys(fks: list[str], index_rows: list[dict[str, Any]], new_tables: set[str]) -> list[str]:
    """Foreign keys (``table: definition``) of tables this revision creates whose first column has no index."""
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
    return unindexed


def checklist(source: RevisionSource, python: Lint, sql: Lint, trip: RoundTrip, stairs: Stairway,
              s: SessionLike | None = None) -> Review:
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
    unindexed = _unindexed_foreign_keys(fks, index_rows, new_tables)
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


def review(s: SessionLike, revision: str = "", migration_set: str = "main") -> Review:
    """Everything the review runbook does, in one call (for scripts and tests); saves no artifact itself."""
    source = revision_source(s, revision, migration_set)
    place = scratch(s)
    try:
        trip, stairs = place.round_trip(source), place.stairway(source)
    finally:
        place.close()
    return checklist(source, lint_python(source), lint_sql(source), trip, stairs)
