"""A static HTML archive of the records: an index page with filters, and one page per record.

A reviewer opens ``index.html`` in a browser, with no server and no network: every page is self-contained
(CSS and the index's filter script inline, plots embedded as PNG by nbconvert). A record's page is rendered
from the notebook bytes that were checked against its signed statement, read once, so what is shown is what
was signed. A record that is tampered, unsigned or incomplete gets a warning page with its problems and no
notebook body: a reviewer must never read an altered record as if it were good. A record signed by a key
that is not trusted is shown with a banner saying so.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from dbrunbook import records
from dbrunbook.execution.protocol import ARTIFACTS_DIR, INTENT_FILE, NOTEBOOK_FILE
from dbrunbook.views import report_style

log = logging.getLogger(__name__)

__all__ = ["STATUS_LABELS", "RecordEntry", "Report", "build_report", "render_record", "sanitize_html"]

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
_FILTERS = (("target", "target"), ("runbook", "runbook"), ("outcome", "outcome"), ("status", "signature"))

_CSS = """
body.dbr { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1b1f24; }
.dbr-header { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 70em;
              margin: 1em auto 2em auto; padding: 0 1em; }
.dbr table.dbr-table, .dbr-header table.dbr-table { border-collapse: collapse; margin: .5em 0 1em 0; }
table.dbr-table th, table.dbr-table td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left;
                                         vertical-align: top; font-size: .9em; }
table.dbr-table th { background: #f6f8fa; }
.dbr-banner { padding: .7em 1em; border-radius: 4px; margin: .5em 0 1em 0; font-weight: 600; }
.dbr-banner.valid { background: #dafbe1; border: 1px solid #1a7f37; }
.dbr-banner.untrusted { background: #fff8c5; border: 2px solid #9a6700; }
.dbr-banner.tampered, .dbr-banner.unsigned, .dbr-banner.incomplete {
  background: #ffebe9; border: 3px solid #cf222e; font-size: 1.2em; }
.dbr-failed { background: #ffebe9; border-left: 6px solid #cf222e; padding: .5em 1em; margin: .5em 0; }
.celltag_dbrunbook-failed { border-left: 6px solid #cf222e !important; background: #fff5f5; }
tr.status-tampered td, tr.status-unsigned td, tr.status-incomplete td { background: #ffebe9; }
tr.status-untrusted td { background: #fff8c5; }
.dbr-filters label { margin-right: 1.2em; }
code { font-size: .9em; }
""" + report_style.CSS


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

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote."""

    out_dir: Path
    index: Path
    entries: tuple[RecordEntry, ...]

    def page(self, run_id: str) -> Path:
        return self.out_dir / next(e.page for e in self.entries if e.run_id == run_id)


# --- small HTML helpers -----------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(rows: list[tuple[str, Any]], raw: frozenset[str] = frozenset()) -> str:
    cells = "".join(
        f"<tr><th>{_e(k)}</th><td>{v if k in raw else _e(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="dbr-table">{cells}</table>'


def _grid(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="dbr-table"><tr>{head}</tr>{body}</table>'


def page_html(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body class=\"dbr\">{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


# --- facts of a record ------------------------------------------------------------------------------------
def _heads_text(before: Mapping | None, after: Mapping | None) -> str:
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


def _when(value: Any) -> str:
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
        when=_when(facts.get("started_at")),
        runbook=str(facts.get("runbook") or "-"),
        target=str(target or "-"),
        operator=str(facts.get("operator") or "-"),
        outcome=str(facts.get("outcome") or ("incomplete" if check.status == "incomplete" else "-")),
        revisions=_heads_text(facts.get("heads_before") or (facts.get("pre_state") or {}).get("heads"),
                              facts.get("heads_after")),
        status=check.status,
        page=f"{PAGES_DIR}/{run_dir.name}.html",
        problems=check.problems,
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
    from dbrunbook.execution.runner import (
        parse_parameters,  # the launcher's own reading of a parameters cell (ast, no exec)
    )

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
            f"<h1>{_e(entry.runbook)} on {_e(entry.target)} — {report_style.outcome_badge(entry.outcome)}</h1>"
            f"<p><code>{_e(entry.run_id)}</code></p>")


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
        items.append(f'<tr><td><a href="{_e(href)}">{_e(name)}</a></td>'
                     f"<td><code>{_e((subject.get('digest') or {}).get('sha256'))}</code></td></tr>")
    if not items:
        return ""
    return ('<h2>Artifacts</h2><table class="dbr-table"><tr><th>file</th><th>sha256 (signed)</th></tr>'
            + "".join(items) + "</table>")


def _warning_page(entry: RecordEntry, facts: Mapping, check: records.RecordCheck, reason: str) -> str:
    problems = "".join(f"<li>{_e(p)}</li>" for p in (*check.problems, reason) if p)
    claimed = _table([("runbook", entry.runbook), ("target", entry.target), ("operator", entry.operator),
                      ("started", entry.when), ("outcome", entry.outcome), ("revisions", entry.revisions)])
    body = (f"<div class=\"dbr-header\">{_nav(entry)}"
            f'<div class="dbr-banner {_e(entry.status)}" id="record-warning">This record is '
            f"{_e(entry.status_label.upper())}: its notebook is not shown, because what it would show is not "
            f"what was signed.</div><h2>Problems</h2><ul id=\"problems\">{problems}</ul>"
            f"<h2>What the record claims (not verified)</h2>{claimed}"
            f"<p>Check it with <code>dbrunbook verify {_e(check.run_dir)}</code>.</p></div>")
    return page_html(f"{entry.status_label.upper()}: {entry.run_id}", body)


# nbconvert's own clean_html (what --sanitize-html uses) allows so few tags that it escapes headings,
# paragraphs and table headers into visible markup (jupyter/nbconvert#2016). This allow-list keeps what
# notebooks and pandas produce; scripts, event handlers, <style>, iframes and javascript: URLs still go.
_ALLOWED_TAGS = frozenset({
    "a", "abbr", "acronym", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
    "details", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "ol", "p", "pre", "s", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "tt", "u", "ul",
})
_GLOBAL_ATTRIBUTES = frozenset({"class", "id", "title", "style", "align", "valign"})
_TAG_ATTRIBUTES = {
    "a": {"href"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"}, "table": {"border"}, "ol": {"start"},
}
_DROPPED_WITH_CONTENT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name in _GLOBAL_ATTRIBUTES or name in _TAG_ATTRIBUTES.get(tag, ()):
        if tag == "img" and name == "src":
            return bool(_IMAGE_DATA.match(value))  # only embedded raster images: nothing fetched, no SVG
        if tag == "a" and name == "href":
            return not value.strip().lower().startswith("data:")
        return True
    return False


def sanitize_html(text: str | bytes) -> str:
    """Clean HTML from a notebook (markdown or an output) for display in the archive.

    bleach with an allow-list of tags and attributes, CSS through nbconvert's CSS sanitizer; ``<script>``
    and ``<style>`` elements are removed with their content rather than shown as text.
    """
    import bleach
    from nbconvert.preprocessors.sanitize import _get_default_css_sanitizer

    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    kwargs = {}
    css_sanitizer = _get_default_css_sanitizer()
    if css_sanitizer is not None:
        kwargs["css_sanitizer"] = css_sanitizer
    return bleach.clean(_DROPPED_WITH_CONTENT.sub("", text), tags=_ALLOWED_TAGS,
                        attributes=_allowed_attribute, protocols={"http", "https", "mailto", "data"},
                        strip=True, **kwargs)


class _Renderer:
    """nbconvert's HTMLExporter (lab template, sanitized), with our header and no external script."""

    def __init__(self) -> None:
        import jinja2
        from nbconvert import HTMLExporter

        template = (
            "{%- extends 'lab/index.html.j2' -%}\n"
            # No require.js, MathJax or mermaid from a CDN: the archive is read offline.
            "{% block html_head_js %}{% endblock html_head_js %}\n"
            "{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}\n"
            "{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}\n"
            "{% block jupyter_widgets %}{% endblock jupyter_widgets %}\n"
            "{% block extra_css %}<style>" + _CSS + "</style>{% endblock extra_css %}\n"
            "{% block body_header %}{{ super() }}{{ resources.dbrunbook_header }}{% endblock body_header %}\n"
        )
        self.exporter = HTMLExporter(
            template_name="lab",
            sanitize_html=True,
            extra_loaders=[jinja2.DictLoader({"dbrunbook_record.html.j2": template})],
            template_file="dbrunbook_record.html.j2",
            filters={"clean_html": sanitize_html},
        )

    def render(self, nb: nbformat.NotebookNode, header: str, title: str) -> str:
        resources = {"dbrunbook_header": header, "metadata": {"name": title}}
        body, _ = self.exporter.from_notebook_node(nb, resources=resources)
        return body


def render_record(run_dir: Path, allowed_signers: Path, page_dir: Path | None = None,
                  renderer: _Renderer | None = None) -> tuple[RecordEntry, str]:
    """Verify one record and return its index entry and the HTML of its page.

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
    papermill = dict(nb.metadata.get("papermill") or {})
    failures, parameters_source = _prepare(nb)
    report_style.collapse_tracebacks(nb)
    values = papermill.get("parameters") or facts.get("parameters") or {}
    header = [f'<div class="dbr-header">{_nav(entry)}']
    header.append(f'<div class="dbr-banner valid" id="record-status">Signature valid, signed by '
                  f"{_e(check.principal)}; every file matches the signed statement.</div>")
    header.append(report_style.failure_box(failures, entry.outcome))
    notes = [p for p in check.problems if check.status == "valid"]
    if notes:
        header.append("<ul>" + "".join(f"<li>{_e(p)}</li>" for p in notes) + "</ul>")
    header.append('<h2>Run</h2><div id="run">' + _table(_summary_rows(entry, facts, check, papermill)) + "</div>")
    header.append('<h2>Parameters</h2><div id="parameters">'
                  + _grid(["parameter", "value", "type", "default", "help"],
                          _parameter_rows(parameters_source, values)) + "</div>")
    header.append(_artifact_rows(run_dir, page_dir, check.statement))
    header.append("<h2>Notebook</h2></div>")
    return entry, (renderer or _Renderer()).render(nb, "".join(header), f"{entry.runbook} {entry.run_id}")


def _index(entries: list[RecordEntry]) -> str:
    options = {}
    for key, _label in _FILTERS:
        values = sorted({getattr(e, key) for e in entries})
        options[key] = "".join(f'<option value="{_e(v)}">{_e(STATUS_LABELS.get(v, v) if key == "status" else v)}'
                               f"</option>" for v in values)
    filters = "".join(
        f'<label>{_e(label)} <select id="filter-{key}" data-key="{key}"><option value="">all</option>'
        f"{options[key]}</select></label>" for key, label in _FILTERS)
    rows = "".join(
        f'<tr class="record status-{_e(e.status)} outcome-{_e(e.outcome)}" data-target="{_e(e.target)}" data-runbook="{_e(e.runbook)}" '
        f'data-outcome="{_e(e.outcome)}" data-status="{_e(e.status)}">'
        f"<td>{_e(e.when)}</td><td>{_e(e.runbook)}</td><td>{_e(e.target)}</td><td>{_e(e.operator)}</td>"
        f"<td>{report_style.outcome_badge(e.outcome)}</td><td>{_e(e.revisions)}</td><td class=\"status\">{_e(e.status_label)}</td>"
        f'<td><a href="{_e(e.page)}">{_e(e.run_id)}</a></td></tr>'
        for e in sorted(entries, key=lambda e: e.run_id, reverse=True))
    bad = sum(1 for e in entries if e.status != "valid")
    body = (f"<h1>dbrunbook records</h1><p>{len(entries)} records, "
            f"{bad} not valid (see the signature column).</p>"
            + report_style.index_summary(entries) +
            f'<div class="dbr-filters">{filters}<label class="dbr-search">search <input id="search" '
            'type="search"></label></div><p id="shown"></p>'
            '<table class="dbr-table" id="records"><thead><tr><th>when (UTC)</th><th>runbook</th><th>target</th>'
            "<th>operator</th><th>outcome</th><th>revisions before → after</th><th>signature</th>"
            f"<th>record</th></tr></thead><tbody>{rows}</tbody></table>")
    script = """
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
    return page_html("dbrunbook records", body, script + report_style.SORT_SCRIPT)


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
    renderer = _Renderer()
    entries, written = [], set()
    for run_dir in records.find_records(outputs_dir):
        entry, page = render_record(run_dir, allowed_signers, page_dir, renderer)
        (out_dir / entry.page).write_text(page, encoding="utf-8")
        written.add(Path(entry.page).name)
        entries.append(entry)
    for stale in page_dir.glob("*.html"):
        if stale.name not in written:
            stale.unlink()
    index = out_dir / INDEX_FILE
    index.write_text(_index(entries), encoding="utf-8")
    from dbrunbook.views.fleet_report import write_fleet_pages  # a page per fleet roll-up, linking its targets' pages

    write_fleet_pages(outputs_dir, allowed_signers, out_dir)
    return Report(out_dir, index, tuple(entries))
