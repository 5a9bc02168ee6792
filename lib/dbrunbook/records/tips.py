"""The chain tip of each database: a small signed index next to the records, changed under a file lock.

Every statement names the statement sealed just before it on the same database (``prev``) and its place in
that chain (``seq``). Working ``prev`` out by reading every statement costs more the bigger the archive is,
and two seals doing it at the same moment pick the same predecessor and fork the chain. So the newest
record of each database is kept in ``outputs/.tips.json`` (``{database key: run id, statement sha256,
seq}``), read and rewritten only while holding an exclusive ``fcntl.flock`` on ``outputs/.chain.lock``:
a seal is O(1) in the archive's size and two seals are serialised.

The index is signed (``.tips.json.sig``, SSHSIG by the key that sealed last), so it is also the anchor of
the newest record of each database: ``dbrunbook verify`` reports a tip whose record is gone, which is how the
deletion of the newest record of a read-only run (no ledger row) is seen. When the index is missing it is
rebuilt from the statements at the next seal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dbrunbook.errors import ChainLockTimeout, SignatureInvalid
from dbrunbook.records import sshsig
from dbrunbook.records.archive_entries import archive_entry, database_key, read_statement, seal_order
from dbrunbook.records.runs import find_records

__all__ = ["LOCK_FILE", "TIPS_FILE", "TIPS_SIGNATURE", "ChainLockTimeout", "Tip", "archive_of", "current_tips",
           "locked", "previous_statement", "read_tips", "rebuild_tips", "verify_tips", "write_tips"]

TIPS_FILE = ".tips.json"
TIPS_SIGNATURE = ".tips.json.sig"
LOCK_FILE = ".chain.lock"


@dataclass(frozen=True)
class Tip:
    """The newest record of one database: its run id, the sha256 of its statement, its place in the chain."""

    run_id: str
    sha256: str
    seq: int

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "sha256": self.sha256, "seq": self.seq}


def archive_of(run_dir: Path) -> Path | None:
    """The outputs folder of a run directory ``outputs/YYYY/MM/DD/<run-id>``; None when it is not filed so."""
    run_dir = Path(run_dir).resolve()
    parts = [run_dir.parents[i].name for i in range(3)] if len(run_dir.parents) > 3 else []
    if [len(p) for p in parts] == [2, 2, 4] and all(p.isdigit() for p in parts):
        return run_dir.parents[3]
    return None


@contextlib.contextmanager
def locked(outputs_dir: Path, timeout: float = 120.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``outputs_dir/.chain.lock`` (released when the block ends or dies).

    Raises:
        ChainLockTimeout: another process held it for ``timeout`` seconds.
    """
    outputs_dir = Path(outputs_dir)
    outputs_dir.mkdir(parents=True, exist_ok=True)
    lock_path = outputs_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChainLockTimeout(lock_path, timeout) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _body(tips: dict[str, Tip]) -> bytes:
    data = {"version": 1, "tips": {key: tip.as_dict() for key, tip in sorted(tips.items())}}
    return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def _parse(body: bytes) -> dict[str, Tip]:
    data = json.loads(body)
    return {key: Tip(str(v["run_id"]), str(v["sha256"]), int(v["seq"])) for key, v in data["tips"].items()}


def read_tips(outputs_dir: Path) -> dict[str, Tip] | None:
    """The index as it is on disk (not verified), or None when there is none or it cannot be read."""
    try:
        return _parse((Path(outputs_dir) / TIPS_FILE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_tips(outputs_dir: Path, tips: dict[str, Tip], key_path: Path) -> None:
    """Write the index and its signature (each atomically, by rename). Call it under ``locked``."""
    outputs_dir = Path(outputs_dir)
    body = _body(tips)
    signature = sshsig.sign(body, key_path)
    for name, data in ((TIPS_FILE, body), (TIPS_SIGNATURE, signature)):
        tmp = outputs_dir / f"{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, outputs_dir / name)


def rebuild_tips(outputs_dir: Path) -> dict[str, Tip]:
    """Work the index out from the statements (the slow way: every statement is read once)."""
    chains: dict[str, list] = {}
    for run_dir in find_records(outputs_dir):
        entry = archive_entry(run_dir, read_statement(run_dir))
        if entry is not None and entry.database is not None:
            chains.setdefault(entry.database, []).append(entry)
    tips = {}
    for key, entries in chains.items():
        last = max(entries, key=seal_order)
        tips[key] = Tip(last.run_id, last.sha256, max(len(entries), last.seq or 0))
    return tips


def current_tips(outputs_dir: Path) -> dict[str, Tip]:
    """The index as it is on disk (not verified), or worked out from the statements when there is none."""
    current = read_tips(outputs_dir)
    return rebuild_tips(outputs_dir) if current is None else current


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
    tip = current_tips(outputs_dir).get(key)
    return tip.sha256 if tip else None



def verify_tips(outputs_dir: Path, allowed_signers: Path) -> tuple[dict[str, Tip] | None, str | None]:
    """The index and what is wrong with it: (tips, None) when it is signed by a trusted key.

    Returns (None, None) when there is no index, (None, problem) when it is unreadable or not trusted.
    """
    outputs_dir = Path(outputs_dir)
    path = outputs_dir / TIPS_FILE
    if not path.is_file():
        return None, None
    body = path.read_bytes()
    try:
        tips = _parse(body)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"{path} is not a readable chain index ({err})."
    try:
        signature = (outputs_dir / TIPS_SIGNATURE).read_bytes()
    except OSError:
        return None, f"{path} has no signature {TIPS_SIGNATURE}: it was not written by a seal."
    try:
        sshsig.verify(body, signature, Path(allowed_signers))
    except SignatureInvalid as err:
        return None, f"{path} cannot be trusted: {err}"
    return tips, None
