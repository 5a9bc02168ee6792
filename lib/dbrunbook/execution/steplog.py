"""The step log of a launched run: one JSON line per cell start and end, in the record's artifacts.

papermill rewrites the whole notebook after every cell start and end, which costs cells x notebook size in
JSON serialisation and validation. dbrunbook's engine saves the notebook when the run starts, while a cell
runs long (on a timer), when a cell fails and at the end; each cell's start and end go to this small
append-only file instead. A launcher killed with ``kill -9`` leaves the notebook of its last save plus this
log; sealing folds the log into the notebook (:func:`fold`), so the record still shows the step that was
running. The log is under ``artifacts/``, so the record's signature covers it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import nbformat

from dbrunbook.protocol import ARTIFACTS_DIR, now

STEP_LOG = "steps.jsonl"

_FINISHED = ("completed", "failed")


def path_for(run_dir: Path) -> Path:
    """Where the step log of the run in ``run_dir`` lives."""
    return Path(run_dir) / ARTIFACTS_DIR / STEP_LOG


class StepLog:
    """Appends the start and end of each cell to the step log, one flushed line each.

    No fsync: a killed process keeps what it wrote (the page cache survives it); only a machine that goes
    down may lose the last lines, and then the notebook's last save still stands.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def _append(self, event: dict) -> None:
        self._file.write(json.dumps(event, sort_keys=True) + "\n")
        self._file.flush()

    def start(self, cell_index: int) -> None:
        self._append({"cell": cell_index, "event": "start", "at": now().isoformat()})

    def end(self, cell_index: int, *, failed: bool) -> None:
        self._append({"cell": cell_index, "event": "end", "at": now().isoformat(),
                      "status": "failed" if failed else "completed"})

    def close(self) -> None:
        self._file.close()


def read(path: Path) -> list[dict]:
    """The events of a step log, oldest first; a missing log is empty and a torn last line is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # the line a kill cut short
            continue
        if isinstance(event, dict) and isinstance(event.get("cell"), int):
            events.append(event)
    return events


def fold(nb: nbformat.NotebookNode, events: list[dict]) -> bool:
    """Bring the papermill metadata of ``nb``'s cells up to date with the step log; True if anything changed.

    A cell the notebook shows as pending but the log shows started becomes "running" (or finished, with
    its end time and duration, when the log has its end). What the notebook already shows as finished is
    left alone: its own save is at least as new as the log.
    """
    changed = False
    cells = nb.get("cells", [])
    for event in events:
        index = event["cell"]
        if not 0 <= index < len(cells):
            continue
        meta = cells[index].setdefault("metadata", {}).setdefault("papermill", {})
        if meta.get("status") in _FINISHED:
            continue
        if event.get("event") == "start" and not meta.get("start_time"):
            meta.update(start_time=event["at"], status="running", exception=False)
            changed = True
        elif event.get("event") == "end":
            start = meta.get("start_time")
            meta.update(end_time=event["at"], status=event.get("status", "completed"),
                        exception=event.get("status") == "failed")
            if start:
                meta["duration"] = (datetime.fromisoformat(event["at"])
                                    - datetime.fromisoformat(start)).total_seconds()
            changed = True
    return changed


def fold_file(notebook: Path, log: Path) -> bool:
    """Fold the step log into the notebook file in place; True if the file was rewritten.

    Raises:
        OSError, ValueError: the notebook cannot be read or written (the caller keeps the run unsealed).
    """
    events = read(log)
    if not events:
        return False
    nb = nbformat.read(str(notebook), as_version=4)
    if not fold(nb, events):
        return False
    nbformat.write(nb, str(notebook))
    return True
