"""Runbooks are stored clean and follow one shape: title, typed parameters cell, numbered steps, sentinel."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((ROOT / "runbooks").glob("*.ipynb"))


def test_there_are_runbooks():
    names = {p.stem for p in RUNBOOKS}
    assert {"status", "preview", "apply", "verify", "rollback", "stamp", "deploy"} <= names


@pytest.fixture(params=RUNBOOKS, ids=lambda p: p.stem)
def notebook(request):
    return request.param, json.loads(request.param.read_text())


def test_stored_without_outputs_or_injected_parameters(notebook):
    path, nb = notebook
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: strip outputs"
        assert "injected-parameters" not in cell.get("metadata", {}).get("tags", [])
    assert "papermill" not in nb["metadata"]


def test_first_code_cell_is_the_typed_parameters_cell(notebook):
    path, nb = notebook
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    tree = ast.parse("".join(code[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"{path.name}: every parameter is 'name: type = default'"
        assert node.annotation.id in {"str", "int", "float", "bool"}
        names.append(node.target.id)
    assert names[0] == "target" and names[-2:] == ["run_id", "record_dir"]
    if nb["metadata"]["dbrunbook"]["changes_database"]:
        assert "dry_run" in names, f"{path.name} changes the database: it needs dry_run (default True)"
        default = next(n.value.value for n in tree.body if n.target.id == "dry_run")
        assert default is True


def test_steps_are_numbered_headings_with_thin_code(notebook):
    path, nb = notebook
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    headings = [("".join(c["source"]).splitlines() or [""])[0] for c in cells if c["cell_type"] == "markdown"]
    numbered = [h for h in headings if re.match(r"^## \d+\. ", h)]
    assert [int(re.match(r"## (\d+)", h).group(1)) for h in numbered] == list(range(1, len(numbered) + 1))
    for cell in cells[2:]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        statements = [n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(statements) <= 3, f"{path.name}: a runbook cell is a call or two into lib/, not logic"
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, (ast.For, ast.While, ast.Try, ast.With, ast.FunctionDef)), path.name
        assert "sys.exit" not in source and "input(" not in source
        assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|ALTER)\b", source), f"{path.name}: no SQL in cells"


def test_last_cell_is_the_completion_sentinel(notebook):
    _, nb = notebook
    assert "".join(nb["cells"][-1]["source"]).strip() == "s.finish()"
