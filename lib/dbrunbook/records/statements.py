"""Signed run records: an in-toto Statement per run directory and its SSH signature, written once.

A run directory ``outputs/YYYY/MM/DD/<run-id>/`` holds the executed ``notebook.ipynb`` byte for byte, any
``artifacts/*``, ``statement.json`` (canonical JSON of an in-toto Statement v1 whose subjects are those files)
and ``statement.json.sig`` (SSHSIG over statement.json). A reviewer checks one with stock OpenSSH plus
``sha256sum``; ``verify_record`` (``records.record_check``) does both and, when the notebook was edited, names
the cells that changed. The ledger (``records.ledger``) answers the other question, "what ran here?".

This module is the package's face (``records.write_record``, ``records.verify_record``): it re-exports the
names of ``runs``, ``digests``, ``record_check``, ``ledger`` and the operator key of ``trust``.
"""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

from dbrunbook.errors import DbRunbookError, ParameterError
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, NOTEBOOK_FILE, SECRET_WORDS, SIGNATURE_FILE, STATEMENT_FILE
from dbrunbook.records import dsse, sshsig, tips
from dbrunbook.records.archive_entries import database_key
from dbrunbook.records.digests import (
    canonical_json,
    cell_digests,
    cell_title,
    sha256_file,
    statement_sha256,
)
from dbrunbook.records.ledger import ensure_ledger, ledger_finish, ledger_rows, ledger_start
from dbrunbook.records.record_check import STATUSES, RecordCheck, verify_record
from dbrunbook.records.runs import (
    IGNORED_DIRS,
    find_records,
    is_run_dir,
    last_record,
    new_run_id,
    operator_identity,
    run_dir_for,
)
from dbrunbook.records.trust import OPERATOR_KEY, ensure_operator_key

__all__ = [
    "MODES",
    "OPERATOR_KEY",
    "PREDICATE_TYPE",
    "STATEMENT_FILE",
    "STATEMENT_TYPE",
    "STATUSES",
    "RecordCheck",
    "RecordExists",
    "build_statement",
    "canonical_json",
    "cell_digests",
    "cell_title",
    "ensure_ledger",
    "ensure_operator_key",
    "find_records",
    "is_run_dir",
    "last_record",
    "ledger_finish",
    "ledger_rows",
    "ledger_start",
    "new_run_id",
    "operator_identity",
    "run_dir_for",
    "sha256_file",
    "statement_sha256",
    "verify_record",
    "write_record",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://dbrunbook.dev/run-record/v1"
MODES = ("papermill", "interactive", "interactive-out-of-order", "interactive-edited", "interactive-unsaved")


class RecordExists(DbRunbookError):
    """A run directory that already holds a statement: records are written once, never replaced."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(
            f"{path} already exists; a record is written once and never replaced. "
            f"Start a new run (new run id) instead of re-sealing this one."
        )


# --- statements -----------------------------------------------------------------------------------------
def _subject_files(run_dir: Path) -> list[str]:
    """Names (posix, relative to run_dir) of the files a statement covers: notebook, intent, artifacts."""
    names = [name for name in (NOTEBOOK_FILE, INTENT_FILE) if (run_dir / name).is_file()]
    artifacts = run_dir / ARTIFACTS_DIR
    if artifacts.is_dir():
        names += sorted(
            p.relative_to(run_dir).as_posix() for p in artifacts.rglob("*")
            if p.is_file() and not IGNORED_DIRS.intersection(p.relative_to(run_dir).parts)
        )
    return names


def _check_no_secrets(parameters: dict, predicate: dict) -> None:
    for key in parameters:
        if any(word in str(key).lower() for word in SECRET_WORDS):
            raise ParameterError(
                f"Parameter '{key}' looks like a secret (its name contains one of "
                f"{', '.join(SECRET_WORDS)}); "
                f"records are kept forever and shared, so it cannot be stored. Pass the secret through the "
                f"environment or ~/.pgpass instead of a runbook parameter."
            )

    from dbrunbook.postgres.db import contains_secret

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and contains_secret(value):
            raise ParameterError(
                f"{where} holds a URL with a password (scheme://user:***@...); records cannot store secrets. "
                f"Use a URL without the password (dbrunbook.postgres.db.mask_url) and keep the password in ~/.pgpass."
            )

    walk(predicate, "predicate")


def build_statement(
    run_dir: Path,
    *,
    runbook_name: str,
    runbook_sha256: str,
    parameters: dict,
    operator: str,
    host: str,
    started_at: datetime | str,
    finished_at: datetime | str,
    outcome: str,
    exit_status: int,
    failing_step: dict | None,
    database: dict | None,
    heads_before: dict,
    heads_after: dict,
    migrations_sha256: str | None,
    mode: str,
    extra: dict | None = None,
    prev: str | None = None,
) -> dict:
    """Build the in-toto Statement v1 of a finished run directory (not yet written or signed).

    Subjects are ``notebook.ipynb``, ``intent.json`` when present, and every file under ``artifacts/``, each
    with its sha256. The predicate (type ``https://dbrunbook.dev/run-record/v1``) holds the run's facts and
    the per-cell digests of the notebook. ``prev`` links to an earlier statement (its sha256).

    Raises:
        ParameterError: a parameter name looks like a secret, or any value holds a URL with a password.
        ValueError: ``mode`` is not one of papermill, interactive, interactive-out-of-order, or the
            notebook is missing.
    """
    run_dir = Path(run_dir)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}.")
    notebook = run_dir / NOTEBOOK_FILE
    if not notebook.is_file():
        raise ValueError(f"{notebook} does not exist: a record needs the executed notebook.")
    predicate = {
        "run_id": run_dir.name,
        "runbook": runbook_name,
        "runbook_sha256": runbook_sha256,
        "parameters": dict(parameters),
        "operator": operator,
        "host": host,
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome,
        "exit_status": exit_status,
        "failing_step": failing_step,
        "database": database,
        "heads_before": heads_before,
        "heads_after": heads_after,
        "migrations_sha256": migrations_sha256,
        "mode": mode,
        "extra": extra or {},
        "prev": prev,
        "cells": cell_digests(notebook.read_bytes()),
    }
    _check_no_secrets(parameters, predicate)
    subject = [{"name": name, "digest": {"sha256": sha256_file(run_dir / name)}}
               for name in _subject_files(run_dir)]
    statement = {"_type": STATEMENT_TYPE, "subject": subject, "predicateType": PREDICATE_TYPE,
                 "predicate": predicate}
    # Round-trip through canonical JSON so the returned dict is exactly what gets signed (datetimes as text).
    return json.loads(canonical_json(statement))


def _make_read_only(path: Path) -> None:
    writable = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    path.chmod(path.stat().st_mode & ~writable | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def write_record(run_dir: Path, statement: dict, key_path: Path, *, chain: bool = True) -> Path:
    """Write ``statement.json`` (canonical) and ``statement.json.sig``; make the record's files read-only.

    With ``chain`` (the default) and a run directory filed as ``outputs/YYYY/MM/DD/<run-id>``, the chain link
    is set here, under the archive's chain lock: ``prev`` (sha256 of the newest statement of the same
    database) and ``seq`` come from ``outputs/.tips.json``, which is then advanced to this record, so two
    simultaneous seals never name the same predecessor and the cost does not grow with the archive.
    ``chain=False`` writes the statement exactly as given.

    Returns:
        The path of statement.json.

    Raises:
        RecordExists: the run directory already holds a statement or a signature.
        SigningKeyError: the key cannot sign (missing, encrypted, not Ed25519).
        ChainLockTimeout: another seal held the chain lock for minutes.
    """
    run_dir = Path(run_dir)
    outputs_dir = tips.archive_of(run_dir) if chain else None
    key = database_key((statement.get("predicate") or {}).get("database")) if outputs_dir else None
    if outputs_dir is None or key is None:
        return _write_signed(run_dir, statement, key_path)
    with tips.locked(outputs_dir):
        current = tips.current_tips(outputs_dir)
        tip = current.get(key)
        statement = json.loads(canonical_json(statement))
        statement["predicate"]["prev"] = tip.sha256 if tip else None
        statement["predicate"]["seq"] = tip.seq + 1 if tip else 1
        path = _write_signed(run_dir, statement, key_path)
        current[key] = tips.Tip(run_dir.name, statement_sha256(run_dir), statement["predicate"]["seq"])
        tips.write_tips(outputs_dir, current, key_path)
    return path


def _write_signed(run_dir: Path, statement: dict, key_path: Path) -> Path:
    run_dir = Path(run_dir)
    statement_path, signature_path = run_dir / STATEMENT_FILE, run_dir / SIGNATURE_FILE
    for existing in (statement_path, signature_path):
        if existing.exists():
            raise RecordExists(existing)
    body = canonical_json(statement)
    # Sign before writing anything: a key problem must not leave a statement without its signature.
    signature = sshsig.sign(body, key_path)
    envelope = dsse.envelope(body, key_path)
    try:
        with statement_path.open("xb") as handle:
            handle.write(body)
    except FileExistsError:
        raise RecordExists(statement_path) from None
    with signature_path.open("xb") as handle:
        handle.write(signature)
    with (run_dir / dsse.DSSE_FILE).open("xb") as handle:
        handle.write(envelope)
    for name in [*_subject_files(run_dir), STATEMENT_FILE, SIGNATURE_FILE, dsse.DSSE_FILE]:
        _make_read_only(run_dir / name)
    return statement_path
