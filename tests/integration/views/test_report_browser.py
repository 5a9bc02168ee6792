"""The HTML archive in a real headless Chromium, driven over W3C WebDriver (chromedriver, stdlib HTTP).

Records come from real launcher runs on a real database: a status run (then edited: tampered), an apply and
a rollback that stops at a guard. Chromium and chromedriver are Debian packages (``apt-get install chromium
chromium-driver``); CI installs them and this test fails there without them. On a developer machine
without them (``CI`` unset) it is skipped.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from dbrunbook import protocol
from dbrunbook.execution import runner
from dbrunbook.views import report
from tests import browser as browsers
from tests.browser import WebDriver
from tests.projects import ROOT, throwaway_project

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored: the screenshot of the last run is kept there


def _binaries() -> tuple[str, str]:
    found = browsers.binaries()
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(browsers.MISSING)  # CI installs them (.ci/run): a missing browser there is a broken CI
    pytest.skip(browsers.MISSING)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    found = _binaries()
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    try:
        with browsers.chromium(found, tmp_path_factory.mktemp("chromium-profile"), log) as driver:
            yield driver
    except RuntimeError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def site(pg_admin_url, tmp_path_factory):
    """Three records (status: then tampered, apply: succeeded, rollback: stopped) and their HTML archive."""
    with throwaway_project(pg_admin_url, tmp_path_factory.mktemp("report")) as (_, config):
        status = runner.run_runbook("status", target="local", config=config)
        applied = runner.run_runbook("apply", target="local", parameters={"dry_run": "false"}, config=config)
        # Downgrading to base without confirm=<database> stops at a guard: a step with an error output.
        stopped = runner.run_runbook("rollback", target="local", parameters={
            "revision": "base", "dry_run": "false", "allow_data_loss": "true"}, config=config)
        assert (status.outcome, applied.outcome, stopped.outcome) == ("succeeded", "succeeded",
                                                                      "stopped-at-guard")
        notebook = status.record_dir / protocol.NOTEBOOK_FILE
        notebook.chmod(notebook.stat().st_mode | stat.S_IWUSR)
        nb = json.loads(notebook.read_bytes())
        nb["cells"][0]["source"] = "# Status: all good, nothing to review\n"
        notebook.write_text(json.dumps(nb), encoding="utf-8")
        built = report.build_report(config.outputs_dir, config.allowed_signers,
                                    tmp_path_factory.mktemp("site"))
        yield built, {"status": status, "apply": applied, "rollback": stopped}


def _visible_rows(browser: WebDriver) -> list[list[str]]:
    return browser.script(
        "return Array.from(document.querySelectorAll('#records tbody tr'))"
        ".filter(r => r.style.display !== 'none')"
        ".map(r => Array.from(r.cells).map(c => c.textContent));")


def test_index_lists_every_record_and_a_filter_narrows_it(browser, site):
    built, runs = site
    browser.get(built.index.as_uri())
    rows = _visible_rows(browser)
    assert sorted(r[7] for r in rows) == sorted(r.run_id for r in runs.values())
    by_runbook = {r[1]: r for r in rows}
    assert by_runbook["status"][6] == "tampered"
    assert by_runbook["apply"][6] == "valid"
    assert by_runbook["apply"][4] == "succeeded"
    assert by_runbook["rollback"][4] == "stopped-at-guard"
    assert by_runbook["apply"][2] == "local" and by_runbook["apply"][3] == "tester@dbrunbook"
    heads = runs["apply"].heads_after
    assert by_runbook["apply"][5] == (f"ai: base → {'+'.join(heads['ai'])}; "
                                      f"main: base → {'+'.join(heads['main'])}")
    assert browser.text(browser.find("#shown")) == "3 of 3 records shown"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report-index.png")

    browser.script("const s = document.getElementById('filter-outcome'); s.value = 'stopped-at-guard';"
                   "s.dispatchEvent(new Event('change'));")
    assert [r[1] for r in _visible_rows(browser)] == ["rollback"]
    assert browser.text(browser.find("#shown")) == "1 of 3 records shown"
    browser.script("const s = document.getElementById('filter-outcome'); s.value = '';"
                   "s.dispatchEvent(new Event('change'));"
                   "const t = document.getElementById('filter-runbook'); t.value = 'apply';"
                   "t.dispatchEvent(new Event('change'));")
    assert [r[1] for r in _visible_rows(browser)] == ["apply"]


def test_tampered_record_shows_its_warning_and_no_notebook(browser, site):
    built, runs = site
    browser.get(built.page(runs["status"].run_id).as_uri())
    warning = browser.text(browser.find("#record-warning"))
    assert warning.startswith("This record is TAMPERED: its notebook is not shown")
    problems = browser.text(browser.find("#problems"))
    assert "cell 0 (# Status: all good, nothing to review) differs from the signed record." in problems
    assert browser.find_all(".jp-Cell") == []


def test_stopped_record_links_its_failed_step(browser, site):
    built, runs = site
    browser.get(built.page(runs["rollback"].run_id).as_uri())
    assert browser.text(browser.find("#record-status")).startswith("Signature valid, signed by ")
    link = browser.find("#failed-steps a")
    assert "ConfirmationRequired" in browser.text(browser.find("#failed-steps"))
    target = browser.script("return arguments[0].getAttribute('href');", {WebDriver.ELEMENT: link})
    failed_cells = browser.find_all(".celltag_dbrunbook-failed")
    assert len(failed_cells) == 1
    assert browser.script("return '#' + arguments[0].id;", {WebDriver.ELEMENT: failed_cells[0]}) == target
    parameters = browser.script(
        "return Array.from(document.querySelectorAll('#parameters tr')).slice(1)"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent]);")
    assert ["revision", '"base"'] in parameters and ["dry_run", "false"] in parameters
    # The parameter cells are in the table above, not in the notebook body.
    assert browser.find_all(".celltag_parameters, .celltag_injected-parameters") == []
