"""The report page of a 1,000-revision apply record, opened in headless Chromium: size, load time, shape.

Builds the 1,000-revision synthetic chain of bench/scale.py, applies it through ``dbrunbook run apply`` (one
signed record), renders the HTML archive with ``dbrunbook report`` and loads the record's page in Chromium
(chromedriver, as tests/integration/views/test_report_browser.py drives it). Reports the page's bytes, the
browser's load time (navigation timing), its DOM size and height, and keeps a screenshot of its top under
bench/_work/scale/. Run by hand: ``.venv/bin/python bench/scale_report.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import scale  # noqa: E402 - the 1,000-revision case of bench/scale.py
from _common import WORK, admin_url, write_section  # noqa: E402

from dbrunbook.config import load_config  # noqa: E402
from dbrunbook.views import report  # noqa: E402
from tests.integration.views import test_report_browser as browser_test  # noqa: E402 - its WebDriver client


def _browser(profile: Path) -> tuple[subprocess.Popen, browser_test.WebDriver]:
    chromium, chromedriver = browser_test._binaries()
    port = browser_test._free_port()
    process = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if browser_test.WebDriver.call(f"{base}/status")["value"]["ready"]:
                break
        except (OSError, AssertionError, KeyError):
            time.sleep(0.1)
    session = browser_test.WebDriver.call(f"{base}/session", "POST", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={profile}", "--window-size=1400,1000"]}}}})["value"]["sessionId"]
    return process, browser_test.WebDriver(base, session)


def main() -> int:
    case = "1000"
    out = scale.run_case(admin_url(), case)
    folder = WORK / "scale" / case
    config = load_config(folder / "dbrunbook.toml")
    t0 = time.perf_counter()
    built = report.build_report(config.outputs_dir, config.allowed_signers, folder / "report")
    report_seconds = time.perf_counter() - t0
    record = scale._newest_record(config.outputs_dir)
    page = built.page(record.name)
    profile = folder / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    process, driver = _browser(profile)
    try:
        driver.get(page.as_uri())
        timing = driver.script("const t = performance.timing; return [t.loadEventEnd - t.navigationStart,"
                               " document.getElementsByTagName('*').length, document.body.scrollHeight,"
                               " document.querySelectorAll('.jp-Cell').length];")
        driver.screenshot(folder / "report-1000.png")
    finally:
        process.terminate()
        process.wait(timeout=30)
    result = {"revisions": out["revisions"], "notebook bytes": out["notebook bytes"],
              "page bytes": page.stat().st_size, "report seconds": round(report_seconds, 2),
              "load ms": timing[0], "elements": timing[1], "height px": timing[2], "cells": timing[3],
              "apply seconds": out["dbrunbook apply"]}
    print(json.dumps(result), file=sys.stderr)
    write_section("scale_report", "\n".join([
        "## The report page of a 1,000-revision record (`bench/scale_report.py`)", "",
        "The apply record of bench/scale.py's 1,000-revision chain, its archive built with `dbrunbook report` and "
        "its page loaded in headless Chromium (navigation timing). Run by hand on the shared 2-core machine.", "",
        "| revisions | notebook bytes | page bytes | report build s | Chromium load ms | DOM elements | page height px "
        "| notebook cells |", "|---|---|---|---|---|---|---|---|",
        f"| {result['revisions']} | {result['notebook bytes']:,} | {result['page bytes']:,} | "
        f"{result['report seconds']} | {result['load ms']} | {result['elements']:,} | {result['height px']:,} | "
        f"{result['cells']} |"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
