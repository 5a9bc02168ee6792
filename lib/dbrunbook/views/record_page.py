"""The page of one record: verified first, then its facts, parameters, artifacts and notebook, or a warning.

A record's page is rendered from the notebook bytes that were checked against its signed statement, read
once, so what is shown is what was signed. A record that is tampered, unsigned or incomplete gets a warning
page with its problems and no notebook body: a reviewer must never read an altered record as if it were good.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from dbrunbook import records

# The launcher's own reading of a parameters cell (ast, never executed), from its one home, not the launcher.
from dbrunbook.execution.parameters import parse_parameters
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, NOTEBOOK_FILE
from dbrunbook.safety.approvals import Approval
from dbrunbook.views import record_sections, report_style
from dbrunbook.views.notebook_html import NotebookRenderer
from dbrunbook.views.report_style import page_html
from dbrunbook.views.tables import escape_html, grid_html, pairs_html

log = logging.getLogger(__name__)


#: How each status of ``records.verify_record`` reads on a page.
STATUS_LABELS = {
    "valid": "valid",
    "untrusted": "untrusted key",
    "tampered": "tampered",
    "unsigned": "unsigned",
    "incomplete": "incomplete (unsigned)",
}


#: Statuses whose notebook is rendered: its bytes match a statement whose signature is sound.
# Only a valid record (sound signature, trusted signer, every file as signed) shows its notebook: an untrusted
# key proves nothing about who made it, so its content would be a forger's page under our banner.
RENDERED = ("valid",)


PAGES_DIR = "records"


INDEX_FILE = "index.html"


FAILED_TAG = "dbrunbook-failed"


# Cells papermill or the launcher add that the summary tables show better (and papermill's red banners,
# whose inline styles and anchors the sanitizer strips anyway).
_HIDDEN_TAGS = {"parameters", "injected-parameters", "papermill-error-cell-tag"}


@dataclass(frozen=True)
class RecordEntry:
    """One record as the index lists it; values come from the statement (the intent when unsigned)."""

    run_id: str
    when: str
    runbook: str
    target: str
    operator: str
    outcome: str
    revisions: str
    status: str
    page: str  # path of its page, relative to the report folder
    problems: tuple[str, ...] = ()
    approved_preview: str = ""  # the preview run id this run's approved_preview parameter names

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)


# --- facts of a record ------------------------------------------------------------------------------------
def heads_text(before: Mapping | None, after: Mapping | None) -> str:
    """``main: a → b; ai: c`` from heads before and after, per migration set ("-" when neither is known)."""
    before, after = before or {}, after or {}
    parts = []
    for name in sorted(set(before) | set(after)):
        b = "+".join(before.get(name) or []) or ("base" if before.get(name) is not None else "?")
        a = "+".join(after.get(name) or []) or ("base" if after.get(name) is not None else "?")
        parts.append(f"{name}: {b}" if a == b else f"{name}: {b} → {a}")
    return "; ".join(parts) or "-"


def _facts(run_dir: Path, check: records.RecordCheck) -> dict:
    """The predicate of the statement, or for a record without one what its intent.json says."""
    predicate = (check.statement or {}).get("predicate")
    if isinstance(predicate, dict):
        return predicate
    try:
        intent = json.loads((run_dir / INTENT_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return intent if isinstance(intent, dict) else {}


def utc_when(value: Any) -> str:
    """``2026-11-23 22:05:01`` (UTC) from an ISO timestamp; the text as it is when it is not one."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value or "-")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _entry(run_dir: Path, check: records.RecordCheck) -> RecordEntry:
    facts = _facts(run_dir, check)
    parameters = facts.get("parameters") or {}
    target = (facts.get("extra") or {}).get("target") or facts.get("target") or parameters.get("target")
    return RecordEntry(
        run_id=run_dir.name,
        when=utc_when(facts.get("started_at")),
        runbook=str(facts.get("runbook") or "-"),
        target=str(target or "-"),
        operator=str(facts.get("operator") or "-"),
        outcome=str(facts.get("outcome") or ("incomplete" if check.status == "incomplete" else "-")),
        revisions=heads_text(facts.get("heads_before") or (facts.get("pre_state") or {}).get("heads"),
                              facts.get("heads_after")),
        status=check.status,
        page=f"{PAGES_DIR}/{run_dir.name}.html",
        problems=check.problems,
        approved_preview=str(parameters.get("approved_preview") or ""),
    )


def _signed_digest(statement: Mapping | None, name: str) -> str | None:
    for subject in (statement or {}).get("subject") or []:
        if isinstance(subject, dict) and subject.get("name") == name:
            return (subject.get("digest") or {}).get("sha256")
    return None


# --- notebook preparation ---------------------------------------------------------------------------------
def _step_heading(cells: list, index: int) -> str | None:
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            headings = [ln.lstrip("#").strip() for ln in cell.source.splitlines() if ln.startswith("##")]
            if headings:
                return headings[-1]
    return None


def _prepare(nb: nbformat.NotebookNode) -> tuple[list[dict], str | None]:
    """Tag failed cells, drop the parameter cells and papermill's banners; return the failures found.

    Works on the in-memory copy only: the record's bytes are never rewritten.
    """
    parameters_source = next((c.source for c in nb.cells if c.cell_type == "code"
                              and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    failures = []
    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if cell.cell_type != "code" or not errors:
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        tags.append(FAILED_TAG)
        if not cell.get("id"):
            cell["id"] = f"failed-{index}"
        failures.append({"anchor": f"cell-id={cell['id']}", "heading": _step_heading(nb.cells, index),
                         "ename": errors[0].get("ename", ""), "evalue": errors[0].get("evalue", "")})
    nb.cells = [c for c in nb.cells if not _HIDDEN_TAGS.intersection(c.get("metadata", {}).get("tags", []))]
    return failures, parameters_source


def _parameter_rows(parameters_source: str | None, values: Mapping) -> list[list[Any]]:
    declared = {}
    if parameters_source:
        try:
            declared = {p.name: p for p in parse_parameters(parameters_source)}
        except Exception as err:  # a record of a malformed runbook still renders; the table says less
            log.warning("Cannot read the parameters cell: %s", err)
    rows = []
    for name in list(declared) + sorted(set(values) - set(declared)):
        p = declared.get(name)
        value = values.get(name, p.default if p else None)
        rows.append([name, json.dumps(value), p.type if p else "-", json.dumps(p.default) if p else "-",
                     p.help if p else ""])
    return rows


# --- pages ------------------------------------------------------------------------------------------------
def _nav(entry: RecordEntry) -> str:
    return (f'<p><a href="../{INDEX_FILE}">← all records</a></p>'
            f"<h1>{escape_html(entry.runbook)} on {escape_html(entry.target)} — "
            f"{report_style.outcome_badge(entry.outcome)}</h1>"
            f"<p><code>{escape_html(entry.run_id)}</code></p>")


def _summary_rows(entry: RecordEntry, facts: Mapping, check: records.RecordCheck, papermill: Mapping) -> list:
    database = facts.get("database") or {}
    rows = [
        ("run id", entry.run_id), ("runbook", entry.runbook), ("target", entry.target),
        ("outcome", f"{entry.outcome} (exit status {facts.get('exit_status', '-')})"),
        ("operator", entry.operator), ("host", facts.get("host", "-")),
        ("started", facts.get("started_at", "-")), ("finished", facts.get("finished_at", "-")),
        ("database", f"{database.get('database', '-')} on {database.get('host', '-')} "
                     f"(PostgreSQL {database.get('server_version', '-')}, "
                     f"system id {database.get('system_identifier', '-')})" if database else "-"),
        ("revisions before → after", entry.revisions),
        ("signature", f"{entry.status_label}" + (f", signed by {check.principal}" if check.principal else "")),
        ("mode", facts.get("mode", "-")),
        ("runbook sha256", facts.get("runbook_sha256", "-")),
        ("migrations sha256", facts.get("migrations_sha256", "-")),
    ]
    if papermill:
        rows += [("papermill", f"{papermill.get('version', '-')}, {papermill.get('duration', '-')} s"),
                 ("notebook run", f"{papermill.get('start_time', '-')} → {papermill.get('end_time', '-')}")]
        if papermill.get("exception"):
            rows.append(("papermill exception", "yes: a cell raised"))
    return rows


def _artifact_rows(run_dir: Path, page_dir: Path, statement: Mapping | None) -> str:
    items = []
    for subject in (statement or {}).get("subject") or []:
        name = subject.get("name", "") if isinstance(subject, dict) else ""
        if not name.startswith(f"{ARTIFACTS_DIR}/"):
            continue
        href = Path(os.path.relpath(run_dir / name, page_dir)).as_posix()
        items.append(f'<tr><td><a href="{escape_html(href)}">{escape_html(name)}</a></td>'
                     f"<td><code>{escape_html((subject.get('digest') or {}).get('sha256'))}</code></td></tr>")
    if not items:
        return ""
    return ('<h2>Artifacts</h2><table class="dbr-table"><tr><th>file</th><th>sha256 (signed)</th></tr>'
            + "".join(items) + "</table>")


def _warning_page(entry: RecordEntry, facts: Mapping, check: records.RecordCheck, reason: str) -> str:
    problems = "".join(f"<li>{escape_html(p)}</li>" for p in (*check.problems, reason) if p)
    claimed = pairs_html([("runbook", entry.runbook), ("target", entry.target), ("operator", entry.operator),
                      ("started", entry.when), ("outcome", entry.outcome), ("revisions", entry.revisions)])
    body = (f"<div class=\"dbr-header\">{_nav(entry)}"
            f'<div class="dbr-banner {escape_html(entry.status)}" id="record-warning">This record is '
            f"{escape_html(entry.status_label.upper())}: its notebook is not shown, because what it would show is not "
            f"what was signed.</div><h2>Problems</h2><ul id=\"problems\">{problems}</ul>"
            f"<h2>What the record claims (not verified)</h2>{claimed}"
            f"<p>Check it with <code>dbrunbook verify {escape_html(check.run_dir)}</code>.</p></div>")
    return page_html(f"{entry.status_label.upper()}: {entry.run_id}", body)


def render_record(run_dir: Path, allowed_signers: Path, page_dir: Path | None = None,
                  renderer: NotebookRenderer | None = None,
                  approvals: Sequence[Approval] = ()) -> tuple[RecordEntry, str]:
    """Verify one record and return its index entry and the HTML of its page.

    ``approvals`` are the checked approvals of this record (``approval_pages.approvals_by_run``), shown in a
    section of their own.

    The notebook's bytes are read once, compared with the sha256 the signed statement gives for them, and
    only those bytes are rendered; a record that is not valid (or signed by an untrusted key) gets a warning
    page without its notebook.
    """
    run_dir = Path(run_dir)
    page_dir = Path(page_dir) if page_dir else run_dir
    nb_path = run_dir / NOTEBOOK_FILE
    nb_bytes = nb_path.read_bytes() if nb_path.is_file() else None
    check = records.verify_record(run_dir, Path(allowed_signers))
    entry = _entry(run_dir, check)
    facts = _facts(run_dir, check)
    if check.status not in RENDERED:
        return entry, _warning_page(entry, facts, check, "")
    signed = _signed_digest(check.statement, NOTEBOOK_FILE)
    if nb_bytes is None or signed is None or hashlib.sha256(nb_bytes).hexdigest() != signed:
        # The file changed between the check above and our read (or was never covered): same as tampered.
        entry = RecordEntry(**{**entry.__dict__, "status": "tampered"})
        return entry, _warning_page(entry, facts, check,
                                    f"{NOTEBOOK_FILE} does not match the sha256 in the signed statement.")
    nb = nbformat.reads(nb_bytes.decode("utf-8"), as_version=4)
    interactive = record_sections.is_interactive(facts.get("mode"))
    # An interactive run has no papermill metadata worth showing (it ran cell by cell): its own section instead.
    papermill = {} if interactive else dict(nb.metadata.get("papermill") or {})
    # Before _prepare drops the parameter cells: the cell numbers are those verify and the seal name.
    runs = record_sections.interactive_html(nb, run_dir, str(facts.get("mode")), entry.operator) if interactive else ""
    failures, parameters_source = _prepare(nb)
    report_style.collapse_tracebacks(nb)
    values = papermill.get("parameters") or facts.get("parameters") or {}
    header = [f'<div class="dbr-header">{_nav(entry)}']
    header.append(f'<div class="dbr-banner valid" id="record-status">Signature valid, signed by '
                  f"{escape_html(check.principal)}; every file matches the signed statement.</div>")
    header.append(report_style.failure_box(failures, entry.outcome))
    notes = [p for p in check.problems if check.status == "valid"]
    if notes:
        header.append("<ul>" + "".join(f"<li>{escape_html(p)}</li>" for p in notes) + "</ul>")
    header.append('<h2>Run</h2><div id="run">' + pairs_html(_summary_rows(entry, facts, check, papermill)) + "</div>")
    header.append(runs)
    header.append(record_sections.approvals_html(approvals, entry.run_id))
    header.append('<h2>Parameters</h2><div id="parameters">'
                  + grid_html(["parameter", "value", "type", "default", "help"],
                          _parameter_rows(parameters_source, values)) + "</div>")
    header.append(_artifact_rows(run_dir, page_dir, check.statement))
    header.append("<h2>Notebook</h2></div>")
    return entry, (renderer or NotebookRenderer()).render(nb, "".join(header), f"{entry.runbook} {entry.run_id}")
