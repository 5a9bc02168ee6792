"""Load dbrunbook.toml: targets (where), migration sets (what), project paths (records, keys).

A target never holds a password: its connection comes from an environment variable (``url_env``), a libpq
service name (``service``, resolved by libpq from ~/.pg_service.conf with ~/.pgpass), or the embedded server
(``embedded = true``, the default target ``local``). A migration set is any existing Alembic project, used
unchanged: its alembic.ini (or pyproject.toml), the ini section, its version table, and the environment
variables its env.py reads.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from dbrunbook import config_schema
from dbrunbook.config_model import Backfill, Config, MigrationSet, Target, TargetGroup
from dbrunbook.config_schema import parse_duration
from dbrunbook.config_tables import (
    DRIVERS,
    X_ARGUMENTS_ENV,
    read_backfill,
    read_group,
    read_migration_set,
    read_table,
    read_target,
)
from dbrunbook.errors import ConfigError, TargetNotFound

__all__ = [
    "CONFIG_NAME", "DRIVERS", "ENV_CONFIG", "X_ARGUMENTS_ENV", "Backfill", "Config", "MigrationSet", "Target",
    "TargetGroup", "find_config", "load_config", "normalize_url", "parse_duration",
    "target_driver", "url_driver",
]

CONFIG_NAME = "dbrunbook.toml"
ENV_CONFIG = "DBRUNBOOK_CONFIG"


def find_config(start: Path | None = None) -> Path:
    """Locate dbrunbook.toml: $DBRUNBOOK_CONFIG, else the nearest one in this folder or a parent."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{ENV_CONFIG}={env} does not name a file. Unset it or point it at a dbrunbook.toml.")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"No {CONFIG_NAME} in {here} or any parent folder. Run dbrunbook from the project folder, "
        f"or set {ENV_CONFIG} to the file's path."
    )


def load_config(path: Path | str | None = None) -> Config:
    """Read and check dbrunbook.toml.

    Raises:
        ConfigError: the file is missing or malformed; the message names the file, the key and the fix.
    """
    path = Path(path).resolve() if path else find_config()
    data = _read_toml(path)
    root = path.parent
    config_schema.check_unknown(data, config_schema.TOP_LEVEL_KEYS, "", path)
    project = read_table(data, "project", path)
    records = read_table(data, "records", path)
    for table, raw, kinds in (("project", project, config_schema.PROJECT_KEYS),
                              ("records", records, config_schema.RECORDS_KEYS)):
        config_schema.check_unknown(raw, kinds, table, path)
        config_schema.check_table(raw, kinds, table, path)

    def rel(value: str | None, default: str) -> Path:
        p = Path(value or default).expanduser()
        return p if p.is_absolute() else (root / p).resolve()

    targets = {name: read_target(name, raw, path) for name, raw in read_table(data, "targets", path).items()}
    if "local" not in targets:
        targets["local"] = Target(name="local", embedded=True, description="the embedded PostgreSQL")
    sets = {name: read_migration_set(name, raw, path, root)
            for name, raw in read_table(data, "migration_sets", path).items()}
    if not sets:
        raise ConfigError(f"{path} defines no [migration_sets.NAME]; add one with alembic_ini = 'path/to/alembic.ini'.")
    backfills = {name: read_backfill(name, raw, path) for name, raw in read_table(data, "backfills", path).items()}
    state_dir = rel(project.get("state_dir"), ".dbrunbook")
    keys_dir = rel(records.get("keys_dir"), str(state_dir / "keys"))
    default_target = project.get("default_target", "local")
    if default_target not in targets:
        raise TargetNotFound(default_target, sorted(targets), str(path))
    outputs_dir = rel(project.get("outputs"), "outputs")
    for key, table, folder in (("outputs", "project", outputs_dir), ("state_dir", "project", state_dir),
                               ("keys_dir", "records", keys_dir)):
        config_schema.check_directory(folder, key, table, path)
    groups = {name: read_group(name, raw, path, targets) for name, raw in read_table(data, "groups", path).items()}
    return Config(
        path=path,
        targets=targets,
        migration_sets=sets,
        outputs_dir=outputs_dir,
        runbooks_dir=rel(project.get("runbooks"), "runbooks"),
        keys_dir=keys_dir,
        state_dir=state_dir,
        # The trust file is the team's, reviewed like code: in the project, not beside the private key.
        allowed_signers=rel(records.get("allowed_signers"), "allowed_signers"),
        default_target=default_target,
        backfills=backfills,
        groups=groups,
    )


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist. Create it (see README, 'Configuration').") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}. Fix the line it names.") from err


_PREFIXES = ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql+asyncpg://", "postgresql://",
             "postgres://")


def normalize_url(url: str) -> str:
    """Make a libpq/SQLAlchemy URL use the psycopg 3 driver (what dbrunbook's own queries use).

    Every SQLAlchemy PostgreSQL form is accepted: ``postgresql://``, ``postgres://``, ``+psycopg2``,
    ``+psycopg``, ``+asyncpg``. The driver the project's env.py gets is ``url_driver`` of the URL as given.
    """
    for prefix in _PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ConfigError("A target URL must start with postgresql:// or postgresql+DRIVER:// (DRIVER one of "
                      "psycopg2, psycopg, asyncpg); other databases are not supported.")


def url_driver(url: str) -> str | None:
    """The driver a PostgreSQL URL names (``psycopg2``, ``psycopg``, ``asyncpg``); None for a bare scheme."""
    match = re.match(r"^postgres(?:ql)?(?:\+(\w+))?://", url)
    return match.group(1) if match else None


def target_driver(target: Target) -> str | None:
    """The driver the target's URL variable names; for a bare ``postgresql://``, SQLAlchemy's default.

    SQLAlchemy reads a bare URL as psycopg2, so that is what the project's own ``alembic`` used; when
    psycopg2 is not installed the project cannot have used it, and psycopg 3 is kept. None for service and
    embedded targets, whose URLs dbrunbook writes itself.
    """
    value = os.environ.get(target.url_env) if target.url_env else None
    if not value:
        return None
    named = url_driver(value)
    if named:
        return named
    import importlib.util

    return "psycopg2" if importlib.util.find_spec("psycopg2") is not None else "psycopg"
