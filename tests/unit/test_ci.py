"""CI installs every program a test needs (tests/tools.py's needs_tool), so none of those tests is skipped there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEEDS = re.compile(r'needs_tool\("([^"]+)", "([^"]+)"\)')


def test_ci_installs_the_package_of_every_needed_program():
    ci = (ROOT / ".ci" / "run").read_text()
    needed = {m.groups() for f in (ROOT / "tests").rglob("test_*.py") for m in NEEDS.finditer(f.read_text())}
    assert {("ssh-keygen", "openssh-client"), ("systemd-analyze", "systemd")} <= needed
    for program, package in sorted(needed):
        assert f"command -v {program} >/dev/null || missing+=({package})" in ci, (program, package)
    assert 'export CI="${CI:-true}"' in ci  # so that a missing program fails its tests instead of skipping
