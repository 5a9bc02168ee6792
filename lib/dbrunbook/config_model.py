"""The value objects of dbrunbook.toml: ``Target``, ``MigrationSet``, ``Backfill``, ``TargetGroup``, ``Config``.

Frozen dataclasses with every path already absolute, so the rest of the library never re-reads the file or
resolves a relative path against the wrong folder. ``Config.target`` also answers for the generated members
of a fleet (``GROUP:MEMBER``), which are not listed in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dbrunbook.errors import MigrationSetNotFound, TargetNotFound


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
    backfill_flush_after: int = 32  # a backfill's batches write back their pages every N 8-kB blocks (0: server's)
    backfill_checkpoint_percent: int = 80  # ... or before a batch whose WAL would force a checkpoint (0: off)
    approval_max_age: str = "24h"  # protected targets: how old the second person's approval of a preview may be
    tenant_database: str | None = None  # a database-per-tenant member: this database on the group's server

    def _repr_html_(self) -> str:
        source = "embedded" if self.embedded else (f"${self.url_env}" if self.url_env else f"service={self.service}")
        rows = [("target", self.name), ("connection", source), ("protected", self.protected),
                ("lock_timeout", self.lock_timeout), ("statement_timeout", self.statement_timeout)]
        from dbrunbook.views.tables import pairs_html  # the one table helper; imported when a notebook shows it

        return pairs_html(rows)


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


def _group_member(config: Config, name: str) -> Target | None:
    """The target of member ``GROUP:MEMBER`` of a databases or schemas group (membership is the fleet's check)."""
    group_name, sep, member = name.partition(":")
    group = config.groups.get(group_name)
    if not sep or not member or group is None or group.kind == "targets":
        return None
    if group.kind == "schemas":
        base = config.targets[cast(str, group.target)]  # a schemas group names its target (read_group checks)
        return Target(**{**base.__dict__, **group.policy, "name": name})
    return Target(name=name, url_env=group.url_env, service=group.service, embedded=group.embedded,
                  database=member, tenant_database=None if group.embedded else member,
                  description=f"tenant database '{member}' of group '{group.name}'", **group.policy)
