"""How often a launched run writes its notebook, and what a ``kill -9`` of the launcher leaves behind.

Real PostgreSQL, Alembic and papermill; the runbook ``upgrades_then_lingers`` (tests/fixtures/fault_notebooks)
upgrades the database in step 1 and waits ``seconds`` in step 3.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from dbrunbook import protocol, records
from dbrunbook.config import load_config
from dbrunbook.execution import runner, steplog
from tests.projects import trust_operator

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
URL_ENV = "DBRUNBOOK_TEST_TARGET_URL"
RUNBOOK = "upgrades_then_lingers"

TOML = f"""
[project]
default_target = "t"
[targets.t]
url_env = "{URL_ENV}"

[migration_sets.app]
alembic_ini = "migrations/app/alembic.ini"
"""


@pytest.fixture
def project(tmp_path, database_url, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copy(FIXTURES / "fault_notebooks" / f"{RUNBOOK}.ipynb", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "dbrunbook.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    trust_operator(root / "dbrunbook.toml", "tester@example.org")
    return load_config(root / "dbrunbook.toml")


def _code_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def test_a_run_writes_its_notebook_at_start_on_the_timer_and_at_the_end(project, monkeypatch):
    import papermill.engines

    writes: list[str] = []
    real = papermill.engines.write_ipynb

    def counting(nb, path):  # the real write, counted
        writes.append(path)
        return real(nb, path)

    monkeypatch.setattr(papermill.engines, "write_ipynb", counting)
    result = runner.run_runbook(RUNBOOK, parameters={"dry_run": "false", "seconds": "2.5"}, config=project)

    assert (result.outcome, result.exit_status) == ("succeeded", 0)
    nb = nbformat.read(str(result.record_dir / protocol.NOTEBOOK_FILE), as_version=4)
    durations = [nb.cells[i].metadata.papermill["duration"] for i in _code_cells(nb)]
    timer_saves = sum(1 + int((d - runner.SAVE_AFTER) // runner.SAVE_EVERY)
                      for d in durations if d >= runner.SAVE_AFTER)
    assert timer_saves >= 1  # step 3 waits 2.5 s
    # notebook start + the timer + notebook end; papermill alone writes 2 + 2 per cell (here 12)
    assert len(writes) == 2 + timer_saves, (writes, durations)

    events = steplog.read(steplog.path_for(result.record_dir))
    expected = [(i, kind, status) for i in _code_cells(nb)
                for kind, status in (("start", None), ("end", "completed"))]
    assert [(e["cell"], e["event"], e.get("status")) for e in events] == expected
    check = records.verify_record(result.record_dir, project.allowed_signers)
    assert check.status == "valid", check
    subjects = {s["name"] for s in check.statement["subject"]}
    assert f"{protocol.ARTIFACTS_DIR}/{steplog.STEP_LOG}" in subjects


def _cli(config, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dbrunbook.cli", "--config", str(config.path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_for_start_of_wait_step(config, process, limit: float = 180) -> tuple[Path, int]:
    """Poll the step log (not the notebook) until the cell of step 3 has started; returns run dir and cell."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for intent in config.outputs_dir.glob(f"*/*/*/*/{protocol.INTENT_FILE}"):
            events = steplog.read(steplog.path_for(intent.parent))
            started = [e["cell"] for e in events if e["event"] == "start"]
            # code cells: parameters, injected parameters, 1. upgrade, 2. print, 3. wait
            if len(started) == 5 and events[-1]["event"] == "start":
                return intent.parent, started[-1]
        time.sleep(0.02)
    raise AssertionError("the run never started its wait step")


def test_kill_9_of_the_launcher_leaves_the_step_log_and_seal_records_the_running_step(project):
    process = _cli(project, "run", RUNBOOK, "-p", "dry_run", "false", "-p", "seconds", "300")
    kernels: list[int] = []
    try:
        run_dir, cell = _wait_for_start_of_wait_step(project, process)
        kernels = _children(process.pid)
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in kernels:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    # What the kill left: the intent, the notebook of the last save (step 3 not yet saved as running: the
    # timer saves after SAVE_AFTER seconds), and the step log that ends with step 3's start.
    assert json.loads((run_dir / protocol.INTENT_FILE).read_text())["runbook"] == RUNBOOK
    left = nbformat.read(str(run_dir / protocol.NOTEBOOK_FILE), as_version=4)
    assert "time.sleep" in left.cells[cell].source
    assert left.cells[cell].metadata.papermill["status"] == "pending"
    last = steplog.read(steplog.path_for(run_dir))[-1]
    assert (last["cell"], last["event"]) == (cell, "start")

    sealing = _cli(project, "seal", str(run_dir))
    out, err = sealing.communicate(timeout=120)
    assert sealing.returncode == 1, err
    check = records.verify_record(run_dir, project.allowed_signers)
    assert check.status == "valid", check
    predicate = check.statement["predicate"]
    assert (predicate["outcome"], predicate["failing_step"]["heading"]) == ("interrupted", "## 3. Wait")
    sealed = nbformat.read(str(run_dir / protocol.NOTEBOOK_FILE), as_version=4)
    meta = sealed.cells[cell].metadata.papermill
    assert (meta["status"], meta["start_time"]) == ("running", last["at"])
