"""The interface procedures take: what a runbook's session offers, as a type, not as ``Any``.

``execution.session.Session`` is the one implementation (a runbook cell's ``s``). Guards, procedures and views
take a ``SessionLike`` instead of importing it: they sit below the execution layer, and tests may hand them a
session opened on a fixture project. Only what they really read is here; the rest of ``Session`` (status,
preview, upgrade…) is for runbook cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dbrunbook.config import Config, MigrationSet, Target
    from dbrunbook.postgres.db import DatabaseIdentity

__all__ = ["SessionLike"]


class SessionLike(Protocol):
    """A run's binding to one target: its engine, configuration, identity and record folder."""

    config: Config
    target: Target
    engine: Engine
    identity: DatabaseIdentity
    run_id: str
    record_dir: Path | None

    def sets(self, migration_set: str | None = "all") -> list[MigrationSet]:
        """The migration sets a parameter names ('all' or None: every set of the project)."""
        ...

    def save_artifact(self, name: str, content: str | bytes) -> str | None:
        """Write ``artifacts/NAME`` of the run's record; the sha256 written, or None outside a recorded run."""
        ...
