"""Faults on a real database: a database change always ends with a record, or nothing changes.

Each test breaks one thing a run needs (disk, state folder, signing key, ledger) or kills one process
(launcher, kernel) and then asserts the database (SQL), the ledger row, the record and the exit status. The
runbook ``upgrades_then_lingers`` upgrades the database in step 1, then prints ``megabytes`` and waits
``seconds``: a run that has changed the database and is still going.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import protocol, records
from dbrunbook.config import load_config
from dbrunbook.execution import unfinished
from dbrunbook.execution.runner import PARTIAL_NOTEBOOK, run_runbook, seal
from dbrunbook.safety import locking
from tests.projects import trust_operator

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
URL_ENV = "DBRUNBOOK_TEST_TARGET_URL"
HEAD = "3c2e9a7b1d03"  # the last revision of the connection_attr migrations
RUNBOOK = "upgrades_then_lingers"
CHANGE = ["-p", "dry_run", "false"]

TOML = f"""
[project]
default_target = "t"
{{state}}
[targets.t]
url_env = "{URL_ENV}"

[migration_sets.app]
alembic_ini = "migrations/app/alembic.ini"
"""


def _write_project(root: Path, state: str = "") -> Path:
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copy(FIXTURES / "fault_notebooks" / f"{RUNBOOK}.ipynb", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    path = root / "dbrunbook.toml"
    path.write_text(TOML.format(state=state), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path, database_url, monkeypatch):
    """The fixture runbooks on a fresh database, with a signing key made before the test breaks anything."""
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    config = load_config(_write_project(tmp_path / "project"))
    trust_operator(config.path, "tester@example.org")
    return config


@pytest.fixture
def engine(database_url):
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def _heads(engine) -> list[str] | None:
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
            return None
        return [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]


def _ledger(engine) -> list[tuple]:
    return [(r["run_id"], r["outcome"], r["statement_sha256"], r["error"]) for r in records.ledger_rows(engine)]


def _ledger_exists(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass('dbrunbook.ledger')")).scalar() is not None


def _cli(config, *args: str, limit: int | None = None, **popen) -> subprocess.Popen:
    def lower_file_size_limit():  # a full disk, as the child and its kernel see it (EFBIG on write)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.Popen([sys.executable, "-m", "dbrunbook.cli", "--config", str(config.path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lower_file_size_limit if limit else None, **popen)


def _json(out: str) -> dict:
    assert out.count("\n") == 1, out  # exactly one object
    return json.loads(out)


def _run_dirs(config) -> list[Path]:
    return sorted(p.parent for p in config.outputs_dir.glob(f"*/*/*/*/{protocol.INTENT_FILE}"))


def _valid(config, run_dir: Path) -> dict:
    check = records.verify_record(run_dir, config.allowed_signers)
    assert (check.status, check.problems) == ("valid", ()), check
    return check.statement["predicate"]


def _wait_until_waiting(config, process: subprocess.Popen, limit: float = 180) -> Path:
    """Wait (not a timed assertion) until papermill saved step 3 ("Wait") as running; returns the run dir."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for run_dir in _run_dirs(config):
            try:
                cells = json.loads((run_dir / protocol.NOTEBOOK_FILE).read_bytes())["cells"]
            except (OSError, ValueError):
                continue
            if any("time.sleep" in "".join(c["source"]) and c["metadata"]["papermill"]["status"] == "running"
                   for c in cells):
                return run_dir
        time.sleep(0.2)
    raise AssertionError("the run never reached its wait step")


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


def _wait_for_no_lock(engine, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while locking.deployer_lock_holder(engine) is not None:
        assert time.monotonic() < deadline, f"deployer lock still held by {locking.deployer_lock_holder(engine)}"
        time.sleep(0.1)


def _end(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- before the change: refused, nothing changed ------------------------------------------------------------
def test_full_disk_before_the_change_refuses_the_run(project, engine):
    process = _cli(project, "run", RUNBOOK, *CHANGE, "--json", limit=128 * 1024)
    out, err = process.communicate(timeout=300)

    assert process.returncode == 2, err
    document = _json(out)
    assert (document["error_type"], document["exit_status"]) == ("RecordNotWritable", 2)
    assert document["error"].startswith(f"Cannot finish a run's record: {project.outputs_dir} cannot get files "
                                        f"larger than 0.12 MiB (file size limit, ulimit -f); a record of "
                                        f"runbook '{RUNBOOK}' may need ")
    assert document["error"].endswith("Nothing was run. Raise the limit (ulimit -f unlimited) and run again.")
    assert (_heads(engine), _ledger_exists(engine), _run_dirs(project)) == (None, False, [])


def test_unusable_state_dir_refuses_the_run(tmp_path, database_url, engine, monkeypatch):
    monkeypatch.setenv(URL_ENV, database_url)
    root = tmp_path / "project"
    root.mkdir()
    # A state folder blocked by a file is refused when dbrunbook.toml loads (test_config); a file where the
    # folder's run register goes is found only by the checks before a run.
    (root / "blocked").mkdir()
    (root / "blocked" / "runs").write_text("a file where the run register should be\n")
    config = load_config(_write_project(root, state='state_dir = "blocked"'))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    trust_operator(config.path, "tester@example.org")

    process = _cli(config, "run", RUNBOOK, *CHANGE, "--json")
    out, err = process.communicate(timeout=300)

    assert process.returncode == 2, err
    document = _json(out)
    assert document["error_type"] == "RecordNotWritable"
    assert document["error"] == (
        f"Cannot finish a run's record: {root / 'blocked' / 'runs'} (the state folder's run register) cannot "
        f"be written: File exists. Nothing was run. Make it a writable folder, or point dbrunbook.toml at one.")
    assert (_heads(engine), _ledger_exists(engine), _run_dirs(config)) == (None, False, [])


def test_a_signing_key_that_cannot_sign_refuses_the_run(project, engine):
    key = project.keys_dir / records.OPERATOR_KEY
    key.chmod(0o600)
    key.write_text("not a key\n")

    process = _cli(project, "run", RUNBOOK, *CHANGE, "--json")
    out, err = process.communicate(timeout=300)

    assert process.returncode == 2, err
    document = _json(out)
    assert document["error_type"] == "SigningKeyError"
    assert document["error"].startswith(f"Signing key {key}: is not an OpenSSH private key (found not a key)")
    assert (_heads(engine), _ledger_exists(engine), _run_dirs(project)) == (None, False, [])


def test_a_failed_ledger_insert_stops_the_run_before_its_notebook(project, engine):
    with engine.begin() as conn:  # a ledger someone changed by hand: the insert fails on a missing column
        conn.execute(sa.text("CREATE SCHEMA dbrunbook; CREATE TABLE dbrunbook.ledger (run_id text)"))

    result = run_runbook(RUNBOOK, parameters={"dry_run": "false"}, config=project)

    assert (result.outcome, result.exit_status) == ("failed", 1)
    step = result.failing_step
    assert (step["cell"], step["heading"], step["ename"]) == (None, "launcher: ledger row", "LedgerUnavailable")
    assert step["evalue"].startswith("the run was stopped before its notebook ran: ledger start: ProgrammingError")
    assert 'column "runbook" of relation "ledger" does not exist' in step["evalue"]
    assert _heads(engine) is None  # the upgrade never ran
    predicate = _valid(project, result.record_dir)
    assert (predicate["outcome"], predicate["heads_before"], predicate["heads_after"]) == ("failed", {"app": []},
                                                                                            {"app": []})


# --- after the change: a record, or evidence and a ledger row that say how to finish it ---------------------
def test_full_disk_after_the_change_still_ends_with_a_record(project, engine):
    # The check before the run estimates ~1.5 MiB for this runbook; its step 2 then prints 8 MiB.
    process = _cli(project, "run", RUNBOOK, *CHANGE, "-p", "megabytes", "8", "--json", limit=3 * 1024 * 1024)
    out, err = process.communicate(timeout=300)

    assert process.returncode == 1, err
    document = _json(out)
    assert (document["outcome"], document["sealed"], document["exit_status"]) == ("failed", True, 1)
    step = document["failing_step"]
    assert (step["heading"], step["ename"]) == ("## 2. Print", "OSError")
    assert "File too large" in step["evalue"]
    assert _heads(engine) == [HEAD]  # the change happened ...
    run_dir = Path(document["record_dir"])
    predicate = _valid(project, run_dir)  # ... and has a signed record
    assert (predicate["outcome"], predicate["heads_after"]) == ("failed", {"app": [HEAD]})
    assert 0 < (run_dir / protocol.ARTIFACTS_DIR / PARTIAL_NOTEBOOK).stat().st_size <= 3 * 1024 * 1024
    assert _ledger(engine) == [(document["run_id"], "failed", records.statement_sha256(run_dir), None)]


def test_signing_that_fails_after_the_change_is_finished_by_seal(project, engine, capsys):
    key = project.keys_dir / records.OPERATOR_KEY
    good = key.read_bytes()

    def break_the_key_at_signing(message: str) -> None:
        if "signing the record" in message:
            key.chmod(0o600)
            key.write_text("not a key\n")

    result = run_runbook(RUNBOOK, parameters={"dry_run": "false"}, config=project,
                         progress=break_the_key_at_signing)

    assert (result.outcome, result.exit_status, result.sealed) == ("succeeded", 1, False)
    assert result.seal_error.startswith(f"SigningKeyError: Signing key {key}: is not an OpenSSH private key")
    assert _heads(engine) == [HEAD]
    [(run_id, outcome, digest, error)] = _ledger(engine)
    assert (run_id, outcome, digest) == (result.run_id, "succeeded", None)
    assert error == f"record not sealed: {result.seal_error}"
    assert not (result.record_dir / protocol.STATEMENT_FILE).exists()
    [notice] = unfinished.notices(project)
    assert notice == (f"dbrunbook: run {result.run_id} (runbook {RUNBOOK}, target 't', started "
                      f"{json.loads((result.record_dir / protocol.INTENT_FILE).read_text())['started_at']}) has no "
                      f"signed record: its record could not be signed ({result.seal_error}). Finish it with "
                      f"'dbrunbook seal {result.record_dir}'.")
    assert f"finish the record with 'dbrunbook seal {result.record_dir}'" in capsys.readouterr().err

    key.write_bytes(good)
    sealed = seal(result.record_dir, config=project)

    assert (sealed.outcome, sealed.exit_status, sealed.sealed) == ("succeeded", 0, True)
    predicate = _valid(project, result.record_dir)
    assert (predicate["outcome"], predicate["mode"], predicate["heads_after"]) == ("succeeded", "papermill",
                                                                                   {"app": [HEAD]})
    assert _ledger(engine) == [(result.run_id, "succeeded", records.statement_sha256(result.record_dir), None)]
    assert unfinished.notices(project) == []


# --- kills and signals --------------------------------------------------------------------------------------
def test_launcher_kill_9_is_noticed_and_sealed_as_interrupted(project, engine):
    process = _cli(project, "run", RUNBOOK, *CHANGE, "-p", "seconds", "300")
    kernels: list[int] = []
    try:
        run_dir = _wait_until_waiting(project, process)
        kernels = _children(process.pid)
        process.kill()
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        _end(kernels)  # the orphaned kernel would notice its parent is gone; do not wait for it
    assert process.returncode == -signal.SIGKILL
    assert _heads(engine) == [HEAD]
    [(run_id, outcome, digest, _error)] = _ledger(engine)
    assert (run_id, outcome, digest) == (run_dir.name, "running", None)
    _wait_for_no_lock(engine)  # the lock went with the launcher's session

    listed = _cli(project, "list")
    _out, err = listed.communicate(timeout=120)
    assert listed.returncode == 0
    assert (f"dbrunbook: run {run_dir.name} (runbook {RUNBOOK}, target 't', started ") in err
    assert (f"has no signed record: its launcher (pid {process.pid} on {os.uname().nodename}) ended before "
            f"sealing it. Finish it with 'dbrunbook seal {run_dir}'.") in err

    sealing = _cli(project, "seal", str(run_dir))
    out, err = sealing.communicate(timeout=120)
    assert sealing.returncode == 1, err
    assert "outcome:    interrupted" in out
    assert "stopped at: ## 3. Wait: the launcher (pid " in out  # the step it died in, not the last cell
    predicate = _valid(project, run_dir)
    assert (predicate["outcome"], predicate["failing_step"]["heading"]) == ("interrupted", "## 3. Wait")
    assert predicate["heads_after"] == {"app": [HEAD]}
    assert _ledger(engine) == [(run_dir.name, "interrupted", records.statement_sha256(run_dir), None)]
    assert unfinished.notices(project) == []


def _kill_while_waiting(project, how) -> tuple[subprocess.Popen, str, str, Path]:
    process = _cli(project, "run", RUNBOOK, *CHANGE, "-p", "seconds", "300", "--json")
    try:
        run_dir = _wait_until_waiting(project, process)
        how(process)
        out, err = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    return process, out, err, run_dir


def _kill_the_kernel(process: subprocess.Popen) -> None:
    (kernel,) = [pid for pid in _children(process.pid)
                 if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(kernel, signal.SIGKILL)


def test_kernel_kill_9_is_recorded_at_the_step_that_died(project, engine):
    process, out, err, run_dir = _kill_while_waiting(project, _kill_the_kernel)

    assert process.returncode == 1, err
    document = _json(out)
    assert (document["outcome"], document["run_id"]) == ("failed", run_dir.name)
    step = document["failing_step"]
    assert (step["heading"], step["ename"]) == ("## 3. Wait", "DeadKernelError")
    progress = [line.strip() for line in err.splitlines() if line.startswith("  [3/4]")]
    assert progress[0] == "[3/4] 3. Wait ..." and progress[1].startswith("[3/4] FAILED in "), err
    assert _heads(engine) == [HEAD]
    _valid(project, run_dir)
    assert _ledger(engine) == [(run_dir.name, "failed", records.statement_sha256(run_dir), None)]
    assert locking.deployer_lock_holder(engine) is None  # released after signing


@pytest.mark.parametrize("signum, status, ename", [(signal.SIGTERM, 143, "SystemExit"),
                                                    (signal.SIGINT, 130, "KeyboardInterrupt")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_prints_one_object_and_seals_the_run(project, engine, signum, status, ename):
    process, out, err, run_dir = _kill_while_waiting(project, lambda p: p.send_signal(signum))

    assert process.returncode == status, err
    document = _json(out)
    assert (document["outcome"], document["interrupted"], document["exit_status"]) == ("failed", ename, status)
    assert (document["failing_step"]["heading"], document["failing_step"]["ename"]) == ("## 3. Wait", ename)
    assert _heads(engine) == [HEAD]
    _valid(project, run_dir)
    assert _ledger(engine) == [(run_dir.name, "failed", records.statement_sha256(run_dir), None)]
