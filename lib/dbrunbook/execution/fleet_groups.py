"""The members of a target group ([groups.NAME] in dbrunbook.toml), in a stable order, and how to run each.

A member is a target name ``dbrunbook run`` accepts: the listed targets of an explicit group, or
``GROUP:MEMBER`` for a database per tenant (the database ``MEMBER`` on the group's server) and a schema per
tenant (the schema ``MEMBER`` in the group's one database, given to env.py as ``-x tenant=MEMBER``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from dbrunbook.config import X_ARGUMENTS_ENV, Config, Target, TargetGroup
from dbrunbook.errors import ConfigError, DbRunbookError
from dbrunbook.postgres.db import resolve_url

__all__ = ["GroupNotFound", "GroupQueryFailed", "Member", "describe", "group_members", "member_env"]

log = logging.getLogger(__name__)


class GroupNotFound(ConfigError):
    """A group name that dbrunbook.toml does not define."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown group '{name}' in {path}; known groups: {', '.join(known) or '(none)'}. "
            f"Add a [groups.{name}] table (README, 'Fleets') or pass one of the known names with -g."
        )


class GroupQueryFailed(DbRunbookError):
    """The query that lists a group's tenants could not run."""

    exit_status = 2

    def __init__(self, group: str, query_key: str, reason: str):
        self.group, self.query_key, self.reason = group, query_key, reason
        super().__init__(
            f"Group '{group}': {query_key} failed: {reason}. Nothing was run. Fix the query in "
            f"[groups.{group}] of dbrunbook.toml (it must return one name per row)."
        )


@dataclass(frozen=True)
class Member:
    """One target of a fleet: the name ``dbrunbook run -t`` takes, and the environment its run needs."""

    target: str
    env: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict:
        return {"target": self.target, "env": dict(self.env)}


def _query(url: str, query: str, group: str, key: str) -> list[str]:
    from dbrunbook.postgres import db

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(query)).all()
    except sa.exc.DBAPIError as err:
        reason = " ".join(str(err.orig if err.orig is not None else err).split())
        raise GroupQueryFailed(group, key, db.mask_url(reason) if "://" in reason else reason) from err
    finally:
        engine.dispose()
    return [str(row[0]) for row in rows if row[0] is not None]


def group_members(config: Config, name: str) -> list[Member]:
    """List the members of group ``name``: listed names in their order, queried names sorted, no duplicates.

    Raises:
        GroupNotFound: no such group.
        GroupQueryFailed: ``databases_query`` / ``schemas_query`` did not run.
        ConfigError: the group is empty.
    """
    group = config.groups.get(name)
    if group is None:
        raise GroupNotFound(name, sorted(config.groups), str(config.path))
    if group.kind == "targets":
        members = [Member(t) for t in group.targets]
    elif group.kind == "databases":
        names = list(group.databases)
        if group.databases_query:
            # Any database of the server answers the catalog query; 'postgres' always exists.
            probe = Target(name=f"{name}:postgres", url_env=group.url_env, service=group.service,
                           embedded=group.embedded, database="postgres",
                           tenant_database=None if group.embedded else "postgres")
            names += sorted(_query(resolve_url(probe, config), group.databases_query, name, "databases_query"))
        members = [Member(f"{name}:{d}") for d in names]
    else:
        names = list(group.schemas)
        if group.schemas_query:
            base = config.target(group.target)
            names += sorted(_query(resolve_url(base, config), group.schemas_query, name, "schemas_query"))
        members = [Member(f"{name}:{s}", ((X_ARGUMENTS_ENV, f"{group.x_argument}={s}"),)) for s in names]
    unique = list(dict.fromkeys(members))
    if not unique:
        raise ConfigError(f"Group '{name}' in {config.path} has no members (its list is empty and its query "
                          f"returned no rows). Nothing to run.")
    return unique


def describe(group: TargetGroup) -> str:
    """One line saying what kind of group it is (for the roll-up record and the CLI)."""
    return {"targets": "explicit list of targets", "databases": "database per tenant",
            "schemas": f"schema per tenant in target '{group.target}' (-x {group.x_argument}=NAME)"}[group.kind]


def member_env(config: Config, target: str | None) -> dict[str, str]:
    """The environment a member's run needs: ``-x`` of a schema-per-tenant member, else nothing."""
    group_name, sep, member = (target or "").partition(":")
    group = config.groups.get(group_name)
    if sep and member and group is not None and group.kind == "schemas":
        return {X_ARGUMENTS_ENV: f"{group.x_argument}={member}"}
    return {}
