"""The deployer lock covers the whole run, and the library refuses to change a database without it.

The launcher takes the lock before it reads the heads "before" and writes the ledger row, and releases it
after it read the heads "after" and signed; the kernel borrows it (the launcher names its session), and
``Session.upgrade/downgrade/stamp(dry_run=False)`` ask the database that their run holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import DeployerLockHeld, DeployerLockRequired
from dbrunbook.execution.session import open_session
from dbrunbook.safety import deployer_lock, locking
from tests.projects import ROOT, URL_ENV, trust_operator, write_project

pytestmark = pytest.mark.integration

OPERATOR = "tester@dbrunbook"
HEADS = {"main": ["b7e4f0c2d913"], "ai": ["cdf6709a3b1e"]}


@pytest.fixture
def proj(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", OPERATOR)
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    monkeypatch.delenv(locking.LAUNCHER_LOCK_ENV, raising=False)
    monkeypatch.setattr(deployer_lock, "_LOCK_WAIT", 0.5)
    project = write_project(tmp_path / "project", database_url)
    yield project
    project.engine.dispose()


def _session(proj, run_id: str, *, lock: bool):
    return open_session("local", run_id=run_id, config=proj.config_path, lock=lock, runbook="apply")


def _heads(proj, name: str = "main") -> tuple[str, ...]:
    return migrations.current(load_config(proj.config_path).migration_set(name), proj.engine)


# --- the library enforces the lock ------------------------------------------------------------------------
def test_a_session_without_the_lock_cannot_change_the_database(proj):
    s = _session(proj, "run-no-lock", lock=False)
    database = sa.make_url(proj.url).database
    try:
        for call, action in [(lambda: s.upgrade("heads", "main", dry_run=False), "upgrade"),
                             (lambda: s.downgrade("-1", "main", dry_run=False), "downgrade"),
                             (lambda: s.stamp("heads", "main", dry_run=False), "stamp")]:
            with pytest.raises(DeployerLockRequired) as caught:
                call()
            assert str(caught.value) == (
                f"Session.{action}(dry_run=False) would change database '{database}' on target 'local', but run "
                f"run-no-lock did not take the deployer lock. Nothing was changed. Change a database only "
                f"under its deployer lock: run a runbook with 'dbrunbook run' (the launcher takes it), or "
                f"open the session with open_session('local', run_id=..., lock=True).")
        assert len(s.upgrade("heads", "main", dry_run=True)) == 10  # a dry run needs no lock
        assert _heads(proj) == ()
    finally:
        s.finish()


def test_a_session_whose_lock_session_ended_cannot_change_the_database(proj):
    s = _session(proj, "run-lost-lock", lock=True)
    try:
        with proj.engine.connect() as conn:  # an administrator ends the lock's session
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": s.lock.pid}).scalar()
        with pytest.raises(DeployerLockRequired) as caught:
            s.upgrade("heads", "main", dry_run=False)
        assert f"but run run-lost-lock lost its deployer lock (session pid {s.lock.pid} ended; " in str(caught.value)
        assert _heads(proj) == ()
    finally:
        s.finish()


def test_the_kernel_borrows_the_launchers_lock_for_its_run_only(proj, monkeypatch):
    engine = proj.engine
    launcher = locking.acquire_deployer_lock(engine, run_id="run-launched", runbook="apply", target="local")
    # The kernel is another process: this one must not hand the launcher's lock over to a new session.
    deployer_lock._HELD.discard(launcher)
    try:
        # Same run id but no word from the launcher: a name alone does not borrow the lock.
        with pytest.raises(DeployerLockHeld):
            _session(proj, "run-launched", lock=True)
        monkeypatch.setenv(locking.LAUNCHER_LOCK_ENV, locking.launcher_lock_env(launcher))
        with pytest.raises(DeployerLockHeld) as caught:
            _session(proj, "run-other", lock=True)
        assert caught.value.run_id == "run-launched"

        kernel = _session(proj, "run-launched", lock=True)
        assert (kernel.lock.borrowed, kernel.lock.holder_pid) == (True, launcher.pid)
        steps = kernel.upgrade("heads", "main", dry_run=False)
        assert list(steps["revision"])[-1] == "b7e4f0c2d913"
        kernel.finish()  # the kernel's last cell: the launcher still holds the lock
        assert locking.deployer_lock_holder(engine).pid == launcher.pid
    finally:
        launcher.release()
    assert _heads(proj) == ("b7e4f0c2d913",)
    assert locking.deployer_lock_holder(engine) is None


# --- the launcher holds it from "before" to signing ---------------------------------------------------------
@pytest.mark.e2e
def test_three_concurrent_applies_change_once_and_verify_finds_nothing(proj):
    trust_operator(proj.config_path)  # one key, trusted before the three runs
    env = {**os.environ, "DBRUNBOOK_CONFIG": str(proj.config_path)}
    command = [sys.executable, "-m", "dbrunbook.cli", "run", "apply", "-t", "local", "-p", "dry_run", "false",
               "--json"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    finished = [(run.communicate(timeout=600), run.returncode) for run in runs]
    documents = [(json.loads(out), status, err) for (out, err), status in finished]

    winners = [d for d, status, _err in documents if status == 0]
    losers = [(d, status) for d, status, _err in documents if status != 0]
    # Exactly one run changes the database. A run that spun on the lock (up to locking._LOCK_WAIT) until the
    # changer was done then finds nothing to do: a success that claims no change.
    changers = [d for d in winners if d["heads_before"] != d["heads_after"]]
    assert len(changers) == 1, [(status, err[-2000:]) for _d, status, err in documents]
    (winner,) = changers
    assert (winner["outcome"], winner["heads_before"], winner["heads_after"]) == (
        "succeeded", {"main": [], "ai": []}, HEADS)
    waited = [d for d in winners if d is not winner]
    assert [(d["heads_before"], d["heads_after"]) for d in waited] == [(HEADS, HEADS)] * len(waited)
    assert len(waited) + len(losers) == 2
    for loser, status in losers:
        assert (status, loser["outcome"], loser["exit_status"]) == (3, "stopped-at-guard", 3)
        step = loser["failing_step"]
        assert (step["heading"], step["ename"]) == ("launcher: deployer lock", "DeployerLockHeld")
        assert any(f"is being changed by another dbrunbook run: run {w['run_id']} (runbook apply, operator "
                   f"{OPERATOR})" in step["evalue"] for w in winners), step["evalue"]
        assert loser["heads_before"] == loser["heads_after"] == {}  # saw nothing, claims nothing

    with proj.engine.connect() as conn:  # exactly one run changed the database
        ledger = conn.execute(sa.text("SELECT run_id, outcome, heads_before, heads_after FROM dbrunbook.ledger"
                                      )).all()
        versions = conn.execute(sa.text("SELECT (SELECT array_agg(version_num) FROM alembic_version), "
                                        "(SELECT array_agg(version_num) FROM alembic_version_ai)")).one()
    assert sorted(ledger) == sorted([(winner["run_id"], "succeeded", {"main": [], "ai": []}, HEADS)]
                                    + [(d["run_id"], "succeeded", HEADS, HEADS) for d in waited])
    assert tuple(versions) == (HEADS["main"], HEADS["ai"])

    verify = subprocess.run([sys.executable, "-m", "dbrunbook.cli", "verify", "-t", "local"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.rstrip().endswith("3 of 3 records valid; ledger cross-checked for 1 database(s)."), \
        verify.stdout
