"""The archive's checks across records: the hash chain, the heads' continuity, the tips, the ledgers.

Each check takes the entries of the records (``archive_entries``) and returns findings; ``verify_archive``
runs them per database. One record proves what happened in one run; these prove that nothing is missing.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import cast

import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.postgres import db
from dbrunbook.records import tips
from dbrunbook.records.archive_entries import (
    EPOCH,
    ArchiveEntry,
    database_key,
    heads_differ,
    normal_heads,
    seal_order,
    show_heads,
)
from dbrunbook.records.archive_report import ArchiveFinding
from dbrunbook.records.ledger import ledger_rows
from dbrunbook.records.runs import run_dir_for

log = logging.getLogger(__name__)


# --- checks -----------------------------------------------------------------------------------------------
def chain_findings(chain: list[ArchiveEntry], by_sha: dict[str, ArchiveEntry]) -> list[ArchiveFinding]:
    """Each record of one database's chain (in seal order) must name the one sealed just before it."""
    findings = []
    for i, entry in enumerate(chain):
        before = chain[i - 1] if i else None
        expected = before.sha256 if before else None
        if entry.prev == expected:
            continue
        if entry.prev is None:
            assert before is not None  # a first record with no prev is expected: it continued above
            findings.append(ArchiveFinding("unlinked", (
                f"{entry.run_id} does not link to the record sealed before it on {entry.database} "
                f"({before.run_id}): it was sealed before records were chained, or re-signed without 'prev'. "
                f"Check how it was made."), entry.run_id, entry.database))
        elif entry.prev not in by_sha:
            findings.append(ArchiveFinding("missing", (
                f"the record sealed before {entry.run_id} on {entry.database} (statement sha256 "
                f"{entry.prev[:16]}…) is not in the archive: it was deleted, moved away, or its statement "
                f"was changed. Restore it from a copy of the archive."), entry.run_id, entry.database))
        else:
            named = by_sha[entry.prev]
            actual = f"{before.run_id} was sealed just before it" if before else "it is the first by seal time"
            findings.append(ArchiveFinding("out-of-order", (
                f"{entry.run_id} names {named.run_id} as the record sealed before it on {entry.database}, "
                f"but {actual}: records were re-signed with other times, or two runs were sealed at once. "
                f"Compare their statements."), entry.run_id, entry.database))
    return findings


def continuity_findings(chain: list[ArchiveEntry]) -> list[ArchiveFinding]:
    """The heads each record saw at its start must be where earlier records left the database."""
    findings = []
    # Earlier records by finish time (kept sorted as the chain is walked), so that the records still running
    # when one started are a slice, not a scan of the whole prefix: the check stays O(N log N).
    finishes: list[tuple[datetime, int]] = []
    for i, entry in enumerate(chain):
        if i:
            started = entry.started_at or entry.finished_at or EPOCH
            # The last record, in seal order, that had finished when this one started (usually the one before).
            last_before = next((chain[j] for j in range(i - 1, -1, -1)
                                if (chain[j].finished_at or EPOCH) <= started), None)
            # Runs that overlapped this one may have moved the heads while it started: any of their states counts.
            overlapping = [chain[j] for _f, j in finishes[bisect.bisect_right(finishes, (started, len(chain))):]]
            allowed = [last_before.heads_after] if last_before else []
            allowed += [h for e in overlapping for h in (e.heads_before, e.heads_after)]
            if allowed and all(heads_differ(h, entry.heads_before) for h in allowed):
                last = last_before or chain[i - 1]
                findings.append(ArchiveFinding("unrecorded-change", (
                    f"the Alembic heads of {entry.database} moved from {show_heads(last.heads_after)} (after "
                    f"{last.run_id}) to {show_heads(entry.heads_before)} (before {entry.run_id}) with no "
                    f"record of the change: someone ran Alembic outside dbrunbook, or a record is missing."),
                    entry.run_id, entry.database))
        bisect.insort(finishes, (entry.finished_at or EPOCH, i))
    return findings


def tip_findings(outputs_dir: Path, allowed_signers: Path, chains: dict[str, list[ArchiveEntry]],
                  by_sha: dict[str, ArchiveEntry]) -> list[ArchiveFinding]:
    """The signed chain index against the chains: a tip whose record is gone is a deleted newest record."""
    current, problem = tips.verify_tips(outputs_dir, allowed_signers)
    index = outputs_dir / tips.TIPS_FILE
    if problem is not None:
        return [ArchiveFinding("tip", f"{problem} The newest record of each database cannot be checked; restore "
                               f"{tips.TIPS_FILE} from a copy of the archive.")]
    indexed = [key for key, chain in chains.items() if any(e.seq is not None for e in chain)]
    if current is None:
        if not indexed:
            return []  # an archive sealed before the index existed: nothing anchors its newest records
        return [ArchiveFinding("tip", (
            f"{index} is missing although records were sealed with it: whether the newest records of "
            f"{', '.join(sorted(indexed))} were deleted cannot be told. Restore it from a copy of the archive "
            f"(the next seal rebuilds it from what is left)."))]
    findings = []
    for key, tip in sorted(current.items()):
        chain = chains.get(key, [])
        last = chain[-1] if chain else None
        if tip.sha256 not in by_sha:
            findings.append(ArchiveFinding("tip", (
                f"the newest record of {key} is {tip.run_id} (number {tip.seq} of its chain, statement sha256 "
                f"{tip.sha256[:16]}…) according to {tips.TIPS_FILE}, but it is not in the archive: it was "
                f"deleted or moved away. Restore it from a copy of the archive."), tip.run_id, key))
        elif last is not None and last.sha256 != tip.sha256:
            findings.append(ArchiveFinding("tip", (
                f"{tips.TIPS_FILE} names {tip.run_id} as the newest record of {key}, but {last.run_id} was "
                f"sealed after it: the index is an older copy, or {last.run_id} was sealed elsewhere and "
                f"copied in."), last.run_id, key))
    for key in sorted(set(indexed) - set(current)):
        findings.append(ArchiveFinding("tip", (
            f"{key} has records sealed with the chain index but {tips.TIPS_FILE} does not list it: the index "
            f"was replaced by another archive's."), chains[key][-1].run_id, key))
    return findings


def misfiled_finding(outputs_dir: Path, run_dir: Path) -> ArchiveFinding | None:
    """A run directory that is not filed under the date of its run id (it was moved), or None."""
    name = run_dir.name
    # find_records lists outputs_dir/YYYY/MM/DD/<run id>: comparing the three folder names with the run id's
    # date is enough (and cheap: no strptime, no resolve, for thousands of records).
    if len(name) > 8 and name[:8].isdigit() and run_dir.parent.parent.parent.parent == outputs_dir and \
            (run_dir.parent.parent.parent.name, run_dir.parent.parent.name, run_dir.parent.name) == \
            (name[:4], name[4:6], name[6:8]):
        return None
    try:
        expected = run_dir_for(outputs_dir, run_dir.name)
    except ValueError:
        return None  # a run id without a timestamp: nothing to compare its place with
    if expected.resolve() != run_dir.resolve():
        return ArchiveFinding("misfiled", (
            f"{run_dir.name} sits in {run_dir.parent}, not under the date of its run id "
            f"({expected.parent}): it was moved. Move it back."), run_dir.name)
    return None


def _row_findings(key: str, row: dict, entry: ArchiveEntry | None) -> list[ArchiveFinding]:
    """One ledger row against the record of its run (None: the archive has none)."""
    run_id = row["run_id"]
    if row["outcome"] == "running":
        if entry is None:
            return [ArchiveFinding("ledger", (
                f"the ledger of {key} shows run {run_id} ({row['runbook']}) still 'running' since "
                f"{row['started_at']} and the archive has no signed record of it: the run was killed or "
                f"is still going. Check it, then seal its run directory with 'dbrunbook seal'."),
                run_id, key)]
        return [ArchiveFinding("ledger", (
            f"run {run_id} is signed but its ledger row in {key} was never completed (still "
            f"'running'): the launcher lost the database at the end of the run."), run_id, key)]
    if entry is None:
        return [ArchiveFinding("ledger", (
            f"the ledger of {key} has run {run_id} ({row['runbook']}, {row['outcome']}, "
            f"{show_heads(row['heads_before'])} → {show_heads(row['heads_after'])}) but the archive has "
            f"no record of it: it was deleted or is kept elsewhere."), run_id, key)]
    findings = []
    if row["statement_sha256"] != entry.sha256:
        findings.append(ArchiveFinding("ledger", (
            f"run {run_id}: the ledger of {key} holds statement sha256 {str(row['statement_sha256'])[:16]}…, "
            f"the record's statement is {entry.sha256[:16]}…: one of them was replaced."), run_id, key))
    for side in ("heads_before", "heads_after"):
        if heads_differ(row[side], getattr(entry, side)) or (
                normal_heads(row[side]) and not normal_heads(getattr(entry, side))):
            findings.append(ArchiveFinding("ledger", (
                f"run {run_id}: {side} is {show_heads(row[side])} in the ledger of {key} but "
                f"{show_heads(getattr(entry, side))} in the record."), run_id, key))
    return findings


def _gap_findings(key: str, rows: list[dict]) -> list[ArchiveFinding]:
    """Heads that moved between two finished runs of the ledger: a change with no run in between."""
    findings = []
    finished = [r for r in rows if r["outcome"] != "running" and r["heads_after"] is not None]
    for earlier, later in zip(finished, finished[1:], strict=False):
        if heads_differ(earlier["heads_after"], later["heads_before"]):
            findings.append(ArchiveFinding("unrecorded-change", (
                f"the ledger of {key}: run {earlier['run_id']} left {show_heads(earlier['heads_after'])}, "
                f"run {later['run_id']} found {show_heads(later['heads_before'])}: a change with no record "
                f"in between."), later["run_id"], key))
    return findings


def _live_findings(key: str, engine: sa.Engine, last: ArchiveEntry, sets: list[MigrationSet]) -> list[ArchiveFinding]:
    """The database's current heads against where its last record left it."""
    live = {}
    for mset in sets:
        try:
            live[mset.name] = list(migrations.current(mset, engine))
        except Exception as err:  # one unreadable set must not hide what the others show
            log.warning("Cannot read the heads of migration set %s on %s: %s", mset.name, key, err)
    if not heads_differ(last.heads_after, live):
        return []
    return [ArchiveFinding("unrecorded-change", (
        f"{key} is at {show_heads(live)} now, but its last record {last.run_id} left it at "
        f"{show_heads(last.heads_after)}: a change with no record (Alembic run by hand, a restore). "
        f"Run 'dbrunbook run status' to record where it is, and find out who changed it."),
        None, key)]


def ledger_findings(engine: sa.Engine, entries: list[ArchiveEntry], by_run: dict[str, ArchiveEntry],
                    migration_sets: Iterable[MigrationSet]) -> tuple[str, list[ArchiveFinding]]:
    """One database's ledger against the records, and its current heads against its last record."""
    # A live database's identity always has its name and system identifier, so it always has a key.
    key = cast(str, database_key(db.identity(engine).as_dict()))
    rows = ledger_rows(engine)
    mine = sorted((e for e in entries if e.database == key), key=seal_order)
    findings: list[ArchiveFinding] = []
    for row in rows:
        findings += _row_findings(key, row, by_run.get(row["run_id"]))
    in_ledger = {row["run_id"] for row in rows}
    for entry in mine:
        if entry.run_id not in in_ledger and heads_differ(entry.heads_before, entry.heads_after):
            findings.append(ArchiveFinding("ledger", (
                f"run {entry.run_id} changed {key} ({show_heads(entry.heads_before)} → "
                f"{show_heads(entry.heads_after)}) but the ledger there has no row for it: the ledger was "
                f"edited, or the database was restored from an older backup."), entry.run_id, key))
    findings += _gap_findings(key, rows)
    sets = list(migration_sets)
    if sets and mine:
        findings += _live_findings(key, engine, mine[-1], sets)
    return key, findings
