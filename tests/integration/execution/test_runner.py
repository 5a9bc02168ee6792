"""The launcher end to end: real papermill kernels, real PostgreSQL, a real Alembic project, real signatures.

Each papermill run starts a kernel (a few seconds), so every run here checks several things at once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
import sqlalchemy as sa
from nbclient import NotebookClient

from dbrunbook import protocol, records
from dbrunbook.cli import main
from dbrunbook.config import load_config
from dbrunbook.execution.launch import new_run_dir
from dbrunbook.execution.runner import (
    RunDirectoryInvalid,
    kernel_for_this_interpreter,
    prepare_runbook,
    run_runbook,
    seal,
)
from tests.projects import trust_operator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
URL_ENV = "DBRUNBOOK_TEST_TARGET_URL"
SECRET = "Hunter2-never-stored"
REVISIONS = ["1a0c7e5f9b01", "2b1d8f6a0c02", "3c2e9a7b1d03"]  # connection_attr, oldest first

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
    """A project whose runbooks are the fixture notebooks and whose target ``t`` is a fresh database."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "dbrunbook.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    trust_operator(root / "dbrunbook.toml", "tester@example.org")
    return load_config(root / "dbrunbook.toml")


def project_url() -> str:
    """The target's URL as the test set it."""
    return os.environ[URL_ENV]


def _with_password(url: str) -> str:
    """The same database with a password in the URL (the test servers trust local connections)."""
    return sa.make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def _statement(run_dir: Path) -> dict:
    return json.loads((run_dir / protocol.STATEMENT_FILE).read_bytes())["predicate"]


def _assert_valid(config, run_dir: Path) -> None:
    check = records.verify_record(run_dir, config.allowed_signers)
    assert (check.status, check.problems) == ("valid", ())


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    name = kernel_for_this_interpreter()
    manager = KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager())
    assert manager.format_kernel_cmd()[0] == sys.executable


def test_succeeds_converts_parameters_and_signs(project):
    parameters = {"label": "0012", "count": "3", "dry_run": "yes"}
    result = run_runbook("succeeds", parameters=parameters, config=project)

    assert (result.outcome, result.exit_status, result.failing_step) == ("succeeded", 0, None)
    assert (result.runbook, result.target) == ("succeeds", "t")
    assert result.heads_before == result.heads_after == {"app": []}
    assert result.record_dir.parent.parent.parent.parent == project.outputs_dir
    assert result.record_dir.name == result.run_id
    # The kernel saw typed values: '0012' stayed text, the rest took their declared types.
    seen = json.loads((result.record_dir / "artifacts" / "parameters.json").read_text())
    assert seen["values"] == {"target": "t", "label": "0012", "count": 3, "ratio": 0.5, "dry_run": True}
    assert seen["types"] == {"target": "str", "label": "str", "count": "int", "ratio": "float",
                             "dry_run": "bool"}
    intent = json.loads((result.record_dir / protocol.INTENT_FILE).read_text())
    assert (intent["run_id"], intent["runbook"], intent["mode"]) == (result.run_id, "succeeds", "papermill")
    predicate = _statement(result.record_dir)
    assert predicate["parameters"] == seen["values"]
    assert (predicate["outcome"], predicate["exit_status"]) == ("succeeded", 0)
    assert predicate["mode"] == "papermill"
    assert predicate["runbook_sha256"] == records.sha256_file(project.runbooks_dir / "succeeds.ipynb")
    assert predicate["database"]["database"] == sa.make_url(project_url()).database
    assert result.as_json()["record_dir"] == str(result.record_dir)
    _assert_valid(project, result.record_dir)


@pytest.mark.parametrize(
    ("runbook", "outcome", "heading", "ename"),
    [
        ("kernel_dies", "failed", "## 2. Die", "DeadKernelError"),
        ("no_sentinel", "incomplete", "## 2. Forget to finish", None),
        ("slow_cell", "failed", "## 1. Wait", "CellTimeoutError"),
    ],
)
def test_runs_that_do_not_complete_are_signed(project, runbook, outcome, heading, ename):
    result = run_runbook(runbook, config=project, execution_timeout=2)

    assert (result.outcome, result.exit_status) == (outcome, 1)
    assert result.failing_step["heading"] == heading
    assert result.failing_step["ename"] == ename
    assert _statement(result.record_dir)["failing_step"] == result.failing_step
    _assert_valid(project, result.record_dir)


def test_upgrade_records_heads_and_ledger(project):
    result = run_runbook("upgrades", config=project)

    assert (result.outcome, result.exit_status) == ("succeeded", 0)
    assert result.heads_before == {"app": []}
    assert result.heads_after == {"app": [REVISIONS[-1]]}
    _assert_valid(project, result.record_dir)
    engine = sa.create_engine(project_url())
    try:
        rows = records.ledger_rows(engine)
    finally:
        engine.dispose()
    assert [(r["run_id"], r["outcome"]) for r in rows] == [(result.run_id, "succeeded")]
    assert rows[0]["statement_sha256"] == records.statement_sha256(result.record_dir)
    versions = project.migration_set("app").base_dir / "migrations" / "versions"
    assert rows[0]["migration_files"] == {"app": {
        rev: records.sha256_file(next(versions.glob(f"{rev}_*.py"))) for rev in REVISIONS}}


def test_database_down_is_recorded_without_password(project, monkeypatch):
    monkeypatch.setenv(URL_ENV, f"postgresql://app:{SECRET}@127.0.0.1:1/nowhere?connect_timeout=2")
    result = run_runbook("succeeds", config=project)

    predicate = _statement(result.record_dir)
    assert predicate["database"] is None
    assert result.heads_before == result.heads_after == {}
    (error,) = predicate["extra"]["errors_before"]
    assert error.startswith("Cannot connect to target 't' at postgresql+psycopg://app:***@127.0.0.1:1/nowhere")
    assert SECRET.encode() not in _all_bytes(result.record_dir)
    _assert_valid(project, result.record_dir)


def test_cli_run_json_prints_one_object_and_no_password(project, monkeypatch, capfd):
    monkeypatch.setenv(URL_ENV, _with_password(project_url()))
    status = main(["--config", str(project.path), "run", "succeeds", "--json", "-t", "t",
                   "-p", "label", "0012"])

    out, err = capfd.readouterr()
    document = json.loads(out)  # exactly one JSON document: anything else on stdout makes this fail
    assert out.count("\n") == 1
    assert (status, document["outcome"], document["exit_status"]) == (0, "succeeded", 0)
    run_dir = Path(document["record_dir"])
    assert SECRET not in out and SECRET not in err
    assert SECRET.encode() not in _all_bytes(run_dir)
    assert _statement(run_dir)["parameters"]["label"] == "0012"


def test_cli_exit_statuses_of_failed_and_guarded_runs(project, capsys):
    config = ["--config", str(project.path)]

    assert main([*config, "run", "fails_at_step_2"]) == 1
    out = capsys.readouterr().out
    assert "outcome:    failed" in out
    assert "stopped at: ## 2. Break: ValueError step 2 broke on purpose" in out

    assert main([*config, "run", "stops_at_guard"]) == 3
    out = capsys.readouterr().out
    run_dir = Path(out.split("record:")[1].strip())
    step = _statement(run_dir)["failing_step"]
    assert (step["heading"], step["ename"]) == ("## 1. Check the revision", "NotAtExpectedRevision")
    assert step["cell"] == 4  # counted in the executed notebook, after papermill's injected-parameters cell
    assert "this run expects 'b2'" in step["evalue"]

    assert main([*config, "verify"]) == 0
    assert capsys.readouterr().out.count(" valid ") == 2

    assert main([*config, "run", "succeeds", "-p", "lable", "x"]) == 2
    assert "Runbook 'succeeds' has no parameter 'lable'" in capsys.readouterr().err


def test_open_then_seal(project):
    path = prepare_runbook("succeeds", parameters={"count": "2"}, config=project)
    run_dir = path.parent
    intent = json.loads((run_dir / protocol.INTENT_FILE).read_text())
    assert (intent["mode"], intent["parameters"]["count"], intent["pre_state"]["heads"]) == (
        "interactive", 2, {"app": []})

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=kernel_for_this_interpreter(),
                   resources={"metadata": {"path": str(project.root)}}).execute()
    nbformat.write(nb, path)
    # The working copy is outside the archive; sealing moves it in.
    assert project.outputs_dir not in run_dir.parents and project.state_dir in run_dir.parents
    result = seal(run_dir, config=project)

    assert (result.outcome, result.exit_status, result.run_id) == ("succeeded", 0, run_dir.name)
    assert result.record_dir == records.run_dir_for(project.outputs_dir, run_dir.name) and not run_dir.exists()
    assert _statement(result.record_dir)["mode"] == "interactive"
    _assert_valid(project, result.record_dir)
    with pytest.raises(RunDirectoryInvalid) as caught:
        seal(result.record_dir, config=project)
    assert str(caught.value).startswith(f"{result.record_dir} is sealed already")


def test_seal_of_a_notebook_never_run(project):
    path = prepare_runbook("stops_at_guard", config=project)
    result = seal(path.parent, config=project)

    assert (result.outcome, result.failing_step["heading"]) == ("incomplete", "## 2. Finish")
    assert _statement(result.record_dir)["mode"] == "interactive-unsaved"
    check = records.verify_record(result.record_dir, project.allowed_signers)
    assert check.status == "valid"
    assert check.problems == ("the notebook was not saved before sealing: the record holds the notebook as "
                              "'dbrunbook open' prepared it, without the outputs of the cells that ran.",)


def test_run_directories_are_never_reused(project):
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = new_run_dir(project, "succeeds", "t", moment)
    second = new_run_dir(project, "succeeds", "t", moment)

    assert first[0] != second[0] and first[1] != second[1]
    assert first[1].parent == second[1].parent == project.outputs_dir / "2026" / "01" / "02"
    assert first[1].is_dir() and second[1].is_dir()


def _slow_cell_running(outputs_dir: Path) -> bool:
    for path in outputs_dir.glob(f"*/*/*/*/{protocol.NOTEBOOK_FILE}"):
        try:
            cells = json.loads(path.read_bytes())["cells"]
        except ValueError:  # caught half-written
            return False
        return any("time.sleep" in "".join(c["source"]) and c["metadata"]["papermill"]["status"] == "running"
                   for c in cells)
    return False


def test_sigterm_during_a_run_still_seals_it(project):
    import signal
    import subprocess
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "dbrunbook.cli", "--config", str(project.path), "run", "slow_cell"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait (not a timed assertion) until papermill has saved the slow cell as running.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if _slow_cell_running(project.outputs_dir):
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 128 + signal.SIGTERM, err
    (run_dir,) = [p.parent for p in project.outputs_dir.glob(f"*/*/*/*/{protocol.STATEMENT_FILE}")]
    step = _statement(run_dir)["failing_step"]
    assert (step["heading"], step["ename"]) == ("## 1. Wait", "SystemExit")
    _assert_valid(project, run_dir)


def test_progress_reports_each_step_as_it_starts_and_ends(project):
    lines: list[str] = []
    result = run_runbook("fails_at_step_2", config=project, progress=lines.append)
    assert result.outcome == "failed"
    steps = [line.strip() for line in lines if line.startswith("  [")]
    assert steps[0] == "[1/3] 1. Look around ..."
    assert steps[1].startswith("[1/3] done in ")
    assert steps[2] == "[2/3] 2. Break ..."
    assert steps[3].startswith("[2/3] FAILED in ")
    assert len(steps) == 4  # step 3 never started
