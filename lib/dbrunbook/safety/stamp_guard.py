"""Stamp truth: does the live schema look like the schema the migrations build at the revision to stamp?

``alembic stamp`` writes the version table and nothing else, so a wrong stamp makes the database lie about
its revision. ``stamp_check`` builds the schema at that revision on a throwaway embedded server and compares
the migration set's own tables with the live ones; ``require_truthful_stamp`` refuses a stamp that would lie.
"""

from __future__ import annotations

import html
import json
import logging
import secrets
from dataclasses import asdict, dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dbrunbook import errors
from dbrunbook.chain import migrations
from dbrunbook.postgres import db, snapshots
from dbrunbook.protocol import SessionLike
from dbrunbook.safety.lint_guard import table_html

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StampCheck:
    """Does the live schema look like the schema the migrations build at ``revision``?"""

    migration_set: str
    revision: str
    resolved: tuple[str, ...]
    current: tuple[str, ...]
    differences: tuple[dict, ...] = ()
    tables: tuple[str, ...] = ()  # tables the migration set owns, compared
    checked: bool = True
    reason: str = ""

    @property
    def truthful(self) -> bool:
        return self.checked and not self.differences

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.differences), columns=["object", "change", "at revision", "live"])

    def to_dict(self) -> dict:
        return {**asdict(self), "truthful": self.truthful}

    def _repr_html_(self) -> str:
        at = html.escape(", ".join(self.resolved) or "base")
        if not self.checked:
            return f"<p>Stamp to {at} <b>not checked</b>: {html.escape(self.reason)}</p>"
        if self.truthful:
            return (f"<p>Stamp to {at} tells the truth: the {len(self.tables)} tables of "
                    f"'{html.escape(self.migration_set)}' match the schema its migrations build.</p>")
        return (f"<p>Stamp to {at} would <b>lie</b>: {len(self.differences)} difference(s) between the live "
                f"schema and the schema at that revision.</p>" + table_html(self.as_frame()))


def _scratch_schema(session: SessionLike, mset, revision: str
                    ) -> tuple[snapshots.SchemaSnapshot, snapshots.SchemaSnapshot]:
    """Schema at ``revision`` and at the heads, built on a throwaway embedded server.

    Never on the target's server, not even in a dry run: that would need CREATEDB on production and run the
    whole chain (data migrations included) on its resources. The scratch server is stopped and removed after.
    """
    from dbrunbook.chain import isolation
    from dbrunbook.postgres.scratch import scratch_server

    with scratch_server(session.config, f"stamp-{session.run_id or secrets.token_hex(4)}") as server:
        admin = server.url()
        name = f"dbrunbook_stamp_{secrets.token_hex(4)}"
        db.create_database(admin, name)
        engine = db.make_engine(db.with_database(admin, name), run_id=session.run_id, poolclass=NullPool)
        try:
            return isolation.call(schemas_built_by_chain, mset, engine, revision,
                                  engine_options={"run_id": session.run_id})
        finally:
            engine.dispose()


def schemas_built_by_chain(mset, engine, revision: str) -> tuple[snapshots.SchemaSnapshot, snapshots.SchemaSnapshot]:
    """On an empty database: the schema the chain builds at ``revision`` (after the set's baseline), then at
    its heads (only to know which tables the set owns; the revision's own schema if that fails)."""
    migrations.build_baseline(mset, engine)
    if migrations.resolve(mset, revision):
        migrations.upgrade(mset, engine, revision)
    at_revision = snapshots.schema_snapshot(engine)
    try:
        migrations.upgrade(mset, engine, "heads")
        at_heads = snapshots.schema_snapshot(engine)
    except errors.DbRunbookError as err:
        log.warning("scratch upgrade to heads failed (%s); comparing the tables at %s only", err, revision)
        at_heads = at_revision
    return at_revision, at_heads


def stamp_check(session: SessionLike, revision: str, migration_set: str = "main") -> StampCheck:
    """Build the schema at ``revision`` on a throwaway embedded server and compare it with the live one.

    Only the tables the migration set creates (at any revision) are compared, version tables left out:
    another set's tables or the application's own are none of this stamp's business.
    """
    mset = session.config.migration_set(migration_set)
    resolved = migrations.resolve(mset, revision)
    current = migrations.current(mset, session.engine)
    try:
        expected, owned_at_heads = _scratch_schema(session, mset, revision)
    except (sa.exc.SQLAlchemyError, errors.DbRunbookError) as err:  # the check says why it could not run
        reason = f"could not build the schema at {revision} on a scratch server: {str(err).splitlines()[0]}"
        return StampCheck(mset.name, revision, resolved, current, checked=False, reason=db.mask_secrets(reason))
    version_tables = {m.version_table for m in session.config.migration_sets.values()}
    owned = sorted(t for t in set(expected.columns) | set(owned_at_heads.columns)
                   if t.split(".")[-1] not in version_tables)
    live = snapshots.schema_snapshot(session.engine)

    def only(snap: snapshots.SchemaSnapshot) -> snapshots.SchemaSnapshot:
        return snapshots.SchemaSnapshot({t: c for t, c in snap.columns.items() if t in owned},
                                        {t: i for t, i in snap.indexes.items() if t in owned})

    diff = snapshots.compare_schema(only(expected), only(live))
    rows = tuple({"object": r["object"], "change": r["change"], "at revision": r["before"], "live": r["after"]}
                 for r in diff.to_dict("records"))
    return StampCheck(mset.name, revision, resolved, current, rows, tuple(owned))


def require_truthful_stamp(session: SessionLike, check: StampCheck, force: bool = False, *, dry_run: bool = False
                           ) -> pd.DataFrame:
    """Guard: refuse a stamp whose revision the live schema does not match, unless ``force`` (recorded).

    Raises:
        StampWouldLie: differences (or no check possible) and ``force`` is false (``.check`` holds it).
    """
    session.save_artifact("stamp_check.json", json.dumps({**check.to_dict(), "force": force}, indent=1,
                                                         sort_keys=True, default=str) + "\n")
    at = ", ".join(check.resolved) or "base"
    if not check.truthful and not force:
        if check.checked:
            shown = "; ".join(f"{d['object']}: {d['change']}" for d in check.differences[:6])
            what = (f"the live schema differs from the schema migration set '{check.migration_set}' builds at "
                    f"{at} in {len(check.differences)} place(s): {shown}{' …' if len(check.differences) > 6 else ''}")
        else:
            what = f"the stamp could not be checked ({check.reason})"
        err = errors.StampWouldLie(
            f"Stamping target '{session.target.name}' to {at} would make its version table lie: {what}. Stamp "
            f"the revision the schema really is at, or, if you know better, run again with -p force true "
            f"(recorded).", check=check)
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    elif not check.truthful:
        print(f"force=True: stamping to {at} although the schema does not match (kept in the record).")
    else:
        print(f"The live schema matches '{check.migration_set}' at {at}: the stamp tells the truth.")
    return check.as_frame()
