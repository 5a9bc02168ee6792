"""What changed in the cells of an interactive record, as ``verify`` reports it.

``dbrunbook seal`` (``execution.interactive``) writes ``artifacts/interactive.json``: the code cells edited,
added or removed after ``dbrunbook open``. Verifying a record reads it back here, in the records layer, so that
verification does not depend on the launcher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dbrunbook.protocol import INTENT_FILE

__all__ = ["INTERACTIVE_ARTIFACT", "CellChange", "changes_described", "record_problems"]

INTERACTIVE_ARTIFACT = "interactive.json"


@dataclass(frozen=True)
class CellChange:
    """A code cell that differs from the prepared notebook: how, and how a reviewer recognises it."""

    change: str  # edited | added | removed
    index: int | None
    cell_id: str | None
    title: str

    def describe(self) -> str:
        where = f"cell {self.index}" if self.index is not None else f"cell id {self.cell_id}"
        return f"{where} ({self.title}) was {self.change} after 'dbrunbook open'"


def changes_described(artifact: Path) -> list[str]:
    """Each change interactive.json names (cells, intent.json), in words; [] when there is none or no file."""
    try:
        found = json.loads(artifact.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = {}
    problems = [CellChange(**c).describe() for c in found.get("changed_cells") or []]
    if found.get("intent_edited"):
        problems.append(f"{INTENT_FILE} was edited after 'dbrunbook open'")
    return problems


def record_problems(predicate: dict, artifact: Path) -> list[str]:
    """What ``verify`` says about an interactive record, from its mode and its signed interactive.json."""
    mode = predicate.get("mode")
    if mode == "interactive-unsaved":
        return ["the notebook was not saved before sealing: the record holds the notebook as 'dbrunbook open' "
                "prepared it, without the outputs of the cells that ran."]
    if mode != "interactive-edited":
        return []
    problems = changes_described(artifact)
    return [f"interactive run with edited code (not evidence for a protected target): {'; '.join(problems)}."]
