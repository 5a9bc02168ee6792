"""Alembic driven through its own API, on dbrunbook's connection, for any existing project used unchanged.

Users point dbrunbook at their own Alembic projects (branched, multi-environment, with an env.py that reads
its own settings) and must not have to edit them. So this module does what ``alembic.command`` does, with
three additions:

* env.py is handed our target three ways at once: ``sqlalchemy.url`` of the main section, the open
  Connection in ``config.attributes["connection"]`` (the cookbook's "Sharing a Connection" recipe), and, when
  the migration set names it (``url_env``), the environment variable env.py reads itself. Environment
  variables, the working folder, ``sys.path`` and logging are restored after each call. The connection and
  URL use the project's driver (``drivers``: psycopg2, psycopg or asyncpg), with our session settings.
* env.py runs in an AnyIO worker thread with no event loop (``alembic_thread``): Alembic's ``async``
  template calls ``asyncio.run``, others ``anyio.from_thread.run``, and a notebook kernel runs a loop.
* Before any step runs, the MigrationContext env.py configured is checked: PostgreSQL, our database, the
  version table dbrunbook.toml names. Anything else raises ``DialectMismatch`` and nothing is written.
  (Airflow's env.py, for one, silently falls back to SQLite when its variable is unset.)
* Every revision runs in its own transaction and is timed; offline SQL is collected per revision from
  Alembic's output buffer, never from stdout, where a migration's print() would corrupt it.

The process-wide state touched here (cwd, environment, ``sys.path``, logging) makes these functions unsafe
to call from several threads at once; a notebook kernel runs one cell at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import html
import importlib
import importlib.util
import inspect
import io
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from dbrunbook.chain import alembic_thread, drivers
from dbrunbook.config import MigrationSet
from dbrunbook.errors import (
    AmbiguousRevision,
    ConfigError,
    DialectMismatch,
    MigrationFailed,
    RevisionNotFound,
)
from dbrunbook.postgres.db import mask_secrets, mask_url

if TYPE_CHECKING:  # pandas is imported where a frame is built: the launcher never needs it
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "RevisionInfo", "SqlStep", "StepResult", "alembic_config", "as_frame", "check", "current",
    "directory_digest", "downgrade", "file_digests", "heads", "history", "history_frame", "offline_sql",
    "pending", "resolve", "script_directory", "stamp", "upgrade",
]

#: Handed to env.py in offline mode: only its dialect matters, no connection is ever made with it.
OFFLINE_URL = "postgresql+psycopg://dbrunbook-offline/offline"

_RELATIVE = re.compile(r"^(?:(?P<branch>.+?)@)?(?P<symbol>\w+?)?(?P<delta>[+-]\d+)$")
_CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


# --- value objects --------------------------------------------------------------------------------------
def _html_table(obj: Any) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(f.name)}</th><td>{html.escape(_cell(getattr(obj, f.name)))}</td></tr>"
        for f in fields(obj) if f.name not in ("sql", "notes")
    )
    return f"<table>{rows}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


@dataclass(frozen=True)
class RevisionInfo:
    """One revision script of a migration set, with its place in the revision graph."""

    revision: str
    down_revisions: tuple[str, ...]
    message: str
    branch_labels: tuple[str, ...]
    is_head: bool
    is_base: bool
    is_merge: bool
    is_branch_point: bool
    path: Path
    create_date: str | None

    def _repr_html_(self) -> str:
        return _html_table(self)


@dataclass(frozen=True)
class SqlStep:
    """The SQL one revision emits in offline mode (``alembic upgrade A:B --sql``), and what it printed.

    A revision that cannot be rendered offline (it reads results through ``op.get_bind()``, uses the
    inspector, or refuses offline mode) is ``online_only``, ``reason`` says why and where; its ``sql`` is
    empty unless ``source`` is ``"captured"``: the SQL it really executed on a scratch database
    (``dbrunbook.chain.capture``). ``source`` is ``"offline"``, ``"captured"`` or ``"none"`` (online-only, not
    captured; ``capture_error`` then says why when a capture was tried).
    """

    revision: str
    down_revision: tuple[str, ...]
    message: str
    sql: str
    notes: str = ""
    sha256: str = field(default="")
    online_only: bool = False
    reason: str = ""
    source: str = "offline"
    capture_error: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.sql.encode("utf-8")).hexdigest())

    @property
    def status(self) -> str:
        """Where this step's SQL comes from: 'offline', 'captured' or 'online-only, not captured'."""
        return "online-only, not captured" if self.source == "none" else self.source

    @property
    def problem(self) -> str:
        """The sentence that names the revision and why it cannot be rendered offline ('' if it can)."""
        if not self.online_only:
            return ""
        text = f"revision {self.revision} ({self.message}) cannot be rendered offline: {self.reason}"
        if self.source == "captured":
            return text + "; its SQL was captured on a scratch database"
        return text + (f"; its SQL could not be captured: {self.capture_error}" if self.capture_error
                       else "; its SQL was not captured")

    def _repr_html_(self) -> str:
        head = f"<p><b>{html.escape(self.revision)}</b> {html.escape(self.message)}</p>"
        why = f"<p><i>{html.escape(self.problem)}</i></p>" if self.online_only else ""
        notes = f"<p><i>printed:</i> {html.escape(self.notes)}</p>" if self.notes else ""
        from dbrunbook.views.tables import sql_html

        return f"{head}{why}{sql_html(self.sql)}{notes}"


@dataclass(frozen=True)
class StepResult:
    """One revision applied, reverted or stamped, committed in its own transaction."""

    revision: str
    direction: str
    seconds: float
    started_at: dt.datetime

    def _repr_html_(self) -> str:
        return _html_table(self)


def as_frame(items: Iterable[RevisionInfo | SqlStep | StepResult]) -> pd.DataFrame:
    """Return a list of value objects as a DataFrame, one row each (tuples joined with ', ')."""
    rows = [{k: (", ".join(v) if isinstance(v, tuple) else v) for k, v in asdict(item).items()}
            for item in items]
    import pandas as pd

    return pd.DataFrame(rows)


# --- configuration ----------------------------------------------------------------------------------------
def _escape(value: str) -> str:
    # Config.set_main_option goes through configparser interpolation: a bare '%' (URL-encoded
    # characters, options=-c%20...) would be read as the start of %(name)s.
    return value.replace("%", "%%")


def _supports_toml() -> bool:
    return "toml_file" in inspect.signature(AlembicConfig.__init__).parameters


def _absolute(fn: Callable) -> Callable:
    """Make the migration set's paths absolute on the way in: the functions change the working folder."""

    @functools.wraps(fn)
    def wrapper(mset: MigrationSet, *args: Any, **kw: Any) -> Any:
        if isinstance(mset, MigrationSet):
            mset = dataclasses.replace(
                mset,
                alembic_ini=Path(mset.alembic_ini).expanduser().resolve() if mset.alembic_ini else None,
                script_location=(Path(mset.script_location).expanduser().resolve()
                                 if mset.script_location else None),
            )
        return fn(mset, *args, **kw)

    return wrapper


@_absolute
def alembic_config(mset: MigrationSet, url: str | None = None, connection: Connection | None = None
                   ) -> AlembicConfig:
    """Build the Alembic Config of a migration set, as the ``alembic`` command would from the project folder.

    Args:
        mset: the migration set; ``alembic_ini`` may be an alembic.ini or a pyproject.toml (Alembic >= 1.16),
            or absent when ``script_location`` is given.
        url: put into the main section as ``sqlalchemy.url`` (may carry a password: never log the Config).
        connection: put into ``config.attributes["connection"]`` for env.py files that follow the cookbook.

    Raises:
        ConfigError: the ini has no such section, or nothing says where the scripts are.
    """
    ini = mset.alembic_ini
    if ini is not None and not ini.is_file():
        raise ConfigError(
            f"Migration set '{mset.name}': {ini} does not exist. Fix alembic_ini in dbrunbook.toml.")
    file_: Path | None = None
    toml: Path | None = None
    if ini is not None and ini.suffix == ".toml":
        toml = ini
        sibling = ini.with_name("alembic.ini")
        file_ = sibling if sibling.is_file() else None
    elif ini is not None:
        file_ = ini
        sibling = ini.with_name("pyproject.toml")
        toml = sibling if sibling.is_file() else None
    kwargs: dict[str, Any] = {"ini_section": mset.section}
    if toml is not None:
        if _supports_toml():
            kwargs["toml_file"] = str(toml)
        elif file_ is None:
            raise ConfigError(
                f"Migration set '{mset.name}' is configured in {toml}, which needs Alembic >= 1.16. "
                f"Upgrade Alembic or point alembic_ini at an alembic.ini."
            )
    cfg = AlembicConfig(file_=str(file_) if file_ else None, **kwargs)
    if file_ is not None and not cfg.file_config.has_section(mset.section):
        raise ConfigError(
            f"{file_} has no [{mset.section}] section (sections: {', '.join(cfg.file_config.sections())}). "
            f"Set section = 'NAME' in [migration_sets.{mset.name}] of dbrunbook.toml to the one Alembic uses "
            f"(alembic -n NAME)."
        )
    if mset.script_location is not None:
        cfg.set_main_option("script_location", _escape(str(mset.script_location)))
    else:
        location = cfg.get_alembic_option("script_location")
        if not location:
            raise ConfigError(
                f"Migration set '{mset.name}': no script_location in {ini} [{mset.section}]. "
                f"Add script_location to [migration_sets.{mset.name}] of dbrunbook.toml."
            )
        # A relative location is relative to the folder 'alembic' is run from, i.e. the ini's folder;
        # made absolute so the ScriptDirectory keeps working after we leave that folder.
        if isinstance(location, str) and ":" not in location and not Path(location).is_absolute():
            cfg.set_main_option("script_location", _escape(str((mset.base_dir / location).resolve())))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", _escape(url))
    if connection is not None:
        cfg.attributes["connection"] = connection
    x_arguments = [item for item in os.environ.get("DBRUNBOOK_X", "").split(",") if "=" in item]
    if x_arguments:  # a schema-per-tenant fleet member: env.py reads context.get_x_argument(as_dictionary=True)
        cfg.cmd_opts = argparse.Namespace(x=x_arguments)
    # The cookbook's switch for env.py files that would otherwise call logging.config.fileConfig,
    # which disables every logger the notebook and dbrunbook already have.
    cfg.attributes["configure_logger"] = False
    return cfg


def _save_logging() -> tuple:
    root = logging.getLogger()
    loggers = {
        name: (lg.disabled, lg.level, list(lg.handlers), lg.propagate)
        for name, lg in list(logging.Logger.manager.loggerDict.items()) if isinstance(lg, logging.Logger)
    }
    return root.level, list(root.handlers), loggers


def _restore_logging(state: tuple) -> None:
    level, handlers, loggers = state
    root = logging.getLogger()
    root.setLevel(level)
    root.handlers[:] = handlers
    for name, (disabled, lvl, hdls, propagate) in loggers.items():
        lg = logging.getLogger(name)
        lg.disabled, lg.propagate = disabled, propagate
        lg.setLevel(lvl)
        lg.handlers[:] = hdls


@contextlib.contextmanager
def in_project(mset: MigrationSet, url: str | None = None) -> Iterator[None]:
    """Run as ``alembic`` would from the project folder, with the set's environment; restore everything after.

    env.py reads the environment at import time and expects the ini's folder as working folder (relative
    paths, ``prepend_sys_path = .``); its ``fileConfig`` replaces the logging setup of the whole process.
    """
    names = set(mset.env) | ({mset.url_env} if mset.url_env else set())
    saved_env = {name: os.environ.get(name) for name in names}
    saved_cwd, saved_path, saved_logging = os.getcwd(), list(sys.path), _save_logging()
    try:
        os.environ.update(mset.env)
        if mset.url_env and url is not None:
            os.environ[mset.url_env] = url
        os.chdir(mset.base_dir)
        _forget_relative_finders()
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        _forget_relative_finders()
        _restore_logging(saved_logging)


def _forget_relative_finders() -> None:
    """Drop the import finders of relative ``sys.path`` entries (``prepend_sys_path = .``).

    Python caches one finder per entry, with the listing of the folder the entry meant when it was made; after
    a change of working folder, '.' would still find the previous project's modules, or miss this one's.
    """
    for entry in [e for e in sys.path_importer_cache if isinstance(e, str) and not os.path.isabs(e)]:
        sys.path_importer_cache.pop(entry, None)


def _script(mset: MigrationSet, cfg: AlembicConfig) -> ScriptDirectory:
    try:
        script = _cached_script_directory(cfg)
    except (CommandError, RevisionError) as err:
        where = mset.alembic_ini or mset.script_location
        raise ConfigError(f"Migration set '{mset.name}': Alembic cannot read its scripts: {err}. "
                          f"Fix the scripts or the paths in {where}.") from err
    return script


@_absolute
def script_directory(mset: MigrationSet) -> ScriptDirectory:
    """Return the Alembic ScriptDirectory of a migration set, every revision script loaded.

    Raises:
        ConfigError: the configuration or the revision graph is broken (missing parent, cycle).
    """
    with in_project(mset):
        return _script(mset, alembic_config(mset))


# --- reading ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _connection(engine_or_conn: Engine | Connection) -> Iterator[Connection]:
    if isinstance(engine_or_conn, Connection):
        began = not engine_or_conn.in_transaction()
        try:
            yield engine_or_conn
        finally:
            # Only undo what we started: the caller's own transaction stays theirs.
            if began and engine_or_conn.in_transaction():
                engine_or_conn.rollback()
    else:
        with engine_or_conn.connect() as conn:
            yield conn


def current(mset: MigrationSet, engine_or_conn: Engine | Connection) -> tuple[str, ...]:
    """Return the revision(s) the database is at, from the set's version table (``()``: base or no table).

    The table is read directly, without env.py: reading must work even where env.py would connect elsewhere.
    """
    with _connection(engine_or_conn) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": mset.version_table,
                                                     "version_table_schema": mset.version_table_schema})
        found = ctx.get_current_heads()
    return tuple(sorted(found))


@_absolute
def heads(mset: MigrationSet) -> tuple[str, ...]:
    """Return the head revision(s) of the scripts: more than one means unmerged branches."""
    return tuple(sorted(script_directory(mset).get_heads()))


def _path(mset: MigrationSet, script: Script) -> Path:
    path = Path(script.path)
    return path if path.is_absolute() else (mset.base_dir / path).resolve()


def _info(mset: MigrationSet, script: Script) -> RevisionInfo:
    found = _CREATE_DATE.search(script.module.__doc__ or "")
    return RevisionInfo(
        revision=script.revision,
        down_revisions=tuple(_to_tuple(script.down_revision)),
        message=script.doc,
        # The labels the file declares; Alembic's own attribute also carries those inherited from ancestors.
        branch_labels=tuple(sorted(_to_tuple(getattr(script.module, "branch_labels", None)))),
        is_head=script.is_head,
        is_base=script.is_base,
        is_merge=script.is_merge_point,
        is_branch_point=script.is_branch_point,
        path=_path(mset, script),
        create_date=found.group(1) if found else None,
    )


def _to_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@_absolute
def history(mset: MigrationSet) -> list[RevisionInfo]:
    """Return every revision, base first, in an order where each comes after all of its parents."""
    script = script_directory(mset)
    return [_info(mset, s) for s in reversed(list(script.walk_revisions()))]


def _applied(script: ScriptDirectory, at: Sequence[str]) -> set[str]:
    """The revisions a database at ``at`` has applied: ``at`` and all their ancestors."""
    if not at:
        return set()
    return {s.revision for s in script.iterate_revisions(tuple(at), "base")}


@_absolute
def history_frame(mset: MigrationSet, current: Sequence[str] = ()) -> pd.DataFrame:
    """The guide's "Migration History" table: revision, parents, description, date, status.

    Status is ``current`` for the revisions the database is at, ``applied`` for their ancestors and
    ``pending`` for the rest.
    """
    script = script_directory(mset)
    try:
        done = _applied(script, current)
    except (CommandError, RevisionError) as err:
        raise _not_found(mset, ", ".join(current), err) from err
    rows = []
    for info in (_info(mset, s) for s in reversed(list(script.walk_revisions()))):
        status = "current" if info.revision in current else "applied" if info.revision in done else "pending"
        rows.append({"revision": info.revision, "parents": ", ".join(info.down_revisions),
                     "description": info.message, "date": info.create_date, "status": status})
    import pandas as pd

    return pd.DataFrame(rows, columns=["revision", "parents", "description", "date", "status"])


def _not_found(mset: MigrationSet, revision: Any, err: Exception) -> RevisionNotFound:
    if "Ambiguous walk" in str(err):
        # Where the caller knows the current revisions, _ambiguous names the merge and its parents.
        return AmbiguousRevision(str(revision).strip(), mset.name, "counting down crosses a merge revision, "
                                 "and Alembic cannot tell which of its parents to go to", ())
    # Alembic names the id it could not find, which may be one read from the version table rather than
    # the argument (a database stamped by a branch this checkout does not have).
    named = re.search(r"identified by '([^']+)'", str(err))
    return RevisionNotFound(named.group(1) if named else str(revision), mset.name, str(err).rstrip("."))


def _heads_after(script: ScriptDirectory, steps: Sequence[Any], start: Sequence[str]) -> tuple[str, ...]:
    """The heads a database at ``start`` is at after ``steps`` (what Alembic writes to the version table)."""
    done = _applied(script, start)
    for step in steps:
        rev = step.revision.revision
        (done.add if step.is_upgrade else done.discard)(rev)
    parents = {p for rev in done for p in _to_tuple(script.get_revision(rev).down_revision)}
    return tuple(sorted(done - parents))


@_absolute
def resolve(mset: MigrationSet, revision: str,
            current: Sequence[str] | None = None) -> tuple[str, ...]:
    """Resolve a revision argument to full revision ids, as Alembic would.

    Accepts 'heads', 'head', 'base', full or partial ids, 'branch@head', comma-separated lists, and relative
    ones. Relative ids count from ``current`` (the database's revisions, as ``alembic upgrade +1`` /
    ``downgrade -1`` do); without ``current``, '-N' counts down from the heads (Alembic's own reading).

    Raises:
        RevisionNotFound: unknown or ambiguous revision, or a relative step that goes past base or head.
    """
    script = script_directory(mset)
    try:
        with in_project(mset):
            if current is not None:
                _refuse_ambiguous(mset, script, revision, current)
            return _resolve(script, revision, current)
    except (CommandError, RevisionError) as err:
        found = _ambiguous(mset, script, revision, current) if current is not None else None
        raise (found or _not_found(mset, revision, err)) from err


def _resolve(script: ScriptDirectory, revision: str, at: Sequence[str] | None) -> tuple[str, ...]:
    revision = revision.strip()
    if "," in revision:
        return tuple(r for part in revision.split(",") if part.strip() for r in _resolve(script, part, at))
    relative = _RELATIVE.match(revision)
    up = bool(relative) and relative["delta"].startswith("+")
    if relative and at is None and not relative["symbol"]:
        if up:
            raise CommandError(f"relative revision '{revision}' needs the current revision to count from")
        # '-N' without a current position: Alembic's get_revisions counts down from the heads.
    elif relative:
        start = tuple(at or ())
        steps = script._upgrade_revs(revision, start) if up else script._downgrade_revs(revision, start)
        return _heads_after(script, steps, start)
    # The RevisionMap, not ScriptDirectory.get_revisions, which rewords every failure as "Can't locate".
    return tuple(r.revision for r in script.revision_map.get_revisions(revision) if r is not None)


@_absolute
def pending(mset: MigrationSet, engine: Engine | Connection, revision: str = "heads") -> list[RevisionInfo]:
    """Return the revisions ``upgrade(revision)`` would apply, in the order it would apply them.

    Raises:
        RevisionNotFound: ``revision`` is not defined, or is not above where the database is.
    """
    at = current(mset, engine)
    script = script_directory(mset)
    with in_project(mset):
        try:
            steps = script._upgrade_revs(revision, at)
        except (CommandError, RevisionError) as err:
            raise _not_found(mset, revision, err) from err
    return [_info(mset, step.revision) for step in steps]


@_absolute
def file_digests(mset: MigrationSet) -> dict[str, str]:
    """Return revision -> sha256 of its script file's bytes."""
    return {info.revision: hashlib.sha256(info.path.read_bytes()).hexdigest() for info in history(mset)}


@_absolute
def _migration_files(mset: MigrationSet) -> list[Path]:
    script = script_directory(mset)
    roots = [Path(script.dir)] + [mset.base_dir / p for p in script.version_locations]
    found = {p.resolve() for root in roots if root.is_dir() for p in root.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}
    if mset.alembic_ini is not None:
        found.add(mset.alembic_ini.resolve())
    return sorted(found)


def directory_digest(msets: Iterable[MigrationSet]) -> str:
    """Return one sha256 over the migration files of the sets (ini, env.py, templates, revision scripts).

    Each file contributes ``<set name>/<path relative to the set's folder>`` and its bytes, length-prefixed,
    in sorted order, so that moving, renaming or editing any of them changes the digest.
    """
    digest = hashlib.sha256()
    for mset in sorted(msets, key=lambda m: m.name):
        base = mset.base_dir.resolve()
        entries = []
        for path in _migration_files(mset):
            rel = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
            entries.append((f"{mset.name}/{rel}", path))
        for name, path in sorted(entries):
            data = path.read_bytes()
            for chunk in (name.encode("utf-8"), data):
                digest.update(len(chunk).to_bytes(8, "big"))
                digest.update(chunk)
    return digest.hexdigest()


# --- running env.py -------------------------------------------------------------------------------------
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
class _Run:
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
            self.results.append(StepResult(_step_revision(step), self.direction, seconds, started))
            self.running = None

    def verify(self, ctx: MigrationContext, url: Any) -> None:
        """Refuse an env.py that configured anything but our database and the set's version table."""
        theirs = self._their_url(ctx, url)
        if ctx.dialect.name != "postgresql":
            if ctx.dialect.name == "sqlite" and not ctx.as_sql:
                self._note_sqlite(ctx)
            raise self._mismatch(f"it configured the {ctx.dialect.name} dialect at {theirs}")
        if not ctx.as_sql and self.connection is not None and ctx.connection is not self.connection:
            if not _same_database(ctx.connection, self.connection):
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
        database = ctx.connection.engine.url.database
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
            f"not {ours}. Nothing was run. {hint}"
        )
        err.migration_set, err.actual, err.expected = self.mset.name, what, ours
        return err

    def remove_stray_sqlite(self) -> None:
        # Connecting is enough for SQLite to create its file. An empty one holds nothing, so removing it
        # loses nothing and does not leave a decoy database behind; a non-empty one is left alone.
        for path in self.stray_sqlite:
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size == 0:
                    path.unlink()
                    log.info("Removed the empty SQLite file %s that env.py created", path)


def _step_revision(step: Any) -> str:
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
        f"[migration_sets.{mset.name}] of dbrunbook.toml."
    )
    err.migration_set, err.actual, err.expected = mset.name, name(actual), name(expected)
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


def _environment(config: AlembicConfig, script: ScriptDirectory, run: _Run, **kw: Any) -> EnvironmentContext:
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
    with _connection(engine) as ours:
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

    run = _Run(mset, direction, connection=conn)
    try:
        with in_project(mset, url):
            cfg = alembic_config(mset, url=url, connection=conn)
            script = _script(mset, cfg)

            def fn(rev: tuple, context: MigrationContext) -> Iterable[Any]:
                return run.steps(steps_fn(script, rev, context))

            with _environment(cfg, script, run, fn=fn, as_sql=False, **context_opts):
                alembic_thread.run_in_worker(script.run_env, on_interrupt=lambda: _cancel(conn))
        end(commit=True)
    except (DialectMismatch, ConfigError, RevisionNotFound):
        end(commit=False)
        raise
    except (CommandError, RevisionError) as err:
        end(commit=False)
        if "locate revision" in str(err) or isinstance(err, RevisionError):
            raise _not_found(mset, context_opts.get("destination_rev"), err) from err
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


def _failed(mset: MigrationSet, engine: Engine | Connection, run: _Run, err: BaseException
            ) -> MigrationFailed:
    secret = run.connection.engine.url.password if run.connection is not None else None
    try:
        completed = current(mset, engine)
    except sa.exc.SQLAlchemyError:
        completed = ()
    running = _step_revision(run.running) if run.running is not None else None
    after = run.results[-1].revision if running is None and run.results else None
    failed = MigrationFailed(mset.name, running, completed, _reason(err, str(secret) if secret else None),
                             after=after)
    failed.steps = list(run.results)
    # The SQLSTATE whatever the driver (psycopg2 calls it pgcode), for locking.is_lock_timeout.
    failed.sqlstate = _sqlstate(err)
    return failed


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
            _refuse_ambiguous(mset, script, revision, at)
        try:
            plan(script, at)
        except (CommandError, RevisionError) as err:
            raise _ambiguous(mset, script, revision, at) or _not_found(mset, revision, err) from err


def _relative_down(revision: Any) -> int | None:
    """N for a bare '-N' (no branch, no symbol), else None."""
    match = _RELATIVE.match(revision.strip()) if isinstance(revision, str) else None
    if not match or match["branch"] or match["symbol"] or not match["delta"].startswith("-"):
        return None
    return -int(match["delta"])


def _refuse_ambiguous(mset: MigrationSet, script: ScriptDirectory, revision: Any, at: Sequence[str]) -> None:
    """'-N' from several current revisions: Alembic picks one of them (with a warning); we ask which."""
    if _relative_down(revision) is None or len(at) < 2:
        return
    raise AmbiguousRevision(
        revision.strip(), mset.name,
        f"the database is at {len(at)} revisions ({', '.join(at)}), and '{revision.strip()}' does not say which "
        f"of them to step back from", tuple(f"{rev}@{revision.strip()}" for rev in sorted(at)))


def _ambiguous(mset: MigrationSet, script: ScriptDirectory, revision: Any,
               at: Sequence[str]) -> AmbiguousRevision | None:
    """The error for '-N' that crosses a merge point from ``at`` (Alembic's "Ambiguous walk"), or None."""
    steps = _relative_down(revision)
    if steps is None or len(at) != 1:
        return None
    rev = script.get_revision(at[0])
    for _ in range(steps):
        parents = _to_tuple(rev.down_revision)
        if len(parents) > 1:
            return AmbiguousRevision(
                revision.strip(), mset.name,
                f"counting down from {at[0]} reaches merge revision {rev.revision} ({rev.doc}), which has "
                f"{len(parents)} parents: {', '.join(parents)}; going to one of them reverts the merge "
                f"(and what follows it) and leaves both branches applied",
                tuple(parents))
        if not parents:
            return None
        rev = script.get_revision(parents[0])
    return None


@_absolute
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
    _preflight(mset, engine, lambda script, at: script._upgrade_revs(revision, at), revision)
    return drive(mset, engine, lambda script, rev, ctx: script._upgrade_revs(revision, rev),
                  direction="upgrade", destination_rev=revision)


@_absolute
def downgrade(mset: MigrationSet, engine: Engine | Connection, revision: str) -> list[StepResult]:
    """``alembic downgrade REVISION`` ('-1', a revision id, 'base'), one transaction per revision.

    Raises:
        RevisionNotFound, DialectMismatch, MigrationFailed: as for ``upgrade``.
    """
    _preflight(mset, engine, lambda script, at: script._downgrade_revs(revision, at), revision, down=True)
    return drive(mset, engine, lambda script, rev, ctx: script._downgrade_revs(revision, rev),
                  direction="downgrade", destination_rev=revision)


@_absolute
def stamp(mset: MigrationSet, engine: Engine | Connection, revision: str | Sequence[str], *,
          purge: bool = False) -> None:
    """``alembic stamp``: write ``revision`` to the version table without running any migration.

    Args:
        purge: empty the version table first (``alembic stamp --purge``), for a table that lists unknown ids.
    """
    targets = _to_tuple(revision)
    _preflight(mset, engine, lambda script, at: script._stamp_revs(targets, () if purge else at), revision)
    drive(mset, engine, lambda script, rev, ctx: script._stamp_revs(targets, rev),
           direction="stamp", destination_rev=targets, purge=purge)


def _load_models(mset: MigrationSet) -> Any:
    """Import ``mset.models`` ("package.module:attr" or "path/to/file.py:attr"); return its MetaData."""
    return _metadata_of(_import_object(mset, "models"), mset, "models")


def _import_object(mset: MigrationSet, key: str) -> Any:
    """The object a set's ``key`` ("package.module:attr" or "path/to/file.py:attr") names, imported."""
    value = getattr(mset, key) or ""
    spec, sep, attr = value.rpartition(":")
    if not sep or not spec or not attr:
        raise ConfigError(f"Migration set '{mset.name}': {key} = '{value}' must be 'module:attribute' "
                          f"or 'path/to/file.py:attribute'.")
    folders = [mset.base_dir.resolve(), *mset.base_dir.resolve().parents, Path.cwd()]
    if spec.endswith(".py") or "/" in spec or os.sep in spec:
        candidates = [Path(spec)] if Path(spec).is_absolute() else [folder / spec for folder in folders]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ConfigError(f"Migration set '{mset.name}': {key} file {spec} not found in {mset.base_dir} "
                              f"or its parent folders. Fix {key} in dbrunbook.toml.")
        name = "_dbrunbook_models_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            sys.path.insert(0, str(path.parent))  # so it can import its siblings; restored by in_project
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        top = spec.split(".")[0]
        root = next((f for f in folders if (f / top).is_dir() or (f / f"{top}.py").is_file()), None)
        if root is not None:
            sys.path.insert(0, str(root))
        try:
            module = importlib.import_module(spec)
        except ImportError as err:
            raise ConfigError(f"Migration set '{mset.name}': cannot import {key} module '{spec}': {err}. "
                              f"Fix {key} in dbrunbook.toml.") from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ConfigError(f"Migration set '{mset.name}': {spec} has no attribute '{attr}'. "
                              f"Fix {key} in dbrunbook.toml.") from err
    return obj


def _metadata_of(obj: Any, mset: MigrationSet, key: str = "models") -> Any:
    if isinstance(obj, sa.MetaData):
        return obj
    if isinstance(getattr(obj, "metadata", None), sa.MetaData):
        return obj.metadata
    if isinstance(obj, (list, tuple)):
        return [_metadata_of(o, mset, key) for o in obj]
    raise ConfigError(f"Migration set '{mset.name}': {key} = '{getattr(mset, key)}' is a {type(obj).__name__}, "
                      f"not a MetaData or a declarative Base.")


def build_baseline(mset: MigrationSet, engine: Engine | Connection) -> bool:
    """On an empty scratch database, create the tables that predate the chain (``baseline`` on the set).

    Some applications create their first tables with ``create_all`` and let Alembic change them afterwards
    (mlflow's initial models): their chain cannot be built from an empty database without this. Returns
    whether there was a baseline to build.
    """
    if not mset.baseline:
        return False
    with in_project(mset):
        obj = _import_object(mset, "baseline")
        with _connection(engine) as conn:
            if callable(obj) and not isinstance(getattr(obj, "metadata", None), sa.MetaData):
                obj(conn)
            else:
                metadata = _metadata_of(obj, mset, "baseline")
                for meta in metadata if isinstance(metadata, list) else [metadata]:
                    meta.create_all(conn)
            if conn.in_transaction():
                conn.commit()
    return True





@_absolute
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
        metadata = _load_models(mset) if mset.models else ctx.opts.get("target_metadata")
        if metadata is None:
            raise ConfigError(
                f"Migration set '{mset.name}' has no models and its env.py sets no target_metadata. "
                f"Set models = 'module:Base' in [migration_sets.{mset.name}] of dbrunbook.toml.")
        for diff in compare_metadata(ctx, metadata):
            diffs.extend(diff if isinstance(diff, list) else [diff])
        return []

    drive(mset, engine, compare, direction="check", dont_mutate=True)
    return diffs


# --- offline SQL ----------------------------------------------------------------------------------------
@_absolute
def offline_sql(mset: MigrationSet, start: str | None, end: str = "heads", *, direction: str = "upgrade"
                ) -> list[SqlStep]:
    """Render the SQL from ``start`` to ``end`` offline (``alembic upgrade start:end --sql``), per revision.

    Args:
        start: where the database is: None or 'base', a revision, or comma-separated revisions.
        end: the target; relative ids ('+1', '-1') count from ``start``.
        direction: 'upgrade' or 'downgrade'.

    Each step's SQL is what Alembic wrote to its output buffer while that revision ran (from its BEGIN to its
    COMMIT, the ``-- Running upgrade A -> B`` marker inside); what the migration printed is in ``notes``.

    Offline SQL is evidence, not a prerequisite: a revision that raises while rendering (``op.get_bind()``
    results are None offline, the inspector refuses a mock connection, or it refuses offline mode itself)
    becomes an ``online_only`` step with its reason, and the revisions after it are rendered from where it
    would have left the database (env.py runs again from there).

    Raises:
        RevisionNotFound, DialectMismatch: as for ``upgrade``.
    """
    if direction not in ("upgrade", "downgrade"):
        raise ValueError(f"direction must be 'upgrade' or 'downgrade', not {direction!r}")
    script = script_directory(mset)
    try:
        with in_project(mset):
            at = _resolve(script, start, None) if start and start != "base" else ()
    except (CommandError, RevisionError) as err:
        raise _not_found(mset, start, err) from err
    if direction == "downgrade" and not at:
        return []
    plan = "_upgrade_revs" if direction == "upgrade" else "_downgrade_revs"
    with in_project(mset):
        if direction == "downgrade":
            _refuse_ambiguous(mset, script, end, at)
        try:
            # Planned once: a relative end ('-1', '+2') would count from somewhere else after a restart.
            planned = list(getattr(script, plan)(end, at))
        except (CommandError, RevisionError) as err:
            raise _ambiguous(mset, script, end, at) or _not_found(mset, end, err) from err

    out: list[SqlStep] = []
    done = 0
    while done < len(planned):
        segment = planned[done:]
        heads_now = _heads_after(script, planned[:done], at) if done else tuple(at)
        run, failure = _render_segment(mset, direction, segment, heads_now, end)
        out += _split(run, complete=failure is None)
        done += len(run.chunks)
        if failure is None:
            break
        err, failed_step = failure
        if failed_step is None:
            # env.py itself cannot run offline: nothing after this point renders.
            reason = f"env.py fails in offline mode ({_error_text(err)})"
            out += [_online_only(step, reason, run.notes.parts.get(_rev_id(step), []))
                    for step in segment[len(run.chunks):]]
            break
        out.append(_online_only(failed_step, _offline_reason(err, failed_step, script),
                                run.notes.parts.get(_rev_id(failed_step), [])))
        done += 1
    return out


def _rev_id(step: Any) -> str | None:
    return step.revision.revision if hasattr(step, "revision") else None


def _render_segment(mset: MigrationSet, direction: str, steps: list, heads_now: Sequence[str], end: str
                    ) -> tuple[_Run, tuple[BaseException, Any] | None]:
    """Run env.py offline over ``steps``, starting at ``heads_now``; stop at the first step that raises.

    Returns the run (its completed chunks) and, when something raised, the error with the step that raised
    it (None when env.py raised outside any step).
    """
    run = _Run(mset, direction, as_sql=True)
    try:
        with in_project(mset, OFFLINE_URL):
            cfg = alembic_config(mset, url=OFFLINE_URL)
            cfg.output_buffer = run.buffer
            script = _script(mset, cfg)

            def fn(rev: tuple, context: MigrationContext) -> Iterable[Any]:
                return run.steps(steps)

            with contextlib.redirect_stdout(run.notes), \
                    _environment(cfg, script, run, fn=fn, as_sql=True, starting_rev=tuple(heads_now) or None,
                                 destination_rev=end):
                script.run_env()
    except (DialectMismatch, ConfigError, RevisionNotFound):
        raise
    except Exception as err:  # anything a revision or env.py raises while rendering offline
        if run.running is not None:
            return run, (err, run.running)
        if isinstance(err, RevisionError) or (isinstance(err, CommandError) and "locate revision" in str(err)):
            raise _not_found(mset, end, err) from err
        if len(run.chunks) < len(steps):
            return run, (err, None)
        raise
    return run, None


def _error_text(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _offline_reason(err: BaseException, step: Any, script: ScriptDirectory) -> str:
    """Why a revision cannot render offline: the line of the revision that needed a connection, and the error.

    The innermost frame of the traceback that is in the revision's own file is the call that needed a
    connection (or the ``raise`` that refuses offline mode); its path is given relative to script_location.
    """
    path = Path(step.revision.path).resolve()
    frame = None
    for entry in traceback.extract_tb(err.__traceback__):
        with contextlib.suppress(OSError):
            if Path(entry.filename).resolve() == path:
                frame = entry
    what = _error_text(err)
    if frame is None:
        return f"it raised {what}"
    try:
        where = path.relative_to(Path(script.dir).resolve()).as_posix()
    except ValueError:
        where = path.name
    line = (frame.line or "").strip()
    line = line.removeprefix("return ")
    if line.startswith("raise"):
        return f"it raises at {where}:{frame.lineno} ({what})"
    return f"it calls {line} at {where}:{frame.lineno} ({what})" if line else f"{what} at {where}:{frame.lineno}"


def _online_only(step: Any, reason: str, notes: list[str]) -> SqlStep:
    rev = step.revision
    return SqlStep(revision=rev.revision, down_revision=_to_tuple(rev.down_revision), message=rev.doc, sql="",
                   notes="".join(notes), online_only=True, reason=reason, source="none")


def _split(run: _Run, *, complete: bool = True) -> list[SqlStep]:
    text = run.buffer.getvalue()
    out = []
    for i, (step, begin, finish) in enumerate(run.chunks):
        # Whatever env.py wrote before the first step or after the last belongs to them; after a step that
        # raised, what follows the last completed step is that step's partial output, not this one's.
        begin = 0 if i == 0 else begin
        finish = len(text) if i == len(run.chunks) - 1 and complete else finish
        rev = step.revision
        notes = run.notes.parts.get(rev.revision, [])
        if i == 0:
            notes = run.notes.parts.get(None, []) + notes
        out.append(SqlStep(revision=rev.revision, down_revision=_to_tuple(rev.down_revision), message=rev.doc,
                           sql=text[begin:finish].strip("\n") + "\n", notes="".join(notes)))
    return out


# --- one ScriptDirectory per migration set and process (cost) -----------------------------------------------
# Building a ScriptDirectory executes every revision file (and whatever application code they import); one
# apply asks for it about twenty times (status, preview, upgrade, graph, check). It is reused while none of
# its version folders' files changed: names, sizes, mtimes and inodes. env.py still runs on every command.
from threading import Lock as _Lock

_SCRIPT_CACHE: dict[tuple, tuple[tuple, ScriptDirectory]] = {}
_SCRIPT_CACHE_LOCK = _Lock()
_SCRIPT_CACHE_KEEP = 8  # the newest projects' scripts are kept; older ones are loaded again when asked


def _script_files(script: ScriptDirectory) -> tuple:
    found = []
    for folder in script._version_locations:
        if not folder.is_dir():
            continue
        walk = (os.walk(folder) if script.recursive_version_locations
                else [(str(folder), [], os.listdir(folder))])
        for root, _dirs, names in walk:
            for name in names:
                if name.endswith((".py", ".pyc")):
                    st = os.stat(os.path.join(root, name))
                    found.append((root, name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(found))


def _cached_script_directory(cfg: AlembicConfig) -> ScriptDirectory:
    """``ScriptDirectory.from_config(cfg)`` with every script loaded, built again only when a file changed."""
    key = (cfg.get_alembic_option("script_location"), tuple(cfg.get_version_locations_list() or ()),
           cfg.get_alembic_option("sourceless"), cfg.get_alembic_option("recursive_version_locations"))
    with _SCRIPT_CACHE_LOCK:
        cached = _SCRIPT_CACHE.get(key)
        if cached is not None and cached[0] == _script_files(cached[1]):
            # What from_config does besides building the object: env.py and the revisions import the
            # application from the ini's prepend_sys_path (restored by in_project afterwards).
            prepend = cfg.get_prepend_sys_paths_list()
            if prepend:
                sys.path[:0] = prepend
            return cached[1]
        script = ScriptDirectory.from_config(cfg)
        files = _script_files(script)
        script.revision_map.heads  # noqa: B018 - load every script now, while the project folder is the cwd
        _SCRIPT_CACHE.pop(key, None)
        while len(_SCRIPT_CACHE) >= _SCRIPT_CACHE_KEEP:  # a long test session meets hundreds of projects
            _SCRIPT_CACHE.pop(next(iter(_SCRIPT_CACHE)))
        _SCRIPT_CACHE[key] = (files, script)
        return script
