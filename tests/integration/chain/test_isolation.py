"""Scratch runs in a process of their own, and a baseline of create_all tables, on a real PostgreSQL.

* settings_at_import (the class of prefect): its settings module reads the URL variable once, when first
  imported; after a run on the target, an in-process run of env.py on a scratch database connects to the
  target (refused as DialectMismatch). ``isolation.call`` runs it in a fresh process that sees the scratch URL.
* create_all_baseline (the class of mlflow): revision 1 alters a table that only ``create_all`` of the
  initial models creates; ``baseline`` on the set builds it on each empty scratch database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dbrunbook import safety
from dbrunbook.chain import capture, isolation, migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError, DialectMismatch, MigrationFailed, RevisionNotFound
from dbrunbook.execution.session import open_session
from dbrunbook.postgres import db
from dbrunbook.procedures import authoring
from tests.integration.chain import test_real_projects as real
from tests.integration.chain.test_real_projects import project, run, write_config

cli_project, fresh_importapp = real.cli_project, real.fresh_importapp  # their fixtures, used here too

pytestmark = pytest.mark.integration

S1A, S1B = "s1a000000001", "s1b000000002"
CB1, CB2 = "cb0000000001", "cb0000000002"


def settings_set(**kw) -> MigrationSet:
    return project("settings_at_import", url_env="IMPORTAPP_DATABASE_URL", driver="psycopg2",
                   env={"IMPORTAPP_TABLE_PREFIX": "shop"}, **kw)


@pytest.fixture
def second_database(pg_admin_url):
    """Another empty database on the same server: the scratch database of these tests."""
    name = f"t_scratch_{os.urandom(5).hex()}"
    db.create_database(pg_admin_url, name)
    engine = db.make_engine(db.with_database(pg_admin_url, name), run_id="t-iso", poolclass=NullPool)
    yield engine
    engine.dispose()
    db.drop_database(pg_admin_url, name)


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def test_a_second_database_in_the_same_process_is_refused_and_in_its_own_process_is_migrated(
        database_url, second_database, fresh_importapp, monkeypatch):
    mset = settings_set()
    # As the launcher and the kernel do before any of the project's code is imported.
    monkeypatch.setenv("IMPORTAPP_DATABASE_URL", database_url.replace("+psycopg:", "+psycopg2:"))
    target = db.make_engine(database_url, run_id="t-iso", poolclass=NullPool)
    try:
        assert [s.revision for s in migrations.upgrade(mset, target, S1A)] == [S1A]
        # What the kernel saw before: the application keeps the target's URL for the rest of the process.
        with pytest.raises(DialectMismatch, match="did not use the target database"):
            migrations.upgrade(mset, second_database, "heads")
        assert sa.inspect(second_database).get_table_names() == []
        done = isolation.call(migrations.upgrade, mset, second_database, "heads")
        assert [s.revision for s in done] == [S1A, S1B]
        assert scalar(second_database, "SELECT version_num FROM alembic_version_settings") == S1B
        assert [c["name"] for c in sa.inspect(second_database).get_columns("shop_account")] == ["id", "email"]
        assert scalar(target, "SELECT version_num FROM alembic_version_settings") == S1A  # untouched
    finally:
        target.dispose()


def test_errors_come_back_with_their_class_and_data(second_database, fresh_importapp):
    mset = settings_set()
    with pytest.raises(RevisionNotFound) as err:
        isolation.call(migrations.upgrade, mset, second_database, "feedfacecafe")
    assert err.value.revision == "feedfacecafe"
    assert "feedfacecafe" in str(err.value) and "settings_at_import" in str(err.value)
    # A migration that fails keeps revision and completed (what callers read).
    with second_database.begin() as conn:
        conn.execute(sa.text("CREATE TABLE shop_account (id int)"))
    with pytest.raises(MigrationFailed) as failed:
        isolation.call(migrations.upgrade, mset, second_database, "heads")
    assert failed.value.revision == S1A and failed.value.completed == ()
    assert 'relation "shop_account" already exists' in failed.value.reason


def _exit_hard(mset, engine):
    os._exit(7)


def test_a_child_that_dies_is_a_clear_error(second_database):
    with pytest.raises(isolation.IsolatedRunFailed) as err:
        isolation.call(_exit_hard, settings_set(), second_database)
    assert err.value.returncode == 7
    assert "ended with exit status 7 and no result" in str(err.value)


def test_the_scratch_url_password_is_never_on_the_command_line_or_left_behind(second_database, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    real_popen = isolation.subprocess.Popen

    def spy(argv, **kw):
        seen.append(argv)
        return real_popen(argv, **kw)

    monkeypatch.setattr(isolation.subprocess, "Popen", spy)
    engine = sa.create_engine(second_database.url.set(password="s3cret-pw"), poolclass=NullPool)
    with pytest.raises(isolation.IsolatedRunFailed):
        isolation.call(_exit_hard, settings_set(), engine)
    assert seen and not any("s3cret-pw" in part for part in seen[0])
    assert list(tmp_path.iterdir()) == []


def test_sets_without_url_env_run_in_process():
    calls = []
    assert isolation.call(lambda m, e, x: calls.append((m.name, e, x)) or "here", project("merge_points"),
                          "engine", 1) == "here"
    assert calls == [("merge_points", "engine", 1)]


def test_transported_errors_rebuild_our_classes_and_name_others():
    failed = MigrationFailed("s", "r2", ("r1",), "boom")
    rebuilt = isolation._rebuilt(pickle.loads(pickle.dumps(isolation._transportable(failed))))
    assert type(rebuilt) is MigrationFailed and str(rebuilt) == str(failed)
    assert (rebuilt.revision, rebuilt.completed, rebuilt.reason) == ("r2", ("r1",), "boom")
    other = isolation._rebuilt(isolation._transportable(sa.exc.ArgumentError("bad argument")))
    assert str(other) == "ArgumentError: bad argument"


# --- through the procedures ---------------------------------------------------------------------------------
@pytest.fixture
def settings_session(tmp_path, database_url, monkeypatch, fresh_importapp):
    config = write_config(tmp_path / "project", ["settings_at_import"])
    monkeypatch.setenv("DBRUNBOOK_TEST_REAL_URL", database_url)
    s = open_session("local", run_id="t-iso", record_dir=str(tmp_path / "run"), config=config.path, lock=False,
                     runbook="stamp")
    yield s
    s.engine.dispose()


def test_stamp_check_and_review_after_a_run_on_the_target(settings_session):
    s = settings_session
    mset = s.config.migration_set("settings_at_import")
    migrations.upgrade(mset, s.engine, "heads")  # the application now holds the target's URL
    check = safety.stamp_check(s, S1B, "settings_at_import")
    assert (check.checked, check.truthful, check.reason) == (True, True, "")
    assert "shop_account" in {t.split(".")[-1] for t in check.tables}
    lie = safety.stamp_check(s, S1A, "settings_at_import")
    assert (lie.checked, lie.truthful) == (True, False)
    assert {d["object"] for d in lie.differences} == {"public.shop_account.email"}
    scratch = authoring.scratch(s)
    try:
        trip = scratch.round_trip(authoring.revision_source(s, S1B, "settings_at_import"))
        stairs = scratch.stairway(mset)
    finally:
        scratch.close()
    assert trip.ok, trip.step.as_row()
    assert trip.prepared == f"database prepared at {S1A}"
    assert stairs.ok, stairs.as_frame().to_dict("records")
    assert [st.revision for st in stairs.steps] == [S1A, S1B]


def test_capture_after_a_run_on_the_target(settings_session):
    s = settings_session
    mset = s.config.migration_set("settings_at_import")
    migrations.upgrade(mset, s.engine, S1A)
    steps = [dataclasses.replace(st, online_only=True, sql="", reason="test: treated as online-only")
             for st in migrations.offline_sql(mset, S1A, "heads")]
    captured = capture.capture_steps(s, mset, steps, "heads")
    assert [(st.revision, st.source, st.capture_error) for st in captured] == [(S1B, "captured", "")]
    assert "ALTER TABLE shop_account ADD COLUMN email" in captured[0].sql
    assert scalar(s.engine, "SELECT version_num FROM alembic_version_settings") == S1A


# --- baseline ---------------------------------------------------------------------------------------------------
def baseline_set(**kw) -> MigrationSet:
    return project("create_all_baseline", **kw)


def test_without_a_baseline_the_chain_cannot_start_on_an_empty_database(second_database):
    trip = authoring.round_trip(baseline_set(), second_database, CB2)
    assert not trip.ok
    assert 'relation "legacy" does not exist' in trip.step.error


@pytest.mark.parametrize("baseline", ["initial_models.py:Base", "initial_models.py:create"])
def test_a_baseline_builds_the_create_all_tables_first(second_database, baseline):
    mset = baseline_set(baseline=baseline)
    trip = authoring.round_trip(mset, second_database, CB2)
    assert trip.ok, trip.step.as_row()
    assert trip.prepared == f"database prepared at the baseline, {CB1}"
    assert scalar(second_database, "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_legacy_email'") == 1


def test_a_baseline_stairway(pg_admin_url):
    scratch = authoring.Scratch(pg_admin_url, "databases on the test server", run_id="t-iso")
    stairs = scratch.stairway(baseline_set(baseline="initial_models.py:Base"))
    assert stairs.ok and [st.revision for st in stairs.steps] == [CB1, CB2]


def test_a_wrong_baseline_says_which_key_to_fix(second_database):
    with pytest.raises(ConfigError, match=r"initial_models.py has no attribute 'Nope'. Fix baseline in dbrunbook"):
        migrations.build_baseline(baseline_set(baseline="initial_models.py:Nope"), second_database)
    with pytest.raises(ConfigError, match="baseline = 'initial_models' must be 'module:attribute'"):
        migrations.build_baseline(baseline_set(baseline="initial_models"), second_database)


@pytest.mark.e2e
def test_run_stamp_and_review_of_a_project_that_reads_its_url_once(cli_project, database_url, capfd,
                                                                   fresh_importapp):
    """Through ``dbrunbook run``: the kernel imports the application for the target first."""
    cli_project(["settings_at_import"], database_url)
    target = db.make_engine(database_url, poolclass=NullPool)
    try:
        code, result = run(capfd, "apply", "-p", "migration_set", "settings_at_import", "-p", "dry_run", "false")
        assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
        with target.begin() as conn:
            conn.execute(sa.text("DELETE FROM alembic_version_settings"))
        code, result = run(capfd, "stamp", "-p", "migration_set", "settings_at_import", "-p", "revision", S1B,
                           "-p", "dry_run", "false")
        assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
        assert scalar(target, "SELECT version_num FROM alembic_version_settings") == S1B
        check = json.loads((Path(result["record_dir"]) / "artifacts" / "stamp_check.json").read_text())
        assert (check["checked"], check["truthful"]) == (True, True)
        code, result = run(capfd, "review", "-p", "migration_set", "settings_at_import", "-p", "revision", S1B)
        assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
        review = json.loads((Path(result["record_dir"]) / "artifacts" / "review.json").read_text())
        assert review["passed"], review["findings"]
    finally:
        target.dispose()
