"""pytest plugin: the review runbook's round-trip and stairway checks, on your own Alembic migrations.

Registered as a ``pytest11`` entry point, so installing dbrunbook is enough for the fixtures to exist. Add one
line to a test module of your project::

    from dbrunbook.pytest_plugin import test_dbrunbook_round_trip, test_dbrunbook_stairway  # noqa: F401

The tests find ``alembic.ini`` in pytest's root folder (ini option ``dbrunbook_alembic_ini`` to change it, or
override the ``dbrunbook_alembic_ini`` fixture) and run on a fresh database created on the server at
``$DBRUNBOOK_TEST_DATABASE_URL``, or on a throwaway embedded PostgreSQL when it is unset. Or call
``assert_stairway(alembic_ini, url)`` / ``assert_round_trip(alembic_ini, url)`` from your own tests with a
database you provide (it must be empty: the checks migrate it from base).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.pool import NullPool

from dbrunbook.config import normalize_url
from dbrunbook.postgres import db
from dbrunbook.procedures import authoring

__all__ = ["assert_round_trip", "assert_stairway", "test_dbrunbook_round_trip", "test_dbrunbook_stairway"]

URL_ENV = "DBRUNBOOK_TEST_DATABASE_URL"


def _run(alembic_ini: str | Path, url: str, check, **options):
    mset = authoring.migration_set_for(alembic_ini, **options)
    engine = db.make_engine(normalize_url(url), poolclass=NullPool)
    try:
        return mset, check(mset, engine)
    finally:
        engine.dispose()


def _failure(what: str, alembic_ini: str | Path, findings) -> str:
    lines = "\n".join(f"  {f.rule} ({f.revision}): {f.message}" for f in findings)
    return f"{what} of {alembic_ini} failed:\n{lines}"


def assert_stairway(alembic_ini: str | Path, url: str, *, section: str = "alembic",
                    version_table: str = "alembic_version", env: dict[str, str] | None = None
                    ) -> authoring.Stairway:
    """Every revision, base first, upgraded, downgraded and upgraded again on the empty database at ``url``.

    Raises:
        AssertionError: a step failed or a downgrade did not restore the schema; the message lists each
            finding with its revision.
    """
    _mset, result = _run(alembic_ini, url, authoring.stairway, section=section, version_table=version_table,
                         env=env)
    if not result.ok:
        findings = result.findings or ()
        raise AssertionError(_failure("Stairway", alembic_ini, findings)
                             + (f"\n  not run: {', '.join(result.not_run)}" if result.not_run else ""))
    return result


def assert_round_trip(alembic_ini: str | Path, url: str, revision: str = "heads", *, section: str = "alembic",
                      version_table: str = "alembic_version", env: dict[str, str] | None = None
                      ) -> authoring.RoundTrip:
    """``revision`` (default: the head) upgraded, downgraded and upgraded again; the schema must come back.

    Raises:
        AssertionError: with the findings (schema not restored, a failing step and its error).
    """
    _mset, result = _run(alembic_ini, url, lambda m, e: authoring.round_trip(m, e, revision), section=section,
                         version_table=version_table, env=env)
    if not result.ok:
        raise AssertionError(_failure("Round trip", alembic_ini, result.findings))
    return result


# --- fixtures -------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("dbrunbook_alembic_ini", "alembic.ini (or pyproject.toml) of the migrations dbrunbook's "
                  "round-trip and stairway tests check, relative to the root folder", default="alembic.ini")


@pytest.fixture(scope="session")
def dbrunbook_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session: $DBRUNBOOK_TEST_DATABASE_URL, else a throwaway embedded one."""
    external = os.environ.get(URL_ENV)
    if external:
        yield normalize_url(external)
        return
    from dbrunbook.postgres.embedded import EmbeddedServer

    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-pytest-"))
    server = EmbeddedServer(folder / "data", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def dbrunbook_database_url(dbrunbook_server_url: str) -> Iterator[str]:
    """URL of a fresh empty database on that server, dropped after the test."""
    name = f"dbrunbook_test_{uuid.uuid4().hex[:10]}"
    db.create_database(dbrunbook_server_url, name)
    try:
        yield db.with_database(dbrunbook_server_url, name)
    finally:
        db.drop_database(dbrunbook_server_url, name)


@pytest.fixture
def dbrunbook_alembic_ini(request: pytest.FixtureRequest) -> Path:
    """The alembic.ini to check: ini option ``dbrunbook_alembic_ini``, relative to pytest's root folder."""
    return Path(request.config.rootpath) / request.config.getini("dbrunbook_alembic_ini")


# --- ready-made tests (import them into a test module) --------------------------------------------------
def test_dbrunbook_stairway(dbrunbook_alembic_ini: Path, dbrunbook_database_url: str) -> None:
    """Every migration goes up, down and up again, and each downgrade restores the schema."""
    assert_stairway(dbrunbook_alembic_ini, dbrunbook_database_url)


def test_dbrunbook_round_trip(dbrunbook_alembic_ini: Path, dbrunbook_database_url: str) -> None:
    """The newest migration goes up, down and up again, and its downgrade restores the schema."""
    assert_round_trip(dbrunbook_alembic_ini, dbrunbook_database_url)
