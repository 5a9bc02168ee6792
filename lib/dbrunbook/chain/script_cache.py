"""One loaded ScriptDirectory per migration set and process, built again only when a version file changed.

Building a ScriptDirectory executes every revision file (and whatever application code they import); one
apply asks for it about twenty times (status, preview, upgrade, graph, check). It is reused while none of
its version folders' files changed: names, sizes, mtimes and inodes. env.py still runs on every command.
"""

from __future__ import annotations

import os
import sys
from threading import Lock as _Lock

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

__all__ = ["cached_script_directory"]

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


def cached_script_directory(cfg: AlembicConfig) -> ScriptDirectory:
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
