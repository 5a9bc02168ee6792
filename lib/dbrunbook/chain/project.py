"""Running as ``alembic`` would from a project's folder: its Config, environment, logging and scripts.

Users point dbrunbook at their own Alembic projects (branched, multi-environment, with an env.py that reads
its own settings) and must not have to edit them. env.py reads the environment at import time, expects the
ini's folder as working folder and may replace the logging setup of the whole process, so every function of
the chain runs inside ``in_project``, which sets all of that up and restores it afterwards. The functions
change the working folder, so the migration set's paths are made absolute on the way in (``absolute_paths``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from dbrunbook.chain.script_cache import cached_script_directory
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError

__all__ = ["absolute_paths", "alembic_config", "connected", "in_project", "script_directory",
           "script_directory_for"]


def _escape(value: str) -> str:
    # Config.set_main_option goes through configparser interpolation: a bare '%' (URL-encoded
    # characters, options=-c%20...) would be read as the start of %(name)s.
    return value.replace("%", "%%")


def _supports_toml() -> bool:
    return "toml_file" in inspect.signature(AlembicConfig.__init__).parameters


def absolute_paths(fn: Callable) -> Callable:
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


@absolute_paths
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
    cfg = _read_config(mset, *_config_files(mset))
    _set_script_location(cfg, mset)
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


def _config_files(mset: MigrationSet) -> tuple[Path | None, Path | None]:
    """The alembic.ini and the pyproject.toml Alembic reads for the set: the one named, and its sibling."""
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
    return file_, toml


def _read_config(mset: MigrationSet, file_: Path | None, toml: Path | None) -> AlembicConfig:
    """Alembic's Config of those files and the set's section."""
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
    return cfg


def _set_script_location(cfg: AlembicConfig, mset: MigrationSet) -> None:
    """The set's script_location, else the ini's, made absolute."""
    if mset.script_location is not None:
        cfg.set_main_option("script_location", _escape(str(mset.script_location)))
        return
    location = cfg.get_alembic_option("script_location")
    if not location:
        raise ConfigError(
            f"Migration set '{mset.name}': no script_location in {mset.alembic_ini} [{mset.section}]. "
            f"Add script_location to [migration_sets.{mset.name}] of dbrunbook.toml."
        )
    # A relative location is relative to the folder 'alembic' is run from, i.e. the ini's folder;
    # made absolute so the ScriptDirectory keeps working after we leave that folder.
    if isinstance(location, str) and ":" not in location and not Path(location).is_absolute():
        cfg.set_main_option("script_location", _escape(str((mset.base_dir / location).resolve())))


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


def script_directory_for(mset: MigrationSet, cfg: AlembicConfig) -> ScriptDirectory:
    """The ScriptDirectory ``cfg`` names (cached, see ``script_cache``), inside ``in_project``.

    Raises:
        ConfigError: Alembic cannot read the scripts (a missing parent, a cycle, a bad script_location).
    """
    try:
        script = cached_script_directory(cfg)
    except (CommandError, RevisionError) as err:
        raise _unreadable_scripts(mset, err) from err
    return script


def _unreadable_scripts(mset: MigrationSet, err: Exception) -> ConfigError:
    where = mset.alembic_ini or mset.script_location
    return ConfigError(f"Migration set '{mset.name}': Alembic cannot read its scripts: {err}. "
                       f"Fix the scripts or the paths in {where}.")


@absolute_paths
def script_directory(mset: MigrationSet) -> ScriptDirectory:
    """Return the Alembic ScriptDirectory of a migration set, every revision script loaded.

    Raises:
        ConfigError: the configuration or the revision graph is broken (missing parent, cycle).
    """
    with in_project(mset):
        return script_directory_for(mset, alembic_config(mset))


@absolute_paths
def script_folders(mset: MigrationSet) -> list[Path]:
    """The folders of a migration set's scripts (script_location, then version_locations), with no script
    loaded: the launcher's digest of the migration files needs the folders, not the 1,000 revisions run.

    Raises:
        ConfigError: Alembic cannot read the script_location.
    """
    with in_project(mset):
        try:
            script = ScriptDirectory.from_config(alembic_config(mset))
        except CommandError as err:
            raise _unreadable_scripts(mset, err) from err
        return [Path(script.dir).resolve()] + [(mset.base_dir / p).resolve() for p in script.version_locations]


@contextlib.contextmanager
def connected(engine_or_conn: Engine | Connection) -> Iterator[Connection]:
    """A Connection for an Engine (opened and closed here) or a Connection (the caller's, lent for a while).

    What is begun on a lent connection is rolled back on the way out; a transaction the caller had open stays
    the caller's.
    """
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
