"""Where review runs migrations: fresh databases on the target's server, or on a throwaway embedded server.

A review never migrates the target itself. Each check gets a database of its own, created and dropped around
it; a protected target, or a role that may not create databases, gets a throwaway server instead. Whatever a
check on a scratch database raises becomes its result ("could not run: …"), so the review goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import html
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from dbrunbook.chain import isolation, migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DbRunbookError
from dbrunbook.postgres import db
from dbrunbook.procedures.revision_lint import RevisionSource
from dbrunbook.procedures.roundtrip import RoundTrip, Stairway, StepCheck, round_trip, stairway
from dbrunbook.protocol import SessionLike

__all__ = ["Scratch", "scratch"]


# --- scratch databases ----------------------------------------------------------------------------------
class Scratch:
    """Where review runs migrations: fresh databases on the target's server, or on a throwaway server.

    Not a value object: it may own a running embedded server, stopped by ``close()`` (and at exit).
    """

    def __init__(self, admin_url: str, kind: str, *, run_id: str = "", server: Any = None,
                 folder: Path | None = None, reason: str = ""):
        self._admin_url, self.kind, self.run_id, self.reason = admin_url, kind, run_id, reason
        self._server, self._folder = server, folder
        if server is not None:
            atexit.register(self.close)

    @property
    def server(self) -> str:
        return db.mask_url(self._admin_url)

    @property
    def _engine_options(self) -> dict[str, Any]:
        return {"run_id": self.run_id or None, "lock_timeout": "10s", "statement_timeout": "10min"}

    @contextlib.contextmanager
    def database(self) -> Iterator[Engine]:
        """A fresh empty database for one check, dropped afterwards whatever happens."""
        name = f"dbrunbook_scratch_{uuid.uuid4().hex[:10]}"
        db.create_database(self._admin_url, name)
        engine = db.make_engine(db.with_database(self._admin_url, name), poolclass=NullPool,
                                **self._engine_options)
        try:
            yield engine
        finally:
            engine.dispose()
            db.drop_database(self._admin_url, name)

    def round_trip(self, source: RevisionSource) -> RoundTrip:
        """``round_trip`` on a fresh database; whatever raises is the result ("could not run: …"), not a crash."""
        try:
            with self.database() as engine:
                return isolation.call(round_trip, source.migration_set, engine, source.revision,
                                      engine_options=self._engine_options)
        except Exception as err:  # the scratch database, env.py, the graph: the review goes on
            return RoundTrip(source.migration_set.name, StepCheck.failed_to_run(source.revision, err),
                             "could not run")

    def stairway(self, source: RevisionSource | MigrationSet) -> Stairway:
        """``stairway`` on a fresh database; whatever raises is the result ("could not run: …"), not a crash."""
        mset = source.migration_set if isinstance(source, RevisionSource) else source
        try:
            with self.database() as engine:
                return isolation.call(stairway, mset, engine, engine_options=self._engine_options)
        except Exception as err:  # as for round_trip
            try:
                order = [r.revision for r in migrations.history(mset)]
            except Exception:  # noqa: BLE001 - the graph itself may be what failed
                order = []
            first = order[0] if order else "(chain)"
            return Stairway(mset.name, (StepCheck.failed_to_run(first, err),), tuple(order[1:]))

    def close(self) -> None:
        """Stop the throwaway server, if this scratch started one, and remove its files."""
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(DbRunbookError):
                server.stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _repr_html_(self) -> str:
        return (f"<p>Scratch databases: <b>{html.escape(self.kind)}</b> at <code>{html.escape(self.server)}</code>"
                f"{' — ' + html.escape(self.reason) if self.reason else ''}. Each check gets a fresh database, "
                f"dropped afterwards; the target is never migrated.</p>")


def scratch(s: SessionLike) -> Scratch:
    """Choose where review runs: the target's server unless it is protected or we may not create databases."""
    reason = ""
    if s.target.protected:
        reason = f"target '{s.target.name}' is protected"
    else:
        with s.engine.connect() as conn:
            may = conn.execute(sa.text("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                               ).scalar()
            conn.rollback()
        if not may:
            reason = f"role '{s.identity.user}' may not create databases"
    if not reason:
        url = s.engine.url.render_as_string(hide_password=False)
        return Scratch(url, "databases on the target's server", run_id=s.run_id)
    from dbrunbook.postgres.embedded import EmbeddedServer

    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-scratch-"))
    server = EmbeddedServer(folder / "data", durable=False)
    try:
        url = server.start()
    except DbRunbookError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Scratch(url, "a throwaway embedded server", run_id=s.run_id, server=server, folder=folder,
                   reason=reason)
