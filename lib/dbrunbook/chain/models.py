"""A migration set's ``models`` and ``baseline``: the application objects named in dbrunbook.toml, imported.

``check`` compares the database with the models (``models = "package.module:Base"`` or a file path), and a
scratch database of an application that creates its first tables with ``create_all`` gets them from
``baseline`` before the chain runs. Both are imported the way env.py would import them: from the project's
folder (or a parent of it), inside ``in_project``, which restores ``sys.path`` afterwards.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from importlib.abc import Loader
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbrunbook.chain.project import connected, in_project
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError

__all__ = ["build_baseline", "load_models"]


def load_models(mset: MigrationSet) -> Any:
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
        module = _import_file(mset, key, spec, folders)
    else:
        module = _import_module(mset, key, spec, folders)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ConfigError(f"Migration set '{mset.name}': {spec} has no attribute '{attr}'. "
                              f"Fix {key} in dbrunbook.toml.") from err
    return obj


def _import_file(mset: MigrationSet, key: str, spec: str, folders: list[Path]) -> ModuleType:
    """A Python file found from the project's folder up (once per process: later calls reuse the module)."""
    candidates = [Path(spec)] if Path(spec).is_absolute() else [folder / spec for folder in folders]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise ConfigError(f"Migration set '{mset.name}': {key} file {spec} not found in {mset.base_dir} "
                          f"or its parent folders. Fix {key} in dbrunbook.toml.")
    name = "_dbrunbook_models_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        sys.path.insert(0, str(path.parent))  # so it can import its siblings; restored by in_project
        # A file without a .py suffix has no spec: module_from_spec then fails, as it always did.
        loader_spec = cast(ModuleSpec, importlib.util.spec_from_file_location(name, path))
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            cast(Loader, loader_spec.loader).exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def _import_module(mset: MigrationSet, key: str, spec: str, folders: list[Path]) -> ModuleType:
    """A module by its dotted name, its top package looked for from the project's folder up."""
    top = spec.split(".")[0]
    root = next((f for f in folders if (f / top).is_dir() or (f / f"{top}.py").is_file()), None)
    if root is not None:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(spec)
    except ImportError as err:
        raise ConfigError(f"Migration set '{mset.name}': cannot import {key} module '{spec}': {err}. "
                          f"Fix {key} in dbrunbook.toml.") from err


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
        with connected(engine) as conn:
            if callable(obj) and not isinstance(getattr(obj, "metadata", None), sa.MetaData):
                obj(conn)
            else:
                metadata = _metadata_of(obj, mset, "baseline")
                for meta in metadata if isinstance(metadata, list) else [metadata]:
                    meta.create_all(conn)
            if conn.in_transaction():
                conn.commit()
    return True
