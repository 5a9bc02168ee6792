"""The approval pages of the HTML archive: one page per approved preview, and the index's list of them.

A preview's page already shows its approvals; a reviewer asking "was this change seen by a second person,
and which deploy used that approval?" starts from the approvals instead. ``approvals/<run-id>.html`` names the
approved preview (linked, with its signature status), every approval of it as checked (signature, trust
file, the statement it names), the SQL digest each approval covers, and the records whose ``approved_preview``
parameter names this preview, with whether their operator is one of the approvers (four eyes means not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbrunbook import records
from dbrunbook.safety.approvals import APPROVALS_DIR, Approval, approvals_of
from dbrunbook.views import report_style
from dbrunbook.views.record_page import INDEX_FILE, RecordEntry, utc_when
from dbrunbook.views.report_style import page_html
from dbrunbook.views.tables import escape_html

__all__ = ["APPROVAL_PAGES_DIR", "ApprovalPage", "approvals_by_run", "render_approval_page", "valid_approvers",
           "write_approval_pages"]

APPROVAL_PAGES_DIR = "approvals"


@dataclass(frozen=True)
class ApprovalPage:
    """One approval page as the index lists it."""

    run_id: str              # the approved preview
    page: str                # relative to the report folder
    valid_by: tuple[str, ...]  # approvers whose approval checks out
    not_valid: int           # approvals that do not (tampered, untrusted, of another statement)
    used_by: tuple[str, ...]   # run ids of the records that name this preview as approved_preview


def approvals_by_run(outputs_dir: Path, allowed_signers: Path,
                     run_dirs: Mapping[str, Path]) -> dict[str, list[Approval]]:
    """Every approved run id under ``outputs_dir/approvals/`` and its approvals, each checked.

    Args:
        run_dirs: run id → record folder, so that an approval of another version of that record's statement is
            found out; a run id missing here (no such record) is checked without it.
    """
    folder = Path(outputs_dir) / APPROVALS_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for run in sorted(folder.iterdir()):
        record = run_dirs.get(run.name)
        digest = None
        if record is not None and (Path(record) / records.STATEMENT_FILE).is_file():
            digest = records.statement_sha256(Path(record))
        if run.is_dir():
            found[run.name] = approvals_of(outputs_dir, run.name, Path(allowed_signers), digest)
    return found


def valid_approvers(found: Sequence[Approval]) -> tuple[str, ...]:
    """The approvers whose approval checks out, sorted, each once."""
    return tuple(sorted({a.approver for a in found if a.status == "valid" and a.approver}))


def _record_link(entry: RecordEntry | None, run_id: str) -> str:
    if entry is None:
        return f"<code>{escape_html(run_id)}</code> (no such record in this archive)"
    return (f'<a href="../{escape_html(entry.page)}">{escape_html(run_id)}</a> '
            f"({escape_html(entry.status_label)})")


def _approval_rows(found: Sequence[Approval]) -> str:
    rows = []
    for a in found:
        when = utc_when(a.approved_at.isoformat()) if a.approved_at else "-"
        digest = a.sql_sha256 or "-"
        rows.append(
            f'<tr class="approval status-{escape_html(a.status)}"><td>{escape_html(a.approver or "-")}</td>'
            f'<td class="status">{escape_html(a.status)}</td><td>{escape_html(when)}</td>'
            f'<td class="wrap">{escape_html(a.note or "-")}</td>'
            f'<td><code title="{escape_html(digest)}">{escape_html(digest[:12])}</code></td>'
            f'<td class="wrap">{escape_html("; ".join(a.problems) or "-")}</td>'
            f"<td>{escape_html(a.path.name)}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("approver", "status", "approved at (UTC)", "note",
                                             "SQL sha256 (start)", "problems", "file"))
    return f'<table class="dbr-table" id="approval-list"><tr>{head}</tr>{"".join(rows)}</table>'


def _use_rows(users: Sequence[RecordEntry], approvers: set[str]) -> str:
    if not users:
        return '<p id="used-by">No record in this archive names this preview as its approved_preview.</p>'
    rows = []
    for e in users:
        eyes = ("no: the operator approved it too" if e.operator in approvers else "yes")
        rows.append(f'<tr><td><a href="../{escape_html(e.page)}">{escape_html(e.run_id)}</a></td>'
                    f"<td>{escape_html(e.runbook)}</td><td>{escape_html(e.target)}</td>"
                    f"<td>{escape_html(e.operator)}</td><td>{report_style.outcome_badge(e.outcome)}</td>"
                    f"<td>{escape_html(e.status_label)}</td><td>{escape_html(eyes)}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("record", "runbook", "target", "operator", "outcome", "signature",
                                             "by someone other than a valid approver"))
    return f'<table class="dbr-table" id="used-by"><tr>{head}</tr>{"".join(rows)}</table>'


def render_approval_page(run_id: str, found: Sequence[Approval], preview: RecordEntry | None,
                         users: Sequence[RecordEntry]) -> str:
    """The HTML page of the approvals of preview ``run_id``."""
    valid = valid_approvers(found)
    bad = [a for a in found if a.status != "valid"]
    if valid and not bad:
        banner = f'<div class="dbr-banner valid" id="approval-status">Approved by {escape_html(", ".join(valid))}.'
    elif valid:
        banner = (f'<div class="dbr-banner untrusted" id="approval-status">Approved by {escape_html(", ".join(valid))}'
                  f"; {len(bad)} other approval file(s) do not check out (see below).")
    else:
        banner = ('<div class="dbr-banner tampered" id="approval-status">No valid approval: none of the '
                  f"{len(found)} approval file(s) checks out.")
    digests = sorted({a.sql_sha256 for a in found if a.status == "valid" and a.sql_sha256})
    facts = (f'<table class="dbr-table" id="approved-preview"><tr><th>preview record</th>'
             f"<td>{_record_link(preview, run_id)}</td></tr>"
             f"<tr><th>previewed on</th><td>{escape_html(preview.target if preview else '-')}</td></tr>"
             f"<tr><th>previewed by</th><td>{escape_html(preview.operator if preview else '-')}</td></tr>"
             f"<tr><th>approved SQL sha256</th><td><code>{escape_html(', '.join(digests) or '-')}</code></td></tr>"
             "</table>")
    body = (f'<p><a href="../{INDEX_FILE}">← all records</a></p><h1>Approvals of preview '
            f"<code>{escape_html(run_id)}</code></h1>{banner}</div>{facts}"
            "<p>Each approval is checked as a record is: its signature, the trust file, and the statement it names. "
            "Whether one counted for a deploy (not by the deployer, not older than approval_max_age) was decided when "
            "that deploy ran; its record says so.</p>"
            f"<h2>Approvals</h2>{_approval_rows(found)}<h2>Used by</h2>{_use_rows(users, set(valid))}")
    return page_html(f"approvals of {run_id}", body)


def write_approval_pages(out_dir: Path, approved: Mapping[str, Sequence[Approval]],
                         entries: Sequence[RecordEntry]) -> list[ApprovalPage]:
    """Write ``out_dir/approvals/<run-id>.html`` for every approved preview; returns what the index lists.

    Args:
        approved: ``approvals_by_run``'s answer.
        entries: the archive's records as the index lists them.
    """
    by_id = {e.run_id: e for e in entries}
    folder = Path(out_dir) / APPROVAL_PAGES_DIR
    pages = []
    for run_id, found in approved.items():
        users = [e for e in entries if e.approved_preview == run_id]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run_id}.html").write_text(render_approval_page(run_id, found, by_id.get(run_id), users),
                                               encoding="utf-8")
        pages.append(ApprovalPage(run_id, f"{APPROVAL_PAGES_DIR}/{run_id}.html", valid_approvers(found),
                                  sum(1 for a in found if a.status != "valid"), tuple(e.run_id for e in users)))
    for stale in folder.glob("*.html") if folder.is_dir() else ():
        if stale.stem not in approved:
            stale.unlink()
    return pages
