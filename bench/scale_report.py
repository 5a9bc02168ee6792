"""The report page of a 1,000-revision apply record, opened in headless Chromium: size, load time, shape.

Builds the 1,000-revision synthetic chain of bench/scale.py, applies it through ``dbrunbook run apply`` (one
signed record), renders the HTML archive with ``dbrunbook report`` and loads the record's page in Chromium
(chromedriver, through tests/browser.py as the report tests drive it). Reports the page's bytes, the
browser's load time (navigation timing), its DOM size and height, and keeps a screenshot of its top under
bench/_work/scale/. Run by hand: ``.venv/bin/python bench/scale_report.py``.
"""

from __future__ import annotations

import json
import os
import shutil
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
from tests import browser  # noqa: E402 - the report tests' headless Chromium


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
    found = browser.binaries()
    if not found:
        raise SystemExit(browser.MISSING)
    with browser.chromium(found, profile) as driver:
        driver.get(page.as_uri())
        timing = driver.script("const t = performance.timing; return [t.loadEventEnd - t.navigationStart,"
                               " document.getElementsByTagName('*').length, document.body.scrollHeight,"
                               " document.querySelectorAll('.jp-Cell').length];")
        driver.screenshot(folder / "report-1000.png")
    result = {"revisions": out["revisions"], "notebook bytes": out["notebook bytes"],
              "page bytes": page.stat().st_size, "report seconds": round(report_seconds, 2),
              "load ms": timing[0], "elements": timing[1], "height px": timing[2], "cells": timing[3],
              "apply seconds": out["dbrunbook apply"]}
    print(json.dumps(result), file=sys.stderr)
    write_section("scale_report", "\n".join([
        "## The report page of a 1,000-revision record (`bench/scale_report.py`)", "",
        "The apply record of bench/scale.py's 1,000-revision chain, its archive built with `dbrunbook report` and "
        f"its page loaded in headless Chromium (navigation timing). Run by hand, load average {os.getloadavg()[1]:.1f} "
        f"on {os.cpu_count()} cores.", "",
        "| revisions | notebook bytes | page bytes | report build s | Chromium load ms | DOM elements | page height px "
        "| notebook cells |", "|---|---|---|---|---|---|---|---|",
        f"| {result['revisions']} | {result['notebook bytes']:,} | {result['page bytes']:,} | "
        f"{result['report seconds']} | {result['load ms']} | {result['elements']:,} | {result['height px']:,} | "
        f"{result['cells']} |"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
