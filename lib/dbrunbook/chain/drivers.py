"""The project's own database driver: what env.py is handed, whatever dbrunbook itself connects with.

dbrunbook's own queries (ledger, counts, preflight, locks) use psycopg 3. A project's migrations may rely
on its driver: psycopg2 binds parameters on the client, so ``UPDATE t SET n = :v`` with a string for an
integer column works there and fails under psycopg 3's server-side binding; an async env.py needs asyncpg.
So the connection and URL handed to env.py use the project's driver: ``driver`` on the migration set, else
the driver the target's URL names (``postgresql+psycopg2://``; a bare ``postgresql://`` is SQLAlchemy's
default, psycopg2), else psycopg 3. Our session settings (application_name, lock_timeout,
statement_timeout) go with it: in the URL for libpq drivers, on connect for asyncpg (which takes no
``options``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from dbrunbook.config import Config, MigrationSet, Target, target_driver
from dbrunbook.postgres.db import resolve_url

log = logging.getLogger(__name__)

__all__ = ["DRIVER_OPTION", "Settings", "driver_for", "export_environment", "project_connection",
           "session_settings", "url_for_env", "with_driver"]

#: Execution option on dbrunbook's engine of a target: the driver its URL named (set by ``db.connect_target``).
DRIVER_OPTION = "dbrunbook_driver"

Settings = tuple[str, str, str]  # application_name, lock_timeout, statement_timeout


def driver_for(mset: MigrationSet, conn: Connection | sa.Engine) -> str:
    """The driver env.py of ``mset`` gets: the set's ``driver``, the target URL's, else our connection's."""
    return mset.driver or conn.get_execution_options().get(DRIVER_OPTION) or conn.dialect.driver


def with_driver(url: str | sa.URL, driver: str) -> sa.URL:
    """The URL with ``postgresql+<driver>`` as its scheme, and its query made acceptable to that driver."""
    url = sa.make_url(url).set(drivername=f"postgresql+{driver}")
    if driver == "asyncpg":
        # asyncpg.connect takes keyword arguments, not libpq's: 'options' and 'application_name' are set on
        # connect instead (asyncpg_settings), sslmode is its 'ssl'.
        query = dict(url.query)
        query.pop("options", None)
        query.pop("application_name", None)
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    return url


def session_settings(conn: Connection) -> Settings:
    """Our connection's application_name, lock_timeout and statement_timeout, as the server reports them."""
    began = not conn.in_transaction()
    try:
        row = conn.execute(sa.text(
            "SELECT current_setting('application_name'), current_setting('lock_timeout'), "
            "current_setting('statement_timeout')")).one()
    finally:
        if began:
            conn.rollback()
    return row[0], row[1], row[2]


def url_for_env(conn: Connection, driver: str, settings: Settings) -> str:
    """Our URL with the project's driver and our session settings, for env.py files that build an engine.

    The result carries the password: it goes into the Alembic config and the set's ``url_env`` only.
    """
    app, lock, statement = settings
    url = conn.engine.url
    if driver != "asyncpg":
        theirs = url.query.get("options")
        options = " ".join(filter(None, [theirs if isinstance(theirs, str) else None,
                                         f"-c lock_timeout={lock}", f"-c statement_timeout={statement}"]))
        url = url.update_query_dict({"application_name": app, "options": options})
    return with_driver(url, driver).render_as_string(hide_password=False)


@contextlib.contextmanager
def project_connection(conn: Connection, driver: str, url: str) -> Iterator[Connection]:
    """The connection handed to env.py: ours when it has the project's driver, else one of the project's.

    asyncpg cannot hand a synchronous connection over, so an async project gets ours (an env.py that
    accepts a connection runs its migrations on it) and builds its own engine from ``url`` otherwise. A
    caller's open transaction is never left: its connection is used, whatever the driver.
    """
    if driver in (conn.dialect.driver, "asyncpg"):
        yield conn
        return
    if conn.in_transaction():
        log.warning("The connection given is inside a transaction: env.py runs on it with driver %s, not %s",
                    conn.dialect.driver, driver)
        yield conn
        return
    engine = sa.create_engine(url, poolclass=NullPool, hide_parameters=True)
    try:
        with engine.connect() as theirs:
            yield theirs
    finally:
        engine.dispose()


@contextlib.contextmanager
def asyncpg_settings(settings: Settings) -> Iterator[None]:
    """Give every asyncpg connection opened meanwhile (env.py's own engine) our session settings."""
    app, lock, statement = settings

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is None or not type(driver).__module__.startswith("asyncpg"):
            return
        dbapi_connection.run_async(lambda c: c.execute(
            "SELECT set_config('application_name', $1, false), set_config('lock_timeout', $2, false), "
            "set_config('statement_timeout', $3, false)", app, lock, statement))

    sa.event.listen(sa.pool.Pool, "connect", on_connect)
    try:
        yield
    finally:
        sa.event.remove(sa.pool.Pool, "connect", on_connect)


def export_environment(config: Config, target: Target, url: str | None = None) -> dict[str, str]:
    """Put every migration set's ``env`` and ``url_env`` into ``os.environ``, before project code is imported.

    A settings module that reads its URL variable when it is imported (the revision files import the
    application) must see the target, not its own default. Called by the launcher before it reads any
    revision script, and by ``Session`` in the kernel. Returns the names set and their masked values.

    Raises:
        MissingSecret: the target's URL variable is not set (only when a set has ``url_env``).
    """
    from dbrunbook.postgres.db import mask_url

    sets = list(config.migration_sets.values())
    done: dict[str, str] = {}
    for mset in sets:
        os.environ.update(mset.env)
        done.update(mset.env)
    wanted = [m for m in sets if m.url_env]
    if wanted:
        url = url or resolve_url(target, config)
        for mset in wanted:
            name = cast(str, mset.url_env)  # wanted: the sets that name one
            driver = mset.driver or target_driver(target) or "psycopg"
            value = with_driver(url, driver).render_as_string(hide_password=False)
            os.environ[name] = value
            done[name] = mask_url(value)
    return done
