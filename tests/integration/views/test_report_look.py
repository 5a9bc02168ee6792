"""How the report looks in a real headless Chromium: computed styles and elements per page kind, screenshots.

Reuses the browser and the records of test_report_browser (a tampered status run, a succeeded apply, a rollback
stopped at a guard) and adds a failed run from the fault notebooks. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbrunbook.config import load_config
from dbrunbook.execution import runner
from dbrunbook.views import report
from tests.browser import WebDriver
from tests.integration.views.test_report_browser import ARTIFACTS, _visible_rows
from tests.integration.views.test_report_browser import browser as browser
from tests.integration.views.test_report_browser import site as site
from tests.projects import trust_operator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _style(browser: WebDriver, css: str, prop: str) -> str:
    return browser.script(f"return getComputedStyle(document.querySelector({css!r})).{prop};")


def _shot(browser: WebDriver, name: str, scroll_to: str | None = None) -> None:
    if scroll_to:
        browser.script(f"document.querySelector({scroll_to!r}).scrollIntoView({{block: 'center'}});")
    browser.screenshot(ARTIFACTS / name)


def test_index_has_badges_a_summary_sorting_and_search(browser, site):
    built, runs = site
    browser.get(built.index.as_uri())
    badge = browser.script("return document.querySelector('#records tr[data-runbook=rollback] .dbr-badge')"
                           ".className;")
    assert badge == "dbr-badge outcome-stopped-at-guard"
    assert _style(browser, "#records .dbr-badge.outcome-stopped-at-guard", "backgroundColor") == "rgb(255, 241, 229)"
    assert _style(browser, "#records .dbr-badge.outcome-succeeded", "backgroundColor") == "rgb(218, 251, 225)"
    by_outcome = browser.script("return Array.from(document.querySelectorAll('#by-outcome tr'))"
                                ".map(r => [r.cells[0].textContent, r.cells[1].textContent]);")
    assert sorted(by_outcome) == [["stopped-at-guard", "1"], ["succeeded", "2"]]
    assert browser.script("return document.querySelector('#by-target td').textContent;") == "local"
    last = browser.text(browser.find("#last-change"))
    assert "apply: ai: base →" in last  # the apply is the last run that changed the database
    _shot(browser, "report-look-index.png")

    runbook_head = browser.find_all("#records thead th")[1]
    browser.click(runbook_head)
    assert [r[1] for r in _visible_rows(browser)] == ["apply", "rollback", "status"]
    browser.click(runbook_head)
    assert [r[1] for r in _visible_rows(browser)] == ["status", "rollback", "apply"]
    browser.script("const s = document.getElementById('search'); s.value = 'rollback';"
                   "s.dispatchEvent(new Event('input'));")
    assert [r[1] for r in _visible_rows(browser)] == ["rollback"]
    assert browser.text(browser.find("#shown")) == "1 of 3 records shown"


def test_success_page_shows_sql_and_code_in_monospace_and_prose_left_aligned(browser, site):
    built, runs = site
    browser.get(built.page(runs["apply"].run_id).as_uri())
    assert browser.script("return document.querySelector('h1 .dbr-badge').className;") == \
        "dbr-badge outcome-succeeded"
    code = _style(browser, ".jp-InputArea-editor pre, .jp-CodeMirrorEditor pre, .highlight pre", "fontFamily")
    assert "monospace" in code, code
    sql = browser.script(
        "const pre = Array.from(document.querySelectorAll('.jp-OutputArea-output pre'))"
        ".find(p => /ALTER TABLE|CREATE TABLE/.test(p.textContent));"
        "return pre ? getComputedStyle(pre).fontFamily : null;")
    assert sql is not None and "monospace" in sql, sql
    aligns = browser.script(
        "return Array.from(document.querySelectorAll('.jp-RenderedHTMLCommon table td'))"
        ".filter(td => /[A-Za-z]/.test(td.textContent) && !td.getAttribute('style'))"
        ".map(td => getComputedStyle(td).textAlign);")
    assert aligns and set(aligns) == {"left"}, aligns
    assert browser.find_all("details.dbr-traceback") == []
    _shot(browser, "report-look-success.png")
    browser.script("Array.from(document.querySelectorAll('.jp-OutputArea-output pre'))"
                   ".find(p => /ALTER TABLE|CREATE TABLE/.test(p.textContent)).scrollIntoView();")
    _shot(browser, "report-look-success-sql.png")
    browser.script("document.querySelector('.jp-RenderedHTMLCommon table td').scrollIntoView({block: 'center'});")
    _shot(browser, "report-look-success-table.png")


def test_guard_stop_page_is_titled_as_a_guard_stop_with_the_traceback_collapsed(browser, site):
    built, runs = site
    browser.get(built.page(runs["rollback"].run_id).as_uri())
    box = browser.find("#failed-steps")
    assert browser.script("return arguments[0].className;", {WebDriver.ELEMENT: box}) == "dbr-guard"
    text = browser.text(box)
    assert text.startswith("Stopped at a guard") and "Failed step" not in text
    assert "ConfirmationRequired: " in text
    assert browser.script("return document.querySelector('h1 .dbr-badge').className;") == \
        "dbr-badge outcome-stopped-at-guard"
    details = browser.script("return Array.from(document.querySelectorAll('details.dbr-traceback'))"
                             ".map(d => [d.open, d.querySelector('summary').textContent]);")
    assert len(details) == 1 and details[0][0] is False
    assert details[0][1].startswith("ConfirmationRequired: ")
    assert not browser.displayed(browser.find("details.dbr-traceback pre"))
    _shot(browser, "report-look-guard-stop.png")
    _shot(browser, "report-look-guard-stop-cell.png", scroll_to="details.dbr-traceback")


def test_tampered_page_stands_out(browser, site):
    built, runs = site
    browser.get(built.page(runs["status"].run_id).as_uri())
    assert _style(browser, "#record-warning", "backgroundColor") == "rgb(255, 235, 233)"
    assert browser.find_all(".jp-Cell") == []
    _shot(browser, "report-look-tampered.png")


def test_failed_page_links_its_step_and_collapses_the_traceback(browser, tmp_path, database_url, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "dbrunbook.toml").write_text(
        '[project]\ndefault_target = "t"\n[targets.t]\nurl_env = "LOOK_TEST_URL"\n'
        '[migration_sets.app]\nalembic_ini = "migrations/app/alembic.ini"\n', encoding="utf-8")
    monkeypatch.setenv("LOOK_TEST_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    config = load_config(root / "dbrunbook.toml")
    trust_operator(config.path, "tester@example.org")
    failed = runner.run_runbook("fails_at_step_2", config=config)
    assert failed.outcome == "failed"
    built = report.build_report(config.outputs_dir, config.allowed_signers, tmp_path / "site")

    browser.get(built.page(failed.run_id).as_uri())
    box = browser.find("#failed-steps")
    assert browser.script("return arguments[0].className;", {WebDriver.ELEMENT: box}) == "dbr-failed"
    assert browser.text(box).startswith("Failed step(s)")
    assert "ValueError: step 2 broke on purpose" in browser.text(box)
    details = browser.script("return Array.from(document.querySelectorAll('details.dbr-traceback'))"
                             ".map(d => [d.open, d.querySelector('summary').textContent]);")
    assert details == [[False, "ValueError: step 2 broke on purpose"]]
    assert _style(browser, "details.dbr-traceback summary", "fontFamily").find("monospace") >= 0
    _shot(browser, "report-look-failed.png")
    _shot(browser, "report-look-failed-cell.png", scroll_to="details.dbr-traceback")
    browser.get(built.index.as_uri())
    assert browser.script("return document.querySelector('#records .dbr-badge').className;") == \
        "dbr-badge outcome-failed"
