"""Shared fixtures: a real PostgreSQL for every integration test.

By default each pytest process (each xdist worker) starts its own throwaway embedded server; when
DBRUNBOOK_TEST_DATABASE_URL is set, that server is used instead. Each test that asks for ``database_url``
gets a fresh, empty database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dbrunbook import db
from dbrunbook.config import normalize_url

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL_URL_ENV = "DBRUNBOOK_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> str:
    """URL of a PostgreSQL server (database 'postgres') for this test process."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield normalize_url(external)
        return
    from dbrunbook.embedded import EmbeddedServer

    # A throwaway server per process (xdist workers get distinct temp folders, hence distinct sockets).
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "data", durable=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def database_url(pg_admin_url) -> str:
    """URL of a fresh empty database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    db.create_database(pg_admin_url, name)
    try:
        yield db.with_database(pg_admin_url, name)
    finally:
        db.drop_database(pg_admin_url, name)
