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


def _layout_rows() -> dict[str, str]:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in layout.splitlines():
        m = re.match(r"^\| `lib/dbrunbook/([\w/]*)` \| (.*) \|$", line)
        if m:
            rows[m.group(1).rstrip("/")] = m.group(2)
    return rows


def test_readme_layout_names_every_library_module_in_its_packages_row():
    """A row per package (subpackages inside their parent's row), naming each of its modules and subpackages."""
    lib = ROOT / "lib" / "dbrunbook"
    rows = _layout_rows()
    tops = {"": lib} | {p.name: p for p in lib.iterdir() if (p / "__init__.py").is_file() and p.name in rows}
    missing = []
    for name, folder in tops.items():
        text = rows[name]
        for path in sorted(folder.rglob("*.py")):
            package = path.parent.relative_to(folder)
            if (package.parts and package.parts[0] in tops and not name) or "example_dags" in package.parts:
                continue  # a package with its own row, or example DAGs (not library modules)
            if path.stem != "__init__" and f"`{path.stem}`" not in text:
                missing.append(f"{name or '.'}: {path.relative_to(lib)}")
        for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
            if sub.name not in tops and f"`{sub.name}/`" not in text:
                missing.append(f"{name or '.'}: {sub.name}/")
    assert missing == []
    assert set(rows) == set(tops), "a row for a folder that is not a package"
