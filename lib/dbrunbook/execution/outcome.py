"""What a run came to: its outcome, exit status and failing step, read from the executed notebook.

The launcher never trusts papermill's own verdict: a kernel that died or timed out reports success there. The
outcome is classified here from the error papermill raised (a guard's exception name means "stopped at a
guard"), the cell the run last started, and the sentinel the last cell prints; ``RunResult`` carries it, with
the same facts the signed statement holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from dbrunbook import protocol
from dbrunbook.errors import GUARD_ENAMES
from dbrunbook.execution import steplog
from dbrunbook.execution.parameters import mask_secrets
from dbrunbook.views.tables import pairs_html

SUCCEEDED, FAILED, STOPPED_AT_GUARD, INCOMPLETE = "succeeded", "failed", "stopped-at-guard", "incomplete"
#: The launcher died (kill -9, a crash, the machine) before sealing; 'dbrunbook seal' records that later.
INTERRUPTED = "interrupted"
EXIT_STATUS = {SUCCEEDED: 0, FAILED: 1, STOPPED_AT_GUARD: 3, INCOMPLETE: 1, INTERRUPTED: 1}

STEP_HEADING = re.compile(r"^##\s+\d+\.\s*.*$", re.MULTILINE)


@dataclass(frozen=True)
class RunResult:
    """What a run came to; the same facts are in the signed statement of ``record_dir``."""

    run_id: str
    runbook: str
    target: str
    outcome: str
    exit_status: int
    record_dir: Path
    heads_before: dict = field(default_factory=dict)
    heads_after: dict = field(default_factory=dict)
    failing_step: dict | None = None
    signature: str = ""
    sealed: bool = True
    seal_error: str | None = None  # why the record could not be signed; 'dbrunbook seal' finishes it

    def as_json(self) -> dict:
        return {
            "sealed": self.sealed,
            "seal_error": self.seal_error,
            "run_id": self.run_id,
            "runbook": self.runbook,
            "target": self.target,
            "outcome": self.outcome,
            "exit_status": self.exit_status,
            "record_dir": str(self.record_dir),
            "heads_before": self.heads_before,
            "heads_after": self.heads_after,
            "failing_step": self.failing_step,
            "signature": self.signature,
        }

    def _repr_html_(self) -> str:
        return pairs_html([(k, v) for k, v in self.as_json().items() if k != "signature"])


def _text_of(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _has_sentinel(nb: nbformat.NotebookNode) -> bool:
    cells = _code_cells(nb)
    return bool(cells) and any(protocol.SENTINEL in _text_of(o) for o in cells[-1][1].get("outputs", []))


def step_heading(nb: nbformat.NotebookNode | None, cell_index: int | None) -> str | None:
    """The nearest ``## N. ...`` markdown heading at or before a cell: the step an operator reads."""
    if nb is None or cell_index is None:
        return None
    for cell in reversed(nb.cells[: cell_index + 1]):
        if cell.cell_type == "markdown":
            found = STEP_HEADING.findall(cell.source)
            if found:
                return found[-1].strip()
    return None


def last_started_cell(nb: nbformat.NotebookNode | None) -> int | None:
    """The last code cell papermill started: where a dead kernel or a timeout stopped the run."""
    if nb is None:
        return None
    started = [i for i, c in _code_cells(nb) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def load_output(path: Path) -> nbformat.NotebookNode | None:
    """The executed notebook as last saved, with the step log folded in (the cell a kill stopped shows)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:  # missing or half-written: the classification says what it can without it
        return None
    steplog.fold(nb, steplog.read(steplog.path_for(path.parent)))
    return nb


def classify(error: BaseException | None, nb: nbformat.NotebookNode | None) -> tuple[str, dict | None]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        outcome = STOPPED_AT_GUARD if error.ename in GUARD_ENAMES else FAILED
        return outcome, {"cell": error.cell_index, "heading": step_heading(nb, error.cell_index),
                         "ename": error.ename, "evalue": mask_secrets(str(error.evalue))}
    if error is not None:
        cell = last_started_cell(nb)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            ename, evalue = type(error).__name__, "the launcher was interrupted or terminated"
        else:
            lines = str(error).strip().splitlines()
            ename, evalue = type(error).__name__, mask_secrets(lines[0] if lines else "")
        return FAILED, {"cell": cell, "heading": step_heading(nb, cell), "ename": ename, "evalue": evalue}
    if nb is None or not _has_sentinel(nb):
        cells = _code_cells(nb) if nb is not None else []
        cell = cells[-1][0] if cells else None
        return INCOMPLETE, {"cell": cell, "heading": step_heading(nb, cell), "ename": None,
                            "evalue": f"the last code cell did not print '{protocol.SENTINEL}'"}
    return SUCCEEDED, None


def classify_outputs(nb: nbformat.NotebookNode) -> tuple[str, dict | None]:
    """Outcome of an interactively executed notebook, from what its cells show."""
    for index, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                ename = output.get("ename", "")
                outcome = STOPPED_AT_GUARD if ename in GUARD_ENAMES else FAILED
                return outcome, {"cell": index, "heading": step_heading(nb, index), "ename": ename,
                                 "evalue": mask_secrets(str(output.get("evalue", "")))}
    return classify(None, nb)


def launcher_step(heading: str, ename: str, evalue: str) -> dict:
    """The failing step of a run the launcher stopped before its notebook ran (no cell of it started)."""
    return {"cell": None, "heading": f"launcher: {heading}", "ename": ename, "evalue": mask_secrets(evalue)}
