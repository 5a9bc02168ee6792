"""Digests of a migration set's files: one per revision script, and one over all of its migration files.

A record names the exact scripts a run applied (``file_digests``), and a review or an approval is bound to
the migration files it saw (``directory_digest``): moving, renaming or editing any of them changes it.
``sha256_file`` is the chain's one digest of a file; ``records.statements.sha256_file`` is the records layer's
(above this one, which must not import it), read in chunks for dumps and notebooks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from dbrunbook.chain.history import history
from dbrunbook.chain.project import absolute_paths, script_folders
from dbrunbook.config import MigrationSet

__all__ = ["directory_digest", "file_digests", "file_versions", "sha256_file"]


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, as hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@absolute_paths
def file_digests(mset: MigrationSet) -> dict[str, str]:
    """Return revision -> sha256 of its script file's bytes."""
    return {info.revision: sha256_file(info.path) for info in history(mset)}


def _migration_files(mset: MigrationSet) -> list[str]:
    """Absolute paths of the set's migration files, as strings.

    The walk is ``os.walk``'s (symlinked folders listed, not entered; a symlinked file by its target) with
    ``__pycache__`` skipped, on the directory entries' own types: at 1,000 scripts, a stat and a Path object
    per file were most of the launcher's digest.
    """
    found: set[str] = set()
    stack = [str(root) for root in script_folders(mset)]  # resolved
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # a folder that is not there (or not readable) has no files, as in os.walk
            continue
        for entry in entries:
            if entry.is_dir():
                if entry.name != "__pycache__" and not entry.is_symlink():
                    stack.append(entry.path)
            elif not entry.name.endswith((".pyc", ".pyo")) and entry.is_file():
                found.add(os.path.realpath(entry.path) if entry.is_symlink() else entry.path)
    if mset.alembic_ini is not None:
        found.add(str(mset.alembic_ini.resolve()))
    return sorted(found)


def file_versions(mset: MigrationSet) -> list[list]:
    """``[path, size, mtime_ns]`` of each of the set's migration files (those ``directory_digest`` reads):
    equal lists mean no file was added, removed or rewritten, without reading one."""
    out = []
    for path in _migration_files(mset):
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append([path, st.st_size, st.st_mtime_ns])
    return out


def directory_digest(msets: Iterable[MigrationSet]) -> str:
    """Return one sha256 over the migration files of the sets (ini, env.py, templates, revision scripts).

    Each file contributes ``<set name>/<path relative to the set's folder>`` and its bytes, length-prefixed,
    in sorted order, so that moving, renaming or editing any of them changes the digest.
    """
    digest = hashlib.sha256()
    for mset in sorted(msets, key=lambda m: m.name):
        base = str(mset.base_dir.resolve())
        inside = base.rstrip("/") + "/"
        entries = []
        for path in _migration_files(mset):
            rel = path[len(inside):] if path.startswith(inside) else path
            entries.append((f"{mset.name}/{rel}", path))
        for name, path in sorted(entries):
            with open(path, "rb") as file:
                data = file.read()
            for chunk in (name.encode("utf-8"), data):
                digest.update(len(chunk).to_bytes(8, "big"))
                digest.update(chunk)
    return digest.hexdigest()
