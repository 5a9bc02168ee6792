"""What a backfill run reports: its committed batches, its pauses, and where the backfill stands.

``run_backfill`` fills a ``BackfillResult`` as it goes (one ``Batch`` per committed transaction, one ``Pause``
per wait on bad health signals); ``finish_backfill`` saves it as the run's artifact, and the runbook shows it
and plots its batches (``views.backfill_plots``).
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field

import pandas as pd

__all__ = ["BackfillResult", "Batch", "Pause"]


@dataclass(frozen=True)
class Batch:
    """One committed batch: its size limit, rows changed, seconds, lock-timeout retries, the key it ended at.

    ``wal_bytes`` is how far the server's WAL moved during the batch (the application's WAL of that moment
    included): what the batch costs the disk, and what the checkpoint signal expects of the next one.
    """

    number: int
    started_at: str
    size: int
    scanned: int
    rows: int
    seconds: float
    retries: int
    cursor: tuple[str, ...]
    wal_bytes: int = 0


@dataclass(frozen=True)
class Pause:
    """A wait between two batches while health signals were bad, and why."""

    before_batch: int
    started_at: str
    seconds: float
    reasons: tuple[str, ...]


@dataclass
class BackfillResult:
    """What one run of a backfill did (this run's batches and pauses) and where the backfill stands."""

    name: str
    table: str
    run_id: str
    dry_run: bool
    status: str  # running (resumable), complete, incomplete (swept, rows still match), dry run
    estimate: int | None = None
    rows: int = 0
    total_rows: int = 0
    total_batches: int = 0
    seconds: float = 0.0
    rest_seconds: float = 0.0  # of ``seconds``, the rests after batches (``rest_seconds``)
    write_back: str = ""  # the batch connection's backend_flush_after, as the server showed it
    stopped: str = ""  # why the run ended before the end of the table: a signal, max_rows
    resumed_from: tuple[str, ...] | None = None
    remaining: int | None = None
    batches: list[Batch] = field(default_factory=list)
    pauses: list[Pause] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def batches_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(b) for b in self.batches],
                            columns=["number", "started_at", "size", "scanned", "rows", "seconds", "retries",
                                     "cursor", "wal_bytes"])

    def _repr_html_(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0
        rows = [("backfill", self.name), ("table", self.table), ("status", self.status),
                ("rows changed by this run", f"{self.rows:,}"), ("batches of this run", len(self.batches)),
                ("seconds", f"{self.seconds:.1f}"), ("rows/s", f"{rate:,.0f}"),
                ("pauses", f"{len(self.pauses)} ({sum(p.seconds for p in self.pauses):.1f} s)"),
                ("rests after batches", f"{self.rest_seconds:.1f} s"),
                ("pages written back every", self.write_back or "—"),
                ("WAL during the batches", f"{sum(b.wal_bytes for b in self.batches) / 1024 ** 2:,.0f} MB"),
                ("resumed after key", ", ".join(self.resumed_from) if self.resumed_from else "(start)"),
                ("stopped", self.stopped or "—"),
                ("all runs: rows, batches", f"{self.total_rows:,}, {self.total_batches:,}"),
                ("rows still matching WHERE", "—" if self.remaining is None else f"{self.remaining:,}")]
        return "<table>" + "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                                   f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"
