"""Backfills on a real PostgreSQL: keyset batches, a pause on a health signal, resume after SIGKILL with every
row changed exactly once, a second runner refused, and apply's SET NOT NULL guard.

The table has a ``counter`` column the backfill's SET increments: a batch applied twice shows as 2.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from dbrunbook.chain.migrations import SqlStep
from dbrunbook.errors import BackfillLockHeld, BackfillNotComplete, BackfillUnfinished
from dbrunbook.execution.session import Preview, open_session
from dbrunbook.procedures import backfill
from dbrunbook.procedures.backfill_guard import require_backfills_complete
from tests.projects import ROOT, URL_ENV, write_project

BACKFILL_TOML = """
[backfills.items_score]
table = "items"
key = "id"
set = "score = id % 7, counter = counter + 1"
where = "score IS NULL"
"""


@pytest.fixture
def project(tmp_path, database_url, monkeypatch):
    """A project whose database has ``items`` (id, score NULL, counter 0) and the backfill items_score."""
    proj = write_project(tmp_path / "project", database_url)
    with proj.config_path.open("a", encoding="utf-8") as f:
        f.write(BACKFILL_TOML)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    yield proj
    proj.engine.dispose()


def fill(proj, rows: int) -> None:
    with proj.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id bigint PRIMARY KEY, score int, counter int NOT NULL DEFAULT 0)"))
        conn.execute(sa.text("INSERT INTO items (id) SELECT g FROM generate_series(1, :n) g"), {"n": rows})


def counts(proj) -> dict:
    with proj.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*) FILTER (WHERE score IS NULL) AS todo, count(*) FILTER (WHERE counter = 1) AS once, "
            "count(*) FILTER (WHERE counter > 1) AS twice, count(*) FILTER (WHERE score <> id % 7) AS wrong "
            "FROM items")).mappings().one()
    return dict(row)


def session(run_id: str, *, lock: bool = True):
    return open_session("local", run_id=run_id, lock=lock, runbook="backfill")


def test_keyset_batches_change_every_row_once_and_record_progress(project):
    fill(project, 2000)
    s = session("run-batches")
    try:
        spec = backfill.declared(s, "items_score")
        result = backfill.run_backfill(s, spec, batch_size=100, batch_seconds=10, dry_run=False)
        backfill.finish_backfill(s, spec, result)
    finally:
        s.finish()
    assert counts(project) == {"todo": 0, "once": 2000, "twice": 0, "wrong": 0}
    assert (result.status, result.rows, result.remaining) == ("complete", 2000, 0)
    assert len(result.batches) >= 2 and sum(b.rows for b in result.batches) == 2000
    ends = [int(b.cursor[0]) for b in result.batches]
    assert ends == sorted(ends) and ends[-1] == 2000  # keyset: each batch starts after the last one's key
    state = backfill.progress(project.engine, "items_score")
    assert (state["status"], state["rows_changed"], state["batches"], state["cursor"]) == \
        ("complete", 2000, len(result.batches), ["2000"])
    assert state["run_ids"] == ["run-batches"]


def test_batches_rest_between_them_and_write_back_their_pages_as_they_go(project):
    fill(project, 900)
    s = session("run-rests")
    try:
        spec = backfill.declared(s, "items_score")
        result = backfill.run_backfill(s, spec, batch_size=300, batch_seconds=10, rest_seconds=0.2, dry_run=False)
    finally:
        s.finish()
    assert counts(project) == {"todo": 0, "once": 900, "twice": 0, "wrong": 0}
    assert len(result.batches) >= 2
    assert result.rest_seconds == pytest.approx(0.2 * len(result.batches))
    starts = [dt.datetime.fromisoformat(b.started_at) for b in result.batches]
    gaps = [(b - a).total_seconds() - first.seconds
            for a, b, first in zip(starts, starts[1:], result.batches, strict=False)]
    assert all(gap >= 0.19 for gap in gaps), gaps  # each batch starts after the last one's rest
    assert result.write_back == "256kB"  # the target's backfill_flush_after (32 blocks), as the server shows it


def test_dry_run_changes_nothing(project):
    fill(project, 300)
    s = session("run-dry", lock=False)
    try:
        spec = backfill.declared(s, "items_score")
        todo = backfill.estimate(s, spec)
        result = backfill.run_backfill(s, spec, dry_run=True, estimate_rows=todo.attrs["rows_to_do"])
    finally:
        s.finish()
    assert todo.attrs["rows_to_do"] == 300 and todo.loc[0, "status"] == "never run"
    assert (result.status, result.batches) == ("dry run", [])
    assert counts(project)["todo"] == 300
    assert backfill.progress(project.engine, "items_score") is None


def test_pauses_while_a_session_waits_for_a_lock_on_the_table(project):
    fill(project, 500)
    holder, waiter = project.engine.connect(), project.engine.connect()
    holder.execute(sa.text("SELECT id FROM items WHERE id = 1 FOR UPDATE"))
    waiter_pid = waiter.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    waiter.commit()
    wait = threading.Thread(target=lambda: (waiter.execute(sa.text("SELECT id FROM items WHERE id = 1 FOR UPDATE")),
                                            waiter.commit()))
    wait.start()
    deadline = time.monotonic() + 10
    with project.engine.connect() as probe:
        while not probe.execute(sa.text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                                {"p": waiter_pid}).scalar():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    threading.Timer(1.5, holder.commit).start()  # the waiter gets its lock 1.5 s from now
    s = session("run-pause")
    try:
        result = backfill.run_backfill(s, backfill.declared(s, "items_score"), batch_size=1000, dry_run=False)
    finally:
        s.finish()
        wait.join(5)
        holder.close()
        waiter.close()
    assert len(result.pauses) == 1
    pause = result.pauses[0]
    assert pause.before_batch == 1 and pause.seconds >= 1.0
    assert any(r.startswith("lock waiters: 1 session(s) wait for locks on the table: pid " + str(waiter_pid))
               for r in pause.reasons), pause.reasons
    assert counts(project) == {"todo": 0, "once": 500, "twice": 0, "wrong": 0}



def test_waits_for_the_servers_checkpoint_rather_than_force_one(project, database_url):
    """A batch whose WAL would pass backfill_checkpoint_percent of the server's checkpoint distance waits for a
    checkpoint (here one the test asks for 1.5 s later) instead of making the server start one itself."""
    fill(project, 200_000)
    with project.engine.connect() as conn:
        settings = conn.execute(sa.text(
            "SELECT pg_size_bytes(current_setting('max_wal_size'))::float8 AS max_wal, "
            "current_setting('checkpoint_completion_target')::float8 AS completion")).one()
    distance = settings.max_wal / (1 + settings.completion)
    if distance > 2e9:  # 1% of it must be less than what one batch of 100,000 rows writes
        pytest.skip(f"max_wal_size {settings.max_wal:.0f} B is too large for this test")
    text = project.config_path.read_text()
    project.config_path.write_text(text.replace("[targets.local]\n",
                                                "[targets.local]\nbackfill_checkpoint_percent = 1\n"))
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            try:
                conn.execute(sa.text("CHECKPOINT"))  # the WAL since the last checkpoint starts near 0
            except sa.exc.DBAPIError as err:
                pytest.skip(f"this role cannot CHECKPOINT: {err.orig}")
        timer = threading.Timer(1.5, lambda: admin.connect().execute(sa.text("CHECKPOINT")))
        s = session("run-checkpoint")
        try:
            spec = backfill.declared(s, "items_score")
            timer.start()
            result = backfill.run_backfill(s, spec, batch_size=100_000, batch_seconds=30, dry_run=False)
        finally:
            s.finish()
            timer.join(10)
    finally:
        admin.dispose()
    assert s.target.backfill_checkpoint_percent == 1
    assert counts(project) == {"todo": 0, "once": 200_000, "twice": 0, "wrong": 0}
    assert result.batches[0].wal_bytes > 0.01 * distance  # one batch writes more than the allowance
    assert len(result.pauses) == 1 and result.pauses[0].before_batch == 2, result.pauses
    assert result.pauses[0].seconds >= 1.0
    assert result.pauses[0].reasons[0].startswith("checkpoint: "), result.pauses[0].reasons
    assert "max_wal_size" in result.pauses[0].reasons[0]


RUNNER = """
import sys
from dbrunbook.procedures import backfill
from dbrunbook.execution.session import open_session
s = open_session("local", run_id="run-killed", lock=True, runbook="backfill")
spec = backfill.declared(s, "items_score")
backfill.run_backfill(s, spec, batch_size=50, batch_seconds=0.01, dry_run=False)
"""


def test_a_run_killed_mid_way_resumes_and_changes_every_row_exactly_once(project):
    fill(project, 60000)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    child = subprocess.Popen([sys.executable, "-c", RUNNER], env=env, cwd=str(project.root),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            state = backfill.progress(project.engine, "items_score")
            if state and state["batches"] >= 5:
                break
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    killed = backfill.progress(project.engine, "items_score")
    done = counts(project)
    assert killed["status"] == "running" and 0 < killed["rows_changed"] < 60000
    assert done["once"] == killed["rows_changed"] and done["twice"] == 0  # committed batch = progress row
    s = session("run-resume")
    try:
        spec = backfill.declared(s, "items_score")
        result = backfill.run_backfill(s, spec, batch_size=5000, batch_seconds=5, dry_run=False)
    finally:
        s.finish()
    assert result.resumed_from == tuple(killed["cursor"])
    assert result.rows == 60000 - killed["rows_changed"]
    assert counts(project) == {"todo": 0, "once": 60000, "twice": 0, "wrong": 0}
    state = backfill.progress(project.engine, "items_score")
    assert (state["status"], state["rows_changed"], state["run_ids"]) == ("complete", 60000,
                                                                          ["run-killed", "run-resume"])


STOPPABLE = """
from dbrunbook.procedures import backfill
from dbrunbook.execution.session import open_session
s = open_session("local", run_id="run-stopped", lock=True, runbook="backfill")
result = backfill.run_backfill(s, backfill.declared(s, "items_score"), batch_size=50, batch_seconds=0.01,
                               dry_run=False)
print(result.stopped, result.rows, len(result.batches), sep="|")
"""


def test_sigterm_stops_after_the_current_batch_and_the_run_ends_cleanly(project):
    fill(project, 60000)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    child = subprocess.Popen([sys.executable, "-c", STOPPABLE], env=env, cwd=str(project.root),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((state := backfill.progress(project.engine, "items_score")) and state["batches"] >= 3):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    stopped, rows, batches = out.strip().splitlines()[-1].split("|")
    assert stopped == f"stopped by SIGTERM after batch {batches}"
    assert "SIGTERM received: stopping after the current batch" in err
    state = backfill.progress(project.engine, "items_score")
    assert (state["status"], state["rows_changed"], state["batches"]) == ("running", int(rows), int(batches))
    assert counts(project)["once"] == int(rows) and counts(project)["twice"] == 0


def test_a_second_runner_is_refused_naming_the_first(project):
    fill(project, 100)
    first = session("run-first", lock=False)
    second = session("run-second")
    held = backfill._take_lock(first, "items_score")
    try:
        with pytest.raises(BackfillLockHeld) as err:
            backfill.run_backfill(second, backfill.declared(second, "items_score"), dry_run=False)
    finally:
        held[1].close()
        held[0].dispose()
        first.finish()
        second.finish()
    assert err.value.name == "items_score"
    assert "run run-first (runbook backfill items_score" in str(err.value)
    assert str(err.value).startswith("Backfill 'items_score' of database '")
    assert "Nothing was changed" in str(err.value)
    assert counts(project)["todo"] == 100


def test_max_rows_stops_and_finish_says_what_is_left(project):
    fill(project, 1000)
    s = session("run-max")
    try:
        spec = backfill.declared(s, "items_score")
        result = backfill.run_backfill(s, spec, batch_size=100, max_rows=250, dry_run=False)
        with pytest.raises(BackfillUnfinished) as err:
            backfill.finish_backfill(s, spec, result)
    finally:
        s.finish()
    assert result.rows == 250 and result.status == "running"
    assert err.value.remaining == 750
    assert str(err.value).startswith("Backfill 'items_score': 750 row(s) of items still match its WHERE "
                                     "(max_rows 250 reached)")


def _preview() -> Preview:
    step = SqlStep(revision="r2", down_revision=("r1",), message="score not null",
                   sql="ALTER TABLE items ALTER COLUMN score SET NOT NULL;\n")
    return Preview(steps={"main": [step]})


def test_apply_guard_refuses_set_not_null_until_the_backfill_is_complete(project):
    fill(project, 200)
    s = session("run-guard")
    try:
        with pytest.raises(BackfillNotComplete) as err:
            require_backfills_complete(s, _preview())
        assert (err.value.name, err.value.table, err.value.column, err.value.status, err.value.remaining) == \
            ("items_score", "items", "score", "never run", 200)
        assert str(err.value).startswith("A pending migration sets items.score NOT NULL, but backfill "
                                         "'items_score' of that column is never run, 200 row(s) still match")
        dry = require_backfills_complete(s, _preview(), dry_run=True)
        assert dry.loc[0, "ok"] == False  # noqa: E712 - a numpy bool, compared by value as written
        backfill.run_backfill(s, backfill.declared(s, "items_score"), dry_run=False)
        ok = require_backfills_complete(s, _preview())
        assert ok[["backfill", "status", "remaining"]].iloc[0].tolist() == ["items_score", "complete", 0]
        with project.engine.begin() as conn:  # a row arrives without the new value: not complete any more
            conn.execute(sa.text("INSERT INTO items (id) VALUES (5000)"))
        with pytest.raises(BackfillNotComplete) as again:
            require_backfills_complete(s, _preview())
        assert (again.value.status, again.value.remaining) == ("not complete", 1)
    finally:
        s.finish()


ALEMBIC_TOML = """
[project]
outputs = "outputs"
state_dir = "state"

[targets.local]
url_env = "{url_env}"
lock_timeout = "2s"

[migration_sets.bf]
alembic_ini = "{ini}"

[backfills.items_score]
table = "items"
key = "id"
set = "score = id % 7, counter = counter + 1"
where = "score IS NULL"
migration_set = "bf"
revision = "0001"
"""


def test_apply_guard_on_real_alembic_sql_then_the_upgrade_goes_through(tmp_path, database_url, monkeypatch):
    from dbrunbook.chain import migrations

    ini = ROOT / "tests" / "fixtures" / "alembic_projects" / "backfill_not_null" / "alembic.ini"
    config_path = tmp_path / "dbrunbook.toml"
    config_path.write_text(ALEMBIC_TOML.format(url_env=URL_ENV, ini=ini), encoding="utf-8")
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(config_path))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    s = session("run-alembic")
    try:
        migrations.upgrade(s.config.migration_set("bf"), s.engine, "0001")
        with s.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO items (id) SELECT g FROM generate_series(1, 300) g"))
        preview = s.preview("heads", "bf", save=False)
        assert [step.revision for step in preview.steps["bf"]] == ["0002"]
        with pytest.raises(BackfillNotComplete) as err:
            require_backfills_complete(s, preview)
        assert (err.value.table, err.value.column, err.value.remaining) == ("items", "score", 300)
        backfill.run_backfill(s, backfill.declared(s, "items_score"), batch_size=64, dry_run=False)
        assert require_backfills_complete(s, preview)["ok"].tolist() == [True]
        s.upgrade("heads", "bf", dry_run=False)
        with s.engine.connect() as conn:
            nullable = conn.execute(sa.text("SELECT is_nullable FROM information_schema.columns "
                                            "WHERE table_name = 'items' AND column_name = 'score'")).scalar()
    finally:
        s.finish()
    assert nullable == "NO"


def test_a_batch_that_times_out_on_a_row_lock_is_retried_and_applied_once(project, capsys):
    fill(project, 400)
    s = session("run-retry")
    spec = backfill.declared(s, "items_score")
    holder = project.engine.connect()
    holder.execute(sa.text("SELECT id FROM items WHERE id = 10 FOR UPDATE"))  # idle in transaction: no waiter
    waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND query LIKE 'UPDATE \"items\"%'")

    def release_after_one_timeout() -> None:  # the batch waits (lock_timeout 2s), gives up, then the row is free
        with project.engine.connect() as probe:
            for want in (1, 0):
                deadline = time.monotonic() + 30
                while probe.execute(waiting).scalar() != want and time.monotonic() < deadline:
                    probe.rollback()
                    time.sleep(0.02)
                probe.rollback()
        holder.commit()

    releaser = threading.Thread(target=release_after_one_timeout)
    releaser.start()
    try:
        result = backfill.run_backfill(s, spec, batch_size=1000, dry_run=False)
    finally:
        s.finish()
        releaser.join(35)
        holder.close()
    assert result.batches[0].retries >= 1 and result.pauses == []
    assert "backfill 'items_score' batch 1: lock timeout, attempt 1 of 6" in capsys.readouterr().out
    assert counts(project) == {"todo": 0, "once": 400, "twice": 0, "wrong": 0}
