"""The deployer lock and lock-timeout retries on real PostgreSQL, with the repository's sample migrations.

A "blocker" here is what production has: another connection with an open transaction that read a table the
next migration alters (ACCESS SHARE on ``users``, which ``ALTER TABLE users ADD COLUMN`` must wait for).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import DeployerLockHeld, MigrationFailed
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import open_session
from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.safety import deployer_lock, locking
from tests.projects import ROOT, URL_ENV, write_project

pytestmark = pytest.mark.integration

OPERATOR = "tester@dbrunbook"


@pytest.fixture
def project(tmp_path, database_url, monkeypatch):
    """The sample project on a fresh database, with short lock timeouts and a given retry budget."""
    def make(lock_timeout: str = "200ms", retries: int = 20):
        proj = write_project(tmp_path / "project", database_url)
        text = proj.config_path.read_text().replace('lock_timeout = "2s"',
                                                    f'lock_timeout = "{lock_timeout}"\nretries = {retries}')
        proj.config_path.write_text(text)
        return proj

    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", OPERATOR)
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    return make


@pytest.fixture
def short_lock_wait(monkeypatch):
    """A second run gives up after 0.5 s instead of 5 s: same code path, faster test."""
    monkeypatch.setattr(deployer_lock, "_LOCK_WAIT", 0.5)


def _session(proj, run_id: str, *, lock: bool = True, runbook: str = "apply", record_dir: str = ""):
    return open_session("local", run_id=run_id, record_dir=record_dir, config=proj.config_path, lock=lock,
                        runbook=runbook)


class Blocker:
    """An application transaction that read ``users`` and stays open: it holds ACCESS SHARE until ended."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, connect_args={"application_name": "blocker-test"})
        self.conn = self.engine.connect()
        self.pid = self.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        self.conn.execute(sa.text("SELECT count(*) FROM users"))

    def end(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


def _wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _at_ea90695(proj) -> None:
    config = load_config(proj.config_path)
    migrations.upgrade(config.migration_set("main"), proj.engine, "ea90695")


# --- deployer lock -------------------------------------------------------------------------------------------
def test_second_run_stops_naming_the_first_and_the_lock_is_free_after_finish(project, short_lock_wait):
    proj = project()
    first = _session(proj, "20261123T220501Z-apply-local-aaaaaa")
    assert first.lock.held and first.lock.database == sa.make_url(proj.url).database

    with pytest.raises(DeployerLockHeld) as caught:
        _session(proj, "20261123T220502Z-apply-local-bbbbbb", runbook="rollback")
    err = caught.value
    assert (err.run_id, err.runbook, err.operator, err.pid) == (
        "20261123T220501Z-apply-local-aaaaaa", "apply", OPERATOR, first.lock.pid)
    assert err.since is not None
    assert err.holder.application_name == "dbrunbook:20261123T220501Z-apply-local-aaaaaa:apply:tester@dbru"
    assert str(err).startswith(
        f"Database '{first.lock.database}' on target 'local' is being changed by another dbrunbook run: run "
        f"20261123T220501Z-apply-local-aaaaaa (runbook apply, operator {OPERATOR}), holding it since ")
    assert f"SELECT pg_terminate_backend({first.lock.pid})" in str(err)

    first.finish()
    assert not first.lock.held
    third = _session(proj, "20261123T220503Z-apply-local-cccccc")
    assert third.lock.held
    third.finish()


def test_a_session_without_lock_does_not_take_or_need_it(project, short_lock_wait):
    proj = project()
    holder = _session(proj, "run-holder")
    reader = _session(proj, "run-reader", lock=False)
    assert reader.lock is None
    assert locking.deployer_lock_holder(reader.engine).run_id == "run-holder"
    reader.finish()
    holder.finish()
    assert locking.deployer_lock_holder(proj.engine) is None


def test_a_killed_holder_releases_the_lock_with_its_session(project, short_lock_wait):
    proj = project()
    first = _session(proj, "run-killed")
    with proj.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first.lock.pid}).scalar() is True
    second = _session(proj, "run-after-kill")  # spins until the killed backend is gone
    assert locking.deployer_lock_holder(proj.engine).run_id == "run-after-kill"
    first.finish()  # releasing a lock whose session is gone is not an error
    second.finish()


def test_reopening_the_same_run_in_one_process_hands_the_lock_over(project, short_lock_wait):
    proj = project()
    old = _session(proj, "run-interactive")
    new = _session(proj, "run-interactive")  # an operator re-running the first cell
    assert (old.lock.held, new.lock.held) == (False, True)
    new.finish()


# --- lock-timeout retries -----------------------------------------------------------------------------------
def test_a_blocked_migration_succeeds_after_the_blocker_ends(project, tmp_path):
    proj = project(lock_timeout="200ms", retries=50)
    _at_ea90695(proj)
    blocker = Blocker(proj.url)
    record = tmp_path / "record"
    s = _session(proj, "run-blocked", record_dir=str(record))
    outcome = {}

    def upgrade():
        try:
            outcome["frame"] = s.upgrade("heads", "main", dry_run=False)
        except Exception as err:
            outcome["error"] = err

    worker = threading.Thread(target=upgrade)
    worker.start()
    try:
        _wait_for(lambda: sum(a.outcome == "lock timeout" for a in s.lock_attempts) >= 2, "two lock timeouts")
    finally:
        blocker.end()
        worker.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")

    frame = outcome["frame"]
    assert list(frame["revision"]) == ["a1b2c3d4e5f6", "b7e4f0c2d913"]
    attempts = s.lock_attempts
    assert len(attempts) >= 3 and attempts[-1].outcome == "succeeded"
    timed_out = [a for a in attempts if a.outcome == "lock timeout"]
    assert {a.revision for a in timed_out} == {"b7e4f0c2d913"}
    assert "lock timeout" in timed_out[0].reason
    # The first attempt committed a1b2c3d4e5f6 (its FOREIGN KEY to users needs no lock the reader holds).
    assert attempts[0].applied == ("a1b2c3d4e5f6",)
    for a in timed_out:
        (b,) = a.blockers
        assert (b.pid, b.application_name, b.state) == (blocker.pid, "blocker-test", "idle in transaction")
        assert b.query == "SELECT count(*) FROM users" and b.xact_age_seconds > 0
        assert a.pause is not None and a.pause > 0
    assert list(frame.attrs["attempts"]["outcome"]) == [a.outcome for a in attempts]

    saved = json.loads((record / ARTIFACTS_DIR / "attempts.json").read_text())
    assert [a["outcome"] for a in saved] == [a.outcome for a in attempts]
    assert saved[1]["blockers"][0]["pid"] == blocker.pid
    config = load_config(proj.config_path)
    assert migrations.current(config.migration_set("main"), proj.engine) == ("b7e4f0c2d913",)
    s.finish()


def test_a_migration_that_stays_blocked_gives_up_at_the_last_completed_revision(project, tmp_path):
    proj = project(lock_timeout="100ms", retries=2)
    _at_ea90695(proj)
    blocker = Blocker(proj.url)
    record = tmp_path / "record"
    s = _session(proj, "run-gives-up", record_dir=str(record))
    try:
        with pytest.raises(MigrationFailed) as caught:
            s.upgrade("heads", "main", dry_run=False)
    finally:
        blocker.end()
    err = caught.value
    assert (err.migration_set, err.revision, err.completed) == ("main", "b7e4f0c2d913", ("a1b2c3d4e5f6",))
    message = str(err)
    assert message.startswith("Migration set 'main' failed at revision b7e4f0c2d913: canceling statement due "
                              "to lock timeout, 3 attempts in ")
    assert f"(retries = 2); blocked by pid {blocker.pid} 'blocker-test' (idle in transaction" in message
    assert "The database is at a1b2c3d4e5f6." in message
    assert [a.outcome for a in err.attempts] == ["lock timeout"] * 3
    assert [s.revision for s in err.steps] == ["a1b2c3d4e5f6"]
    assert isinstance(err.__cause__, MigrationFailed)

    saved = json.loads((record / ARTIFACTS_DIR / "attempts.json").read_text())
    assert len(saved) == 3 and saved[-1]["pause"] is None
    config = load_config(proj.config_path)
    assert migrations.current(config.migration_set("main"), proj.engine) == ("a1b2c3d4e5f6",)
    s.finish()


def test_a_failure_that_is_not_a_lock_timeout_is_not_retried(project):
    proj = project(retries=5)
    _at_ea90695(proj)
    with proj.engine.begin() as conn:  # b7e4f0c2d913 adds users.full_name: make that fail
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN full_name text"))
    s = _session(proj, "run-other-failure")
    with pytest.raises(MigrationFailed) as caught:
        s.upgrade("heads", "main", dry_run=False)
    assert 'column "full_name" of relation "users" already exists' in str(caught.value)
    assert [a.outcome for a in s.lock_attempts] == ["failed"]
    s.finish()


# --- through the launcher -------------------------------------------------------------------------------------
def test_two_apply_runs_at_once_exactly_one_changes_the_database(project, monkeypatch):
    """Run 1 (a `dbrunbook run` process) holds the lock while it waits on a blocker; run 2 stops at the guard."""
    proj = project(lock_timeout="200ms", retries=200)
    _at_ea90695(proj)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    blocker = Blocker(proj.url)
    env = dict(os.environ)
    first = subprocess.Popen(
        [sys.executable, "-m", "dbrunbook.cli", "run", "apply", "-t", "local", "-p", "dry_run", "false", "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Run 1 holds the deployer lock and its ALTER TABLE users waits on the blocker (retrying).
        _wait_for(lambda: _waiting_on(proj.engine, blocker.pid), "run 1 to wait on the blocker", limit=120)
        holder = locking.deployer_lock_holder(proj.engine)
        second = run_runbook("apply", target="local", parameters={"dry_run": "false"},
                             config=load_config(proj.config_path))
    finally:
        blocker.end()
        out, err = first.communicate(timeout=180)
    first_result = json.loads(out)
    assert (first_result["outcome"], first_result["exit_status"]) == ("succeeded", 0), err
    assert holder.run_id == first_result["run_id"] and holder.runbook == "apply"

    assert (second.outcome, second.exit_status) == ("stopped-at-guard", 3)
    assert second.failing_step["ename"] == "DeployerLockHeld"
    assert (f"is being changed by another dbrunbook run: run {first_result['run_id']} (runbook apply, "
            f"operator {OPERATOR})") in second.failing_step["evalue"]
    assert second.heads_after == second.heads_before  # run 2 changed nothing
    assert first_result["heads_after"]["main"] == ["b7e4f0c2d913"]
    assert first_result["heads_before"]["main"] == ["ea90695"]


def _waiting_on(engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE :p = ANY(pg_blocking_pids(pid)) "
            "AND application_name LIKE 'dbrunbook:%'"), {"p": pid}).scalar())
