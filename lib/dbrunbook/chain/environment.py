"""One run of a project's env.py: the EnvironmentContext that checks what env.py configured, and its timing.

Before any step runs, the MigrationContext env.py configured is checked: PostgreSQL, our database, the
version table dbrunbook.toml names. Anything else raises ``DialectMismatch`` and nothing is written.
(Airflow's env.py, for one, silently falls back to SQLite when its variable is unset.) Every revision runs
in its own transaction and is timed; offline, its SQL is collected from Alembic's output buffer, never from
stdout, where a migration's print() would corrupt it (what it prints goes to the revision running it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import io
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from dbrunbook.chain.values import StepResult
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DialectMismatch
from dbrunbook.postgres.db import mask_url

log = logging.getLogger(__name__)

__all__ = ["EnvRun", "environment_context", "step_revision"]


class _NotesRouter(io.TextIOBase):
    """Stands in for sys.stdout in offline mode: what a migration prints goes to the revision running it."""

    def __init__(self) -> None:
        self.parts: dict[str | None, list[str]] = {}
        self.key: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.setdefault(self.key, []).append(text)
        return len(text)


@dataclass
class EnvRun:
    """The state of one env.py run: what we expect it to connect to, and what happened."""

    mset: MigrationSet
    direction: str
    as_sql: bool = False
    connection: Connection | None = None
    buffer: io.StringIO = field(default_factory=io.StringIO)
    notes: _NotesRouter = field(default_factory=_NotesRouter)
    results: list[StepResult] = field(default_factory=list)
    chunks: list[tuple[Any, int, int]] = field(default_factory=list)
    running: Any = None
    stray_sqlite: list[Path] = field(default_factory=list)

    def steps(self, steps: Iterable[Any]) -> Iterator[Any]:
        """Yield Alembic's steps one at a time, timing each one.

        Alembic runs a step inside ``with begin_transaction(_per_migration=True)`` in the loop body, so this
        generator resumes only after the step's transaction was committed (and, offline, its COMMIT written).
        """
        for step in steps:
            self.running = step
            self.notes.key = step.revision.revision if hasattr(step, "revision") else None
            position = self.buffer.tell()
            started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
            yield step
            seconds = time.perf_counter() - t0
            self.chunks.append((step, position, self.buffer.tell()))
            self.results.append(StepResult(step_revision(step), self.direction, seconds, started))
            self.running = None

    def verify(self, ctx: MigrationContext, url: Any) -> None:
        """Refuse an env.py that configured anything but our database and the set's version table."""
        theirs = self._their_url(ctx, url)
        if ctx.dialect.name != "postgresql":
            if ctx.dialect.name == "sqlite" and not ctx.as_sql:
                self._note_sqlite(ctx)
            raise self._mismatch(f"it configured the {ctx.dialect.name} dialect at {theirs}")
        # Online, the MigrationContext env.py configured always has a connection.
        if (not ctx.as_sql and self.connection is not None and ctx.connection is not self.connection
                and not _same_database(cast(Connection, ctx.connection), self.connection)):
            raise self._mismatch(f"it connected to {theirs}")
        expected = (self.mset.version_table, self.mset.version_table_schema or None)
        actual = (ctx.version_table, ctx.version_table_schema or None)
        if actual != expected:
            raise _version_table_mismatch(self.mset, actual, expected)

    def _their_url(self, ctx: MigrationContext, url: Any) -> str:
        if not ctx.as_sql and ctx.connection is not None:
            return mask_url(ctx.connection.engine.url)
        return mask_url(sa.make_url(url)) if url else f"(dialect {ctx.dialect.name}, no URL)"

    def _note_sqlite(self, ctx: MigrationContext) -> None:
        database = cast(Connection, ctx.connection).engine.url.database  # online only
        if database and database != ":memory:" and not database.startswith("file:"):
            self.stray_sqlite.append(Path(database).resolve())

    def _mismatch(self, what: str) -> DialectMismatch:
        ours = mask_url(self.connection.engine.url) if self.connection is not None else "PostgreSQL"
        table = f"[migration_sets.{self.mset.name}]"
        hint = (f"It reads its own setting for the URL: set url_env = 'VARIABLE' in {table} of "
                f"dbrunbook.toml to the environment variable env.py reads (and env = {{...}} for any other "
                f"variable it needs)."
                if not self.mset.url_env else
                f"url_env = '{self.mset.url_env}' is set, so env.py reads some other setting: check which "
                f"variable it uses and set url_env (or env) in {table} accordingly.")
        err = DialectMismatch(
            f"env.py of migration set '{self.mset.name}' did not use the target database: {what}, "
            f"not {ours}. Nothing was run. {hint}", migration_set=self.mset.name, actual=what, expected=ours
        )
        return err

    def remove_stray_sqlite(self) -> None:
        # Connecting is enough for SQLite to create its file. An empty one holds nothing, so removing it
        # loses nothing and does not leave a decoy database behind; a non-empty one is left alone.
        for path in self.stray_sqlite:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size == 0:
                    path.unlink()
                    log.info("Removed the empty SQLite file %s that env.py created", path)


def step_revision(step: Any) -> str:
    """The revision an Alembic step applies or reverts, or the ids a stamp step writes ('base' for none)."""
    info = step.info
    if info.is_stamp:
        ids = info.up_revision_ids if info.is_upgrade else info.down_revision_ids
        return ", ".join(ids) or "base"
    return step.revision.revision


def _version_table_mismatch(mset: MigrationSet, actual: tuple, expected: tuple) -> DialectMismatch:
    def name(table: tuple) -> str:
        return f"{table[1]}.{table[0]}" if table[1] else table[0]

    schema = f", version_table_schema = '{actual[1]}'" if actual[1] else ""
    err = DialectMismatch(
        f"env.py of migration set '{mset.name}' keeps its version in table '{name(actual)}'; dbrunbook.toml "
        f"says '{name(expected)}'. Nothing was run. Set version_table = '{actual[0]}'{schema} in "
        f"[migration_sets.{mset.name}] of dbrunbook.toml.",
        migration_set=mset.name, actual=name(actual), expected=name(expected)
    )
    return err


_FINGERPRINT = sa.text(
    "SELECT current_database(), pg_postmaster_start_time(), inet_server_addr()::text, inet_server_port()"
)


def _same_database(theirs: Connection, ours: Connection) -> bool:
    """True when two connections reach the same database of the same server.

    Equal host, port and database in the URLs settle it; otherwise (localhost against 127.0.0.1, a service
    name, a socket) the servers are asked: the postmaster's start time tells two servers apart.
    """
    a, b = theirs.engine.url, ours.engine.url
    if (a.host, a.port or 5432, a.database) == (b.host, b.port or 5432, b.database) and a.database:
        return True

    def fingerprint(conn: Connection) -> tuple:
        began = not conn.in_transaction()
        try:
            row = tuple(conn.execute(_FINGERPRINT).one())
        finally:
            if began and conn is ours:
                conn.rollback()
        return row[0], row[1]

    try:
        return fingerprint(theirs) == fingerprint(ours)
    except sa.exc.DBAPIError:
        return False


def environment_context(config: AlembicConfig, script: ScriptDirectory, run: EnvRun, **kw: Any) -> EnvironmentContext:
    """An EnvironmentContext whose ``configure()`` adjusts, then checks, what env.py configures.

    Options given to EnvironmentContext are only defaults that ``configure()`` overwrites with its own
    keyword defaults (transaction_per_migration=False, on_version_apply=()), so ours are set on the way in.
    The method is replaced on the instance: ``alembic.context`` forwards env.py's calls to it.
    """
    env = EnvironmentContext(config, script, **kw)

    def configure(*args: Any, **options: Any) -> None:
        bound = inspect.signature(EnvironmentContext.configure).bind(env, *args, **options)
        opts = dict(bound.arguments)
        opts.pop("self")
        opts.update(opts.pop("kw", {}))
        # One transaction per revision: a failure keeps the revisions before it, as MigrationFailed reports.
        opts["transaction_per_migration"] = True
        if run.as_sql:
            opts["output_buffer"] = run.buffer  # even if env.py named sys.stdout or a file
        EnvironmentContext.configure(env, **opts)
        run.verify(env.get_context(), opts.get("url"))

    env.configure = configure  # type: ignore[method-assign]
    return env
