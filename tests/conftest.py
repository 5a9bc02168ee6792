"""Shared fixtures: a real PostgreSQL for every integration test.

By default each pytest process (each xdist worker) starts its own throwaway embedded server; when
DBRUNBOOK_TEST_DATABASE_URL is set, that server is used instead. Each test that asks for ``database_url``
gets a fresh, empty database that is dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbrunbook.config import normalize_url
from dbrunbook.postgres import db
from tests.projects import project  # noqa: F401 - the sample project fixture, for every test module

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL_URL_ENV = "DBRUNBOOK_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def embedded_root() -> Iterator[Path]:
    """A folder for embedded servers' data in this test process, removed at the end.

    Not under pytest's basetemp: as root the server runs as another user, and every pytest session
    (another engineer's, another xdist run) re-chmods /tmp/pytest-of-root to 0700, locking pg_ctl out.
    """
    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-pytest-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(embedded_root) -> Iterator[str]:
    """URL of a PostgreSQL server (database 'postgres') for this test process."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield normalize_url(external)
        return
    from dbrunbook.postgres.embedded import EmbeddedServer

    # A throwaway server per process (each xdist worker has its own folder, hence its own socket).
    server = EmbeddedServer(embedded_root / "session" / "data", durable=False)
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


@pytest.fixture
def key(tmp_path) -> Path:
    """An operator signing key (Ed25519, OpenSSH format) for alice@example.com."""
    from dbrunbook.records import signing

    return signing.generate_key(tmp_path / "keys" / "operator_ed25519", "alice@example.com")


@pytest.fixture
def allowed_signers(tmp_path, key) -> Path:
    """A trust file that trusts ``key`` as alice@example.com."""
    from dbrunbook.records import signing

    path = tmp_path / "allowed_signers"
    signing.add_allowed_signer(path, "alice@example.com", signing.public_key_line(key))
    return path
