"""Backup records: ``save_backup``, the recent-backup guard, and finding the backup or rehearsal to build on.

A protected target may be changed only after a verified backup of the same database, young enough and with
its dump folder intact: ``require_recent_backup`` checks the newest signed ``backup`` record for that, and
``backup_for_rehearsal`` / ``latest_rehearsal`` find the records a rehearsal and a deploy build on.

Runbooks, guards and the capture call everything about backups as ``backup.NAME``, so this module also
re-exports the pieces that live elsewhere: the client programs (``postgres.dump``), scratch servers
(``postgres.scratch``), the dump (``procedures.backup_dump``), its restore check (``procedures.restore_check``)
and the rehearsal (``procedures.rehearsal``, ``procedures.lock_recorder``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pandas as pd

from dbrunbook import records
from dbrunbook.config import parse_duration
from dbrunbook.errors import BackupFailed, BackupRequired
from dbrunbook.postgres.dump import DumpTool, conninfo_quote, dump_tool, libpq_environment, run_tool
from dbrunbook.postgres.scratch import scratch_server
from dbrunbook.procedures.backup_dump import (
    DEFAULT_COMPRESSION,
    DEFAULT_JOBS,
    FORMAT,
    DumpResult,
    dump,
    dump_digest,
)
from dbrunbook.procedures.lock_recorder import steps_with_locks
from dbrunbook.procedures.rehearsal import REHEARSAL_ARTIFACT, BackupSource, Rehearsal, rehearse, save_rehearsal
from dbrunbook.procedures.restore_check import RestoreCheck, restore_check
from dbrunbook.protocol import ARTIFACTS_DIR, SessionLike

log = logging.getLogger(__name__)

__all__ = [
    "BACKUP_ARTIFACT", "DEFAULT_COMPRESSION", "DEFAULT_JOBS", "FORMAT", "REHEARSAL_ARTIFACT", "BackupRecord",
    "BackupSource", "DumpResult", "DumpTool",
    "Rehearsal", "RestoreCheck", "backup_for_rehearsal", "conninfo_quote", "dump", "dump_digest", "dump_tool",
    "latest_backup", "latest_rehearsal", "libpq_environment", "rehearse", "require_recent_backup",
    "restore_check", "run_tool", "save_backup", "save_rehearsal", "scratch_server", "steps_with_locks",
]

BACKUP_ARTIFACT = "backup.json"


def _parse_time(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _backup_body(result: DumpResult, check: RestoreCheck) -> dict:
    return {
        "path": str(result.path), "sha256": result.sha256,
        "digest_method": "sha256 over files sorted by relative name: name NUL size NUL bytes",
        "size_bytes": result.size_bytes, "files": result.files, "seconds": round(result.seconds, 3),
        "started_at": result.started_at, "finished_at": result.finished_at, "tool": result.tool.as_dict(),
        "format": result.format, "jobs": result.jobs, "compression": result.compression,
        "database": result.database, "tables": len(result.tables), "verified": check.verified,
        "restore_check": check.as_dict(),
    }


def save_backup(session: SessionLike, result: DumpResult, check: RestoreCheck) -> pd.DataFrame:
    """Write ``backup.json`` into the run's record, then stop the run if the restore check failed.

    Raises:
        BackupFailed: the archive did not pass the restore check (the artifact says why, verified false).
    """
    body = _backup_body(result, check)
    session.save_artifact(BACKUP_ARTIFACT, json.dumps(body, indent=1, sort_keys=True, default=str) + "\n")
    if not check.verified:
        raise BackupFailed(f"The backup in {result.path} did not pass its restore check: "
                           f"{'; '.join(check.problems)}. Fix the cause and run 'dbrunbook run backup -t "
                           f"{session.target.name}' again.")
    keys = ("path", "sha256", "size_bytes", "seconds", "format", "jobs", "compression", "verified")
    return pd.DataFrame([{"field": k, "value": body[k]} for k in keys]
                        + [{"field": "tool", "value": f"pg_dump {result.tool.version} ({result.tool.source})"}])


# --- finding backups -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupRecord:
    """A backup record found for a database: its folder, its backup.json, and 'valid' or why it is not."""

    run_dir: Path
    body: dict | None
    status: str
    problem: str = ""


def _backup_records(session: SessionLike, runbook: str = "backup") -> Iterator[Path]:
    """Record folders of ``runbook`` on this database, newest first (statements read, not verified)."""
    ident = session.identity
    for run_dir in reversed(records.find_records(session.config.outputs_dir)):
        if session.record_dir is not None and run_dir.resolve() == session.record_dir.resolve():
            continue
        try:
            predicate = json.loads((run_dir / records.STATEMENT_FILE).read_bytes()).get("predicate") or {}
        except (OSError, ValueError, AttributeError):
            continue
        database = predicate.get("database") or {}
        if (predicate.get("runbook") == runbook and predicate.get("outcome") == "succeeded"
                and str(database.get("system_identifier")) == str(ident.system_identifier)
                and database.get("database") == ident.database):
            yield run_dir


def _load_backup(session: SessionLike, run_dir: Path) -> BackupRecord:
    check = records.verify_record(run_dir, session.config.allowed_signers)
    path = run_dir / ARTIFACTS_DIR / BACKUP_ARTIFACT
    body = None
    with contextlib.suppress(OSError, ValueError):
        body = json.loads(path.read_text(encoding="utf-8"))
    if check.status != "valid":
        return BackupRecord(run_dir, body, check.status, f"record {run_dir.name} is {check.status}: "
                                                   f"{'; '.join(check.problems[:3])}")
    if body is None:
        return BackupRecord(run_dir, None, "no artifact", f"record {run_dir.name} has no readable {BACKUP_ARTIFACT}")
    if body.get("verified") is not True:
        return BackupRecord(run_dir, body, "unverified",
                            f"the backup of record {run_dir.name} failed its restore check")
    return BackupRecord(run_dir, body, "valid")


def latest_backup(session: SessionLike) -> BackupRecord | None:
    """The newest succeeded backup record of the session's database, checked (status 'valid' or why not)."""
    for run_dir in _backup_records(session):
        return _load_backup(session, run_dir)
    return None


def _dump_problem(body: dict, rehash: bool) -> str:
    folder = Path(body.get("path", ""))
    if not folder.is_dir():
        return f"the dump folder {folder} no longer exists"
    if rehash:
        digest, size, _ = dump_digest(folder)
        if digest != body.get("sha256"):
            return f"the dump folder {folder} changed since the backup (sha256 {digest[:12]}…, recorded " \
                   f"{str(body.get('sha256'))[:12]}…)"
    else:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if size != body.get("size_bytes"):
            return f"the dump folder {folder} holds {size:,} bytes, the record says {body.get('size_bytes'):,}"
    return ""


def require_recent_backup(session: SessionLike, *, now: dt.datetime | None = None, rehash: bool = True) -> pd.DataFrame:
    """Guard of apply/rollback/deploy on a protected target: a verified backup younger than backup_max_age.

    Checks the newest succeeded ``backup`` record of the same database (same system identifier and name):
    its signature and digests (``records.verify_record``), its ``backup.json`` verified, its age (from the
    dump's start, the instant its data is of) against the target's ``backup_max_age``, and that the dump
    folder still exists with the recorded sha256.

    ``rehash`` (default on) re-reads the whole dump: a deleted, truncated or altered file is caught before it
    is needed. Hashing runs at disk speed (about 1 GB/s), so it is on by default; for dumps of hundreds of
    GB on storage you trust, ``rehash=False`` checks the folder's total size instead.

    Returns:
        One row per check (check, ok, detail); on a target that is not protected, one row saying so.

    Raises:
        BackupRequired: what is missing or stale, and the command that makes a new backup.
    """
    target = session.target
    if not target.protected:
        return pd.DataFrame([{"check": "backup required", "ok": True,
                              "detail": f"target '{target.name}' is not protected: no backup required"}])
    now = now or dt.datetime.now(dt.UTC)
    limit = dt.timedelta(seconds=parse_duration(target.backup_max_age, key="backup_max_age"))
    command = f"dbrunbook run backup -t {target.name}"
    found = latest_backup(session)
    if found is None:
        raise BackupRequired(
            f"Target '{target.name}' is protected and has no backup record of database "
            f"'{session.identity.database}' under {session.config.outputs_dir}. Run '{command}' first.")
    rows = [{"check": "record", "ok": found.status == "valid", "detail": found.problem or found.run_dir.name}]
    if found.status != "valid":
        raise BackupRequired(f"Target '{target.name}': the newest backup is not usable: {found.problem}. "
                             f"Run '{command}' for a new one.")
    body = cast(dict, found.body)  # a valid record has its backup.json
    age = now - _parse_time(body["started_at"])
    future = age < -_CLOCK_SKEW
    fresh = not future and age <= limit
    rows.append({"check": "age", "ok": fresh, "detail": f"{_age_text(age)} (limit {target.backup_max_age})"})
    if future:
        # A dump cannot be of data that does not exist yet: an edited record or a wrong clock. Either way its
        # age says nothing, and "fresh" would let a stale dump through.
        raise BackupRequired(
            f"Target '{target.name}': the newest backup ({found.run_dir.name}) says it started at "
            f"{body['started_at']}, {_age_text(age)} (this machine's clock: {now.isoformat(timespec='seconds')}); "
            f"a backup dated in the future is refused. Check the clocks, then run '{command}'.")
    if not fresh:
        raise BackupRequired(
            f"Target '{target.name}': the newest backup ({found.run_dir.name}, started {body['started_at']}) "
            f"is {_age_text(age)} old; the limit is {target.backup_max_age} (backup_max_age). Run '{command}'.")
    problem = _dump_problem(body, rehash)
    rows.append({"check": "dump folder", "ok": not problem,
                 "detail": problem or f"{body['path']} ({'sha256 equal' if rehash else 'size equal'})"})
    if problem:
        raise BackupRequired(f"Target '{target.name}': {problem}. Run '{command}' for a new backup.")
    return pd.DataFrame(rows, columns=["check", "ok", "detail"])


#: How far a backup's start may lie ahead of this machine's clock (clock skew between hosts) before it is refused.
_CLOCK_SKEW = dt.timedelta(seconds=60)


def _age_text(age: dt.timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return f"{-seconds}s in the future"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def backup_for_rehearsal(session: SessionLike, backup_run: str = "") -> BackupSource:
    """The dump to rehearse on: ``backup_run``'s, else the newest verified backup, else a new one now.

    A dump taken now is restore-checked (``pg_restore --list``) and saved as this run's ``backup.json``.

    Raises:
        BackupRequired: ``backup_run`` is not a valid, verified backup of this database with its dump intact.
    """
    found: BackupRecord | None
    if backup_run:
        run_dirs = [d for d in _backup_records(session) if d.name == backup_run]
        if not run_dirs:
            raise BackupRequired(f"No succeeded backup run '{backup_run}' of database "
                                 f"'{session.identity.database}' under {session.config.outputs_dir}. "
                                 f"Leave backup_run empty to use the newest one.")
        found = _load_backup(session, run_dirs[0])
    else:
        found = next((f for f in (_load_backup(session, d) for d in _backup_records(session))
                      if f.status == "valid"), None)
    if found is not None:
        # Every record that is not valid says why; a valid one has its backup.json.
        problem = found.problem or _dump_problem(cast(dict, found.body), rehash=True)
        if problem:
            raise BackupRequired(f"Backup {found.run_dir.name} cannot be rehearsed on: {problem}. Run "
                                 f"'dbrunbook run backup -t {session.target.name}', or rehearse with an "
                                 f"empty backup_run to take one now.")
        body = cast(dict, found.body)
        return BackupSource(Path(body["path"]), body["sha256"], body["started_at"], found.run_dir.name, False,
                            int(body.get("jobs") or DEFAULT_JOBS))
    print("No verified backup of this database: taking one now.")
    result = dump(session)
    save_backup(session, result, restore_check(session, result))
    return BackupSource(result.path, result.sha256, result.started_at, session.run_id, True, result.jobs)


def latest_rehearsal(session: SessionLike) -> dict | None:
    """The newest valid, succeeded ``rehearse`` record of this database: its rehearsal.json plus where it is.

    Returns None when there is none. The dict has the artifact's fields and ``run_id``, ``run_dir``,
    ``record_status`` and ``rehearsal_sha256`` (the artifact's digest, to cite from a deploy record).
    """
    for run_dir in _backup_records(session, runbook="rehearse"):
        check = records.verify_record(run_dir, session.config.allowed_signers)
        if check.status != "valid":
            log.warning("skipping rehearsal %s: record is %s", run_dir.name, check.status)
            continue
        path = run_dir / ARTIFACTS_DIR / REHEARSAL_ARTIFACT
        try:
            data = path.read_bytes()
            body = json.loads(data)
        except (OSError, ValueError):
            continue
        return {**body, "run_id": run_dir.name, "run_dir": str(run_dir), "record_status": check.status,
                "rehearsal_sha256": hashlib.sha256(data).hexdigest()}
    return None
