"""Compare a database with its last signed snapshot: the guide's "verify data integrity", made repeatable.

Used by the ``verify`` runbook, by hand after a deploy or on a schedule: rows that vanished beyond a tolerance,
schema drift while the version did not move, or a version that moved with no signed record in between are
"unexpected" and stop the run (exit 3), so cron and Airflow see a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dbrunbook import records
from dbrunbook.errors import UnexpectedChange
from dbrunbook.postgres import snapshots
from dbrunbook.protocol import STATEMENT_FILE
from dbrunbook.views.tables import escape_html


@dataclass
class VerifyResult:
    """Counts and schema compared with a snapshot, and the problems found (empty: all as expected)."""

    snapshot_dir: Path | None
    counts: pd.DataFrame
    schema: pd.DataFrame
    heads_then: dict
    heads_now: dict
    problems: list[str] = field(default_factory=list)

    def raise_if_unexpected(self) -> None:
        if self.problems:
            raise UnexpectedChange(self.problems)

    def _repr_html_(self) -> str:
        if self.snapshot_dir is None:
            return ("<p><b>Baseline</b>: no earlier signed snapshot of this database; this run's snapshot is "
                    "the baseline later runs compare with.</p>")
        if not self.problems:
            return (f"<p><b>As expected</b>: counts and schema agree with the snapshot in "
                    f"<code>{self.snapshot_dir.name}</code>.</p>")
        items = "".join(f"<li>{escape_html(p)}</li>" for p in self.problems[:25])
        if len(self.problems) > 25:
            items += f"<li>… {len(self.problems) - 25:,} more (every row is in the counts table's artifact)</li>"
        return f"<p><b>Unexpected change</b> since <code>{self.snapshot_dir.name}</code>:</p><ul>{items}</ul>"


def compare_with_snapshot(session, snapshot, *, tolerance: float = 0.0) -> VerifyResult:
    """Compare the live database of ``session`` with ``snapshot`` (from ``Session.last_snapshot()``).

    ``snapshot`` None (no earlier record of this database) gives a baseline result with no problems.

    Args:
        tolerance: percent of a table's rows that may vanish without being a problem (growth is never one).
    """
    if snapshot is None:
        empty = pd.DataFrame()
        return VerifyResult(None, empty, empty, {}, {k: sorted(v) for k, v in session.current().items()})
    run_dir, counts_then, schema_then, meta = snapshot
    counts = snapshots.compare(counts_then, session.row_counts())
    schema = snapshots.compare_schema(schema_then, snapshots.schema_snapshot(session.engine))
    heads_then = {k: sorted(v) for k, v in meta.get("heads", {}).items()}
    heads_now = {k: sorted(v) for k, v in session.current().items()}
    problems: list[str] = []
    for row in counts.itertuples():
        if row.status == "dropped":
            problems.append(f"table {row.table} is gone (had {row.before:,} rows)")
        elif not pd.isna(row.before) and row.before and row.change < 0 and -row.percent > tolerance:
            problems.append(f"{row.table} lost {-row.change:,} of {row.before:,} rows ({-row.percent:.1f}% > "
                            f"tolerance {tolerance}%)")
    if heads_now != heads_then:
        if not _recorded_move(session, run_dir, heads_now):
            problems.append(f"version moved from {heads_then} to {heads_now} with no signed record of the change")
    elif not schema.empty:
        problems.append(f"schema drift with no version change: {len(schema)} difference(s), e.g. "
                        f"{schema.iloc[0]['change']} {schema.iloc[0]['object']}")
    from dbrunbook.views import summaries  # 10,000 tables: the biggest changes first, every row in the artifact

    counts = summaries.counts_compared(session, "verify-counts", counts)
    schema = summaries.summarize(session, "verify-schema", schema, summaries.Shown(
        totals=summaries.tally(schema, "schema difference(s)", "change")))
    return VerifyResult(run_dir, counts, schema, heads_then, heads_now, problems)


def _recorded_move(session, since: Path, heads_now: dict) -> bool:
    """True if a valid, trusted record newer than ``since`` of this very database made the move to ``heads_now``.

    Only a record ``records.verify_record`` finds valid counts (an unsigned, tampered or untrusted statement
    proves nothing), and only one of the same database (``archive.database_key``: database name, cluster
    system identifier and oid, not the system identifier alone, which every database of a server shares).
    """
    from dbrunbook.records import archive

    mine = archive.database_key(session.identity.as_dict())
    for run_dir in records.find_records(session.config.outputs_dir):
        if run_dir.name <= since.name or not (run_dir / STATEMENT_FILE).exists():
            continue
        try:
            predicate = json.loads((run_dir / STATEMENT_FILE).read_bytes()).get("predicate") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if mine is None or archive.database_key(predicate.get("database")) != mine:
            continue
        # Only a record that made the move counts: a later status or dry run merely saw the moved heads.
        before = {k: sorted(v) for k, v in (predicate.get("heads_before") or {}).items() if v is not None}
        after = {k: sorted(v) for k, v in (predicate.get("heads_after") or {}).items() if v is not None}
        if after != heads_now or before == after:
            continue
        if records.verify_record(run_dir, session.config.allowed_signers).ok:
            return True
    return False
