"""The project's driver, the AnyIO worker thread and the graph errors, without a database (issue 8)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from dbrunbook.chain import alembic_thread, drivers
from dbrunbook.config import MigrationSet, Target, load_config, target_driver
from dbrunbook.errors import AmbiguousRevision, ConfigError, MigrationFailed, RevisionNotFound


def write(tmp_path, body: str):
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = m\n")
    path = tmp_path / "dbrunbook.toml"
    path.write_text(f'[migration_sets.main]\nalembic_ini = "alembic.ini"\n{body}', encoding="utf-8")
    return path


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "asyncpg"])
def test_driver_key_of_a_migration_set(tmp_path, driver):
    assert load_config(write(tmp_path, f'driver = "{driver}"\n')).migration_set("main").driver == driver


def test_unknown_driver_is_refused(tmp_path):
    path = write(tmp_path, 'driver = "pg8000"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: [migration_sets.main] driver = 'pg8000' is not one of psycopg2, psycopg, "
                              f"asyncpg. Set the driver the project's env.py uses.")


@pytest.mark.parametrize(("value", "driver"), [
    ("postgresql+psycopg2://u@h/d", "psycopg2"),
    ("postgresql+asyncpg://u@h/d", "asyncpg"),
    ("postgresql+psycopg://u@h/d", "psycopg"),
    ("postgresql://u@h/d", "psycopg2"),  # SQLAlchemy's default, installed in the dev environment
])
def test_target_driver_is_the_urls_own(monkeypatch, value, driver):
    monkeypatch.setenv("T_URL", value)
    assert target_driver(Target(name="t", url_env="T_URL")) == driver
    assert target_driver(Target(name="e", embedded=True)) is None
    assert target_driver(Target(name="s", service="shop")) is None


def test_asyncpg_url_keeps_only_what_asyncpg_takes():
    url = drivers.with_driver(
        "postgresql+psycopg://u:pw@/db?host=/tmp/s&port=5433&sslmode=require&options=-c%20x%3D1", "asyncpg")
    assert url.drivername == "postgresql+asyncpg"
    assert dict(url.query) == {"host": "/tmp/s", "port": "5433", "ssl": "require"}
    assert url.password == "pw"


def test_the_sets_driver_wins_over_the_targets():
    engine = sa.create_engine("postgresql+psycopg://u@h/d")
    engine.update_execution_options(**{drivers.DRIVER_OPTION: "asyncpg"})
    assert drivers.driver_for(MigrationSet(name="m", script_location="x", driver="psycopg2"), engine) == "psycopg2"
    assert drivers.driver_for(MigrationSet(name="m", script_location="x"), engine) == "asyncpg"
    assert drivers.driver_for(MigrationSet(name="m", script_location="x"), sa.create_engine(
        "postgresql+psycopg://u@h/d")) == "psycopg"


def test_run_in_worker_from_a_running_loop_gives_asyncio_and_anyio_what_they_need():
    import anyio.from_thread

    def env_py():
        async def answer():
            return 42
        return asyncio.run(answer()), anyio.from_thread.run(answer), alembic_thread.in_worker_context()

    async def cell():
        asyncio.get_running_loop()
        return alembic_thread.run_in_worker(env_py)

    assert asyncio.run(cell()) == (42, 42, True)
    assert alembic_thread.in_worker_context() is False


def test_run_in_worker_raises_in_the_callers_thread_and_nests():
    def fails():
        raise KeyError("boom")

    caller = threading.get_ident()
    with pytest.raises(KeyError) as err:
        alembic_thread.run_in_worker(fails)
    assert err.value.args == ("boom",)
    assert threading.get_ident() == caller
    inner = alembic_thread.run_in_worker(lambda: alembic_thread.run_in_worker(threading.get_ident))
    assert inner != caller


@pytest.mark.parametrize(("revision", "after", "expected"), [
    ("abc", None, "failed at revision abc: boom"),
    (None, "abc", "failed after revision abc (outside any revision): boom"),
    (None, None, "failed before the first revision: boom"),
])
def test_migration_failed_always_says_where(revision, after, expected):
    err = MigrationFailed("main", revision, (), "boom", after=after)
    assert str(err) == (f"Migration set 'main' {expected}. The database is at base. Run 'dbrunbook run "
                        f"troubleshoot' to diagnose before retrying.")


def test_ambiguous_revision_is_a_revision_not_found_with_choices():
    err = AmbiguousRevision("-1", "main", "it crosses merge m", ("a", "b"))
    assert isinstance(err, RevisionNotFound) and err.exit_status == 2
    assert (err.revision, err.migration_set, err.choices) == ("-1", "main", ("a", "b"))
    assert str(err) == ("Revision '-1' of migration set 'main' is ambiguous: it crosses merge m. Name the revision "
                        "to go to instead: -p revision a or -p revision b.")


def test_an_interrupt_cancels_and_waits_for_the_worker():
    """The kernel's interrupt button: the statement is cancelled, and nothing runs on under a restored cwd."""
    import _thread
    import time

    events: list[str] = []

    def migration():
        time.sleep(0.6)
        events.append("worker finished")
        return "done"

    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        alembic_thread.run_in_worker(migration, on_interrupt=lambda: events.append("cancel asked"))
    timer.join()
    assert events == ["cancel asked", "worker finished"]
