"""What the troubleshoot checks read of a migration set: its revisions, current heads, pending offline SQL.

Several families of checks start from the same facts (which revisions the scripts know, which the version
table names, what ``upgrade heads`` would run): one home for those reads keeps the checks in agreement.
"""

from __future__ import annotations

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DbRunbookError
from dbrunbook.protocol import SessionLike


def version_query(mset: MigrationSet) -> str:
    """The query that reads the set's version table, shown as evidence of what ``alembic current`` says."""
    table = f"{mset.version_table_schema}.{mset.version_table}" if mset.version_table_schema else mset.version_table
    return f"SELECT version_num FROM {table}"


def known_revisions(mset: MigrationSet) -> dict[str, migrations.RevisionInfo]:
    """Every revision the set's scripts define, by id, in history order."""
    return {r.revision: r for r in migrations.history(mset)}


def set_state(s: SessionLike, mset: MigrationSet) -> tuple[tuple[str, ...], dict[str, migrations.RevisionInfo]]:
    """The set's current revisions (``alembic current``) and the revisions its scripts know."""
    return migrations.current(mset, s.engine), known_revisions(mset)


def pending_steps(s: SessionLike, mset: MigrationSet) -> tuple[list[migrations.SqlStep], str]:
    """The offline SQL of what ``upgrade heads`` would run, or ``[]`` and why not."""
    cur, known = set_state(s, mset)
    if any(c not in known for c in cur):
        return [], f"{mset.name}: skipped, the version table names an unknown revision (check 2)"
    if not migrations.pending(mset, s.engine):
        return [], f"{mset.name}: nothing pending"
    try:
        return migrations.offline_sql(mset, ",".join(cur) or None, "heads"), ""
    except DbRunbookError as err:
        return [], f"{mset.name}: the pending SQL could not be rendered offline ({err})"
