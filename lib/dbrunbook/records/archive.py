"""Verify a whole archive of records: each record's signature, the hash chain per database, and the ledgers.

One record proves what happened in one run; the archive must also prove that nothing is missing. Each
statement names the statement of the previous record of the same database (``prev``, its sha256), so a
deleted record leaves a dangling link and a re-signed or moved one breaks the order. The Alembic heads every
record saw before and after must follow on from one record to the next: a jump is a change made outside
dbrunbook. With a connection to a database, its ``dbrunbook.ledger`` rows and its current heads are checked
against the records too: every version change there has a record, every record that claims one matches.

``verify_archive`` runs the checks of ``archive_checks`` over the entries of ``archive_entries`` and returns an
``archive_report.ArchiveReport``; this module re-exports their public names (``archive.ArchiveFinding``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import sqlalchemy as sa

from dbrunbook.config import MigrationSet
from dbrunbook.records.archive_checks import (
    chain_findings,
    continuity_findings,
    ledger_findings,
    misfiled_finding,
    tip_findings,
)
from dbrunbook.records.archive_entries import ArchiveEntry, archive_entry, database_key, read_statement, seal_order
from dbrunbook.records.archive_report import FINDING_KINDS, ArchiveFinding, ArchiveReport
from dbrunbook.records.record_check import RecordCheck, verify_record
from dbrunbook.records.runs import find_records
from dbrunbook.records.tips import previous_statement

__all__ = ["FINDING_KINDS", "ArchiveReport", "ArchiveFinding", "archive_entry", "database_key", "previous_statement",
           "read_statement", "seal_order", "verify_archive"]


def _engines(engines) -> list[sa.Engine]:
    if engines is None:
        return []
    if isinstance(engines, sa.Engine):
        return [engines]
    if isinstance(engines, Mapping):
        return list(engines.values())
    return list(engines)


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
    checks, entries, findings = _read_records(outputs_dir, Path(allowed_signers))
    chains = _chains(entries)
    by_sha = {e.sha256: e for e in entries}
    for key in sorted(chains):
        findings += chain_findings(chains[key], by_sha)
        findings += continuity_findings(chains[key])
    findings += tip_findings(outputs_dir, Path(allowed_signers), chains, by_sha)
    ledgers = []
    by_run = {e.run_id: e for e in entries}
    for engine in _engines(engines):
        key, found = ledger_findings(engine, entries, by_run, migration_sets)
        ledgers.append(key)
        findings += found
    return ArchiveReport(outputs_dir, tuple(checks), tuple(findings), tuple(sorted(chains)), tuple(ledgers),
                         {k: tuple(e.run_id for e in v) for k, v in chains.items()})


def _read_records(outputs_dir: Path, allowed_signers: Path) -> tuple[list[RecordCheck], list[ArchiveEntry],
                                                                    list[ArchiveFinding]]:
    """Each record's check, its entry when its statement is readable, and the findings about it alone."""
    checks, entries, findings = [], [], []
    for run_dir in find_records(outputs_dir):
        check = verify_record(run_dir, allowed_signers)
        checks.append(check)
        if not check.ok:
            findings.append(ArchiveFinding(check.status, "; ".join(check.problems) or check.status, check.run_id,
                                    database_key(((check.statement or {}).get("predicate") or {})
                                                 .get("database"))))
        # The chain uses the statement as it is on disk: a tampered one is reported above, and its digest
        # no longer matches the next record's link, which reports it a second time as "missing".
        entry = (archive_entry(run_dir, check.statement, check.statement_sha256) if check.statement is not None
                 else archive_entry(run_dir, read_statement(run_dir)))
        if entry is not None:
            entries.append(entry)
        misfiled = misfiled_finding(outputs_dir, run_dir)
        if misfiled is not None:
            findings.append(misfiled)
    return checks, entries, findings


def _chains(entries: list[ArchiveEntry]) -> dict[str, list[ArchiveEntry]]:
    """``{database key: its entries in seal order}`` (entries of no known database belong to no chain)."""
    chains: dict[str, list[ArchiveEntry]] = {}
    for entry in entries:
        if entry.database is not None:
            chains.setdefault(entry.database, []).append(entry)
    return {key: sorted(chain, key=seal_order) for key, chain in chains.items()}
