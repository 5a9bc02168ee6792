"""Each runbook's reviewable text form (runbooks/NAME.py, jupytext py:percent) says exactly what the notebook does."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "runbooks").glob("*.ipynb"))


def _cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_text_form_matches_the_notebook(path):
    text = path.with_suffix(".py")
    assert text.exists(), f"{text.name} is missing: run `jupytext --sync {path.relative_to(ROOT)}`"
    notebook, paired = jupytext.read(path), jupytext.read(text)
    assert _cells(paired) == _cells(notebook), f"{path.name} and {text.name} differ: run `jupytext --sync`"
    assert paired.metadata.get("dbrunbook") == notebook.metadata["dbrunbook"]


def test_no_text_form_without_its_notebook():
    orphans = {p.stem for p in (ROOT / "runbooks").glob("*.py")} - {p.stem for p in NOTEBOOKS}
    assert not orphans
