"""Alembic's online commands (upgrade, downgrade, stamp, check) through a project's own env.py, on our connection.

Users point dbrunbook at their own Alembic projects (branched, multi-environment, with an env.py that reads
its own settings) and must not have to edit them. So ``drive`` does what ``alembic.command`` does, with
these additions:

* env.py is handed our target three ways at once: ``sqlalchemy.url`` of the main section, the open
  Connection in ``config.attributes["connection"]`` (the cookbook's "Sharing a Connection" recipe), and, when
  the migration set names it (``url_env``), the environment variable env.py reads itself; ``in_project``
  restores environment variables, the working folder, ``sys.path`` and logging after each call. The
  connection and URL use the project's driver (``drivers``: psycopg2, psycopg or asyncpg), with our session
  settings.
* env.py runs in an AnyIO worker thread with no event loop (``alembic_thread``): Alembic's ``async``
  template calls ``asyncio.run``, others ``anyio.from_thread.run``, and a notebook kernel runs a loop.
* What env.py configured is checked before any step runs (``environment``), and every revision runs in its
  own transaction, timed; a failure raises ``MigrationFailed`` with where the database is now.
* An unknown or ambiguous revision is refused before env.py runs, so nothing is written, not even the
  version table.

The process-wide state touched here (cwd, environment, ``sys.path``, logging) makes these functions unsafe
to call from several threads at once; a notebook kernel runs one cell at a time.

This module is also the chain's front door: it re-exports the public names of ``project``, ``history``,
``digests``, ``offline``, ``models`` and ``values``, so ``migrations.X`` keeps working for every caller.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from dbrunbook.chain import alembic_thread, drivers
from dbrunbook.chain.digests import directory_digest, file_digests
from dbrunbook.chain.environment import EnvRun, environment_context, step_revision
from dbrunbook.chain.history import (
    ambiguous_walk,
    current,
    heads,
    history,
    history_frame,
    pending,
    refuse_ambiguous,
    resolve,
    revision_not_found,
    to_tuple,
)
from dbrunbook.chain.models import build_baseline, load_models
from dbrunbook.chain.offline import OFFLINE_URL, offline_sql
from dbrunbook.chain.project import (
    absolute_paths,
    alembic_config,
    connected,
    in_project,
    script_directory,
    script_directory_for,
)
from dbrunbook.chain.values import RevisionInfo, SqlStep, StepResult, as_frame
from dbrunbook.config import MigrationSet
from dbrunbook.errors import (
    ConfigError,
    DialectMismatch,
    MigrationFailed,
    RevisionNotFound,
)
from dbrunbook.postgres.db import mask_secrets

__all__ = [
    "OFFLINE_URL", "RevisionInfo", "SqlStep", "StepResult", "alembic_config", "as_frame", "build_baseline",
    "check", "current", "directory_digest", "downgrade", "drive", "file_digests", "heads", "history",
    "history_frame", "in_project", "offline_sql", "pending", "resolve", "script_directory", "stamp", "upgrade",
]


def _reason(err: BaseException, secret: str | None) -> str:
    if isinstance(err, sa.exc.DBAPIError) and err.orig is not None:
        text = str(err.orig)
    else:
        text = f"{type(err).__name__}: {err}"
    text = (text.strip().splitlines() or [""])[0]
    return mask_secrets(text, secrets=[secret] if secret else [])


StepsFn = Callable[[ScriptDirectory, tuple, MigrationContext], Iterable[Any]]


def drive(mset: MigrationSet, engine: Engine | Connection, steps_fn: StepsFn, *, direction: str,
           **context_opts: Any) -> list[StepResult]:
    """Run env.py online with ``steps_fn`` as the migration function; commit each step.

    env.py gets the project's driver (``drivers``): our connection when it has that driver, else one of the
    project's with our session settings. It runs in an AnyIO worker thread with no event loop
    (``alembic_thread``), so ``asyncio.run`` and ``anyio.from_thread.run`` in env.py work from a notebook.
    """
    with connected(engine) as ours:
        driver = drivers.driver_for(mset, ours)
        settings = drivers.session_settings(ours)
        url = drivers.url_for_env(ours, driver, settings)
        with drivers.project_connection(ours, driver, url) as conn, \
                (drivers.asyncpg_settings(settings) if driver == "asyncpg" else contextlib.nullcontext()):
            return _drive_on(mset, engine, conn, url, steps_fn, direction=direction, **context_opts)


def _drive_on(mset: MigrationSet, engine: Engine | Connection, conn: Connection, url: str, steps_fn: StepsFn,
              *, direction: str, **context_opts: Any) -> list[StepResult]:
    # A caller's own transaction stays the caller's: Alembic then runs inside it and we neither commit
    # nor roll back (and per-revision commits do not apply).
    external = conn.in_transaction()

    def end(commit: bool) -> None:
        if external or not conn.in_transaction():
            return
        if commit:
            conn.commit()
        else:
            conn.rollback()

    run = EnvRun(mset, direction, connection=conn)
    try:
        with in_project(mset, url):
            cfg = alembic_config(mset, url=url, connection=conn)
            script = script_directory_for(mset, cfg)

            def fn(rev: tuple, context: MigrationContext) -> Iterable[Any]:
                return run.steps(steps_fn(script, rev, context))

            with environment_context(cfg, script, run, fn=fn, as_sql=False, **context_opts):
                alembic_thread.run_in_worker(script.run_env, on_interrupt=lambda: _cancel(conn))
        end(commit=True)
    except (DialectMismatch, ConfigError, RevisionNotFound):
        end(commit=False)
        raise
    except (CommandError, RevisionError) as err:
        end(commit=False)
        if "locate revision" in str(err) or isinstance(err, RevisionError):
            raise revision_not_found(mset, context_opts.get("destination_rev"), err) from err
        raise _failed(mset, engine, run, err) from err
    except Exception as err:
        end(commit=False)
        raise _failed(mset, engine, run, err) from err
    finally:
        run.remove_stray_sqlite()
    return run.results


def _cancel(conn: Connection) -> None:
    """Ask the server to cancel what the connection runs (psycopg and psycopg2 both have ``cancel()``)."""
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and hasattr(dbapi, "cancel"):
        dbapi.cancel()


def _failed(mset: MigrationSet, engine: Engine | Connection, run: EnvRun, err: BaseException
            ) -> MigrationFailed:
    secret = run.connection.engine.url.password if run.connection is not None else None
    try:
        completed = current(mset, engine)
    except sa.exc.SQLAlchemyError:
        completed = ()
    running = step_revision(run.running) if run.running is not None else None
    after = run.results[-1].revision if running is None and run.results else None
    # The SQLSTATE whatever the driver (psycopg2 calls it pgcode), for locking.is_lock_timeout.
    return MigrationFailed(mset.name, running, completed, _reason(err, str(secret) if secret else None),
                           after=after, steps=list(run.results), sqlstate=_sqlstate(err))


def _sqlstate(err: BaseException | None) -> str | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for candidate in (err, getattr(err, "orig", None)):
            code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if isinstance(code, str):
                return code
        err = err.__cause__ or err.__context__
    return None


def _preflight(mset: MigrationSet, engine: Engine | Connection, plan: Callable[[ScriptDirectory, tuple], Any],
               revision: Any, *, down: bool = False) -> None:
    """Check the target before env.py runs: an unknown revision then changes nothing, not even the version
    table (Alembic creates it before it calls the migration function)."""
    at = current(mset, engine)
    script = script_directory(mset)
    with in_project(mset):
        if down:
            refuse_ambiguous(mset, script, revision, at)
        try:
            plan(script, at)
        except (CommandError, RevisionError) as err:
            raise ambiguous_walk(mset, script, revision, at) or revision_not_found(mset, revision, err) from err


@absolute_paths
def upgrade(mset: MigrationSet, engine: Engine | Connection, revision: str = "heads") -> list[StepResult]:
    """``alembic upgrade REVISION`` through the project's env.py on our connection, one commit per revision.

    Returns:
        One StepResult per revision applied, in order.

    Raises:
        RevisionNotFound: unknown revision (checked before env.py runs).
        DialectMismatch: env.py configured another database, dialect or version table; nothing ran.
        MigrationFailed: a revision failed; ``completed`` is where the database is now (the revisions before
            the failing one stay committed) and ``steps`` the StepResults of those revisions.
    """
    # Alembic annotates current_rev as str; alembic.command passes the heads tuple too.
    _preflight(mset, engine, lambda script, at: script._upgrade_revs(revision, at),  # type: ignore[arg-type]
               revision)
    return drive(mset, engine, lambda script, rev, ctx: script._upgrade_revs(revision, rev),  # type: ignore[arg-type]
                  direction="upgrade", destination_rev=revision)


@absolute_paths
def downgrade(mset: MigrationSet, engine: Engine | Connection, revision: str) -> list[StepResult]:
    """``alembic downgrade REVISION`` ('-1', a revision id, 'base'), one transaction per revision.

    Raises:
        RevisionNotFound, DialectMismatch, MigrationFailed: as for ``upgrade``.
    """
    _preflight(mset, engine, lambda script, at: script._downgrade_revs(revision, at),  # type: ignore[arg-type]
               revision, down=True)
    return drive(mset, engine, lambda script, rev, ctx: script._downgrade_revs(revision, rev),  # type: ignore[arg-type]
                  direction="downgrade", destination_rev=revision)


@absolute_paths
def stamp(mset: MigrationSet, engine: Engine | Connection, revision: str | Sequence[str], *,
          purge: bool = False) -> None:
    """``alembic stamp``: write ``revision`` to the version table without running any migration.

    Args:
        purge: empty the version table first (``alembic stamp --purge``), for a table that lists unknown ids.
    """
    targets = to_tuple(revision)
    _preflight(mset, engine, lambda script, at: script._stamp_revs(targets, () if purge else at), revision)
    drive(mset, engine, lambda script, rev, ctx: script._stamp_revs(targets, rev),
           direction="stamp", destination_rev=targets, purge=purge)


@absolute_paths
def check(mset: MigrationSet, engine: Engine | Connection) -> list[tuple]:
    """``alembic check``: the differences between the models and the database (``[]`` when in sync).

    The models are ``mset.models`` when set, else the ``target_metadata`` env.py configures. The comparison
    runs inside env.py (read-only), so its include_object, include_schemas and compare options apply.
    Alembic's nested lists of column modifications are flattened: every item is one tuple.

    Raises:
        ConfigError: no models configured anywhere, or they cannot be imported.
        DialectMismatch: as for ``upgrade``.
    """
    diffs: list[tuple] = []

    def compare(script: ScriptDirectory, rev: tuple, ctx: MigrationContext) -> list:
        metadata = load_models(mset) if mset.models else ctx.opts.get("target_metadata")
        if metadata is None:
            raise ConfigError(
                f"Migration set '{mset.name}' has no models and its env.py sets no target_metadata. "
                f"Set models = 'module:Base' in [migration_sets.{mset.name}] of dbrunbook.toml.")
        for diff in compare_metadata(ctx, metadata):
            diffs.extend(diff if isinstance(diff, list) else [diff])
        return []

    drive(mset, engine, compare, direction="check", dont_mutate=True)
    return diffs
