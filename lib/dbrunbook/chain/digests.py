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

__all__ = ["directory_digest", "file_digests", "sha256_file"]


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, as hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@absolute_paths
def file_digests(mset: MigrationSet) -> dict[str, str]:
    """Return revision -> sha256 of its script file's bytes."""
    return {info.revision: sha256_file(info.path) for info in history(mset)}


def _migration_files(mset: MigrationSet) -> list[Path]:
    found: set[Path] = set()
    for root in script_folders(mset):  # resolved; a walk that skips __pycache__ (1,000 .pyc of 1,000 scripts)
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in names:
                path = Path(folder, name)
                if not name.endswith((".pyc", ".pyo")) and path.is_file():
                    found.add(path.resolve() if path.is_symlink() else path)
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
