"""Load dbrunbook.toml: targets (where), migration sets (what), project paths (records, keys).

A target never holds a password: its connection comes from an environment variable (``url_env``), a libpq
service name (``service``, resolved by libpq from ~/.pg_service.conf with ~/.pgpass), or the embedded server
(``embedded = true``, the default target ``local``). A migration set is any existing Alembic project, used
unchanged: its alembic.ini (or pyproject.toml), the ini section, its version table, and the environment
variables its env.py reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dbrunbook import config_schema
from dbrunbook.errors import ConfigError, MigrationSetNotFound, MissingSecret, TargetNotFound

CONFIG_NAME = "dbrunbook.toml"
ENV_CONFIG = "DBRUNBOOK_CONFIG"

_TARGET_KEYS = {
    "url_env", "service", "embedded", "protected", "lock_timeout", "statement_timeout", "retries",
    "description", "health_url", "maintenance_command", "maintenance_flag", "backup_max_age",
    "blocker_max_age", "database",
    "backfill_max_lag", "backfill_max_wal_backlog",
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


@dataclass(frozen=True)
class Target:
    """A database dbrunbook may act on, and the policy that applies to it."""

    name: str
    url_env: str | None = None
    service: str | None = None
    embedded: bool = False
    protected: bool = False
    lock_timeout: str = "2s"
    statement_timeout: str = "15min"
    retries: int = 5
    description: str = ""
    health_url: str | None = None
    maintenance_command: str | None = None
    maintenance_flag: str | None = None
    backup_max_age: str = "24h"
    blocker_max_age: str = "60s"
    database: str = "app"  # only for embedded targets: the database inside the embedded server
    backfill_max_lag: str = "10s"  # a backfill pauses while a standby replays further behind than this
    backfill_max_wal_backlog: int = 64  # ... or while more WAL segments than this wait to be archived
    approval_max_age: str = "24h"  # protected targets: how old the second person's approval of a preview may be
    tenant_database: str | None = None  # a database-per-tenant member: this database on the group's server

    def _repr_html_(self) -> str:
        source = "embedded" if self.embedded else (f"${self.url_env}" if self.url_env else f"service={self.service}")
        rows = [("target", self.name), ("connection", source), ("protected", self.protected),
                ("lock_timeout", self.lock_timeout), ("statement_timeout", self.statement_timeout)]
        return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


@dataclass(frozen=True)
class MigrationSet:
    """An Alembic project dbrunbook drives without editing it."""

    name: str
    alembic_ini: Path | None = None
    section: str = "alembic"
    script_location: Path | None = None
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    url_env: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    models: str | None = None
    #: "module:attr" of the tables that exist before the chain's first revision (a MetaData or declarative
    #: Base, created with create_all; or a callable given a Connection), built on each empty scratch database
    baseline: str | None = None
    description: str = ""
    driver: str | None = None  # the DBAPI env.py gets (psycopg2/psycopg/asyncpg); None: the target URL's

    @property
    def base_dir(self) -> Path:
        """The folder Alembic's relative paths are resolved against (the ini's folder)."""
        if self.alembic_ini is not None:
            return self.alembic_ini.parent
        assert self.script_location is not None
        return self.script_location.parent


@dataclass(frozen=True)
class Backfill:
    """A declared large-table backfill: ``UPDATE table SET <set> WHERE <where>``, run in keyset batches over ``key``."""

    name: str
    table: str
    key: tuple[str, ...]
    set: str
    where: str
    migration_set: str | None = None
    revision: str | None = None
    description: str = ""


@dataclass(frozen=True)
class TargetGroup:
    """A fleet: an explicit list of targets, a database per tenant, or a schema per tenant."""

    name: str
    kind: str  # "targets" | "databases" | "schemas"
    targets: tuple[str, ...] = ()
    url_env: str | None = None
    service: str | None = None
    embedded: bool = False
    databases: tuple[str, ...] = ()
    databases_query: str | None = None
    target: str | None = None  # schema per tenant: the one database's target
    schemas: tuple[str, ...] = ()
    schemas_query: str | None = None
    x_argument: str = "tenant"
    description: str = ""
    policy: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The whole of dbrunbook.toml, with paths made absolute against the file's folder."""

    path: Path
    targets: dict[str, Target]
    migration_sets: dict[str, MigrationSet]
    outputs_dir: Path
    runbooks_dir: Path
    keys_dir: Path
    state_dir: Path
    allowed_signers: Path
    default_target: str = "local"
    backfills: dict[str, Backfill] = field(default_factory=dict)
    groups: dict[str, TargetGroup] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def target(self, name: str | None = None) -> Target:
        """Return the target called ``name`` (default: the configured default)."""
        name = name or self.default_target
        try:
            return self.targets[name]
        except KeyError:
            member = _group_member(self, name)
            if member is not None:
                return member
            raise TargetNotFound(name, sorted(self.targets), str(self.path)) from None

    def migration_set(self, name: str) -> MigrationSet:
        try:
            return self.migration_sets[name]
        except KeyError:
            raise MigrationSetNotFound(name, sorted(self.migration_sets), str(self.path)) from None

    def select_sets(self, names: str | list[str] | None = "all") -> list[MigrationSet]:
        """Resolve a ``migration_set`` parameter: 'all' (or empty), one name, or a comma-separated list."""
        if names in (None, "", "all"):
            return list(self.migration_sets.values())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        return [self.migration_set(n) for n in names]


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
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist. Create it (see README, 'Configuration').") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}. Fix the line it names.") from err
    root = path.parent
    config_schema.check_unknown(data, config_schema.TOP_LEVEL_KEYS, "", path)
    project = _table(data, "project", path)
    records = _table(data, "records", path)
    for table, raw, kinds in (("project", project, config_schema.PROJECT_KEYS),
                              ("records", records, config_schema.RECORDS_KEYS)):
        config_schema.check_unknown(raw, kinds, table, path)
        config_schema.check_table(raw, kinds, table, path)

    def rel(value: str | None, default: str) -> Path:
        p = Path(value or default).expanduser()
        return p if p.is_absolute() else (root / p).resolve()

    targets = {name: _target(name, raw, path) for name, raw in _table(data, "targets", path).items()}
    if "local" not in targets:
        targets["local"] = Target(name="local", embedded=True, description="the embedded PostgreSQL")
    sets = {name: _migration_set(name, raw, path, root) for name, raw in _table(data, "migration_sets", path).items()}
    if not sets:
        raise ConfigError(f"{path} defines no [migration_sets.NAME]; add one with alembic_ini = 'path/to/alembic.ini'.")
    backfills = {name: _backfill(name, raw, path) for name, raw in _table(data, "backfills", path).items()}
    state_dir = rel(project.get("state_dir"), ".dbrunbook")
    keys_dir = rel(records.get("keys_dir"), str(state_dir / "keys"))
    default_target = project.get("default_target", "local")
    if default_target not in targets:
        raise TargetNotFound(default_target, sorted(targets), str(path))
    outputs_dir = rel(project.get("outputs"), "outputs")
    for key, table, folder in (("outputs", "project", outputs_dir), ("state_dir", "project", state_dir),
                               ("keys_dir", "records", keys_dir)):
        config_schema.check_directory(folder, key, table, path)
    groups = {name: _group(name, raw, path, targets) for name, raw in _table(data, "groups", path).items()}
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


def _table(data: dict, key: str, path: Path) -> dict:
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


def _target(name: str, raw: dict, path: Path) -> Target:
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
    try:
        return Target(name=name, **raw)
    except TypeError as err:
        raise ConfigError(f"{path}: [targets.{name}]: {err}.") from err


def _migration_set(name: str, raw: dict, path: Path, root: Path) -> MigrationSet:
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


def _backfill(name: str, raw: dict, path: Path) -> Backfill:
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


def _group(name: str, raw: dict, path: Path, targets: dict[str, Target]) -> TargetGroup:
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
        return TargetGroup(name=name, kind=kind, policy=policy, **values)
    except TypeError as err:
        raise ConfigError(f"{path}: [{where}]: {err}.") from err


def _group_member(config: Config, name: str) -> Target | None:
    """The target of member ``GROUP:MEMBER`` of a databases or schemas group (membership is the fleet's check)."""
    group_name, sep, member = name.partition(":")
    group = config.groups.get(group_name)
    if not sep or not member or group is None or group.kind == "targets":
        return None
    if group.kind == "schemas":
        base = config.targets[group.target]
        return Target(**{**base.__dict__, **group.policy, "name": name})
    return Target(name=name, url_env=group.url_env, service=group.service, embedded=group.embedded,
                  database=member, tenant_database=None if group.embedded else member,
                  description=f"tenant database '{member}' of group '{group.name}'", **group.policy)


_DURATION_UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
    "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}


def parse_duration(text: str | float, *, key: str | None = None) -> float:
    """Seconds in a duration as dbrunbook.toml writes them: "60s", "5min", "24h", "7d", "1h30min", "100ms".

    A bare number means seconds.

    Raises:
        ConfigError: not a duration (``key`` names the setting in the message).
    """
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    rest = re.sub(r"(\d+(?:\.\d+)?)\s*([a-z]*)|\s+", "", value)
    if not parts or rest or any(unit and unit not in _DURATION_UNITS for _, unit in parts):
        where = f" ({key} of the target in dbrunbook.toml)" if key else ""
        raise ConfigError(f"'{text}' is not a duration; write it like 60s, 5min, 24h, 7d or 1h30min{where}.")
    return sum(float(n) * _DURATION_UNITS[unit or "s"] for n, unit in parts)


def resolve_url(target: Target, config: Config) -> str:
    """Return the SQLAlchemy URL (psycopg 3 driver) of a target, starting the embedded server if needed.

    The result may carry a password taken from the environment: never print or record it; use
    ``dbrunbook.postgres.db.mask_url`` for anything a human or a record sees.

    Raises:
        MissingSecret: the target's environment variable is not set.
    """
    if target.embedded:
        from dbrunbook.postgres import db
        from dbrunbook.postgres.embedded import EmbeddedServer

        admin_url = EmbeddedServer.for_config(config).ensure_started()
        db.ensure_database(admin_url, target.database)
        return db.with_database(admin_url, target.database)
    if target.service:
        if target.tenant_database:  # libpq: an explicit dbname wins over the service file's
            return f"postgresql+psycopg:///{target.tenant_database}?service={target.service}"
        return f"postgresql+psycopg:///?service={target.service}"
    assert target.url_env is not None
    value = os.environ.get(target.url_env)
    if not value:
        raise MissingSecret(target.name, target.url_env, str(config.path))
    if target.tenant_database:
        from dbrunbook.postgres import db

        return db.with_database(normalize_url(value), target.tenant_database)
    return normalize_url(value)


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
