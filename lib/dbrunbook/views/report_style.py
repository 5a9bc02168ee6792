"""How the HTML archive looks: its CSS and the small pieces of markup that carry meaning by their class.

report.py builds the pages; this module only says how an outcome, a failed or guard-stopped step, a traceback
and the index's summary are shown. nbconvert's lab template expects JupyterLab's CSS variables
(``--jp-code-font-family`` …) that a page outside JupyterLab does not define, so its code cells fell back to the
proportional body font: they are defined here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dbrunbook.views.tables import escape_html

__all__ = [
    "CSS",
    "OUTCOME_CLASSES",
    "SORT_SCRIPT",
    "collapse_tracebacks",
    "failure_box",
    "index_summary",
    "outcome_badge",
]

MONOSPACE = 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", "DejaVu Sans Mono", monospace'

#: Every outcome a record can have, and its badge's class.
OUTCOME_CLASSES = {
    "succeeded": "outcome-succeeded", "failed": "outcome-failed", "stopped-at-guard": "outcome-stopped-at-guard",
    "interrupted": "outcome-interrupted", "incomplete": "outcome-incomplete",
    "interactive-edited": "outcome-interactive-edited",
}

CSS = """
:root {
  --jp-code-font-family: """ + MONOSPACE + """;
  --jp-code-font-size: 13px;
  --jp-code-line-height: 1.4;
  --jp-code-padding: 4px;
  --jp-ui-font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  --jp-content-font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  --jp-content-font-size1: 14px;
  --jp-ui-font-size1: 13px;
}
pre, code, kbd, samp, tt, .jp-InputArea-editor, .highlight pre, .dbrunbook-sql,
.jp-Cell .jp-OutputArea-output pre, .jp-Cell .jp-OutputArea-output code {
  /* the lab CSS has `.jp-OutputArea-output pre { font-family: inherit }`, which in an HTML output inherits the
     proportional content font: SQL in a <pre> of a result object read like prose */
  font-family: var(--jp-code-font-family);
}
.jp-OutputArea-output pre, .jp-RenderedText pre { white-space: pre-wrap; overflow-wrap: anywhere; }
/* the lab CSS right-aligns every cell of an output table (:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td),
   prose and SQL included; dbrunbook's own tables right-align their numbers inline */
.jp-Cell .jp-OutputArea-output.jp-RenderedHTMLCommon td, .jp-Cell .jp-OutputArea-output.jp-RenderedHTMLCommon th,
.jp-Cell .jp-OutputArea-output.jp-RenderedHTMLCommon tr {
  text-align: left; vertical-align: top;
}
.jp-RenderedHTMLCommon table td:has(> code.dbrunbook-sql) { min-width: 30em; }
.dbr-badge { display: inline-block; padding: .05em .55em; border-radius: 1em; font-size: .85em; font-weight: 600;
             border: 1px solid transparent; white-space: nowrap; }
.dbr-badge.outcome-succeeded { background: #dafbe1; color: #116329; border-color: #1a7f37; }
.dbr-badge.outcome-failed { background: #ffebe9; color: #a40e26; border-color: #cf222e; }
.dbr-badge.outcome-stopped-at-guard { background: #fff1e5; color: #953800; border-color: #bc4c00; }
.dbr-badge.outcome-interrupted, .dbr-badge.outcome-incomplete { background: #fbefff; color: #6e40c9;
                                                                  border-color: #8250df; }
.dbr-badge.outcome-interactive-edited { background: #ddf4ff; color: #0550ae; border-color: #0969da; }
tr.outcome-failed td:first-child { box-shadow: inset 4px 0 #cf222e; }
tr.outcome-stopped-at-guard td:first-child { box-shadow: inset 4px 0 #bc4c00; }
.dbr-guard { background: #fff1e5; border-left: 6px solid #bc4c00; padding: .5em 1em; margin: .5em 0; }
.dbr-rule { font-family: var(--jp-code-font-family); }
details.dbr-traceback { margin: .3em 0; }
details.dbr-traceback > summary { cursor: pointer; font-family: var(--jp-code-font-family); color: #a40e26;
                                  white-space: pre-wrap; }
details.dbr-traceback > pre { max-height: 40em; overflow: auto; font-size: .85em; }
.dbr-summary { display: flex; gap: 2em; flex-wrap: wrap; margin: .5em 0 1em 0; }
.dbr-summary table { margin: 0; }
#records th.sortable { cursor: pointer; user-select: none; }
#records th.sortable[data-order="asc"]::after { content: " ▲"; }
#records th.sortable[data-order="desc"]::after { content: " ▼"; }
.dbr-search { margin-left: 1em; }
"""

#: Click a column head of the index to sort by it (again: the other way); the filters and the text box narrow.
SORT_SCRIPT = """
(function () {
  var table = document.getElementById('records');
  if (!table) { return; }
  var heads = Array.prototype.slice.call(table.querySelectorAll('thead th'));
  heads.forEach(function (th, column) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var order = th.dataset.order === 'asc' ? 'desc' : 'asc';
      heads.forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = order;
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].textContent, y = b.cells[column].textContent;
        var c = x.localeCompare(y, undefined, {numeric: true});
        return order === 'asc' ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var search = document.getElementById('search');
  if (search) {  // marks the rows; the filters' own function (report.py) then shows or hides them
    search.addEventListener('input', function () {
      var needle = search.value.toLowerCase();
      Array.prototype.slice.call(table.tBodies[0].rows).forEach(function (row) {
        row.dataset.search = !needle || row.textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'miss';
      });
      var select = document.querySelector('.dbr-filters select');
      if (select) { select.dispatchEvent(new Event('change')); }
    });
  }
})();
"""


def outcome_badge(outcome: str) -> str:
    """A coloured badge; its class names the outcome (``outcome-failed`` …), its text is the outcome."""
    css = OUTCOME_CLASSES.get(outcome, "outcome-" + re.sub(r"[^a-z0-9-]", "-", str(outcome).lower()))
    return f'<span class="dbr-badge {css}">{escape_html(outcome)}</span>'


def failure_box(failures: Sequence[Mapping], outcome: str) -> str:
    """The box on top of a record page that links to its failed cells: a guard stop is titled as one.

    A guard stop is the runbook refusing on purpose; its message is the guard's rule and what lets it pass,
    so it is shown in full rather than as a failure.
    """
    if not failures:
        return ""
    guard = outcome == "stopped-at-guard"
    items = "".join(
        f'<li><a href="#{escape_html(f["anchor"])}">{escape_html(f.get("heading") or "a cell")}</a>: '
        f'<span class="dbr-rule">{escape_html(f.get("ename"))}</span>: {escape_html(f.get("evalue"))}</li>'
        for f in failures)
    if guard:
        return (f'<div class="dbr-guard" id="failed-steps"><b>Stopped at a guard</b> — the runbook refused to go '
                f"on; nothing after the guard ran. The guard's rule and what would let it pass:<ul>{items}</ul>"
                "</div>")
    return f'<div class="dbr-failed" id="failed-steps"><b>Failed step(s)</b><ul>{items}</ul></div>'


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def collapse_tracebacks(nb) -> int:
    """Replace every error output of the in-memory notebook by a closed ``<details>``; returns how many.

    The summary is the exception line (``ename: evalue``), the body the traceback without ANSI colours. A
    chained traceback is thousands of pixels tall and said nothing the summary does not, for most readers.
    """
    count = 0
    for cell in nb.cells:
        outputs = cell.get("outputs") or []
        for i, out in enumerate(outputs):
            if out.get("output_type") != "error":
                continue
            line = f"{out.get('ename', '')}: {out.get('evalue', '')}"
            trace = _ANSI.sub("", "\n".join(out.get("traceback") or []))
            body = (f'<details class="dbr-traceback"><summary>{escape_html(line)}</summary>'
                    f"<pre>{escape_html(trace)}</pre></details>")
            outputs[i] = {"output_type": "display_data", "metadata": {}, "data": {"text/html": body}}
            count += 1
    return count


def index_summary(entries: Iterable) -> str:
    """Records by outcome, by target, and each database's last change (its newest record that changed it)."""
    entries = list(entries)
    by_outcome = Counter(e.outcome for e in entries)
    by_target = Counter(e.target for e in entries)
    last: dict[str, Any] = {}
    for e in entries:
        changed = "→" in (e.revisions or "") and e.outcome == "succeeded"
        if changed and (e.target not in last or e.when > last[e.target].when):
            last[e.target] = e

    def grid(title: str, rows: list[tuple[str, str]], id_: str) -> str:
        body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) or '<tr><td colspan="2">none</td></tr>'
        return f'<table class="dbr-table" id="{id_}"><caption>{escape_html(title)}</caption>{body}</table>'

    outcomes = [(outcome_badge(k), str(v)) for k, v in sorted(by_outcome.items())]
    targets = [(escape_html(k), str(v)) for k, v in sorted(by_target.items())]
    changes = [(escape_html(t), f'<a href="{escape_html(e.page)}">{escape_html(e.when)}</a> '
                                f"{escape_html(e.runbook)}: {escape_html(e.revisions)}")
               for t, e in sorted(last.items())]
    return ('<div class="dbr-summary" id="summary">' + grid("records by outcome", outcomes, "by-outcome")
            + grid("records by target", targets, "by-target")
            + grid("last change per database", changes, "last-change") + "</div>")


PAGE_CSS = """
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
table.dbr-table caption { white-space: nowrap; text-align: left; font-weight: 600; padding-bottom: .2em; }
table.dbr-table td.wrap { overflow-wrap: anywhere; max-width: 32em; }
code { font-size: .9em; }
""" + CSS


def page_html(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape_html(title)}</title>'
            f"<style>{PAGE_CSS}</style></head><body class=\"dbr\">{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")
