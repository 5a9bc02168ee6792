"""Headless Chromium driven over W3C WebDriver (chromedriver, stdlib HTTP): the browser of the report tests
and of bench/scale_report.py.

Chromium and chromedriver are Debian packages (``apt-get install chromium chromium-driver``); ``binaries``
says whether they are here, and the caller decides what a missing browser means (a test skips, or fails in CI).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MISSING = ("chromium and chromedriver are needed for the browser test: apt-get install -y chromium "
           "chromium-driver (Debian) or your system's packages.")
#: The flags of every headless run here (the brief's), plus a profile of its own and a fixed window.
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--window-size=1400,1000")


def binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver) on PATH, or None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


class WebDriver:
    """The few W3C WebDriver commands the tests need, over HTTP with urllib and json."""

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


@contextlib.contextmanager
def chromium(found: tuple[str, str], profile: Path, log: Path | None = None) -> Iterator[WebDriver]:
    """A headless Chromium session (chromedriver on a free port, ``profile`` as its user data), ended after.

    Raises:
        RuntimeError: chromedriver did not answer within ~20 s (its log, when given, says why).
    """
    browser, chromedriver = found
    port = _free_port()
    process = subprocess.Popen([chromedriver, f"--port={port}", *([f"--log-path={log}"] if log else [])],
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
            raise RuntimeError(f"chromedriver did not become ready on port {port}" + (f"; see {log}" if log else ""))
        session = WebDriver.call(f"{base}/session", "POST", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": [*ARGS, f"--user-data-dir={profile}"]},
        }}})["value"]["sessionId"]
        try:
            yield WebDriver(base, session)
        finally:
            WebDriver.call(f"{base}/session/{session}", "DELETE")
    finally:
        process.terminate()
        process.wait(timeout=30)
