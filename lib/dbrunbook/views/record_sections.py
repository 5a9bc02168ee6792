"""Sections of a record's page that only some records have: an interactive run's cells, a preview's approvals.

A papermill run is described by papermill's own metadata (its version, duration, start and end). An
interactive run (``dbrunbook open`` … ``dbrunbook seal``) has none of that: what a reviewer needs is its mode
(edited or not, saved or not), which code cells were changed after ``open``, and which cells ran, in what order
and when (JupyterLab's execution counts, and its ``execution`` timestamps when it recorded them). A preview
record may have approvals (``dbrunbook approve``) beside it under ``outputs/approvals/<run-id>/``: who approved
it, when, with what note, and whether each approval counts (signature, trust, subject).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.records.cell_changes import INTERACTIVE_ARTIFACT, changes_described
from dbrunbook.records.digests import cell_title
from dbrunbook.safety.approvals import Approval
from dbrunbook.views.tables import escape_html, grid_html

__all__ = ["MODE_TEXT", "approvals_html", "interactive_html", "is_interactive"]

#: What each interactive mode means, for the reviewer.
MODE_TEXT = {
    "interactive": "run cell by cell in JupyterLab, in order, code as prepared by 'dbrunbook open'",
    "interactive-out-of-order": "run cell by cell in JupyterLab, not in notebook order (see the counts below)",
    "interactive-edited": "run in JupyterLab with code changed after 'dbrunbook open': not evidence for a "
                          "protected target",
    "interactive-unsaved": "sealed without saving: the notebook is as 'dbrunbook open' prepared it, without the "
                           "outputs of the cells that ran",
}


def is_interactive(mode: Any) -> bool:
    return isinstance(mode, str) and mode.startswith("interactive")


def _ran(cell: Mapping) -> str:
    outputs = cell.get("outputs") or []
    if any(o.get("output_type") == "error" for o in outputs):
        return "raised"
    return "ran" if cell.get("execution_count") is not None else "not run"


def _started(cell: Mapping) -> str:
    execution = (cell.get("metadata") or {}).get("execution") or {}
    return str(execution.get("iopub.execute_input") or execution.get("shell.execute_reply.started") or "-")


def interactive_html(nb: Mapping, run_dir: Path, mode: str, operator: str) -> str:
    """The "Interactive run" section: the mode, the cells changed after ``open``, each code cell's run."""
    changes = changes_described(Path(run_dir) / ARTIFACTS_DIR / INTERACTIVE_ARTIFACT)
    changed = ("<ul id=\"changed-cells\">" + "".join(f"<li>{escape_html(c)}</li>" for c in changes) + "</ul>"
               if changes else '<p id="changed-cells">No code cell was changed after \'dbrunbook open\'.</p>')
    rows = [[index, cell_title(cell), cell.get("execution_count") if cell.get("execution_count") is not None
             else "-", _started(cell), _ran(cell)]
            for index, cell in enumerate(nb.get("cells") or []) if cell.get("cell_type") == "code"]
    return (f'<h2>Interactive run</h2><div id="interactive"><p>Mode <code>{escape_html(mode)}</code>: '
            f"{escape_html(MODE_TEXT.get(mode, mode))}. Run by {escape_html(operator)}, who sealed it with "
            f"their key.</p>{changed}<div id=\"cell-runs\">"
            + grid_html(["cell", "step", "execution count", "started", "outcome"], rows) + "</div></div>")


def approvals_html(found: Sequence[Approval], run_id: str) -> str:
    """The "Approvals" section of a record with approvals beside it ('' when it has none)."""
    if not found:
        return ""
    rows = [[a.approver or "-", a.status, a.approved_at.isoformat() if a.approved_at else "-", a.note or "-",
             "; ".join(a.problems) or "-", a.path.name] for a in found]
    return ('<h2>Approvals</h2><div id="approvals"><p>Each approval is checked as a record is: its signature, '
            "the trust file, and the record it names. Whether one counts for a deploy (not by the deployer, not "
            "older than approval_max_age) is decided when the deploy runs. "
            f'<a href="../approvals/{escape_html(run_id)}.html">Its approval page</a> lists the records that used '
            "it.</p>" + grid_html(["approver", "status", "approved at", "note", "problems", "file"], rows) + "</div>")
