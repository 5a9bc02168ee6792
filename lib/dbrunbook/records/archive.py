"""Verify a whole archive of records: each record's signature, the hash chain per database, and the ledgers.

One record proves what happened in one run; the archive must also prove that nothing is missing. Each
statement names the statement of the previous record of the same database (``prev``, its sha256), so a
deleted record leaves a dangling link and a re-signed or moved one breaks the order. The Alembic heads every
record saw before and after must follow on from one record to the next: a jump is a change made outside
dbrunbook. With a connection to a database, its ``dbrunbook.ledger`` rows and its current heads are checked
against the records too: every version change there has a record, every record that claims one matches.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.execution.protocol import STATEMENT_FILE
from dbrunbook.postgres import db

log = logging.getLogger(__name__)

__all__ = ["FINDING_KINDS", "ArchiveReport", "Finding", "database_key", "previous_statement", "verify_archive"]

#: What a finding can be about, in the order the summary lists them.
FINDING_KINDS = (
    "tampered", "untrusted", "unsigned", "incomplete",  # one record's own status (records.verify_record)
    "missing",            # a record's prev names a statement that is not in the archive: deleted
    "out-of-order",       # prev names a record that is not the one sealed just before it: reordered/re-signed
    "unlinked",           # a record after the first of its database with no prev at all
    "misfiled",           # a run directory not under the date of its run id
    "unrecorded-change",  # the Alembic heads moved between two records, or since the last one
    "ledger",             # a ledger row and the records disagree
    "tip",                # outputs/.tips.json names a newest record that is gone, or cannot be trusted
)


@dataclass(frozen=True)
class Finding:
    """One problem in the archive: what kind, which run and database it concerns, and what to do."""

    kind: str
    message: str
    run_id: str | None = None
    database: str | None = None

    def as_row(self) -> dict:
        return {"kind": self.kind, "run_id": self.run_id or "-", "database": self.database or "-",
                "message": self.message}


@dataclass(frozen=True)
class _Entry:
    """A record with a readable statement, as the chain and ledger checks see it."""

    run_id: str
    run_dir: Path
    sha256: str
    prev: str | None
    database: str | None
    started_at: datetime | None
    finished_at: datetime | None
    heads_before: dict
    heads_after: dict
    runbook: str | None
    seq: int | None = None


@dataclass(frozen=True)
class ArchiveReport:
    """What ``verify_archive`` found: one check per record, and every finding across records and ledgers."""

    outputs_dir: Path
    checks: tuple[records.RecordCheck, ...]
    findings: tuple[Finding, ...]
    databases: tuple[str, ...] = ()   # databases that have records
    ledgers: tuple[str, ...] = ()     # databases whose ledger was cross-checked
    chains: dict = field(default_factory=dict, repr=False)  # {database: (run ids in seal order)}

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def exit_status(self) -> int:
        """0 when every record is valid and nothing is missing; 1 otherwise (the CLI's status)."""
        return 0 if self.ok else 1

    def findings_for(self, run_id: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.run_id == run_id)

    def kinds(self) -> dict[str, int]:
        """``{kind: number of findings}``, only the kinds that occur, in FINDING_KINDS order."""
        counts = {k: sum(1 for f in self.findings if f.kind == k) for k in FINDING_KINDS}
        return {k: n for k, n in counts.items() if n}

    def rows(self) -> list[dict]:
        """One row per record: run id, database, runbook, signature status, chain status, findings."""
        rows = []
        for check in self.checks:
            predicate = (check.statement or {}).get("predicate") or {}
            found = self.findings_for(check.run_id)
            chain = [f.kind for f in found if f.kind in ("missing", "out-of-order", "unlinked", "misfiled")]
            rows.append({
                "run_id": check.run_id,
                "database": database_key(predicate.get("database")) or "-",
                "runbook": predicate.get("runbook") or "-",
                "status": check.status,
                "chain": ", ".join(chain) or ("ok" if check.statement else "-"),
                "problems": "; ".join([*check.problems,
                                       *(f.message for f in found if f.kind not in records.STATUSES)]),
            })
        return rows

    def orphan_findings(self) -> tuple[Finding, ...]:
        """Findings about no record of the archive (a ledger row whose record is missing, a live database)."""
        known = {c.run_id for c in self.checks}
        return tuple(f for f in self.findings if f.run_id not in known)

    def summary(self) -> str:
        valid = sum(1 for c in self.checks if c.ok)
        parts = [f"{valid} of {len(self.checks)} records valid"]
        parts += [f"{n} {kind}" for kind, n in self.kinds().items() if kind not in records.STATUSES]
        if self.ledgers:
            parts.append(f"ledger cross-checked for {len(self.ledgers)} database(s)")
        return "; ".join(parts) + "."

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ("run_id", "database", "runbook", "status",
                                                             "chain", "problems"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                       for r in self.rows())
        orphans = "".join(f"<li>{html.escape(f.message)}</li>" for f in self.orphan_findings())
        return (f"<p>{html.escape(self.summary())}</p><table><tr>{head}</tr>{body}</table>"
                + (f"<ul>{orphans}</ul>" if orphans else ""))


# --- keys and order ---------------------------------------------------------------------------------------
def database_key(identity: Mapping | None) -> str | None:
    """``database@system_identifier``: one database of one cluster, whatever host name reached it.

    With the database's ``oid`` in the identity (``/oid`` appended), a database dropped and created again
    under the same name starts a new chain instead of looking like a change with no record.
    """
    if not identity or not identity.get("database") or identity.get("system_identifier") in (None, ""):
        return None
    oid = identity.get("oid")
    return f"{identity['database']}@{identity['system_identifier']}" + (f"/{oid}" if oid else "")


def _moment(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seal_order(entry: _Entry) -> tuple:
    # ``seq`` is the place write_record gave the record under the chain lock: the true seal order, even when
    # two runs that finished at nearly the same time took the lock the other way round. Records sealed
    # before the chain index existed have none and come first, by seal time; the run id breaks ties.
    if entry.seq is None:
        return 0, 0, entry.finished_at or _EPOCH, entry.run_id
    return 1, entry.seq, entry.finished_at or _EPOCH, entry.run_id


def read_statement(run_dir: Path) -> dict | None:
    try:
        statement = json.loads((run_dir / STATEMENT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return statement if isinstance(statement, dict) else None


def archive_entry(run_dir: Path, statement: dict | None, sha256: str | None = None) -> _Entry | None:
    if statement is None or (sha256 is None and not (run_dir / STATEMENT_FILE).is_file()):
        return None
    predicate = statement.get("predicate") or {}
    if not isinstance(predicate, dict):
        return None
    return _Entry(
        run_id=run_dir.name, run_dir=run_dir, sha256=sha256 or records.statement_sha256(run_dir),
        prev=predicate.get("prev") or None, database=database_key(predicate.get("database")),
        started_at=_moment(predicate.get("started_at")), finished_at=_moment(predicate.get("finished_at")),
        heads_before=predicate.get("heads_before") or {}, heads_after=predicate.get("heads_after") or {},
        runbook=predicate.get("runbook"),
        seq=predicate.get("seq") if isinstance(predicate.get("seq"), int) else None,
    )


def previous_statement(outputs_dir: Path, database: Mapping | str | None) -> str | None:
    """sha256 of the statement of the last sealed record of ``database``: what a new record's ``prev`` is.

    Read from the chain index ``outputs/.tips.json`` (worked out from the statements when it is missing),
    so it costs the same whatever the archive's size. ``records.write_record`` sets the final link itself,
    under the chain lock; this is the value a statement built now would get.

    Args:
        database: the database identity (``DatabaseIdentity.as_dict()``) or its ``database_key``; None
            (the database could not be reached) gives None.
    """
    key = database if isinstance(database, str) or database is None else database_key(database)
    if key is None:
        return None
    from dbrunbook.records import tips

    current = tips.read_tips(outputs_dir)
    if current is None:
        current = tips.rebuild_tips(outputs_dir)
    tip = current.get(key)
    return tip.sha256 if tip else None


# --- heads ------------------------------------------------------------------------------------------------
def _normal_heads(heads: Mapping | None) -> dict[str, tuple[str, ...]]:
    """``{set: sorted revisions}``, leaving out sets whose heads were unknown (None)."""
    return {name: tuple(sorted(revs)) for name, revs in (heads or {}).items() if revs is not None}


def _show_heads(heads: Mapping | None) -> str:
    normal = _normal_heads(heads)
    return ", ".join(f"{k}: {'+'.join(v) or 'base'}" for k, v in sorted(normal.items())) or "(unknown)"


def _heads_differ(earlier: Mapping | None, later: Mapping | None) -> bool:
    """True when a set known on both sides is at different revisions (unknown sets prove nothing)."""
    a, b = _normal_heads(earlier), _normal_heads(later)
    return any(a[name] != b[name] for name in set(a) & set(b))


# --- checks -----------------------------------------------------------------------------------------------
def _chain_findings(chain: list[_Entry], by_sha: dict[str, _Entry]) -> list[Finding]:
    findings = []
    for i, entry in enumerate(chain):
        before = chain[i - 1] if i else None
        expected = before.sha256 if before else None
        if entry.prev == expected:
            continue
        if entry.prev is None:
            findings.append(Finding("unlinked", (
                f"{entry.run_id} does not link to the record sealed before it on {entry.database} "
                f"({before.run_id}): it was sealed before records were chained, or re-signed without 'prev'. "
                f"Check how it was made."), entry.run_id, entry.database))
        elif entry.prev not in by_sha:
            findings.append(Finding("missing", (
                f"the record sealed before {entry.run_id} on {entry.database} (statement sha256 "
                f"{entry.prev[:16]}…) is not in the archive: it was deleted, moved away, or its statement "
                f"was changed. Restore it from a copy of the archive."), entry.run_id, entry.database))
        else:
            named = by_sha[entry.prev]
            actual = f"{before.run_id} was sealed just before it" if before else "it is the first by seal time"
            findings.append(Finding("out-of-order", (
                f"{entry.run_id} names {named.run_id} as the record sealed before it on {entry.database}, "
                f"but {actual}: records were re-signed with other times, or two runs were sealed at once. "
                f"Compare their statements."), entry.run_id, entry.database))
    return findings


def _continuity_findings(chain: list[_Entry]) -> list[Finding]:
    """The heads each record saw at its start must be where earlier records left the database."""
    import bisect

    findings = []
    # Earlier records by finish time (kept sorted as the chain is walked), so that the records still running
    # when one started are a slice, not a scan of the whole prefix: the check stays O(N log N).
    finishes: list[tuple[datetime, int]] = []
    for i, entry in enumerate(chain):
        if i:
            started = entry.started_at or entry.finished_at or _EPOCH
            # The last record, in seal order, that had finished when this one started (usually the one before).
            last_before = next((chain[j] for j in range(i - 1, -1, -1)
                                if (chain[j].finished_at or _EPOCH) <= started), None)
            # Runs that overlapped this one may have moved the heads while it started: any of their states counts.
            overlapping = [chain[j] for _f, j in finishes[bisect.bisect_right(finishes, (started, len(chain))):]]
            allowed = [last_before.heads_after] if last_before else []
            allowed += [h for e in overlapping for h in (e.heads_before, e.heads_after)]
            if allowed and all(_heads_differ(h, entry.heads_before) for h in allowed):
                last = last_before or chain[i - 1]
                findings.append(Finding("unrecorded-change", (
                    f"the Alembic heads of {entry.database} moved from {_show_heads(last.heads_after)} (after "
                    f"{last.run_id}) to {_show_heads(entry.heads_before)} (before {entry.run_id}) with no "
                    f"record of the change: someone ran Alembic outside dbrunbook, or a record is missing."),
                    entry.run_id, entry.database))
        bisect.insort(finishes, (entry.finished_at or _EPOCH, i))
    return findings


def _tip_findings(outputs_dir: Path, allowed_signers: Path, chains: dict[str, list[_Entry]],
                  by_sha: dict[str, _Entry]) -> list[Finding]:
    """The signed chain index against the chains: a tip whose record is gone is a deleted newest record."""
    from dbrunbook.records import tips

    current, problem = tips.verify_tips(outputs_dir, allowed_signers)
    index = outputs_dir / tips.TIPS_FILE
    if problem is not None:
        return [Finding("tip", f"{problem} The newest record of each database cannot be checked; restore "
                               f"{tips.TIPS_FILE} from a copy of the archive.")]
    indexed = [key for key, chain in chains.items() if any(e.seq is not None for e in chain)]
    if current is None:
        if not indexed:
            return []  # an archive sealed before the index existed: nothing anchors its newest records
        return [Finding("tip", (
            f"{index} is missing although records were sealed with it: whether the newest records of "
            f"{', '.join(sorted(indexed))} were deleted cannot be told. Restore it from a copy of the archive "
            f"(the next seal rebuilds it from what is left)."))]
    findings = []
    for key, tip in sorted(current.items()):
        chain = chains.get(key, [])
        last = chain[-1] if chain else None
        if tip.sha256 not in by_sha:
            findings.append(Finding("tip", (
                f"the newest record of {key} is {tip.run_id} (number {tip.seq} of its chain, statement sha256 "
                f"{tip.sha256[:16]}…) according to {tips.TIPS_FILE}, but it is not in the archive: it was "
                f"deleted or moved away. Restore it from a copy of the archive."), tip.run_id, key))
        elif last is not None and last.sha256 != tip.sha256:
            findings.append(Finding("tip", (
                f"{tips.TIPS_FILE} names {tip.run_id} as the newest record of {key}, but {last.run_id} was "
                f"sealed after it: the index is an older copy, or {last.run_id} was sealed elsewhere and "
                f"copied in."), last.run_id, key))
    for key in sorted(set(indexed) - set(current)):
        findings.append(Finding("tip", (
            f"{key} has records sealed with the chain index but {tips.TIPS_FILE} does not list it: the index "
            f"was replaced by another archive's."), chains[key][-1].run_id, key))
    return findings


def _misfiled(outputs_dir: Path, run_dir: Path) -> Finding | None:
    name = run_dir.name
    # find_records lists outputs_dir/YYYY/MM/DD/<run id>: comparing the three folder names with the run id's
    # date is enough (and cheap: no strptime, no resolve, for thousands of records).
    if len(name) > 8 and name[:8].isdigit() and run_dir.parent.parent.parent.parent == outputs_dir and \
            (run_dir.parent.parent.parent.name, run_dir.parent.parent.name, run_dir.parent.name) == \
            (name[:4], name[4:6], name[6:8]):
        return None
    try:
        expected = records.run_dir_for(outputs_dir, run_dir.name)
    except ValueError:
        return None  # a run id without a timestamp: nothing to compare its place with
    if expected.resolve() != run_dir.resolve():
        return Finding("misfiled", (
            f"{run_dir.name} sits in {run_dir.parent}, not under the date of its run id "
            f"({expected.parent}): it was moved. Move it back."), run_dir.name)
    return None


def _engines(engines) -> list[sa.Engine]:
    if engines is None:
        return []
    if isinstance(engines, sa.Engine):
        return [engines]
    if isinstance(engines, Mapping):
        return list(engines.values())
    return list(engines)


def _ledger_findings(engine: sa.Engine, entries: list[_Entry], by_run: dict[str, _Entry],
                     migration_sets: Iterable[MigrationSet]) -> tuple[str, list[Finding]]:
    key = database_key(db.identity(engine).as_dict())
    rows = records.ledger_rows(engine)
    mine = sorted((e for e in entries if e.database == key), key=seal_order)
    findings: list[Finding] = []
    in_ledger = set()
    for row in rows:
        run_id = row["run_id"]
        in_ledger.add(run_id)
        entry = by_run.get(run_id)
        if row["outcome"] == "running":
            if entry is None:
                findings.append(Finding("ledger", (
                    f"the ledger of {key} shows run {run_id} ({row['runbook']}) still 'running' since "
                    f"{row['started_at']} and the archive has no signed record of it: the run was killed or "
                    f"is still going. Check it, then seal its run directory with 'dbrunbook seal'."),
                    run_id, key))
            else:
                findings.append(Finding("ledger", (
                    f"run {run_id} is signed but its ledger row in {key} was never completed (still "
                    f"'running'): the launcher lost the database at the end of the run."), run_id, key))
            continue
        if entry is None:
            findings.append(Finding("ledger", (
                f"the ledger of {key} has run {run_id} ({row['runbook']}, {row['outcome']}, "
                f"{_show_heads(row['heads_before'])} → {_show_heads(row['heads_after'])}) but the archive has "
                f"no record of it: it was deleted or is kept elsewhere."), run_id, key))
            continue
        if row["statement_sha256"] != entry.sha256:
            findings.append(Finding("ledger", (
                f"run {run_id}: the ledger of {key} holds statement sha256 {str(row['statement_sha256'])[:16]}…, "
                f"the record's statement is {entry.sha256[:16]}…: one of them was replaced."), run_id, key))
        for side in ("heads_before", "heads_after"):
            if _heads_differ(row[side], getattr(entry, side)) or (
                    _normal_heads(row[side]) and not _normal_heads(getattr(entry, side))):
                findings.append(Finding("ledger", (
                    f"run {run_id}: {side} is {_show_heads(row[side])} in the ledger of {key} but "
                    f"{_show_heads(getattr(entry, side))} in the record."), run_id, key))
    for entry in mine:
        if entry.run_id not in in_ledger and _heads_differ(entry.heads_before, entry.heads_after):
            findings.append(Finding("ledger", (
                f"run {entry.run_id} changed {key} ({_show_heads(entry.heads_before)} → "
                f"{_show_heads(entry.heads_after)}) but the ledger there has no row for it: the ledger was "
                f"edited, or the database was restored from an older backup."), entry.run_id, key))
    finished = [r for r in rows if r["outcome"] != "running" and r["heads_after"] is not None]
    for earlier, later in zip(finished, finished[1:], strict=False):
        if _heads_differ(earlier["heads_after"], later["heads_before"]):
            findings.append(Finding("unrecorded-change", (
                f"the ledger of {key}: run {earlier['run_id']} left {_show_heads(earlier['heads_after'])}, "
                f"run {later['run_id']} found {_show_heads(later['heads_before'])}: a change with no record "
                f"in between."), later["run_id"], key))
    sets = list(migration_sets)
    if sets and mine:
        last = mine[-1]
        live = {}
        for mset in sets:
            try:
                live[mset.name] = list(migrations.current(mset, engine))
            except Exception as err:  # one unreadable set must not hide what the others show
                log.warning("Cannot read the heads of migration set %s on %s: %s", mset.name, key, err)
        if _heads_differ(last.heads_after, live):
            findings.append(Finding("unrecorded-change", (
                f"{key} is at {_show_heads(live)} now, but its last record {last.run_id} left it at "
                f"{_show_heads(last.heads_after)}: a change with no record (Alembic run by hand, a restore). "
                f"Run 'dbrunbook run status' to record where it is, and find out who changed it."),
                None, key))
    return key, findings


def verify_archive(outputs_dir: Path, allowed_signers: Path, engines=None, *,
                   migration_sets: Iterable[MigrationSet] = ()) -> ArchiveReport:
    """Verify every record under ``outputs_dir`` and the archive as a whole.

    Checks each record (``records.verify_record``); per database, the hash chain of ``prev`` links in seal
    order (a deleted, reordered or unlinked record is a finding) and the continuity of the Alembic heads from
    one record to the next; that each record sits under the date of its run id. For each engine given, the
    database's ledger against the records (a row without a record, a record that changed the database
    without a row, digests or heads that differ) and, with ``migration_sets``, its current heads against the
    last record.

    Args:
        engines: None, an Engine, or several (a list, or a mapping such as ``{target name: Engine}``).
        migration_sets: the sets whose current heads to compare with the last record of each database.
    """
    outputs_dir = Path(outputs_dir)
    run_dirs = records.find_records(outputs_dir)
    checks, entries, findings = [], [], []
    for run_dir in run_dirs:
        check = records.verify_record(run_dir, Path(allowed_signers))
        checks.append(check)
        if not check.ok:
            findings.append(Finding(check.status, "; ".join(check.problems) or check.status, check.run_id,
                                    database_key(((check.statement or {}).get("predicate") or {})
                                                 .get("database"))))
        # The chain uses the statement as it is on disk: a tampered one is reported above, and its digest
        # no longer matches the next record's link, which reports it a second time as "missing".
        entry = (archive_entry(run_dir, check.statement, check.statement_sha256) if check.statement is not None
                 else archive_entry(run_dir, read_statement(run_dir)))
        if entry is not None:
            entries.append(entry)
        misfiled = _misfiled(outputs_dir, run_dir)
        if misfiled is not None:
            findings.append(misfiled)
    by_sha = {e.sha256: e for e in entries}
    chains: dict[str, list[_Entry]] = {}
    for entry in entries:
        if entry.database is not None:
            chains.setdefault(entry.database, []).append(entry)
    for key in sorted(chains):
        chain = sorted(chains[key], key=seal_order)
        chains[key] = chain
        findings += _chain_findings(chain, by_sha)
        findings += _continuity_findings(chain)
    findings += _tip_findings(outputs_dir, Path(allowed_signers), chains, by_sha)
    ledgers = []
    by_run = {e.run_id: e for e in entries}
    for engine in _engines(engines):
        key, found = _ledger_findings(engine, entries, by_run, migration_sets)
        ledgers.append(key)
        findings += found
    return ArchiveReport(outputs_dir, tuple(checks), tuple(findings), tuple(sorted(chains)), tuple(ledgers),
                         {k: tuple(e.run_id for e in v) for k, v in chains.items()})
