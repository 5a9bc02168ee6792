"""The value objects the chain functions return: revisions, offline SQL steps, applied steps.

``history``/``pending`` return ``RevisionInfo``, ``offline_sql`` and the capture return ``SqlStep``, the online
runs return ``StepResult``. They live apart from the functions so that every module of the chain (and the
launcher, the lint and the report above it) names one class for each, and ``as_frame`` shows any list of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where a frame is built: the launcher never needs it
    import pandas as pd

__all__ = ["RevisionInfo", "SqlStep", "StepResult", "as_frame"]


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
