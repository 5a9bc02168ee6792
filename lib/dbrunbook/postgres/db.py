"""Connections to PostgreSQL: engines with dbrunbook's session settings, masked URLs, database identity.

Every connection dbrunbook opens names itself (``application_name=dbrunbook:<run-id>``, visible in
pg_stat_activity to whoever is watching production) and carries the target's ``lock_timeout`` and
``statement_timeout``, so that a migration waiting on a lock fails fast instead of queueing every query behind
it. Nothing here ever prints a password: URLs go through ``mask_url`` and driver errors through
``scrub_driver_message``. ``resolve_url`` turns a target of dbrunbook.toml into its URL, starting the embedded
server for an embedded target.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import unquote

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from dbrunbook.config import Config, Target, normalize_url, target_driver
from dbrunbook.errors import DatabaseUnavailable, MissingSecret
from dbrunbook.postgres.embedded import EmbeddedServer
from dbrunbook.postgres.masking import contains_secret, mask_secrets, scrub_driver_message, secret_values
from dbrunbook.postgres.urls import MASK, check_url, mask_url, parse_url, with_database

__all__ = [
    "MASK", "OPTIONAL_SETTINGS", "DatabaseIdentity", "check_connection", "check_url", "connect_target",
    "contains_secret", "create_database", "drop_database", "ensure_database", "identity", "make_engine",
    "mask_secrets", "mask_url", "parse_url", "resolve_url", "scrub_driver_message", "secret_values", "with_database",
]

log = logging.getLogger(__name__)

#: Session settings that only newer servers know; an unknown setting in ``options`` makes the server refuse
#: the connection, so these are dropped (once per engine) when the server rejects them.
OPTIONAL_SETTINGS: dict[str, str] = {
    # PG14+: notice a vanished client during a long statement instead of running it to the end.
    "client_connection_check_interval": "5s",
}


def _full_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _display_url(engine: Engine) -> str:
    # Decoded after masking, so "host=/tmp/x" reads as typed and no password can reappear.
    return unquote(mask_url(_full_url(engine)))


# --- engines --------------------------------------------------------------------------------------------
def _escape_option(value: str) -> str:
    # libpq splits ``options`` on spaces; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def _options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {name}={_escape_option(value)}" for name, value in settings.items())


def make_engine(url: str, *, run_id: str | None = None, lock_timeout: str | None = None,
                statement_timeout: str | None = None, poolclass: Any = None) -> Engine:
    """Return a SQLAlchemy engine whose every connection names dbrunbook and carries its timeouts.

    Args:
        url: a SQLAlchemy or libpq URL (``postgresql://`` is switched to the psycopg 3 driver).
        run_id: shown as ``application_name=dbrunbook:<run_id>`` in pg_stat_activity.
        lock_timeout: e.g. "2s"; a migration that waits longer for a lock fails instead of blocking others.
        statement_timeout: e.g. "15min".
        poolclass: a SQLAlchemy pool class, e.g. ``NullPool`` for short-lived engines.

    The connection is not opened here; ``check_connection`` does that.
    """
    sa_url = parse_url(normalize_url(check_url(url)))
    settings: dict[str, str] = {}
    if lock_timeout is not None:
        settings["lock_timeout"] = lock_timeout
    if statement_timeout is not None:
        settings["statement_timeout"] = statement_timeout
    settings.update(OPTIONAL_SETTINGS)
    # Options already in the URL (?options=-csearch_path%3Dapp) are kept and come first, ours win.
    user_options = sa_url.query.get("options")
    if isinstance(user_options, tuple):
        user_options = " ".join(user_options)
    sa_url = sa_url.difference_update_query(["options", "application_name"])
    connect_args = {"application_name": f"dbrunbook:{run_id}" if run_id else "dbrunbook"}
    kwargs: dict[str, Any] = {"hide_parameters": True, "connect_args": connect_args}
    if poolclass is not None:
        kwargs["poolclass"] = poolclass
    engine = sqlalchemy.create_engine(sa_url, **kwargs)
    _install_settings(engine, settings, user_options)
    return engine


def _install_settings(engine: Engine, settings: dict[str, str], user_options: str | None) -> None:
    """Pass ``settings`` as startup options, dropping an optional one for good if the server rejects it."""
    state = {"settings": dict(settings)}
    guard = threading.Lock()

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        while True:
            with guard:
                current = dict(state["settings"])
            cparams["options"] = " ".join(filter(None, [user_options, _options(current)]))
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.Error as err:
                rejected = _rejected_setting(str(err), current)
                if rejected is None:
                    raise
                log.info("Server does not know setting %s; connecting without it", rejected)
                with guard:
                    state["settings"].pop(rejected, None)


def _rejected_setting(message: str, settings: dict[str, str]) -> str | None:
    match = re.search(r'unrecognized configuration parameter "([^"]+)"', message)
    if match and match.group(1) in OPTIONAL_SETTINGS and match.group(1) in settings:
        return match.group(1)
    return None


# --- identity -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database this is: the cluster's system identifier survives renames, DNS and failover aliases."""

    system_identifier: str
    database: str
    server_version: str
    server_version_num: int
    host: str
    port: int | None
    user: str
    note: str = ""
    #: pg_database.oid: a database dropped and created again under the same name is another database.
    oid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        from dbrunbook.views.tables import pairs_html  # the one table helper; imported when a notebook shows it

        return pairs_html([(k, v) for k, v in self.as_dict().items() if k != "note" or v])


def identity(engine: Engine) -> DatabaseIdentity:
    """Return the identity of the database the engine connects to.

    ``pg_control_system()`` may be refused to unprivileged roles; the identifier is then "unknown" and
    ``note`` says why and what grant would fix it.
    """
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT current_database(), current_setting('server_version'), "
            "current_setting('server_version_num')::int, current_user, "
            "(SELECT oid::bigint FROM pg_database WHERE datname = current_database())"
        )).one()
        info = cast(Any, conn.connection.dbapi_connection).info  # psycopg 3's ConnectionInfo
        host, port = info.host, info.port
        note = ""
        try:
            with conn.begin_nested():
                system_identifier = str(conn.execute(
                    text("SELECT system_identifier FROM pg_control_system()")).scalar_one())
        except sqlalchemy.exc.DBAPIError as err:
            system_identifier = "unknown"
            first_line = str(getattr(err, "orig", err)).splitlines()[0]
            note = (f"pg_control_system() failed for user {row[3]}: {first_line}. Grant EXECUTE ON FUNCTION "
                    f"pg_control_system() (or role pg_monitor) to identify the server.")
        conn.rollback()
    return DatabaseIdentity(
        system_identifier=system_identifier,
        database=row[0],
        server_version=row[1],
        server_version_num=int(row[2]),
        host=host or "",
        port=int(port) if port else None,
        user=row[3],
        note=note,
        oid=int(row[4]) if row[4] is not None else None,
    )


# --- connecting -----------------------------------------------------------------------------------------
def check_connection(engine: Engine, target_name: str) -> None:
    """Open one connection and run ``SELECT 1``.

    Raises:
        DatabaseUnavailable: the server refused or could not be reached; URL and reason without password.
    """
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except sqlalchemy.exc.DBAPIError as err:
        raise DatabaseUnavailable(target_name, _display_url(engine), _reason(err, engine)) from err


def _reason(err: sqlalchemy.exc.DBAPIError, engine: Engine) -> str:
    # SQLAlchemy's str() appends SQL and a link; the driver's message is what a human needs.
    message = " ".join(str(err.orig if err.orig is not None else err).split())
    return scrub_driver_message(message, _full_url(engine)).rstrip(".?")


def resolve_url(target: Target, config: Config) -> str:
    """Return the SQLAlchemy URL (psycopg 3 driver) of a target, starting the embedded server if needed.

    The result may carry a password taken from the environment: never print or record it; use
    ``dbrunbook.postgres.db.mask_url`` for anything a human or a record sees.

    Raises:
        MissingSecret: the target's environment variable is not set.
    """
    if target.embedded:
        admin_url = EmbeddedServer.for_config(config).ensure_started()
        ensure_database(admin_url, target.database)
        return with_database(admin_url, target.database)
    if target.service:
        if target.tenant_database:  # libpq: an explicit dbname wins over the service file's
            return f"postgresql+psycopg:///{target.tenant_database}?service={target.service}"
        return f"postgresql+psycopg:///?service={target.service}"
    assert target.url_env is not None
    value = os.environ.get(target.url_env)
    if not value:
        raise MissingSecret(target.name, target.url_env, str(config.path))
    if target.tenant_database:
        return with_database(normalize_url(value), target.tenant_database)
    return normalize_url(value)


def connect_target(config, target_name: str | None = None, run_id: str | None = None) -> tuple[Any, Engine]:
    """Resolve a target of dbrunbook.toml, make its engine and check that it answers.

    Returns:
        (Target, Engine): the engine carries the target's lock and statement timeouts.

    Raises:
        TargetNotFound, MissingSecret: configuration problems.
        DatabaseUnavailable: the database does not accept connections.
    """
    target = config.target(target_name)
    url = resolve_url(target, config)
    engine = make_engine(url, run_id=run_id, lock_timeout=target.lock_timeout,
                         statement_timeout=target.statement_timeout)
    if driver := target_driver(target):
        engine.update_execution_options(dbrunbook_driver=driver)
    try:
        check_connection(engine, target.name)
    except DatabaseUnavailable:
        engine.dispose()
        raise
    return target, engine


# --- databases ------------------------------------------------------------------------------------------
def _run_admin(admin_url: str, work) -> None:
    """Run ``work(connection)`` in AUTOCOMMIT (CREATE/DROP DATABASE cannot run in a transaction)."""
    engine = make_engine(admin_url, poolclass=NullPool).execution_options(isolation_level="AUTOCOMMIT")
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.DBAPIError as err:
            raise DatabaseUnavailable("admin", mask_url(admin_url), _reason(err, engine)) from err
        with conn:
            work(conn)
    finally:
        engine.dispose()


def create_database(admin_url: str, name: str) -> None:
    """Create an empty database ``name`` on the server of ``admin_url``."""
    def work(conn) -> None:
        conn.execute(text(f"CREATE DATABASE {conn.dialect.identifier_preparer.quote_identifier(name)}"))

    _run_admin(admin_url, work)


def ensure_database(admin_url: str, name: str) -> bool:
    """Create database ``name`` unless it exists; True when it was created."""
    created = []

    def work(conn) -> None:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            conn.execute(text(f"CREATE DATABASE {conn.dialect.identifier_preparer.quote_identifier(name)}"))
            created.append(name)

    _run_admin(admin_url, work)
    return bool(created)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions first."""
    def work(conn) -> None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(name)
        if int(conn.execute(text("SHOW server_version_num")).scalar_one()) >= 130000:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            return
        # Before PG13: refuse new sessions, end the current ones, then drop.
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
            return
        conn.execute(text(f"ALTER DATABASE {quoted} ALLOW_CONNECTIONS false"))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}"))

    _run_admin(admin_url, work)
