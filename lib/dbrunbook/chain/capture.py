"""The SQL a revision really executes, captured on a scratch database, for revisions that cannot render offline.

Offline SQL (``alembic upgrade --sql``) is evidence, not a prerequisite: many real revisions read results
through ``op.get_bind()``, use the inspector or refuse offline mode, and ``migrations.offline_sql`` marks
them online-only. To still show a reviewer, the lint, preflight and the data-loss count real SQL for every
revision, the pending range is run on a throwaway embedded server whose database has the target's schema
(``pg_dump --schema-only`` of the target, restored; or, when that cannot be had, built by the chain up to
the start revision) and every statement it executes is recorded with SQLAlchemy's ``before_cursor_execute``
event, with its parameters rendered as SQL literals. The target is only read (by pg_dump); the scratch
server is stopped and removed afterwards.

The schema is the target's, the rows are not: a revision whose statements depend on the rows it reads
(a backfill loop) executes here what it would on empty tables. The captured SQL says so in its header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from dbrunbook.chain import isolation, migrations
from dbrunbook.chain.history import current
from dbrunbook.chain.models import build_baseline
from dbrunbook.chain.online_guard import require_covered
from dbrunbook.chain.sql_render import literal, render_execution, render_statement
from dbrunbook.chain.values import SqlStep
from dbrunbook.config import MigrationSet
from dbrunbook.errors import BackupFailed, DbRunbookError, MigrationFailed
from dbrunbook.postgres import db
from dbrunbook.protocol import SessionLike

log = logging.getLogger(__name__)

__all__ = ["Scratch", "capture_steps", "literal", "render_statement", "require_covered"]

_HEADER = ("-- captured: the SQL this revision executed on a scratch database with the target's schema "
           "(not its rows)")
# Alembic logs each step just before running it; the step object is the argument.
_ALEMBIC_LOG = "alembic.runtime.migration"


_CATALOG_READ = re.compile(r"^\s*SELECT\b(?:(?!\b(?:INSERT|UPDATE|DELETE)\b).)*\bFROM\s+pg_catalog\.",
                           re.IGNORECASE | re.DOTALL)


# --- recording --------------------------------------------------------------------------------------------
class _Recorder:
    """Every statement executed on one database, by the revision Alembic was running when it was executed.

    Listens on the Engine class, not on one engine: an env.py that builds its own engine from the URL
    dbrunbook hands it is recorded too. Only connections to ``database`` are recorded (a unique scratch name).
    Statements before the first step (Alembic reading its version table) are Alembic's, not the revision's.
    """

    def __init__(self, database: str):
        self.database = database
        self.current: str | None = None
        self.statements: dict[str, list[str]] = {}
        self.catalog_reads: dict[str, int] = {}
        self._logger = logging.getLogger(_ALEMBIC_LOG)

    def __enter__(self) -> _Recorder:
        event.listen(sa.engine.Engine, "before_cursor_execute", self._on_execute)
        original = self._logger.info

        def info(msg: Any, *args: Any, **kw: Any) -> None:
            step = args[0] if args else None
            revision = getattr(getattr(step, "revision", None), "revision", None)
            if msg == "Running %s" and revision:
                self.current = revision
            original(msg, *args, **kw)

        self._logger.info = info  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(sa.engine.Engine, "before_cursor_execute", self._on_execute)
        self._logger.__dict__.pop("info", None)

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.current is None or conn.engine.url.database != self.database:
            return
        if _CATALOG_READ.match(statement):
            # The inspector reading pg_catalog: no lock taken, nothing changed, pages of text for a reviewer.
            self.catalog_reads[self.current] = self.catalog_reads.get(self.current, 0) + 1
            return
        try:
            texts = render_execution(statement, parameters, conn.dialect.paramstyle, executemany)
        except Exception as err:  # noqa: BLE001 - evidence: never let rendering break the migration
            texts = [f"-- (a statement could not be rendered: {type(err).__name__}: {err})",
                     statement.strip().rstrip(";") + ";"]
        self.statements.setdefault(self.current, []).extend(texts)


# --- the scratch database -------------------------------------------------------------------------------
def _schema_from_target(session: SessionLike, server: Any, name: str) -> str:
    """Restore ``pg_dump --schema-only`` of the session's database into ``name`` on the scratch server.

    Returns '' or a warning: pg_restore's own errors (an extension or role the scratch server lacks) are
    kept going past, since the revisions may not need those objects; if they do, their capture fails and
    says why.
    """
    from dbrunbook.postgres import dump

    tool = dump.dump_tool(session)
    with tempfile.TemporaryDirectory(prefix="dbrunbook-capture-") as folder:
        dump_file = Path(folder) / "schema.dump"
        env = dump.libpq_environment(session.engine.url,
                                       application_name=f"dbrunbook:{session.run_id}:pg_dump")
        dump.run_tool([str(tool.pg_dump), "--schema-only", "--format=custom", "--no-owner",
                          "--no-privileges", "--no-password", f"--lock-wait-timeout={session.target.lock_timeout}",
                          f"--file={dump_file}"], env,
                         f"pg_dump --schema-only of database '{session.identity.database}'", timeout=600)
        admin = server.url("postgres")
        db.create_database(admin, name)
        target_env = dump.libpq_environment(db.with_database(admin, name),
                                              application_name=f"dbrunbook:{session.run_id}:pg_restore")
        try:
            dump.run_tool([str(tool.pg_restore), "--no-owner", "--no-privileges", "--no-password",
                              f"--dbname=dbname={dump.conninfo_quote(name)}", str(dump_file)], target_env,
                             "pg_restore of the target's schema into the scratch database", timeout=600)
        except DbRunbookError as err:
            log.warning("%s", err)
            return str(err).splitlines()[0]
    return ""


def _stamp(engine: sa.Engine, mset: MigrationSet, heads: Sequence[str]) -> None:
    """Make the restored (empty) version table say what the target's says."""
    table = sa.table(mset.version_table, sa.column("version_num"), schema=mset.version_table_schema)
    with engine.begin() as conn:
        exists = sa.inspect(conn).has_table(mset.version_table, schema=mset.version_table_schema)
        if not exists:
            if not heads:
                return
            raise DbRunbookError(f"the restored schema has no version table '{mset.version_table}'")
        conn.execute(table.delete())
        for head in heads:
            conn.execute(table.insert().values(version_num=head))


class Scratch:
    """One throwaway embedded server for the captures of one step (several migration sets), started when
    the first capture needs it and stopped and removed on the way out."""

    def __init__(self, session: SessionLike) -> None:
        self.session = session
        self._context: Any = None
        self._server: Any = None

    def __enter__(self) -> Scratch:
        return self

    def server(self) -> Any:
        if self._server is None:
            from dbrunbook.postgres.scratch import scratch_server

            self._context = scratch_server(self.session.config, f"capture-{self.session.run_id}")
            self._server = self._context.__enter__()
        return self._server

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            context, self._context, self._server = self._context, None, None
            context.__exit__(*exc)


def capture_steps(session: SessionLike, mset: MigrationSet, steps: list[SqlStep], revision: str, *,
                  direction: str = "upgrade", run: Callable | None = None, scratch: Scratch | None = None
                  ) -> list[SqlStep]:
    """Fill in the SQL of the online-only steps from a run of the range on a scratch database.

    Args:
        session: the run's session (its target is only read: pg_dump of its schema, its current revision).
        mset: the migration set.
        steps: ``migrations.offline_sql`` of the range, in order.
        revision: the range's end as given to ``offline_sql`` (a relative one counts from the same start).
        direction: 'upgrade' or 'downgrade'.
        run: for tests, a stand-in for ``migrations.upgrade``/``downgrade`` (mset, engine, revision).
        scratch: a ``Scratch`` shared with other captures of the same step (default: a server of its own).

    Returns:
        ``steps`` with each online-only one ``source="captured"`` and its executed SQL, or, when it could not
        be captured, ``capture_error`` saying why. Offline steps are returned unchanged. Never raises for a
        failed capture: the guards decide what an uncaptured online-only revision means for the run.
    """
    if not any(s.online_only for s in steps):
        return steps
    if scratch is None:
        with Scratch(session) as own:
            return capture_steps(session, mset, steps, revision, direction=direction, run=run, scratch=own)

    heads = current(mset, session.engine)
    name = f"dbrunbook_capture_{secrets.token_hex(4)}"
    recorder = _Recorder(name)
    failed: tuple[str | None, str] | None = None
    warning = ""
    try:
        server = scratch.server()
        url = db.with_database(server.url("postgres"), name)
        try:
            try:
                warning = _schema_from_target(session, server, name)
            except BackupFailed as err:
                # No usable pg_dump (or it failed): the chain itself builds the schema at the start.
                warning = f"no schema dump ({db.mask_url(str(err).splitlines()[0])}); built by the chain"
                db.drop_database(server.url("postgres"), name)
                db.create_database(server.url("postgres"), name)
                _build_by_chain(url, mset, heads, session.run_id)
            recorded = _record_range(session, mset, url, name, heads, revision, direction, run)
            recorder.statements, recorder.catalog_reads, failed = recorded
        except (DbRunbookError, sa.exc.SQLAlchemyError) as err:
            failed = (None, db.mask_url((str(err).splitlines() or [""])[0]))
    except (DbRunbookError, sa.exc.SQLAlchemyError, OSError) as err:
        failed = (None, f"no scratch database: {db.mask_url((str(err).splitlines() or [''])[0])}")
    finally:
        with contextlib.suppress(DbRunbookError, sa.exc.SQLAlchemyError):
            if scratch._server is not None:
                db.drop_database(scratch._server.url("postgres"), name)
    secret = session.engine.url.password
    if secret:
        warning = warning.replace(str(secret), db.MASK)
        failed = failed and (failed[0], failed[1].replace(str(secret), db.MASK))
    return [_captured(step, recorder, failed, warning, direction) for step in steps]


def _record_range(session: SessionLike, mset: MigrationSet, url: str, name: str, heads: Sequence[str],
                  revision: str, direction: str, run: Callable | None
                  ) -> tuple[dict[str, list[str]], dict[str, int], tuple | None]:
    """``recorded_run`` on the scratch database at ``url``, stamped at the target's ``heads`` first."""
    engine = db.make_engine(url, run_id=session.run_id, poolclass=NullPool)
    try:
        _stamp(engine, mset, heads)
        if run is not None:
            return recorded_run(mset, engine, revision, direction, name, run=run)
        return isolation.call(recorded_run, mset, engine, revision, direction, name,
                              engine_options={"run_id": session.run_id})
    finally:
        engine.dispose()


def recorded_run(mset: MigrationSet, engine: sa.Engine, revision: str, direction: str, database: str, *,
                 run: Callable | None = None) -> tuple[dict[str, list[str]], dict[str, int], tuple | None]:
    """Run the range on the scratch ``database`` and record what it executes.

    Returns:
        The statements and the inspector's catalog reads by revision, and (revision, reason) of a revision
        that failed, or None; what ran before a failure is kept.
    """
    recorder = _Recorder(database)
    go = run or (migrations.upgrade if direction == "upgrade" else migrations.downgrade)
    failed = None
    with recorder:
        try:
            go(mset, engine, revision)
        except MigrationFailed as err:
            failed = (err.revision, f"it failed on the scratch database: {db.mask_url(err.reason)}")
    return recorder.statements, recorder.catalog_reads, failed


def _build_by_chain(url: str, mset: MigrationSet, heads: Sequence[str], run_id: str) -> None:
    engine = db.make_engine(url, run_id=run_id, poolclass=NullPool)
    try:
        isolation.call(build_by_chain, mset, engine, tuple(heads), engine_options={"run_id": run_id})
    finally:
        engine.dispose()


def build_by_chain(mset: MigrationSet, engine: sa.Engine, heads: Sequence[str]) -> None:
    """On an empty database: the set's baseline, then the chain up to ``heads``."""
    build_baseline(mset, engine)
    for head in heads:
        migrations.upgrade(mset, engine, head)


def _captured(step: SqlStep, recorder: _Recorder, failed: tuple[str | None, str] | None,
              warning: str, direction: str) -> SqlStep:
    if not step.online_only:
        return step
    statements = {rev: list(texts) for rev, texts in recorder.statements.items()}
    for rev, n in recorder.catalog_reads.items():
        statements.setdefault(rev, []).insert(
            0, f"-- ({n} catalog {'query' if n == 1 else 'queries'} of the inspector left out)")
    error = ""
    if failed is not None and (failed[0] is None or failed[0] == step.revision):
        error = failed[1] + (f" (restoring the schema: {warning})" if warning else "")
    if step.revision not in statements:
        if failed is not None and not error:
            error = f"the capture stopped before it, at revision {failed[0]}: {failed[1]}"
        return dataclasses.replace(step, capture_error=error or "it executed no SQL on the scratch database",
                                   sha256="")
    down = ", ".join(step.down_revision)
    marker = (f"-- Running upgrade {down} -> {step.revision}" if direction == "upgrade"
              else f"-- Running downgrade {step.revision} -> {down}")
    body = "\n\n".join(statements[step.revision])
    partial = f"\n\n-- the capture stopped here: {error}" if error else ""
    sql = f"{_HEADER}\n\nBEGIN;\n\n{marker}\n\n{body}{partial}\n\nCOMMIT;\n"
    return dataclasses.replace(step, sql=sql, source="captured", capture_error=error, sha256="")
