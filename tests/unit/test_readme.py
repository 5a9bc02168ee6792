"""README's runbook table names every runbook and exactly its operator parameters; its layout names every module."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPLICIT = {"target", "run_id", "record_dir"}


def _parameters(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return [n.target.id for n in ast.parse("".join(cell["source"])).body if n.target.id not in IMPLICIT]


def _readme_table() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Runbooks", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| (\w+) \| ([^|]*) \|", line)
        if m and m.group(1) != "runbook":
            rows[m.group(1)] = [p.strip() for p in m.group(2).split(",") if p.strip()]
    return rows


def test_readme_runbook_table_matches_the_notebooks():
    notebooks = {p.stem: _parameters(p) for p in (ROOT / "runbooks").glob("*.ipynb")}
    assert _readme_table() == notebooks


def test_readme_shows_the_two_quickstart_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_layout_names_every_library_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = sorted(p.stem for p in (ROOT / "lib" / "dbrunbook").glob("*.py") if p.stem != "__init__")
    packages = sorted(p.name for p in (ROOT / "lib" / "dbrunbook").iterdir() if (p / "__init__.py").is_file())
    missing = [m for m in modules if f"`{m}`" not in layout] + [p for p in packages if f"`{p}/`" not in layout]
    assert missing == []
