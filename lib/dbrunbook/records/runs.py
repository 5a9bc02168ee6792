"""Run ids, run directories and who runs: the names a record is filed and found under.

A run id (``20261123T220501Z-apply-local-3f9a1c``) starts with the UTC time the run started, so run
directories ``outputs/YYYY/MM/DD/<run-id>/`` sort by start time and a record can be found again by date,
database, runbook or outcome without an index. The operator's name is what a statement records and what the
trust file must vouch for.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path

from dbrunbook.protocol import INTENT_FILE, NOTEBOOK_FILE, STATEMENT_FILE

__all__ = ["find_records", "is_run_dir", "last_record", "new_run_id", "operator_identity", "run_dir_for"]

OPERATOR_ENV = "DBRUNBOOK_OPERATOR"

# Folders tools create next to a notebook without changing the record (JupyterLab autosave checkpoints).
IGNORED_DIRS = frozenset({".ipynb_checkpoints"})
_RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)-")


# --- run ids and directories ----------------------------------------------------------------------------
def as_utc(moment: datetime | None) -> datetime:
    """``moment`` in UTC (now when None); a naive datetime is taken as UTC."""
    moment = moment or datetime.now(UTC)
    # A naive datetime is taken as UTC: run ids and directories must not depend on the machine's zone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or "x"


def new_run_id(runbook: str, target: str, now: datetime | None = None) -> str:
    """Return a run id such as ``20261123T220501Z-apply-local-3f9a1c``.

    The UTC timestamp first makes ids sort by start time (to the second); the random suffix keeps two runs
    started in the same second apart. Characters other than letters, digits, ``_`` and ``.`` in the runbook
    and target names become ``_`` so that ``-`` stays the separator.
    """
    return f"{as_utc(now):%Y%m%dT%H%M%SZ}-{_slug(runbook)}-{_slug(target)}-{secrets.token_hex(3)}"


def run_dir_for(outputs_dir: Path, run_id: str, now: datetime | None = None) -> Path:
    """Return ``outputs_dir/YYYY/MM/DD/<run_id>``, dated by ``now`` (UTC) or by the run id's timestamp."""
    if now is None:
        match = _RUN_ID.match(run_id)
        if not match:
            raise ValueError(f"Run id {run_id!r} does not start with a UTC timestamp; pass now= explicitly.")
        moment = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ")
    else:
        moment = as_utc(now)
    return Path(outputs_dir) / f"{moment:%Y}" / f"{moment:%m}" / f"{moment:%d}" / run_id


def operator_identity() -> str:
    """Who runs this: ``$DBRUNBOOK_OPERATOR`` when set, else ``user@host``."""
    explicit = os.environ.get(OPERATOR_ENV, "").strip()
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # containers often run a uid that has no passwd entry
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


# --- finding records ------------------------------------------------------------------------------------
def find_records(outputs_dir: Path) -> list[Path]:
    """Run directories under ``outputs_dir/YYYY/MM/DD/``, sorted by run id (that is, by start time)."""
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        return []
    found = [p for p in outputs_dir.glob("[0-9]*/[0-9]*/[0-9]*/*") if is_run_dir(p)]
    return sorted(found, key=lambda p: p.name)


def is_run_dir(path: Path) -> bool:
    """True for a run directory (it holds a statement, an intent or a notebook), not a folder of them."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in (STATEMENT_FILE, INTENT_FILE, NOTEBOOK_FILE))


def last_record(
    outputs_dir: Path,
    *,
    database_system_identifier: str | int | None = None,
    database: str | None = None,
    runbook: str | None = None,
    outcome: str | None = "succeeded",
) -> Path | None:
    """The newest run directory whose statement matches every filter given (None = any), or None.

    The statement is read, not verified: call ``verify_record`` on the result before trusting it.
    """
    for run_dir in reversed(find_records(outputs_dir)):
        try:
            predicate = json.loads((run_dir / STATEMENT_FILE).read_bytes()).get("predicate") or {}
        except (OSError, ValueError, AttributeError):
            continue
        db_info = predicate.get("database") or {}
        if database_system_identifier is not None and (
            str(db_info.get("system_identifier")) != str(database_system_identifier)
        ):
            continue
        if database is not None and db_info.get("database") != database:
            continue
        if runbook is not None and predicate.get("runbook") != runbook:
            continue
        if outcome is not None and predicate.get("outcome") != outcome:
            continue
        return run_dir
    return None
