"""Alembic environment of the main migration set (CRM, payments, read projections, newsletter, social, RBAC).

The standard template, plus two things a tool that drives Alembic needs:

* a connection passed in ``config.attributes["connection"]`` is used as is (Alembic cookbook, "Sharing a
  Connection across one or more programmatic migration commands"), so dbrunbook runs the migrations on
  its own connection, with its own timeouts and application_name;
* the models are loaded from this folder by file path, so the environment works whatever the current
  directory and whether or not the project root is on ``sys.path``.

Each revision runs in its own transaction (``transaction_per_migration``): a failure leaves the database at
the last revision that completed instead of rolling back the whole upgrade. A caller that wants one
transaction for everything begins it on the connection it passes; Alembic then leaves it alone.
"""

from __future__ import annotations

import importlib.util
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import engine_from_config, pool

VERSION_TABLE = "alembic_version"
_MODELS_FILE = Path(__file__).resolve().with_name("models.py")
_MODELS_MODULE = "_dbrunbook_sample_main_models"

config = context.config

# A host program (dbrunbook, pytest) sets configure_logger = False to keep its own logging setup.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _load_models():
    # Cached in sys.modules: env.py runs again for every command, and the models must be declared once.
    module = sys.modules.get(_MODELS_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODELS_MODULE, _MODELS_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODELS_MODULE] = module
        spec.loader.exec_module(module)
    return module


models = _load_models()
target_metadata = models.Base.metadata


def _options() -> dict:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "include_schemas": True,
        "include_name": models.include_name,
        "transaction_per_migration": True,
    }


def _url() -> str:
    # `alembic -x url=postgresql://...` overrides the ini's placeholder for a one-off command; a plain
    # postgresql:// URL would pick psycopg2, which this project does not install.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def run_migrations_offline() -> None:
    """Render the migrations as SQL (``alembic upgrade head --sql``) without a database."""
    context.configure(
        url=_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection) -> None:
    context.configure(connection=connection, **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the passed connection, or on a new one made from the ini."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    section = config.get_section(config.config_ini_section, {})
    section["sqlalchemy.url"] = _url()
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
