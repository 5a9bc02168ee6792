"""The HTML archive in a real headless Chromium, driven over W3C WebDriver (chromedriver, stdlib HTTP).

Records come from real launcher runs on a real database: a status run (then edited: tampered), an apply and
a rollback that stops at a guard. Chromium and chromedriver are Debian packages (``apt-get install chromium
chromium-driver``); CI installs them and this test fails there without them. On a developer machine
without them (``CI`` unset) it is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dbrunbook import protocol
from dbrunbook.execution import runner
from dbrunbook.views import report
from tests.projects import ROOT, throwaway_project

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored: the screenshot of the last run is kept there


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = ("chromium and chromedriver are needed for the browser test: apt-get install -y chromium "
               "chromium-driver (Debian) or your system's packages.")
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs them (.ci/run): a missing browser there is a broken CI
    pytest.skip(message)


class WebDriver:
    """The few W3C WebDriver commands the test needs, over HTTP with urllib and json."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, base: str, session: str):
        self.base, self.session = base, session

    @staticmethod
    def call(url: str, method: str = "GET", body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"WebDriver {method} {url}: {err.code} {err.read()[:500]!r}") from err

    def command(self, method: str, path: str, body: dict | None = None):
        return self.call(f"{self.base}/session/{self.session}{path}", method, body)["value"]

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        found = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [e[self.ELEMENT] for e in found]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        assert found, f"no element matches {css!r}"
        return found[0]

    def text(self, element: str) -> str:
        return self.command("GET", f"/element/{element}/text")

    def displayed(self, element: str) -> bool:
        return self.command("GET", f"/element/{element}/displayed")

    def click(self, element: str) -> None:
        self.command("POST", f"/element/{element}/click", {})

    def script(self, source: str, *args):
        return self.command("POST", "/execute/sync", {"script": source, "args": list(args)})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = _binaries()
    port = _free_port()
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    process = subprocess.Popen([chromedriver, f"--port={port}", f"--log-path={log}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # ready within a few seconds; give up after ~20 s
            try:
                if WebDriver.call(f"{base}/status")["value"]["ready"]:
                    break
            except (OSError, AssertionError, KeyError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"chromedriver did not become ready on port {port}; see {log}")
        profile = tmp_path_factory.mktemp("chromium-profile")
        session = WebDriver.call(f"{base}/session", "POST", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                f"--user-data-dir={profile}", "--window-size=1400,1000"]},
        }}})["value"]["sessionId"]
        driver = WebDriver(base, session)
        try:
            yield driver
        finally:
            WebDriver.call(f"{base}/session/{session}", "DELETE")
    finally:
        process.terminate()
        process.wait(timeout=30)


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
