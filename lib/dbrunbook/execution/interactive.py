"""Interactive runs that survive JupyterLab: a working copy outside ``outputs/``, its cells' digests, the seal.

``dbrunbook open`` prepares the parameterised notebook in a working copy under the state directory
(``.dbrunbook/interactive/YYYY/MM/DD/<run-id>/``), never in the archive, and keeps the sha256 of every code
cell's source as it was prepared (``<run-id>.opened.json`` beside the working copy). ``dbrunbook seal``
compares them: a run whose code cells were edited, added or removed, or whose ``intent.json`` changed, is
sealed in mode ``interactive-edited`` and its record names each such cell (``artifacts/interactive.json``,
covered by the signature); guards that need evidence (approvals on protected targets) accept papermill
records only. A notebook that was never saved seals as ``interactive-unsaved``. The sealed run directory is
then moved into ``outputs/``, where ``dbrunbook lab``'s contents manager refuses every write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat

from dbrunbook import records
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, NOTEBOOK_FILE
from dbrunbook.records.cell_changes import INTERACTIVE_ARTIFACT, CellChange, record_problems

__all__ = ["INTERACTIVE_ARTIFACT", "CellChange", "compare_cells", "interactive_mode", "lab_command",
           "mark_prepared", "opened_file", "record_problems", "working_root"]

SAVE_THEN_SEAL = "dbrunbook-save-then-seal"


def working_root(config) -> Path:
    """Where ``dbrunbook open`` puts working copies: ``state_dir/interactive`` (not an archive)."""
    return Path(config.state_dir) / "interactive"


def opened_file(config, run_id: str) -> Path:
    return working_root(config) / f"{run_id}.opened.json"


def _code_digests(nb) -> list[dict]:
    return [{"index": i, "id": c.get("id"), "sha256": hashlib.sha256(c.source.encode("utf-8")).hexdigest()}
            for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def mark_prepared(config, notebook: Path, run_id: str) -> Path:
    """Finish a working copy: no jupytext pairing, a last cell saying how to seal, the cells' digests.

    papermill copies the runbook's ``jupytext.formats`` metadata, which would make JupyterLab (with jupytext)
    write ``notebook.py`` beside the record on every save; it is removed from the copy. Returns the path of
    the opened-digests file.
    """
    nb = nbformat.read(str(notebook), as_version=4)
    (nb.metadata.get("jupytext") or {}).pop("formats", None)
    command = f"dbrunbook seal {notebook.parent}"
    cell = nbformat.v4.new_markdown_cell(
        f"## Save, then seal\n\nSave this notebook (**Ctrl+S**: seal signs what is on disk), then run in a "
        f"terminal:\n\n```\n{command}\n```\n\nThe record is moved into `outputs/`, where it is read-only.")
    cell.metadata["tags"] = [SAVE_THEN_SEAL]
    nb.cells.append(cell)
    nbformat.write(nb, str(notebook))
    path = opened_file(config, run_id)
    intent = notebook.parent / INTENT_FILE
    path.write_text(json.dumps({
        "run_id": run_id, "cells": _code_digests(nb),
        "intent_sha256": records.sha256_file(intent) if intent.is_file() else None,
    }, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def compare_cells(config, run_dir: Path, run_id: str) -> tuple[list[CellChange], bool, dict | None]:
    """What changed since ``dbrunbook open``: (cell changes, intent.json edited, what was opened or None)."""
    path = opened_file(config, run_id)
    if not path.is_file():
        return [], False, None
    opened = json.loads(path.read_text(encoding="utf-8"))
    nb = nbformat.read(str(Path(run_dir) / NOTEBOOK_FILE), as_version=4)
    now = {d["id"]: d for d in _code_digests(nb)}
    then = {d["id"]: d for d in opened.get("cells", [])}
    changes = []
    for cell_id, digest in now.items():
        title = records.statements.cell_title(nb.cells[digest["index"]])
        if cell_id not in then:
            changes.append(CellChange("added", digest["index"], cell_id, title))
        elif then[cell_id]["sha256"] != digest["sha256"]:
            changes.append(CellChange("edited", digest["index"], cell_id, title))
    for cell_id, digest in then.items():
        if cell_id not in now:
            changes.append(CellChange("removed", None, cell_id, f"was cell {digest['index']}"))
    intent = Path(run_dir) / INTENT_FILE
    intent_edited = opened.get("intent_sha256") not in (None, records.sha256_file(intent) if intent.is_file()
                                                        else None)
    return changes, intent_edited, opened


def interactive_mode(nb, changes: list[CellChange], intent_edited: bool) -> str:
    """interactive-edited, interactive-unsaved (no cell ever ran on disk), interactive or -out-of-order."""
    if changes or intent_edited:
        return "interactive-edited"
    counts = [c.get("execution_count") for c in nb.cells if c.cell_type == "code"]
    if counts and all(n is None for n in counts) and not any(c.get("outputs") for c in nb.cells
                                                             if c.cell_type == "code"):
        return "interactive-unsaved"
    return "interactive" if counts == list(range(1, len(counts) + 1)) else "interactive-out-of-order"


def write_interactive_artifact(run_dir: Path, mode: str, changes: list[CellChange], intent_edited: bool,
                               opened: dict | None) -> None:
    """``artifacts/interactive.json``: the seal's findings, covered by the record's signature."""
    (Path(run_dir) / ARTIFACTS_DIR).mkdir(exist_ok=True)
    (Path(run_dir) / ARTIFACTS_DIR / INTERACTIVE_ARTIFACT).write_text(json.dumps({
        "mode": mode, "changed_cells": [c.__dict__ for c in changes], "intent_edited": intent_edited,
        "opened_cells": (opened or {}).get("cells"),
    }, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def move_into_archive(config, run_dir: Path, run_id: str) -> Path:
    """Move a sealed-to-be working copy to ``outputs/YYYY/MM/DD/<run-id>`` (same file system: a rename)."""
    target = records.run_dir_for(config.outputs_dir, run_id)
    if Path(run_dir).resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target} exists already")
    shutil.move(str(run_dir), str(target))
    # JupyterLab's checkpoints of the working copy are not part of the record.
    shutil.rmtree(target / ".ipynb_checkpoints", ignore_errors=True)
    return target


def lab_command(config, extra: list[str] | None = None) -> tuple[list[str], dict]:
    """The ``jupyter lab`` command line and environment of ``dbrunbook lab`` (records read-only)."""
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={config.root}",
            "--ServerApp.contents_manager_class=dbrunbook.execution.jupyter_readonly.RecordsReadOnlyContentsManager",
            # working copies live under the state directory, a dot folder by default
            "--ContentsManager.allow_hidden=True", *(extra or [])]
    return argv, {**os.environ, "DBRUNBOOK_CONFIG": str(config.path)}
