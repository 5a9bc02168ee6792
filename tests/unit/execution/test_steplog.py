"""The step log: what a launched run appends per cell, and how sealing folds it into the notebook."""

from __future__ import annotations

import json

import nbformat
import pytest

from dbrunbook.execution import steplog


def _notebook(statuses: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {i}") for i in range(len(statuses))])
    for cell, status in zip(nb.cells, statuses, strict=False):
        cell.metadata.papermill = {"status": status, "start_time": None, "end_time": None, "duration": None,
                                   "exception": None}
    return nb


def test_a_log_is_read_back_in_order(tmp_path):
    log = steplog.StepLog(steplog.path_for(tmp_path))
    log.start(1)
    log.end(1, failed=False)
    log.start(2)
    log.end(2, failed=True)
    log.close()
    events = steplog.read(tmp_path / "artifacts" / "steps.jsonl")
    assert [(e["cell"], e["event"], e.get("status")) for e in events] == [
        (1, "start", None), (1, "end", "completed"), (2, "start", None), (2, "end", "failed")]


def test_a_missing_log_is_empty_and_a_torn_last_line_is_skipped(tmp_path):
    assert steplog.read(tmp_path / "none.jsonl") == []
    path = tmp_path / "steps.jsonl"
    event = {"cell": 3, "event": "start", "at": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(event) + '\n{"cell": 3, "ev')
    assert steplog.read(path) == [event]


@pytest.mark.parametrize("events, expected", [
    # started, never ended (a kill): the cell shows as running from the log's time
    ([(1, "start", None, "00:00:01")], ["completed", "running", "pending"]),
    # ended: finished with its end time and duration
    ([(1, "start", None, "00:00:01"), (1, "end", "failed", "00:00:04")], ["completed", "failed", "pending"]),
    # what the notebook already shows as finished is its own, newer save
    ([(0, "start", None, "00:00:00"), (0, "end", "failed", "00:00:01")], ["completed", "pending", "pending"]),
    # a cell index the notebook does not have is ignored
    ([(7, "start", None, "00:00:01")], ["completed", "pending", "pending"]),
], ids=["started", "ended", "already-finished", "out-of-range"])
def test_fold_brings_cells_up_to_date(events, expected):
    nb = _notebook(["completed", "pending", "pending"])
    log = [{"cell": c, "event": e, "at": f"2026-01-01T{t}+00:00", **({"status": s} if s else {})}
           for c, e, s, t in events]
    changed = steplog.fold(nb, log)
    assert [c.metadata.papermill["status"] for c in nb.cells] == expected
    assert changed == (expected != ["completed", "pending", "pending"])


def test_fold_gives_a_finished_cell_its_duration():
    nb = _notebook(["pending"])
    steplog.fold(nb, [
        {"cell": 0, "event": "start", "at": "2026-01-01T00:00:01+00:00"},
        {"cell": 0, "event": "end", "at": "2026-01-01T00:00:04.5+00:00", "status": "completed"}])
    meta = nb.cells[0].metadata.papermill
    assert (meta["start_time"], meta["end_time"], meta["duration"], meta["exception"]) == (
        "2026-01-01T00:00:01+00:00", "2026-01-01T00:00:04.5+00:00", 3.5, False)


def test_fold_file_rewrites_the_notebook_only_when_the_log_adds_something(tmp_path):
    path = tmp_path / "notebook.ipynb"
    nbformat.write(_notebook(["completed", "pending"]), str(path))
    log = steplog.path_for(tmp_path)
    assert steplog.fold_file(path, log) is False  # no log
    log.parent.mkdir()
    log.write_text(json.dumps({"cell": 1, "event": "start", "at": "2026-01-01T00:00:02+00:00"}) + "\n")
    assert steplog.fold_file(path, log) is True
    assert nbformat.read(str(path), as_version=4).cells[1].metadata.papermill["status"] == "running"
    assert steplog.fold_file(path, log) is False  # already folded
