"""Each table of dbrunbook.toml checked and read into its value object: targets, sets, backfills, groups.

The checks that need more than a key's type (``config_schema``) live here: exactly one connection source, no
connection string in the file, paths that exist, a fleet group of exactly one kind. Each message names the
file, the table and what to write instead.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dbrunbook import config_schema
from dbrunbook.config_model import Backfill, MigrationSet, Target, TargetGroup
from dbrunbook.errors import ConfigError

_TARGET_KEYS = {
    "url_env", "service", "embedded", "protected", "lock_timeout", "statement_timeout", "retries",
    "description", "health_url", "maintenance_command", "maintenance_flag", "backup_max_age",
    "blocker_max_age", "database",
    "backfill_max_lag", "backfill_max_wal_backlog", "backfill_flush_after", "backfill_checkpoint_percent",
    "approval_max_age",
}
_BACKFILL_KEYS = {"table", "key", "set", "where", "migration_set", "revision", "description"}
_SET_KEYS = {"alembic_ini", "section", "script_location", "version_table", "version_table_schema",
             "url_env", "env", "models", "baseline", "description", "driver"}
#: The drivers a migration set's env.py may be handed (``driver = ...`` on the set, or the target URL's own).
DRIVERS = ("psycopg2", "psycopg", "asyncpg")
#: [groups.NAME]: a fleet of targets (see fleet.py). The policy keys apply to every generated member.
_GROUP_POLICY_KEYS = {"protected", "lock_timeout", "statement_timeout", "retries"}
_GROUP_KEYS = {"targets", "url_env", "service", "embedded", "databases", "databases_query", "target", "schemas",
               "schemas_query", "x_argument", "description"} | _GROUP_POLICY_KEYS
#: Set by 'dbrunbook fleet' for a schema-per-tenant member: "tenant=NAME", given to env.py as ``-x``.
X_ARGUMENTS_ENV = "DBRUNBOOK_X"


def read_table(data: dict, key: str, path: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{key}' must be a table ([{key}]), not {type(value).__name__}.")
    return value


def _check_keys(raw: dict, allowed: set[str], where: str, path: Path) -> None:
    for secretish in ("url", "password", "dsn"):
        if secretish in raw:
            raise ConfigError(
                f"{path}: [{where}] has '{secretish}'; connection strings never go in this file. "
                f"Use url_env = 'NAME_OF_ENV_VAR' or service = 'libpq service name'."
            )
    config_schema.check_unknown(raw, allowed, where, path)


def read_target(name: str, raw: dict, path: Path) -> Target:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [targets.{name}] must be a table.")
    _check_keys(raw, _TARGET_KEYS, f"targets.{name}", path)
    config_schema.check_table(raw, config_schema.TARGET_KINDS, f"targets.{name}", path)
    sources = [k for k in ("url_env", "service") if raw.get(k)] + (["embedded"] if raw.get("embedded") else [])
    if len(sources) != 1:
        raise ConfigError(
            f"{path}: [targets.{name}] needs exactly one of url_env, service or embedded = true "
            f"(found {', '.join(sources) or 'none'})."
        )
    if int(raw.get("backfill_flush_after", 0)) > 256:
        raise ConfigError(f"{path}: [targets.{name}] backfill_flush_after = {raw['backfill_flush_after']} is over "
                          f"PostgreSQL's limit for backend_flush_after: give 0 to 256 blocks of 8 kB (32 is 256 kB).")
    if not 0 <= int(raw.get("backfill_checkpoint_percent", 0)) <= 100:
        raise ConfigError(f"{path}: [targets.{name}] backfill_checkpoint_percent = "
                          f"{raw['backfill_checkpoint_percent']} is not a percentage: give 0 (off) to 100.")
    try:
        return Target(name=name, **raw)
    except TypeError as err:
        raise ConfigError(f"{path}: [targets.{name}]: {err}.") from err


def read_migration_set(name: str, raw: dict, path: Path, root: Path) -> MigrationSet:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [migration_sets.{name}] must be a table.")
    _check_keys(raw, _SET_KEYS, f"migration_sets.{name}", path)
    config_schema.check_table(raw, config_schema.SET_KINDS, f"migration_sets.{name}", path)
    raw = dict(raw)
    for key in ("alembic_ini", "script_location"):
        if raw.get(key):
            p = Path(raw[key]).expanduser()
            raw[key] = p if p.is_absolute() else (root / p).resolve()
    if not raw.get("alembic_ini") and not raw.get("script_location"):
        raise ConfigError(
            f"{path}: [migration_sets.{name}] needs alembic_ini = 'path/to/alembic.ini' "
            f"(or pyproject.toml), or script_location = 'path/to/migrations'."
        )
    ini = raw.get("alembic_ini")
    if ini is not None and not ini.is_file():
        raise ConfigError(f"{path}: [migration_sets.{name}] alembic_ini = {ini} does not exist. Fix the path.")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ConfigError(f"{path}: [migration_sets.{name}] env must be a table of strings.")
    if raw.get("driver") is not None and raw["driver"] not in DRIVERS:
        raise ConfigError(f"{path}: [migration_sets.{name}] driver = {raw['driver']!r} is not one of "
                          f"{', '.join(DRIVERS)}. Set the driver the project's env.py uses.")
    if "{" in str(raw.get("version_table_schema") or ""):
        # A schema-per-tenant project keeps each tenant's version table in its schema: '{tenant}', filled in
        # from the fleet's -x for a member's run (outside a fleet it stays as written: there is no tenant).
        x = dict(item.split("=", 1) for item in os.environ.get(X_ARGUMENTS_ENV, "").split(",") if "=" in item)
        with contextlib.suppress(KeyError, IndexError, ValueError):
            raw["version_table_schema"] = raw["version_table_schema"].format(**x)
    return MigrationSet(name=name, **raw)


def read_backfill(name: str, raw: dict, path: Path) -> Backfill:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [backfills.{name}] must be a table.")
    _check_keys(raw, _BACKFILL_KEYS, f"backfills.{name}", path)
    missing = [k for k in ("table", "key", "set", "where") if not raw.get(k)]
    if missing:
        raise ConfigError(f"{path}: [backfills.{name}] needs {', '.join(missing)} (e.g. table = 'users', "
                          f"key = 'id', set = 'score = 0', where = 'score IS NULL').")
    key = raw["key"]
    keys = [key] if isinstance(key, str) else key
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{path}: [backfills.{name}] key must be a column name or a list of them.")
    for k in ("table", "set", "where", "migration_set", "revision", "description"):
        if k in raw and not isinstance(raw[k], str):
            raise ConfigError(f"{path}: [backfills.{name}] {k} must be a string.")
    return Backfill(name=name, **{**raw, "key": tuple(keys)})


def read_group(name: str, raw: dict, path: Path, targets: dict[str, Target]) -> TargetGroup:
    where = f"groups.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{where}] must be a table.")
    _check_keys(raw, _GROUP_KEYS, where, path)
    for key in ("targets", "databases", "schemas"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{path}: [{where}] {key} must be a list of names, like {key} = [\"a\", \"b\"].")
    server = [k for k in ("url_env", "service") if raw.get(k)] + (["embedded"] if raw.get("embedded") else [])
    kinds = [k for k, keys in (("targets", ("targets",)), ("databases", ("databases", "databases_query")),
                               ("schemas", ("schemas", "schemas_query"))) if any(raw.get(x) for x in keys)]
    if len(kinds) != 1:
        raise ConfigError(
            f"{path}: [{where}] needs exactly one of targets = [...], databases = [...] (or databases_query) "
            f"or schemas = [...] (or schemas_query) (found {', '.join(kinds) or 'none'}).")
    kind = kinds[0]
    if kind == "databases" and len(server) != 1:
        raise ConfigError(
            f"{path}: [{where}] is a database per tenant: it needs exactly one of url_env (the server's URL "
            f"variable), service or embedded = true (found {', '.join(server) or 'none'}).")
    if kind != "databases" and server:
        raise ConfigError(f"{path}: [{where}] has {', '.join(server)}, which only a databases group uses.")
    if kind == "schemas" and raw.get("target") not in targets:
        raise ConfigError(
            f"{path}: [{where}] is a schema per tenant: set target = 'NAME' to the target of its one database "
            f"(known: {', '.join(sorted(targets))}).")
    unknown = sorted(set(raw.get("targets", [])) - set(targets))
    if unknown:
        raise ConfigError(f"{path}: [{where}] lists unknown target(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(targets))}.")
    for key in ("databases_query", "schemas_query"):
        if key in raw and not str(raw[key]).lstrip().lower().startswith(("select", "with", "values")):
            raise ConfigError(f"{path}: [{where}] {key} must be a query (SELECT ...) returning one name per row.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k not in _GROUP_POLICY_KEYS}
    policy = {k: raw[k] for k in _GROUP_POLICY_KEYS if k in raw}
    try:
        return TargetGroup(name=name, kind=kind, policy=policy, **values)  # type: ignore[arg-type]  # checked above
    except TypeError as err:
        raise ConfigError(f"{path}: [{where}]: {err}.") from err
