"""Alembic runs where a real project's env.py expects (issue 8, parts 1, 3, 4), on a real PostgreSQL.

Scenario projects in tests/fixtures/alembic_projects/, used unchanged:

* psycopg2_binding — a data migration that needs psycopg2's client-side parameter binding;
* async_template — Alembic's own ``async`` template env.py (``asyncio.run`` + ``async_engine_from_config``);
* anyio_worker — an env.py that calls ``anyio.from_thread.run(...)``;
* merge_points — two merge points, odd branch labels, a partial downgrade leaving two current revisions;
* settings_at_import — a settings module that reads its URL variable when it is imported.

The revisions of the first three record, in table ``seen``, the driver and the session settings they ran with.
Each is run through the library and at least once through ``dbrunbook run`` (the last tests).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import cli
from dbrunbook.chain import drivers, migrations, script_cache
from dbrunbook.config import MigrationSet, load_config, normalize_url, url_driver
from dbrunbook.errors import AmbiguousRevision, DialectMismatch, MigrationFailed, RevisionNotFound
from dbrunbook.postgres import db
from tests.projects import trust_operator

ROOT = Path(__file__).resolve().parents[3]
PROJECTS = ROOT / "tests" / "fixtures" / "alembic_projects"
URL_ENV = "DBRUNBOOK_TEST_REAL_URL"

P2A, P2B = "p2a000000001", "p2b000000002"  # psycopg2_binding
BASE, LEFT, RIGHT, MERGE, TAIL, BRA, BRB, MERGE2 = (
    "m0000000base", "m1111111left", "m2222222rght", "m3333333merg", "m4444444tail", "m5555555brna",
    "m6666666brnb", "m7777777merg")


VERSION_TABLES = {"psycopg2_binding": "psycopg2_version", "anyio_worker": "anyio_version",
                  "settings_at_import": "alembic_version_settings"}


def project(name: str, **kw) -> MigrationSet:
    kw.setdefault("version_table", VERSION_TABLES.get(name, "alembic_version"))
    return MigrationSet(name=name, alembic_ini=PROJECTS / name / "alembic.ini", **kw)


@pytest.fixture
def engine(database_url):
    eng = db.make_engine(database_url, run_id="t-real", lock_timeout="3s", statement_timeout="1min")
    yield eng
    eng.dispose()


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def seen(engine, name: str) -> list[tuple]:
    """What the revisions of a project recorded in its table ``seen_<name>``: driver and session settings."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            f"SELECT revision, driver, application_name, lock_timeout, statement_timeout FROM seen_{name}"))]


def tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def columns(engine, table: str) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def in_running_loop(fn, *args):
    """Call ``fn`` from inside a running asyncio event loop, as a notebook cell does."""
    async def main():
        asyncio.get_running_loop()  # there is one
        return fn(*args)
    return asyncio.run(main())


# --- 1. the project's driver ------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "converted", "driver"), [
    ("postgresql://u@h/d", "postgresql+psycopg://u@h/d", None),
    ("postgres://u@h/d", "postgresql+psycopg://u@h/d", None),
    ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d", "psycopg2"),
    ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d", "psycopg"),
    ("postgresql+asyncpg://u@h/d", "postgresql+psycopg://u@h/d", "asyncpg"),
])
def test_every_sqlalchemy_postgresql_url_form_is_accepted(url, converted, driver):
    assert normalize_url(url) == converted
    assert url_driver(url) == driver


def test_psycopg3_refuses_the_psycopg2_data_migration(engine):
    """What the issue found: psycopg 3's server-side binding refuses what psycopg2 binds on the client."""
    with pytest.raises(MigrationFailed) as err:
        migrations.upgrade(project("psycopg2_binding"), engine)
    assert (err.value.revision, err.value.completed) == (P2B, (P2A,))
    assert str(err.value) == (
        f"Migration set 'psycopg2_binding' failed at revision {P2B}: column \"n\" is of type integer but "
        f"expression is of type character varying. The database is at {P2A}. Run 'dbrunbook run "
        f"troubleshoot' to diagnose before retrying.")
    assert scalar(engine, "SELECT n FROM counter") == 0


def test_driver_psycopg2_runs_it_on_a_psycopg2_connection_with_our_settings(engine):
    mset = project("psycopg2_binding", driver="psycopg2")
    assert [s.revision for s in migrations.upgrade(mset, engine)] == [P2A, P2B]
    assert scalar(engine, "SELECT n FROM counter") == 5
    assert seen(engine, "psycopg2") == [(P2B, "psycopg2", "dbrunbook:t-real", "3s", "1min")]
    assert migrations.current(mset, engine) == (P2B,)
    assert [s.revision for s in migrations.downgrade(mset, engine, "-1")] == [P2B]
    assert scalar(engine, "SELECT n FROM counter") == 0
    migrations.stamp(mset, engine, P2B)
    assert migrations.current(mset, engine) == (P2B,)
    assert [s.revision for s in migrations.downgrade(mset, engine, "base")] == [P2B, P2A]
    assert tables(engine) == {"psycopg2_version"}


def test_a_lock_timeout_on_the_psycopg2_connection_is_retried(database_url):
    """Our lock_timeout reaches the project's connection, and its timeout is seen as one by the retry loop."""
    from dbrunbook.safety import locking

    engine = db.make_engine(database_url, run_id="t-lock", lock_timeout="200ms", statement_timeout="1min")
    mset = project("psycopg2_binding", driver="psycopg2")
    try:
        migrations.upgrade(mset, engine, P2A)
        holder = engine.connect()
        holder.execute(sa.text("LOCK TABLE counter IN ACCESS EXCLUSIVE MODE"))
        reports: list[str] = []
        with pytest.raises(MigrationFailed) as err:
            locking.with_lock_retries(lambda conn: migrations.upgrade(mset, conn), engine,
                                      policy=locking.RetryPolicy(retries=1, base_delay=0.01, max_delay=0.02),
                                      migration_set=mset.name, report=reports.append)
        holder.rollback()
        holder.close()
        assert [a.outcome for a in err.value.attempts] == ["lock timeout", "lock timeout"]
        assert "canceling statement due to lock timeout" in str(err.value)
        assert migrations.current(mset, engine) == (P2A,)
        assert scalar(engine, "SELECT n FROM counter") == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", [None, "psycopg2"])
def test_an_interrupt_cancels_the_running_statement(engine, driver):
    """The kernel's interrupt button while a revision waits: it is cancelled, the earlier one stays."""
    import _thread

    mset = project("psycopg2_binding", driver=driver)
    migrations.upgrade(mset, engine, P2A)
    cwd = os.getcwd()
    with engine.connect() as holder:
        holder.execute(sa.text("LOCK TABLE counter IN ACCESS EXCLUSIVE MODE"))
        slow = db.make_engine(engine.url.render_as_string(hide_password=False), lock_timeout="30s")
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        try:
            with pytest.raises(MigrationFailed) as err:
                migrations.upgrade(mset, slow)
        finally:
            timer.join()
            slow.dispose()
        holder.rollback()
    assert err.value.revision == P2B
    assert "canceling statement due to user request" in err.value.reason
    assert migrations.current(mset, engine) == (P2A,)
    assert os.getcwd() == cwd


def test_the_target_urls_own_driver_is_kept(tmp_path, database_url, monkeypatch):
    config = write_config(tmp_path, ["psycopg2_binding"])
    monkeypatch.setenv(URL_ENV, database_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    target, engine = db.connect_target(config, "local", run_id="t-url")
    try:
        assert engine.dialect.driver == "psycopg"  # dbrunbook's own queries stay on psycopg 3
        mset = config.migration_set("psycopg2_binding")
        assert [s.revision for s in migrations.upgrade(mset, engine)] == [P2A, P2B]
        assert seen(engine, "psycopg2") == [(P2B, "psycopg2", "dbrunbook:t-url", "2s", "15min")]
        assert migrations.current(mset, engine) == (P2B,)
    finally:
        engine.dispose()


# --- 3. event loops ---------------------------------------------------------------------------------------
def test_plain_alembic_cannot_run_the_async_template_inside_a_running_loop(engine):
    """The condition the next tests run under: Alembic's own command fails from a notebook cell."""
    from alembic import command

    mset = project("async_template")
    cfg = migrations.alembic_config(mset, url=engine.url.render_as_string(hide_password=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # env.py's coroutine, never awaited: asyncio.run refused it
        with migrations.in_project(mset), pytest.raises(RuntimeError) as err:
            in_running_loop(command.upgrade, cfg, "heads")
        message = str(err.value)
        err.value.__traceback__ = None  # the coroutine lives in the traceback's frames
        del err
        gc.collect()
    assert message == "asyncio.run() cannot be called from a running event loop"
    assert tables(engine) == set()


@pytest.mark.parametrize("driver", [None, "asyncpg"])
def test_async_template_from_a_running_event_loop(engine, driver):
    mset = project("async_template", driver=driver, models="models.py:Base")
    steps = in_running_loop(migrations.upgrade, mset, engine)
    assert [s.revision for s in steps] == ["a5a000000001", "a5b000000002"]
    assert seen(engine, "async") == [("a5b000000002", driver or "psycopg", "dbrunbook:t-real", "3s", "1min")]
    assert columns(engine, "event") == ["id", "kind", "at"]
    assert in_running_loop(migrations.check, mset, engine) == []
    assert [s.revision for s in in_running_loop(migrations.downgrade, mset, engine, "-1")] == ["a5b000000002"]
    assert columns(engine, "event") == ["id", "kind"]
    in_running_loop(migrations.stamp, mset, engine, "a5b000000002")
    assert migrations.current(mset, engine) == ("a5b000000002",)
    in_running_loop(migrations.stamp, mset, engine, "a5a000000001")
    assert [s.revision for s in in_running_loop(migrations.downgrade, mset, engine, "base")] == ["a5a000000001"]
    assert tables(engine) == {"alembic_version"}


def test_anyio_env_py_fails_outside_a_worker_thread(engine):
    from alembic import command

    mset = project("anyio_worker")
    cfg = migrations.alembic_config(mset, url=engine.url.render_as_string(hide_password=False))
    with migrations.in_project(mset), pytest.raises(Exception) as err:
        command.upgrade(cfg, "heads")
    assert type(err.value).__name__ == "NoEventLoopError"
    assert tables(engine) == set()


@pytest.mark.parametrize("where", ["running loop", "plain thread"])
def test_anyio_env_py_gets_a_worker_thread(engine, where):
    mset = project("anyio_worker")
    if where == "running loop":
        steps = in_running_loop(migrations.upgrade, mset, engine)
    else:
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("steps", migrations.upgrade(mset, engine)))
        thread.start()
        thread.join()
        steps = box["steps"]
    assert [s.revision for s in steps] == ["a9a000000001", "a9b000000002"]
    assert seen(engine, "anyio") == [("a9b000000002", "psycopg", "dbrunbook:t-real", "3s", "1min")]
    assert [s.revision for s in migrations.downgrade(mset, engine, "base")] == ["a9b000000002", "a9a000000001"]
    assert tables(engine) == {"anyio_version"}
    assert os.getcwd() != str(PROJECTS / "anyio_worker")  # process-wide state restored


def test_a_failure_before_any_revision_names_no_revision(engine, pg_admin_url):
    missing = db.with_database(pg_admin_url, "t_does_not_exist")
    mset = project("own_env_var", env={"MYAPP_DATABASE_URL": missing})
    with pytest.raises(MigrationFailed) as err:
        migrations.upgrade(mset, engine)
    assert err.value.revision is None
    assert str(err.value).startswith(
        "Migration set 'own_env_var' failed before the first revision: connection failed: ")
    assert 'database "t_does_not_exist" does not exist' in str(err.value)


# --- 4. graphs as they are --------------------------------------------------------------------------------
def test_minus_one_at_a_merge_point_names_the_parents(engine):
    mset = project("merge_points")
    migrations.upgrade(mset, engine, MERGE)
    for call in (lambda: migrations.downgrade(mset, engine, "-1"),
                 lambda: migrations.resolve(mset, "-1", migrations.current(mset, engine))):
        with pytest.raises(AmbiguousRevision) as err:
            call()
        assert err.value.choices == (LEFT, RIGHT)
        assert str(err.value) == (
            f"Revision '-1' of migration set 'merge_points' is ambiguous: counting down from {MERGE} reaches "
            f"merge revision {MERGE} (merge left and right), which has 2 parents: {LEFT}, {RIGHT}; going to "
            f"one of them reverts the merge (and what follows it) and leaves both branches applied. Name the "
            f"revision to go to instead: -p revision {LEFT} or -p revision {RIGHT}.")
        assert err.value.exit_status == 2
    assert migrations.current(mset, engine) == (MERGE,)
    assert "merged_col" in columns(engine, "item")

    # -2 from the tail crosses the same merge.
    migrations.upgrade(mset, engine, TAIL)
    with pytest.raises(AmbiguousRevision) as err:
        migrations.downgrade(mset, engine, "-2")
    assert err.value.choices == (LEFT, RIGHT)
    assert migrations.current(mset, engine) == (TAIL,)
    assert [s.revision for s in migrations.downgrade(mset, engine, LEFT)] == [TAIL, MERGE]


def test_a_partial_downgrade_leaves_two_current_revisions(engine):
    mset = project("merge_points")
    migrations.upgrade(mset, engine, MERGE)
    assert [s.revision for s in migrations.downgrade(mset, engine, LEFT)] == [MERGE]
    assert migrations.current(mset, engine) == (LEFT, RIGHT)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()) == [LEFT, RIGHT]
    assert "merged_col" not in columns(engine, "item")
    assert [r.revision for r in migrations.pending(mset, engine)][:2] == [MERGE, TAIL]

    with pytest.raises(AmbiguousRevision) as err:
        migrations.downgrade(mset, engine, "-1")
    assert str(err.value) == (
        f"Revision '-1' of migration set 'merge_points' is ambiguous: the database is at 2 revisions ({LEFT}, "
        f"{RIGHT}), and '-1' does not say which of them to step back from. Name the revision to go to instead: "
        f"-p revision {LEFT}@-1 or -p revision {RIGHT}@-1.")
    assert migrations.current(mset, engine) == (LEFT, RIGHT)
    assert [s.revision for s in migrations.downgrade(mset, engine, f"{RIGHT}@-1")] == [RIGHT]
    assert migrations.current(mset, engine) == (LEFT,)

    steps = [s.revision for s in migrations.upgrade(mset, engine, "heads")]
    assert steps[:3] == [RIGHT, MERGE, TAIL] and sorted(steps[3:5]) == [BRA, BRB] and steps[5] == MERGE2
    assert migrations.current(mset, engine) == (MERGE2,)
    assert {"left_col", "right_col", "merged_col", "tail_col", "a_col", "b_col", "ab_col"} <= set(
        columns(engine, "item"))


def test_odd_branch_labels(engine):
    mset = project("merge_points")
    assert migrations.resolve(mset, "2024.1-hotfix") == (RIGHT,)
    assert migrations.resolve(mset, "feature/billing-v2") == (LEFT,)
    assert migrations.resolve(mset, "feature/billing-v2@head") == (MERGE2,)
    assert [s.revision for s in migrations.upgrade(mset, engine, "2024.1-hotfix")] == [BASE, RIGHT]
    assert migrations.current(mset, engine) == (RIGHT,)
    assert [s.revision for s in migrations.upgrade(mset, engine, "feature/billing-v2")] == [LEFT]
    assert migrations.current(mset, engine) == (LEFT, RIGHT)
    assert [s.revision for s in migrations.downgrade(mset, engine, "feature/billing-v2@-1")] == [LEFT]
    assert migrations.current(mset, engine) == (RIGHT,)


def test_several_environments_on_one_database(engine):
    first = project("connection_attr")
    second = project("custom_section_and_version_table", section="myapp_db", version_table="myapp_schema_version")
    third = project("anyio_worker")
    migrations.upgrade(second, engine)
    assert migrations.current(first, engine) == ()
    migrations.upgrade(first, engine)
    assert (migrations.current(first, engine), migrations.current(second, engine)) == (
        ("3c2e9a7b1d03",), ("c5000000000b",))
    migrations.downgrade(second, engine, "base")
    assert (migrations.current(first, engine), migrations.current(second, engine)) == (("3c2e9a7b1d03",), ())
    assert {"account", "alembic_version", "myapp_schema_version"} <= tables(engine)
    migrations.upgrade(third, engine)  # a third, in its own version table, with its own engine
    assert [migrations.current(m, engine) for m in (first, second, third)] == [
        ("3c2e9a7b1d03",), (), ("a9b000000002",)]
    # Two projects sharing one version table cannot be told apart: the second finds the first's id there.
    with pytest.raises(RevisionNotFound) as err:
        migrations.upgrade(project("merge_points"), engine)
    assert err.value.revision == "3c2e9a7b1d03"
    assert "item" not in tables(engine)


# --- settings read at import time -------------------------------------------------------------------------
@pytest.fixture
def fresh_importapp(monkeypatch):
    """The settings_at_import application not imported yet, its variables unset, and both so afterwards."""
    for name in ("IMPORTAPP_DATABASE_URL", "IMPORTAPP_TABLE_PREFIX"):
        monkeypatch.setenv(name, "unused")
        monkeypatch.delenv(name)

    def forget():
        for name in [n for n in sys.modules if n == "importapp" or n.startswith("importapp.")]:
            del sys.modules[name]
        # Its revision scripts not loaded yet either: a loaded ScriptDirectory is reused while its files are
        # unchanged, and loading them is what imports the application first.
        script_cache._SCRIPT_CACHE.clear()

    forget()
    yield
    forget()


def test_settings_read_at_import_time_see_our_url(engine, tmp_path, database_url, monkeypatch, fresh_importapp):
    config = write_config(tmp_path, ["settings_at_import"])
    monkeypatch.setenv(URL_ENV, database_url)
    mset = config.migration_set("settings_at_import")
    exported = drivers.export_environment(config, config.target("local"))
    assert exported == {"IMPORTAPP_TABLE_PREFIX": "shop", "IMPORTAPP_DATABASE_URL": db.mask_url(
        sa.make_url(database_url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False))}
    assert [s.revision for s in migrations.upgrade(mset, engine)] == ["s1a000000001", "s1b000000002"]
    assert columns(engine, "shop_account") == ["id", "email"]
    assert not (PROJECTS / "settings_at_import" / "importapp-default.db").exists()


def test_settings_read_at_import_time_without_export_is_refused(engine, fresh_importapp):
    mset = project("settings_at_import", url_env="IMPORTAPP_DATABASE_URL")
    with pytest.raises(DialectMismatch) as err:
        migrations.upgrade(mset, engine)
    assert "it configured the sqlite dialect at sqlite:///importapp-default.db" in str(err.value)
    assert tables(engine) == set()
    assert not (PROJECTS / "settings_at_import" / "importapp-default.db").exists()  # the empty file is removed


# --- through `dbrunbook run` ------------------------------------------------------------------------------
SET_OPTIONS = {
    "psycopg2_binding": 'version_table = "psycopg2_version"\n',
    "async_template": 'driver = "asyncpg"\nmodels = "models.py:Base"\n',
    "anyio_worker": 'version_table = "anyio_version"\n',
    "merge_points": "",
    "settings_at_import": ('url_env = "IMPORTAPP_DATABASE_URL"\nversion_table = "alembic_version_settings"\n'
                           'env = { IMPORTAPP_TABLE_PREFIX = "shop" }\ndriver = "psycopg2"\n'),
}


def write_config(folder: Path, names: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    sets = "".join(f'\n[migration_sets.{n}]\nalembic_ini = "{PROJECTS / n / "alembic.ini"}"\n{SET_OPTIONS[n]}'
                   for n in names)
    path = folder / "dbrunbook.toml"
    path.write_text(f'[project]\noutputs = "outputs"\nrunbooks = "{ROOT / "runbooks"}"\nstate_dir = "state"\n\n'
                    f'[targets.local]\nurl_env = "{URL_ENV}"\n{sets}', encoding="utf-8")
    trust_operator(path, "tester@dbrunbook")
    return load_config(path)


def run(capfd, *argv: str) -> tuple[int, dict]:
    code = cli.main(["run", *argv, "--json"])
    out, _err = capfd.readouterr()
    return code, json.loads(out)


@pytest.fixture
def cli_project(tmp_path, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")

    def make(names: list[str], url: str):
        config = write_config(tmp_path / "project", names)
        monkeypatch.setenv(URL_ENV, url)
        monkeypatch.setenv("DBRUNBOOK_CONFIG", str(config.path))
        return config
    return make


@pytest.mark.e2e
def test_run_apply_and_rollback_keep_psycopg2_and_the_async_template(cli_project, database_url, engine, capfd):
    cli_project(["psycopg2_binding", "async_template"],
                database_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    code, result = run(capfd, "apply", "-p", "dry_run", "false")
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    assert scalar(engine, "SELECT n FROM counter") == 5
    assert seen(engine, "async") == [("a5b000000002", "asyncpg", f"dbrunbook:{result['run_id']}", "2s", "15min")]
    assert seen(engine, "psycopg2") == [(P2B, "psycopg2", f"dbrunbook:{result['run_id']}", "2s", "15min")]
    code, result = run(capfd, "rollback", "-p", "migration_set", "async_template", "-p", "dry_run", "false",
                       "-p", "allow_data_loss", "true")  # the row revision 2 wrote into seen_async
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    assert columns(engine, "event") == ["id", "kind"]
    assert seen(engine, "async") == []
    assert scalar(engine, "SELECT version_num FROM alembic_version") == "a5a000000001"
    assert scalar(engine, "SELECT version_num FROM psycopg2_version") == P2B


@pytest.mark.e2e
def test_run_apply_and_rollback_at_merge_points_and_settings_read_on_import(
        cli_project, database_url, engine, capfd, fresh_importapp):
    cli_project(["merge_points", "settings_at_import"], database_url)
    # An explicit id: the launcher reads the revision scripts (importing the application) before the run.
    code, result = run(capfd, "apply", "-p", "migration_set", "settings_at_import", "-p", "revision",
                       "s1b000000002", "-p", "dry_run", "false")
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    assert columns(engine, "shop_account") == ["id", "email"]
    assert scalar(engine, "SELECT version_num FROM alembic_version_settings") == "s1b000000002"

    def versions() -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())

    code, result = run(capfd, "apply", "-p", "migration_set", "merge_points", "-p", "revision", MERGE,
                       "-p", "dry_run", "false")
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    code, result = run(capfd, "rollback", "-p", "migration_set", "merge_points", "-p", "dry_run", "false")
    assert (code, result["failing_step"]["ename"]) == (1, "AmbiguousRevision"), result
    # The rollback plan (offline SQL, step 3) stops first, naming the merge's parents and what to give.
    assert result["failing_step"]["evalue"] == (
        f"Revision '-1' of migration set 'merge_points' is ambiguous: counting down from {MERGE} reaches "
        f"merge revision {MERGE} (merge left and right), which has 2 parents: {LEFT}, {RIGHT}; going to "
        f"one of them reverts the merge (and what follows it) and leaves both branches applied. Name the "
        f"revision to go to instead: -p revision {LEFT} or -p revision {RIGHT}.")
    assert versions() == [MERGE]
    # The partial downgrade the error proposes leaves two current revisions; apply takes both to the heads.
    code, result = run(capfd, "rollback", "-p", "migration_set", "merge_points", "-p", "revision", LEFT,
                       "-p", "dry_run", "false", "-p", "allow_data_loss", "true")
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    assert versions() == [LEFT, RIGHT]
    assert result["heads_after"]["merge_points"] == [LEFT, RIGHT]
    code, result = run(capfd, "apply", "-p", "migration_set", "merge_points", "-p", "dry_run", "false")
    assert (code, result["outcome"]) == (0, "succeeded"), result.get("failing_step")
    assert versions() == [MERGE2]
    assert {"merged_col", "ab_col"} <= set(columns(engine, "item"))
