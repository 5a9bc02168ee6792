"""Scratch servers: a throwaway embedded PostgreSQL for one purpose, removed on the way out.

A restore check, a rehearsal, stamp's truth check and the capture of online-only revisions need a server
that is not the target's: nothing they do there may touch its data or need its privileges. Each gets its own
server under ``<state_dir>/scratch``, stopped and deleted whatever happens.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dbrunbook.postgres.embedded import EmbeddedServer

if TYPE_CHECKING:
    from dbrunbook.config import Config

__all__ = ["scratch_server"]


@contextlib.contextmanager
def scratch_server(config: Config, purpose: str) -> Iterator[EmbeddedServer]:
    """A throwaway embedded server under ``<state_dir>/scratch``, stopped and removed on the way out."""
    root = Path(config.state_dir) / "scratch" / f"{purpose}-{uuid.uuid4().hex[:8]}"
    server = EmbeddedServer(root / "pg", durable=False)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
