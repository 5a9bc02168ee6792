"""A record as the archive's checks see it: its database key, its place in the seal order, its heads.

The chain and ledger checks compare many records with each other; they read each statement once into an
entry and compare entries, never statements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dbrunbook.protocol import STATEMENT_FILE
from dbrunbook.records.digests import statement_sha256

__all__ = ["archive_entry", "database_key", "read_statement", "seal_order"]


@dataclass(frozen=True)
class ArchiveEntry:
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


#: The time of a record that gives none: it sorts first.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seal_order(entry: ArchiveEntry) -> tuple:
    # ``seq`` is the place write_record gave the record under the chain lock: the true seal order, even when
    # two runs that finished at nearly the same time took the lock the other way round. Records sealed
    # before the chain index existed have none and come first, by seal time; the run id breaks ties.
    if entry.seq is None:
        return 0, 0, entry.finished_at or EPOCH, entry.run_id
    return 1, entry.seq, entry.finished_at or EPOCH, entry.run_id


def read_statement(run_dir: Path) -> dict | None:
    try:
        statement = json.loads((run_dir / STATEMENT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return statement if isinstance(statement, dict) else None


def archive_entry(run_dir: Path, statement: dict | None, sha256: str | None = None) -> ArchiveEntry | None:
    if statement is None or (sha256 is None and not (run_dir / STATEMENT_FILE).is_file()):
        return None
    predicate = statement.get("predicate") or {}
    if not isinstance(predicate, dict):
        return None
    return ArchiveEntry(
        run_id=run_dir.name, run_dir=run_dir, sha256=sha256 or statement_sha256(run_dir),
        prev=predicate.get("prev") or None, database=database_key(predicate.get("database")),
        started_at=_moment(predicate.get("started_at")), finished_at=_moment(predicate.get("finished_at")),
        heads_before=predicate.get("heads_before") or {}, heads_after=predicate.get("heads_after") or {},
        runbook=predicate.get("runbook"),
        seq=predicate.get("seq") if isinstance(predicate.get("seq"), int) else None,
    )


# --- heads ------------------------------------------------------------------------------------------------
def normal_heads(heads: Mapping | None) -> dict[str, tuple[str, ...]]:
    """``{set: sorted revisions}``, leaving out sets whose heads were unknown (None)."""
    return {name: tuple(sorted(revs)) for name, revs in (heads or {}).items() if revs is not None}


def show_heads(heads: Mapping | None) -> str:
    """Heads for a message: ``main: ab12+cd34, ai: base``."""
    normal = normal_heads(heads)
    return ", ".join(f"{k}: {'+'.join(v) or 'base'}" for k, v in sorted(normal.items())) or "(unknown)"


def heads_differ(earlier: Mapping | None, later: Mapping | None) -> bool:
    """True when a set known on both sides is at different revisions (unknown sets prove nothing)."""
    a, b = normal_heads(earlier), normal_heads(later)
    return any(a[name] != b[name] for name in set(a) & set(b))
