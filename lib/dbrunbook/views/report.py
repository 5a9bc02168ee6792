"""A static HTML archive of the records: an index page with filters, one page per record, fleet and approval.

The index lists the fleet roll-ups and the approved previews above the records, each linking its own page
(``fleet_report``, ``approval_pages``). A reviewer opens ``index.html`` in a browser, with no server and no
network: every page is self-contained (CSS and the index's filter script inline, plots embedded as PNG by
nbconvert). A record's page is rendered from the notebook bytes that were checked against its signed
statement, read once, so what is shown is what was signed. A record that is tampered, unsigned or
incomplete gets a warning page with its problems and no notebook body: a reviewer must never read an altered
record as if it were good. A record signed by a key that is not trusted is shown with a banner saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dbrunbook import records
from dbrunbook.views import report_style
from dbrunbook.views.approval_pages import ApprovalPage, approvals_by_run, write_approval_pages
from dbrunbook.views.fleet_report import FleetPage, write_fleet_pages
from dbrunbook.views.notebook_html import NotebookRenderer, sanitize_html
from dbrunbook.views.record_page import (
    FAILED_TAG,
    INDEX_FILE,
    PAGES_DIR,
    RENDERED,
    STATUS_LABELS,
    RecordEntry,
    render_record,
    utc_when,
)
from dbrunbook.views.report_style import page_html
from dbrunbook.views.tables import escape_html

log = logging.getLogger(__name__)

__all__ = [
    "FAILED_TAG", "INDEX_FILE", "PAGES_DIR", "RENDERED", "STATUS_LABELS", "RecordEntry", "Report", "build_report",
    "page_html", "render_record", "sanitize_html",
]

_FILTERS = (("target", "target"), ("runbook", "runbook"), ("outcome", "outcome"), ("status", "signature"))
#: The index's filters: each select keeps the rows whose data attribute matches; the count says how many.
_FILTER_SCRIPT = """
(function () {
  var selects = Array.prototype.slice.call(document.querySelectorAll('.dbr-filters select'));
  var rows = Array.prototype.slice.call(document.querySelectorAll('#records tbody tr'));
  function apply() {
    var shown = 0;
    rows.forEach(function (row) {
      var visible = row.dataset.search !== 'miss' &&
        selects.every(function (s) { return !s.value || row.dataset[s.dataset.key] === s.value; });
      row.style.display = visible ? '' : 'none';
      if (visible) { shown += 1; }
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' records shown';
  }
  selects.forEach(function (s) { s.addEventListener('change', apply); });
  apply();
})();
"""


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote."""

    out_dir: Path
    index: Path
    entries: tuple[RecordEntry, ...]
    fleets: tuple[FleetPage, ...] = ()
    approvals: tuple[ApprovalPage, ...] = ()

    def page(self, run_id: str) -> Path:
        return self.out_dir / next(e.page for e in self.entries if e.run_id == run_id)


def _listing(title: str, table_id: str, columns: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{escape_html(c)}</th>" for c in columns)
    return (f'<h2>{escape_html(title)}</h2><table class="dbr-table" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _side_tables(fleets: list[FleetPage], approved: list[ApprovalPage]) -> str:
    """The index's lists of fleet roll-ups and of approved previews, each linking its own page."""
    parts = []
    if fleets:
        parts.append(_listing("Fleets", "fleets", ("started (UTC)", "runbook", "group", "targets", "stopped",
                                                   "roll-up", "fleet"), [
            f'<tr class="fleet status-{escape_html(f.status)}"><td>{escape_html(utc_when(f.started_at))}</td>'
            f"<td>{escape_html(f.runbook)}</td><td>{escape_html(f.group)}</td><td>{escape_html(f.tally)}</td>"
            f"<td>{escape_html(f.stopped or '-')}</td><td class=\"status\">{escape_html(f.status)}</td>"
            f'<td><a href="{escape_html(f.page)}">{escape_html(f.fleet_id)}</a></td></tr>'
            for f in sorted(fleets, key=lambda f: f.fleet_id, reverse=True)]))
    if approved:
        parts.append(_listing("Approvals", "approved-previews", ("approved by", "approval files not valid",
                                                                  "used by", "preview"), [
            f'<tr class="approved{" status-tampered" if not a.valid_by else ""}">'
            f"<td>{escape_html(', '.join(a.valid_by) or 'no valid approval')}</td>"
            f"<td>{a.not_valid}</td><td>{escape_html(', '.join(a.used_by) or '-')}</td>"
            f'<td><a href="{escape_html(a.page)}">{escape_html(a.run_id)}</a></td></tr>'
            for a in sorted(approved, key=lambda a: a.run_id, reverse=True)]))
    return "".join(parts) + ("<h2>Records</h2>" if parts else "")


def _index(entries: list[RecordEntry], side: str = "") -> str:
    options = {}
    for key, _label in _FILTERS:
        values = sorted({getattr(e, key) for e in entries})
        options[key] = "".join(f'<option value="{escape_html(v)}">'
                               f'{escape_html(STATUS_LABELS.get(v, v) if key == "status" else v)}</option>'
                               for v in values)
    filters = "".join(
        f'<label>{escape_html(label)} <select id="filter-{key}" data-key="{key}"><option value="">all</option>'
        f"{options[key]}</select></label>" for key, label in _FILTERS)
    rows = "".join(
        f'<tr class="record status-{escape_html(e.status)} outcome-{escape_html(e.outcome)}" '
        f'data-target="{escape_html(e.target)}" data-runbook="{escape_html(e.runbook)}" '
        f'data-outcome="{escape_html(e.outcome)}" data-status="{escape_html(e.status)}">'
        f"<td>{escape_html(e.when)}</td><td>{escape_html(e.runbook)}</td><td>{escape_html(e.target)}</td>"
        f"<td>{escape_html(e.operator)}</td><td>{report_style.outcome_badge(e.outcome)}</td>"
        f"<td>{escape_html(e.revisions)}</td><td class=\"status\">{escape_html(e.status_label)}</td>"
        f'<td><a href="{escape_html(e.page)}">{escape_html(e.run_id)}</a></td></tr>'
        for e in sorted(entries, key=lambda e: e.run_id, reverse=True))
    bad = sum(1 for e in entries if e.status != "valid")
    body = (f"<h1>dbrunbook records</h1><p>{len(entries)} records, "
            f"{bad} not valid (see the signature column).</p>"
            + report_style.index_summary(entries) + side +
            f'<div class="dbr-filters">{filters}<label class="dbr-search">search <input id="search" '
            'type="search"></label></div><p id="shown"></p>'
            '<table class="dbr-table" id="records"><thead><tr><th>when (UTC)</th><th>runbook</th><th>target</th>'
            "<th>operator</th><th>outcome</th><th>revisions before → after</th><th>signature</th>"
            f"<th>record</th></tr></thead><tbody>{rows}</tbody></table>")
    return page_html("dbrunbook records", body, _FILTER_SCRIPT + report_style.SORT_SCRIPT)


def build_report(outputs_dir: Path, allowed_signers: Path, out_dir: Path | None = None) -> Report:
    """Write the HTML archive of every record under ``outputs_dir``: ``index.html`` and ``records/*.html``.

    Args:
        out_dir: where to write; default ``outputs_dir/report`` (not a date folder, so never taken for a
            record). Pages of records no longer in the archive are removed.
    """
    outputs_dir = Path(outputs_dir)
    out_dir = Path(out_dir) if out_dir else outputs_dir / "report"
    page_dir = out_dir / PAGES_DIR
    page_dir.mkdir(parents=True, exist_ok=True)
    renderer = NotebookRenderer()
    entries, written = [], set()
    run_dirs = {run_dir.name: run_dir for run_dir in records.find_records(outputs_dir)}
    approved = approvals_by_run(outputs_dir, allowed_signers, run_dirs)
    for run_dir in run_dirs.values():
        entry, page = render_record(run_dir, allowed_signers, page_dir, renderer,
                                    approvals=approved.get(run_dir.name, ()))
        (out_dir / entry.page).write_text(page, encoding="utf-8")
        written.add(Path(entry.page).name)
        entries.append(entry)
    for stale in page_dir.glob("*.html"):
        if stale.name not in written:
            stale.unlink()
    fleets = write_fleet_pages(outputs_dir, allowed_signers, out_dir)
    approval_pages = write_approval_pages(out_dir, approved, entries)
    index = out_dir / INDEX_FILE
    index.write_text(_index(entries, _side_tables(fleets, approval_pages)), encoding="utf-8")
    return Report(out_dir, index, tuple(entries), tuple(fleets), tuple(approval_pages))
