"""The pieces of report markup that carry meaning by their class: badges, the failure box, tracebacks, summary."""

from __future__ import annotations

import nbformat

from dbrunbook.views import report_style
from dbrunbook.views.report import RecordEntry, sanitize_html


def _entry(run_id, when, target, outcome, revisions="main: a → b"):
    return RecordEntry(run_id, when, "apply", target, "op", outcome, revisions, "valid", f"records/{run_id}.html")


def test_every_outcome_has_its_badge_class():
    for outcome, css in report_style.OUTCOME_CLASSES.items():
        assert report_style.outcome_badge(outcome) == f'<span class="dbr-badge {css}">{outcome}</span>'
        assert f".dbr-badge.{css}" in report_style.CSS
    assert report_style.outcome_badge("<x>") == '<span class="dbr-badge outcome--x-">&lt;x&gt;</span>'


def test_a_guard_stop_is_titled_as_one_with_its_rule():
    failures = [{"anchor": "cell-id=c1", "heading": "5. Guard: confirm", "ename": "ConfirmationRequired",
                 "evalue": "Pass -p confirm app to go on."}]
    guard = report_style.failure_box(failures, "stopped-at-guard")
    assert guard.startswith('<div class="dbr-guard" id="failed-steps"><b>Stopped at a guard</b>')
    assert "Failed step" not in guard
    assert '<span class="dbr-rule">ConfirmationRequired</span>: Pass -p confirm app to go on.' in guard
    failed = report_style.failure_box(failures, "failed")
    assert failed.startswith('<div class="dbr-failed" id="failed-steps"><b>Failed step(s)</b>')
    assert report_style.failure_box([], "failed") == ""


def test_tracebacks_collapse_into_a_closed_details_with_the_exception_line():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("raise ValueError('x < y')")
    cell.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x < y",
                                           traceback=["\x1b[0;31mTraceback\x1b[0m", "ValueError: x < y"])]
    nb.cells = [cell]
    assert report_style.collapse_tracebacks(nb) == 1
    out = nb.cells[0].outputs[0]
    assert out["output_type"] == "display_data"
    body = out["data"]["text/html"]
    assert body == ('<details class="dbr-traceback"><summary>ValueError: x &lt; y</summary>'
                    "<pre>Traceback\nValueError: x &lt; y</pre></details>")
    assert sanitize_html(body) == body  # the report's sanitizer keeps it as it is


def test_index_summary_counts_and_names_the_last_change_per_database():
    entries = [_entry("r1", "2026-12-01 10:00:00", "prod", "succeeded"),
               _entry("r2", "2026-12-01 11:00:00", "prod", "failed"),
               _entry("r3", "2026-12-01 09:00:00", "prod", "succeeded", "main: a → c"),
               _entry("r4", "2026-12-01 12:00:00", "staging", "succeeded", "main: b")]  # changed nothing
    summary = report_style.index_summary(entries)
    assert '<td><span class="dbr-badge outcome-failed">failed</span></td><td>1</td>' in summary
    assert '<td><span class="dbr-badge outcome-succeeded">succeeded</span></td><td>3</td>' in summary
    assert "<td>prod</td><td>3</td>" in summary and "<td>staging</td><td>1</td>" in summary
    last = summary.split('id="last-change"')[1]
    assert '<td>prod</td><td><a href="records/r1.html">2026-12-01 10:00:00</a> apply: main: a → b</td>' in last
    assert "staging" not in last
