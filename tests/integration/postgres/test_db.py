"""dbrunbook.postgres.db against a real PostgreSQL: session settings, identity, unavailable servers, databases."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from dbrunbook.config import load_config
from dbrunbook.errors import DatabaseUnavailable
from dbrunbook.postgres import db

pytestmark = pytest.mark.integration

SECRET = "Sup3rSecretPw"


def _settings(engine) -> dict[str, str]:
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT a.application_name, current_setting('lock_timeout'), "
            "current_setting('statement_timeout'), "
            "current_setting('client_connection_check_interval') "
            "FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()"
        )).one()
    return dict(zip(["application_name", "lock_timeout", "statement_timeout", "check_interval"], row, strict=False))


def test_make_engine_names_the_run_and_sets_timeouts(database_url):
    engine = db.make_engine(database_url, run_id="20240101-abc", lock_timeout="2s", statement_timeout="15min")
    try:
        assert _settings(engine) == {"application_name": "dbrunbook:20240101-abc", "lock_timeout": "2s",
                                     "statement_timeout": "15min", "check_interval": "5s"}
    finally:
        engine.dispose()


def test_make_engine_without_run_id_or_timeouts_keeps_server_defaults(database_url):
    engine = db.make_engine(database_url)
    try:
        assert _settings(engine) == {"application_name": "dbrunbook", "lock_timeout": "0",
                                     "statement_timeout": "0", "check_interval": "5s"}
    finally:
        engine.dispose()


def test_make_engine_keeps_options_already_in_the_url(database_url):
    with sqlalchemy.create_engine(database_url).begin() as conn:
        conn.execute(text("CREATE SCHEMA app"))
    url = database_url + ("&" if "?" in database_url else "?") + "options=-csearch_path%3Dapp"
    engine = db.make_engine(url, lock_timeout="3s")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_setting('search_path'), current_setting('lock_timeout')")
                                ).one() == ("app", "3s")
    finally:
        engine.dispose()


def test_make_engine_drops_an_optional_setting_the_server_rejects(database_url, monkeypatch):
    # Stands for client_connection_check_interval on a server older than PG14.
    monkeypatch.setitem(db.OPTIONAL_SETTINGS, "dbrunbook_unknown_setting", "1")
    engine = db.make_engine(database_url, lock_timeout="4s")
    try:
        assert _settings(engine)["lock_timeout"] == "4s"
        assert _settings(engine)["check_interval"] == "5s"  # the known optional setting stays
    finally:
        engine.dispose()


def test_a_bad_timeout_value_is_reported_as_unavailable_with_the_reason(database_url):
    engine = db.make_engine(database_url, lock_timeout="soon")
    with pytest.raises(DatabaseUnavailable) as caught:
        db.check_connection(engine, "staging")
    assert caught.value.target == "staging"
    assert 'invalid value for parameter "lock_timeout": "soon"' in str(caught.value)


def test_identity_describes_the_database(database_url, pg_admin_url):
    engine, admin = db.make_engine(database_url), db.make_engine(pg_admin_url)
    try:
        ident, admin_ident = db.identity(engine), db.identity(admin)
        with admin.connect() as conn:
            expected_id = str(conn.execute(
                text("SELECT system_identifier FROM pg_control_system()")).scalar())
    finally:
        engine.dispose()
        admin.dispose()
    url = sqlalchemy.make_url(database_url)
    assert ident.database == url.database
    assert admin_ident.database == "postgres"
    assert ident.system_identifier == admin_ident.system_identifier == expected_id
    assert ident.system_identifier.isdigit()
    assert ident.server_version_num >= 130000
    assert ident.server_version.split(".")[0] == str(ident.server_version_num // 10000)
    assert ident.host == (url.query.get("host") or url.host)
    assert ident.port == int(url.query.get("port") or url.port or 5432)
    assert ident.user == (url.username or "postgres")
    assert ident.note == ""
    assert ident.as_dict()["database"] == url.database


def test_identity_without_pg_control_system_privilege_says_unknown(database_url, pg_admin_url):
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        # Functions live in each database's catalog: the revoke dies with the test database.
        conn.execute(text("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC"))
    engine = db.make_engine(sqlalchemy.make_url(database_url).set(username=role)
                            .render_as_string(hide_password=False))
    try:
        ident = db.identity(engine)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()
    assert ident.system_identifier == "unknown"
    assert ident.user == role
    assert f"pg_control_system() failed for user {role}: permission denied for function pg_control_system" \
        in ident.note


@pytest.mark.parametrize(("down_url", "shown"), [
    (f"postgresql://app:{SECRET}@127.0.0.1:1/crm", "postgresql+psycopg://app:***@127.0.0.1:1/crm"),
    (f"postgresql+psycopg://app@/crm?host=/nonexistent/dbrunbook&port=5999&password={SECRET}",
     "postgresql+psycopg://app@/crm?host=/nonexistent/dbrunbook&password=***&port=5999"),
])
def test_unavailable_server_error_has_masked_url_and_no_password(down_url, shown):
    engine = db.make_engine(down_url)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.check_connection(engine, "staging")
    message = str(caught.value)
    assert SECRET not in message and SECRET not in caught.value.reason
    assert message.startswith(f"Cannot connect to target 'staging' at {shown}: ")
    assert caught.value.masked_url == shown
    assert message.endswith("Check that the server is up and that the URL of target 'staging' is right.")
    assert ("Connection refused" in message) or ("No such file or directory" in message)


def _project(tmp_path: Path) -> Path:
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    path = tmp_path / "dbrunbook.toml"
    path.write_text(
        '[targets.staging]\nurl_env = "DBRUNBOOK_TEST_STAGING_URL"\nlock_timeout = "1s"\n'
        'statement_timeout = "10min"\n\n[migration_sets.main]\nalembic_ini = "alembic.ini"\n'
    )
    return path


def test_connect_target_applies_the_target_policy(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_TEST_STAGING_URL", database_url)
    target, engine = db.connect_target(load_config(_project(tmp_path)), "staging", run_id="run-7")
    try:
        assert target.name == "staging"
        assert _settings(engine) == {"application_name": "dbrunbook:run-7", "lock_timeout": "1s",
                                     "statement_timeout": "10min", "check_interval": "5s"}
    finally:
        engine.dispose()


def test_connect_target_on_a_down_server_raises_database_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_TEST_STAGING_URL", f"postgresql://app:{SECRET}@127.0.0.1:1/crm")
    with pytest.raises(DatabaseUnavailable) as caught:
        db.connect_target(load_config(_project(tmp_path)), "staging")
    assert caught.value.masked_url == "postgresql+psycopg://app:***@127.0.0.1:1/crm"
    assert SECRET not in str(caught.value)


def _databases(admin_url: str) -> set[str]:
    engine = sqlalchemy.create_engine(admin_url)
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    engine.dispose()
    return names


def test_create_and_drop_database_with_an_odd_name_and_an_open_session(pg_admin_url):
    name = f'odd "name" {uuid.uuid4().hex[:6]}'
    db.create_database(pg_admin_url, name)
    assert name in _databases(pg_admin_url)
    held = sqlalchemy.create_engine(db.with_database(pg_admin_url, name))
    conn = held.connect()
    conn.execute(text("SELECT 1"))
    try:
        db.drop_database(pg_admin_url, name)
    finally:
        conn.invalidate()
        held.dispose()
    assert name not in _databases(pg_admin_url)
    db.drop_database(pg_admin_url, name)  # dropping a missing database is not an error


def test_create_database_on_a_down_server_raises_database_unavailable():
    with pytest.raises(DatabaseUnavailable) as caught:
        db.create_database(f"postgresql://postgres:{SECRET}@127.0.0.1:1/postgres", "x")
    assert caught.value.masked_url == "postgresql://postgres:***@127.0.0.1:1/postgres"
    assert SECRET not in str(caught.value)


def test_ensure_database_creates_once(pg_admin_url):
    name = f"t_ensure_{uuid.uuid4().hex[:8]}"
    try:
        assert db.ensure_database(pg_admin_url, name) is True
        assert db.ensure_database(pg_admin_url, name) is False
        engine = db.make_engine(db.with_database(pg_admin_url, name))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_database()").scalar_one() == name
        engine.dispose()
    finally:
        db.drop_database(pg_admin_url, name)


def test_embedded_target_gets_its_own_database(tmp_path, monkeypatch):
    """resolve_url of an embedded target starts the server and creates the target's database."""
    from dbrunbook.config import load_config
    from dbrunbook.postgres.db import resolve_url
    from dbrunbook.postgres.embedded import EmbeddedServer

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    (tmp_path / "dbrunbook.toml").write_text(
        '[project]\nstate_dir = "st"\n[targets.local]\nembedded = true\ndatabase = "appdb"\n'
        '[migration_sets.m]\nalembic_ini = "m/alembic.ini"\n'
    )
    config = load_config(tmp_path / "dbrunbook.toml")
    server = EmbeddedServer.for_config(config)
    try:
        url = resolve_url(config.target("local"), config)
        engine = db.make_engine(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_database()").scalar_one() == "appdb"
        engine.dispose()
        assert server.status().running and server.data_dir == (tmp_path / "st" / "pg").resolve()
    finally:
        server.stop()
