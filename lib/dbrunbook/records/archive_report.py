"""What verifying an archive found: the kinds of finding, one ``ArchiveFinding``, and the ``ArchiveReport``.

The report is what ``dbrunbook verify`` prints and what a notebook shows: one row per record with its
signature and chain status, the findings no record owns (a ledger row without a record), and a summary line.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from dbrunbook.records.archive_entries import database_key
from dbrunbook.records.record_check import STATUSES, RecordCheck

__all__ = ["FINDING_KINDS", "ArchiveReport", "ArchiveFinding"]


#: What a finding can be about, in the order the summary lists them.
FINDING_KINDS = (
    "tampered", "untrusted", "unsigned", "incomplete",  # one record's own status (records.verify_record)
    "missing",            # a record's prev names a statement that is not in the archive: deleted
    "out-of-order",       # prev names a record that is not the one sealed just before it: reordered/re-signed
    "unlinked",           # a record after the first of its database with no prev at all
    "misfiled",           # a run directory not under the date of its run id
    "unrecorded-change",  # the Alembic heads moved between two records, or since the last one
    "ledger",             # a ledger row and the records disagree
    "tip",                # outputs/.tips.json names a newest record that is gone, or cannot be trusted
)


@dataclass(frozen=True)
class ArchiveFinding:
    """One problem in the archive: what kind, which run and database it concerns, and what to do."""

    kind: str
    message: str
    run_id: str | None = None
    database: str | None = None

    def as_row(self) -> dict:
        return {"kind": self.kind, "run_id": self.run_id or "-", "database": self.database or "-",
                "message": self.message}


@dataclass(frozen=True)
class ArchiveReport:
    """What ``verify_archive`` found: one check per record, and every finding across records and ledgers."""

    outputs_dir: Path
    checks: tuple[RecordCheck, ...]
    findings: tuple[ArchiveFinding, ...]
    databases: tuple[str, ...] = ()   # databases that have records
    ledgers: tuple[str, ...] = ()     # databases whose ledger was cross-checked
    chains: dict = field(default_factory=dict, repr=False)  # {database: (run ids in seal order)}

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_status(self) -> int:
        """0 when every record is valid and nothing is missing; 1 otherwise (the CLI's status)."""
        return 0 if self.ok else 1

    def findings_for(self, run_id: str) -> tuple[ArchiveFinding, ...]:
        return tuple(f for f in self.findings if f.run_id == run_id)

    def kinds(self) -> dict[str, int]:
        """``{kind: number of findings}``, only the kinds that occur, in FINDING_KINDS order."""
        counts = {k: sum(1 for f in self.findings if f.kind == k) for k in FINDING_KINDS}
        return {k: n for k, n in counts.items() if n}

    def rows(self) -> list[dict]:
        """One row per record: run id, database, runbook, signature status, chain status, findings."""
        rows = []
        for check in self.checks:
            predicate = (check.statement or {}).get("predicate") or {}
            found = self.findings_for(check.run_id)
            chain = [f.kind for f in found if f.kind in ("missing", "out-of-order", "unlinked", "misfiled")]
            rows.append({
                "run_id": check.run_id,
                "database": database_key(predicate.get("database")) or "-",
                "runbook": predicate.get("runbook") or "-",
                "status": check.status,
                "chain": ", ".join(chain) or ("ok" if check.statement else "-"),
                "problems": "; ".join([*check.problems,
                                       *(f.message for f in found if f.kind not in STATUSES)]),
            })
        return rows

    def orphan_findings(self) -> tuple[ArchiveFinding, ...]:
        """Findings about no record of the archive (a ledger row whose record is missing, a live database)."""
        known = {c.run_id for c in self.checks}
        return tuple(f for f in self.findings if f.run_id not in known)

    def summary(self) -> str:
        valid = sum(1 for c in self.checks if c.ok)
        parts = [f"{valid} of {len(self.checks)} records valid"]
        parts += [f"{n} {kind}" for kind, n in self.kinds().items() if kind not in STATUSES]
        if self.ledgers:
            parts.append(f"ledger cross-checked for {len(self.ledgers)} database(s)")
        return "; ".join(parts) + "."

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ("run_id", "database", "runbook", "status",
                                                             "chain", "problems"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                       for r in self.rows())
        orphans = "".join(f"<li>{html.escape(f.message)}</li>" for f in self.orphan_findings())
        return (f"<p>{html.escape(self.summary())}</p><table><tr>{head}</tr>{body}</table>"
                + (f"<ul>{orphans}</ul>" if orphans else ""))
