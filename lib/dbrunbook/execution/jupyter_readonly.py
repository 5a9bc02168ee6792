"""A Jupyter contents manager that refuses to write anything in the records folder (``outputs/``).

JupyterLab rewrites a notebook it merely opens (kernelspec, language_info) and autosaves it about two minutes
later; workspace restore reopens old tabs and autosaves those too. Under ``outputs/`` every such save turns an
honest signed record into a "tampered" one. ``dbrunbook lab`` (and ``jupyter_server_config.py`` at the
project root, for a plain ``jupyter lab``) use this manager: under the configured outputs folder, saving,
creating, renaming, deleting, copying into and checkpointing are refused with HTTP 403, which JupyterLab shows
as "permission denied"; reading is unchanged. Interactive runs are edited in their working copy under the
state directory and moved into ``outputs/`` only by ``dbrunbook seal``.
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web
from traitlets import List, Unicode

__all__ = ["RecordsReadOnlyContentsManager"]


def _base() -> type:
    """The default file manager, with jupytext's pairing when jupytext is installed (the dev extras).

    jupytext's server extension would otherwise derive its own manager *from* this one, putting its save in
    front of ours; it turns every error of the inner save into "500 Unexpected error". Deriving from
    jupytext's class instead keeps the refusal first (a 403) and jupytext leaves the class alone.
    """
    try:
        from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class
    except ImportError:
        return AsyncLargeFileManager
    return build_async_jupytext_contents_manager_class(AsyncLargeFileManager)


class RecordsReadOnlyContentsManager(_base()):  # type: ignore[misc]  # base chosen at import: jupytext's if any
    """The default file contents manager, read-only under the records folders."""

    read_only_dirs = List(
        Unicode(), default_value=[],
        help="Folders (relative to root_dir, or absolute) in which nothing may be written. Default: the "
             "outputs folder of the dbrunbook.toml found from root_dir ($DBRUNBOOK_CONFIG first).",
    ).tag(config=True)

    def _protected(self) -> list[Path]:
        root = Path(self.root_dir).resolve()
        if self.read_only_dirs:
            return [(root / d).resolve() for d in self.read_only_dirs]
        try:
            from dbrunbook.config import find_config, load_config

            path = os.environ.get("DBRUNBOOK_CONFIG") or find_config(root)
            return [Path(load_config(path).outputs_dir).resolve()]
        except Exception:  # no project here: protect the conventional folder all the same
            return [(root / "outputs").resolve()]

    def _refuse_if_record(self, path: str, action: str) -> None:
        path = path.strip("/")
        target = Path(self._get_os_path(path)).resolve()
        for folder in self._protected():
            if target == folder or folder in target.parents:
                raise web.HTTPError(403, (
                    f"dbrunbook: refusing to {action} {path}: it is under {folder}, the signed records, which are "
                    f"never changed after sealing (JupyterLab's own saves would make them 'tampered'). Open the "
                    f"record read-only, or work in the copy 'dbrunbook open' prints."))

    async def save(self, model, path=""):
        self._refuse_if_record(path, "save")
        return await super().save(model, path)

    async def new(self, model=None, path=""):
        self._refuse_if_record(path, "create")
        return await super().new(model, path)

    async def new_untitled(self, path="", type="", ext=""):
        self._refuse_if_record(path, "create a file in")
        return await super().new_untitled(path=path, type=type, ext=ext)

    async def rename_file(self, old_path, new_path):
        self._refuse_if_record(old_path, "move")
        self._refuse_if_record(new_path, "move a file to")
        return await super().rename_file(old_path, new_path)

    async def delete_file(self, path):
        self._refuse_if_record(path, "delete")
        return await super().delete_file(path)

    async def copy(self, from_path, to_path=None):
        if to_path is not None:
            self._refuse_if_record(to_path, "copy a file to")
        else:
            self._refuse_if_record(from_path, "copy a file beside")
        return await super().copy(from_path, to_path)

    async def create_checkpoint(self, path):
        self._refuse_if_record(path, "checkpoint")
        return await super().create_checkpoint(path)
