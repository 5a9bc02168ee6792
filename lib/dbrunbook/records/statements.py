"""Signed run records: an in-toto Statement per run directory, its SSH signature, and the ledger table.

A run directory ``outputs/YYYY/MM/DD/<run-id>/`` holds the executed ``notebook.ipynb`` byte for byte, any
``artifacts/*``, ``statement.json`` (canonical JSON of an in-toto Statement v1 whose subjects are those files)
and ``statement.json.sig`` (SSHSIG over statement.json). A reviewer checks one with stock OpenSSH plus
``sha256sum``; ``verify_record`` does both and, when the notebook was edited, names the cells that changed.

The ledger ``dbrunbook.ledger`` in each changed database answers the other question, "what ran here?", the way
Flyway's and Sqitch's registries do: one row per run, written when the run starts (so a killed run leaves a
'running' row) and completed with the statement's digest when it ends.
"""

from __future__ import annotations

import getpass
import hashlib
import html
import json
import os
import re
import secrets
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbrunbook.errors import DbRunbookError, ParameterError, SignatureInvalid
from dbrunbook.execution.protocol import (
    ARTIFACTS_DIR,
    INTENT_FILE,
    LEDGER_SCHEMA,
    LEDGER_TABLE,
    NOTEBOOK_FILE,
    SECRET_WORDS,
    SIGNATURE_FILE,
    STATEMENT_FILE,
)
from dbrunbook.records import dsse, signing

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
OPERATOR_ENV = "DBRUNBOOK_OPERATOR"
OPERATOR_KEY = "operator_ed25519"
STATUSES = ("valid", "untrusted", "tampered", "unsigned", "incomplete")

# Folders tools create next to a notebook without changing the record (JupyterLab autosave checkpoints).
_IGNORED_DIRS = frozenset({".ipynb_checkpoints"})
_RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)-")


class RecordExists(DbRunbookError):
    """A run directory that already holds a statement: records are written once, never replaced."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(
            f"{path} already exists; a record is written once and never replaced. "
            f"Start a new run (new run id) instead of re-sealing this one."
        )


# --- run ids and directories ----------------------------------------------------------------------------
def _utc(moment: datetime | None) -> datetime:
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
    return f"{_utc(now):%Y%m%dT%H%M%SZ}-{_slug(runbook)}-{_slug(target)}-{secrets.token_hex(3)}"


def run_dir_for(outputs_dir: Path, run_id: str, now: datetime | None = None) -> Path:
    """Return ``outputs_dir/YYYY/MM/DD/<run_id>``, dated by ``now`` (UTC) or by the run id's timestamp."""
    if now is None:
        match = _RUN_ID.match(run_id)
        if not match:
            raise ValueError(f"Run id {run_id!r} does not start with a UTC timestamp; pass now= explicitly.")
        moment = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ")
    else:
        moment = _utc(now)
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


# --- canonical JSON and digests -------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    raise TypeError(f"{type(value).__name__} cannot go in a record: {value!r}")


def canonical_json(obj: Any) -> bytes:
    """Serialize deterministically: sorted keys, no insignificant blanks, UTF-8, one trailing newline.

    The same statement always gives the same bytes, so the signature and ``statement_sha256`` are stable.
    NaN and infinities are refused (they are not JSON).
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_json_default)
    return (text + "\n").encode("utf-8")


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (dumps and notebooks can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def statement_sha256(run_dir: Path) -> str:
    """sha256 of the run directory's statement.json: what the ledger row stores."""
    return sha256_file(Path(run_dir) / STATEMENT_FILE)


def _joined(value: Any) -> Any:
    # nbformat stores multi-line strings either as one string or as a list of lines; both mean the same.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return value


def _normal_outputs(outputs: list) -> list:
    normal = []
    for output in outputs or []:
        output = dict(output)
        if "text" in output:
            output["text"] = _joined(output["text"])
        if isinstance(output.get("data"), dict):
            output["data"] = {mime: _joined(v) for mime, v in output["data"].items()}
        normal.append(output)
    return normal


def cell_digests(nb_bytes: bytes) -> list[dict]:
    """Digest each cell of a notebook: ``[{"index", "cell_type", "id", "sha256"}]``.

    The digest covers the cell's source and outputs (canonical JSON, multi-line strings joined), not
    execution counts or metadata, so a verifier can name which cells' content changed after signing.
    """
    notebook = json.loads(nb_bytes)
    digests = []
    for index, cell in enumerate(notebook.get("cells", [])):
        content = {"source": _joined(cell.get("source", "")),
                   "outputs": _normal_outputs(cell.get("outputs", []))}
        digests.append({
            "index": index,
            "cell_type": cell.get("cell_type"),
            "id": cell.get("id"),
            "sha256": hashlib.sha256(canonical_json(content)).hexdigest(),
        })
    return digests


def cell_title(cell: dict) -> str:
    """A cell's first heading (markdown) or first non-blank line, to name it in a message."""
    lines = [ln.strip() for ln in str(_joined(cell.get("source", ""))).splitlines() if ln.strip()]
    headings = [ln for ln in lines if ln.startswith("#")] if cell.get("cell_type") == "markdown" else []
    title = (headings or lines or ["(empty cell)"])[0]
    return title if len(title) <= 70 else title[:67] + "..."


# --- statements -----------------------------------------------------------------------------------------
def _subject_files(run_dir: Path) -> list[str]:
    """Names (posix, relative to run_dir) of the files a statement covers: notebook, intent, artifacts."""
    names = [name for name in (NOTEBOOK_FILE, INTENT_FILE) if (run_dir / name).is_file()]
    artifacts = run_dir / ARTIFACTS_DIR
    if artifacts.is_dir():
        names += sorted(
            p.relative_to(run_dir).as_posix() for p in artifacts.rglob("*")
            if p.is_file() and not _IGNORED_DIRS.intersection(p.relative_to(run_dir).parts)
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
    from dbrunbook.records import archive, tips

    run_dir = Path(run_dir)
    outputs_dir = tips.archive_of(run_dir) if chain else None
    key = archive.database_key((statement.get("predicate") or {}).get("database")) if outputs_dir else None
    if outputs_dir is None or key is None:
        return _write_signed(run_dir, statement, key_path)
    with tips.locked(outputs_dir):
        current = tips.read_tips(outputs_dir)
        if current is None:
            current = tips.rebuild_tips(outputs_dir)
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
    signature = signing.sign(body, key_path)
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


# --- verification ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordCheck:
    """What ``verify_record`` found about one run directory."""

    run_dir: Path
    status: str  # valid | untrusted | tampered | unsigned | incomplete
    principal: str | None = None
    problems: tuple[str, ...] = ()
    changed_cells: tuple[int, ...] = ()
    statement: dict | None = None
    statement_sha256: str | None = None  # of statement.json as read (what the next record's prev names)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def ok(self) -> bool:
        return self.status == "valid"

    def as_row(self) -> dict:
        """One flat row for a DataFrame of many checks."""
        predicate = (self.statement or {}).get("predicate", {})
        return {
            "run_id": self.run_id,
            "status": self.status,
            "signed_by": self.principal,
            "runbook": predicate.get("runbook"),
            "outcome": predicate.get("outcome"),
            "database": (predicate.get("database") or {}).get("database"),
            "problems": "; ".join(self.problems),
        }

    def _repr_html_(self) -> str:
        rows = [(k, v) for k, v in self.as_row().items() if k != "problems"]
        body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows)
        problems = "".join(f"<li>{html.escape(p)}</li>" for p in self.problems)
        return f"<table>{body}</table>" + (f"<ul>{problems}</ul>" if problems else "")


def _files_in(run_dir: Path) -> set[str]:
    # os.scandir, not Path.rglob: verifying an archive lists thousands of run directories.
    found: set[str] = set()
    todo = [(str(run_dir), "")]
    while todo:
        folder, prefix = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if entry.name not in _IGNORED_DIRS:
                        todo.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file():
                    found.add(prefix + entry.name)
    return found


def _compare_cells(recorded: list[dict], nb_bytes: bytes) -> tuple[tuple[int, ...], list[str]]:
    try:
        notebook = json.loads(nb_bytes)
        current = cell_digests(nb_bytes)
    except (ValueError, AttributeError, TypeError) as err:
        return (), [f"{NOTEBOOK_FILE} is no longer a readable notebook ({err})."]
    recorded = [d.get("sha256") if isinstance(d, dict) else None for d in recorded]
    cells = notebook.get("cells", [])
    changed, problems = [], []
    for index in range(max(len(recorded), len(current))):
        old = recorded[index] if index < len(recorded) else None
        new = current[index]["sha256"] if index < len(current) else None
        if old == new:
            continue
        changed.append(index)
        if new is None:
            problems.append(f"cell {index} was removed from {NOTEBOOK_FILE}.")
        elif index >= len(recorded):
            problems.append(f"cell {index} ({cell_title(cells[index])}) was added to {NOTEBOOK_FILE}.")
        else:
            problems.append(f"cell {index} ({cell_title(cells[index])}) differs from the signed record.")
    if not changed:
        problems.append(f"{NOTEBOOK_FILE} differs outside cell sources and outputs "
                        f"(metadata or execution counts).")
    return tuple(changed), problems


def verify_record(run_dir: Path, allowed_signers: Path) -> RecordCheck:
    """Check a run directory: the signature over statement.json, then every file against the statement.

    Status: "valid"; "untrusted" (sound signature by a key not in ``allowed_signers``); "tampered" (bad
    signature, a file that differs, is missing, or is not in the statement); "unsigned" (no statement or no
    signature); "incomplete" (``intent.json`` but no statement: a run that was killed or is still going).
    A valid record run interactively out of order stays valid, with a problem saying so.
    """
    run_dir = Path(run_dir)
    statement_path, signature_path = run_dir / STATEMENT_FILE, run_dir / SIGNATURE_FILE
    if not statement_path.is_file():
        if (run_dir / INTENT_FILE).is_file():
            return RecordCheck(run_dir, "incomplete", problems=(
                f"{INTENT_FILE} but no {STATEMENT_FILE}: the run was killed before it was sealed, or is "
                f"still running. Check the ledger of its database; 'dbrunbook seal' records what it left.",))
        return RecordCheck(run_dir, "unsigned", problems=(f"no {STATEMENT_FILE} in {run_dir}.",))
    body = statement_path.read_bytes()
    try:
        statement = json.loads(body)
        if not isinstance(statement, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        statement = None
        statement_problem = f"{STATEMENT_FILE} is not valid JSON ({err})."
    else:
        statement_problem = None
    if not signature_path.is_file():
        return RecordCheck(run_dir, "unsigned", problems=(f"no {SIGNATURE_FILE} next to {STATEMENT_FILE}.",),
                           statement=statement)

    status, principal, problems = "valid", None, []
    try:
        principal = signing.verify(body, signature_path.read_bytes(), Path(allowed_signers))
    except SignatureInvalid as err:
        # A malformed signature file is an altered record as far as a reviewer is concerned.
        status = "untrusted" if getattr(err, "status", "") == "untrusted" else "tampered"
        problems.append(str(err))
    if statement is None:
        return RecordCheck(run_dir, "tampered", principal, (*problems, statement_problem))

    body_sha256 = hashlib.sha256(body).hexdigest()
    changed: tuple[int, ...] = ()
    tampered = False
    subjects = statement.get("subject") or []
    predicate = statement.get("predicate") or {}
    expected = set()
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
            tampered = True
            problems.append(f"the statement has an unreadable subject entry: {str(subject)[:80]}")
            continue
        name = subject["name"]
        expected.add(name)
        path = run_dir / name
        try:
            digest = sha256_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            tampered = True
            problems.append(f"{name} is listed in the statement but missing.")
            continue
        if digest != (subject.get("digest") or {}).get("sha256"):
            tampered = True
            if name == NOTEBOOK_FILE:
                changed, cell_problems = _compare_cells(predicate.get("cells") or [], path.read_bytes())
                problems += cell_problems
            else:
                problems.append(f"{name} differs from the signed digest.")
    for extra in sorted(_files_in(run_dir) - expected - {STATEMENT_FILE, SIGNATURE_FILE, dsse.DSSE_FILE}):
        tampered = True
        problems.append(f"{extra} is not in the signed statement (added after signing).")
    envelope_path = run_dir / dsse.DSSE_FILE
    if envelope_path.is_file() and status in ("valid", "untrusted"):
        # The envelope must carry this very statement, signed by the key that made the SSH signature.
        signer = signing.format_public_line(signing.parse_signature(signature_path.read_bytes()).public_blob)
        envelope_problems = dsse.verify_envelope(envelope_path.read_bytes(), signer, body)
        if envelope_problems:
            tampered = True
            problems += envelope_problems
    if predicate.get("run_id") not in (None, run_dir.name):
        tampered = True
        problems.append(f"the statement is for run {predicate.get('run_id')}, but sits in {run_dir.name}/.")
    if tampered:
        status = "tampered"
    operator = predicate.get("operator")
    if status == "valid" and principal and operator and not signing.principal_matches(principal, operator):
        status = "untrusted"
        problems.append(f"signed by '{principal}', but the statement names operator '{operator}': the key "
                        f"does not vouch for the person the record names.")
    if str(predicate.get("mode")).startswith("interactive-") and predicate.get("mode") != "interactive-out-of-order":
        from dbrunbook.execution.interactive import INTERACTIVE_ARTIFACT, record_problems

        problems += record_problems(predicate, run_dir / ARTIFACTS_DIR / INTERACTIVE_ARTIFACT)
    if predicate.get("mode") == "interactive-out-of-order":
        problems.append("the notebook was run interactively with cells out of order: its outputs may not "
                        "follow from its code top to bottom.")
    return RecordCheck(run_dir, status, principal, tuple(problems), changed, statement, body_sha256)


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


def ensure_operator_key(keys_dir: Path, allowed_signers: Path) -> tuple[Path, bool]:
    """Return the operator's signing key ``keys_dir/operator_ed25519``; it is never created here.

    Creating and trusting a key is the operator's and the team's act (``dbrunbook keygen``, see
    ``dbrunbook.records.trust``), never a side effect of a run: otherwise "valid" would mean "signed by a key this
    machine trusted itself".

    Returns:
        (path of the private key, False): the second value is kept for callers of the old signature.

    Raises:
        SigningKeyMissing: there is no key; run ``dbrunbook keygen``.
    """
    from dbrunbook.errors import SigningKeyMissing

    key_path = Path(keys_dir) / OPERATOR_KEY
    if not key_path.is_file():
        raise SigningKeyMissing(key_path, Path(allowed_signers))
    return key_path, False


# --- ledger ---------------------------------------------------------------------------------------------
_LEDGER = f'"{LEDGER_SCHEMA}"."{LEDGER_TABLE}"'
_LEDGER_COLUMNS = ("id", "run_id", "runbook", "operator", "started_at", "finished_at", "outcome",
                   "statement_sha256", "heads_before", "heads_after", "migration_files", "recorded_at", "error")


def _run(conn: sa.Engine | sa.Connection, statements: list[tuple[str, dict]]) -> list[Any]:
    """Execute in one transaction: our own on an Engine; on a Connection, commit only if we began it.

    Committing what we began matters: a 'running' row must survive the run being killed a moment later.
    """
    if isinstance(conn, sa.Engine):
        with conn.begin() as connection:
            return [connection.execute(sa.text(sql), params) for sql, params in statements]
    began = not conn.in_transaction()
    results = [conn.execute(sa.text(sql), params) for sql, params in statements]
    if began:
        conn.commit()
    return results


def _jsonb(value: Any) -> str | None:
    return None if value is None else canonical_json(value).decode("utf-8")


def ensure_ledger(conn: sa.Engine | sa.Connection) -> None:
    """Create schema ``dbrunbook`` and table ``dbrunbook.ledger`` when missing (idempotent, race-free)."""
    _run(conn, [
        # Two runs creating the ledger at once would otherwise race on the catalog's unique indexes.
        ("SELECT pg_advisory_xact_lock(hashtext(:name))", {"name": f"{LEDGER_SCHEMA}.{LEDGER_TABLE}"}),
        (f'CREATE SCHEMA IF NOT EXISTS "{LEDGER_SCHEMA}"', {}),
        (f"""CREATE TABLE IF NOT EXISTS {_LEDGER} (
                id bigserial PRIMARY KEY,
                run_id text NOT NULL UNIQUE,
                runbook text,
                operator text,
                started_at timestamptz,
                finished_at timestamptz,
                outcome text NOT NULL DEFAULT 'running',
                statement_sha256 text,
                heads_before jsonb,
                heads_after jsonb,
                migration_files jsonb,
                recorded_at timestamptz NOT NULL DEFAULT now(),
                error text
            )""", {}),
        # `error`: why a finished run has no signed record (statement_sha256 NULL) until 'dbrunbook seal'
        # finishes it. Added to older ledgers only when missing: ALTER TABLE takes ACCESS EXCLUSIVE even
        # when IF NOT EXISTS finds the column, and would queue behind any reader of the ledger.
        (f"""DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{LEDGER_SCHEMA}'
                               AND table_name = '{LEDGER_TABLE}' AND column_name = 'error') THEN
                    ALTER TABLE {_LEDGER} ADD COLUMN error text;
                END IF;
            END $$""", {}),
    ])


def ledger_start(conn: sa.Engine | sa.Connection, *, run_id: str, runbook: str, operator: str,
                 started_at: datetime, heads_before: dict) -> None:
    """Insert the run's row with outcome 'running' (creating the ledger if needed), committed at once.

    Calling it again for the same run id changes nothing, so a launcher may retry it after a lost connection.
    """
    ensure_ledger(conn)
    _run(conn, [(
        f"""INSERT INTO {_LEDGER} (run_id, runbook, operator, started_at, outcome, heads_before)
            VALUES (:run_id, :runbook, :operator, :started_at, 'running', CAST(:heads_before AS jsonb))
            ON CONFLICT (run_id) DO NOTHING""",
        {"run_id": run_id, "runbook": runbook, "operator": operator, "started_at": started_at,
         "heads_before": _jsonb(heads_before)},
    )])


def ledger_finish(conn: sa.Engine | sa.Connection, *, run_id: str, finished_at: datetime, outcome: str,
                  statement_sha256: str | None, heads_after: dict, migration_files: dict,
                  runbook: str | None = None, operator: str | None = None, started_at: datetime | None = None,
                  heads_before: dict | None = None, error: str | None = None) -> None:
    """Complete the run's row: outcome, end time, statement digest, heads after, migration file digests.

    ``error`` says why the run has no signed record yet (``statement_sha256`` None); a later call with the
    statement clears it.

    When the row is missing (the run restored or recreated this database after ``ledger_start``), it is
    inserted from the optional ``runbook``/``operator``/``started_at``/``heads_before`` instead.
    """
    ensure_ledger(conn)
    _run(conn, [(
        f"""INSERT INTO {_LEDGER} (run_id, runbook, operator, started_at, heads_before, finished_at, outcome,
                                   statement_sha256, heads_after, migration_files, error)
            VALUES (:run_id, :runbook, :operator, :started_at, CAST(:heads_before AS jsonb), :finished_at,
                    :outcome, :statement_sha256, CAST(:heads_after AS jsonb), CAST(:migration_files AS jsonb),
                    :error)
            ON CONFLICT (run_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
                statement_sha256 = EXCLUDED.statement_sha256, heads_after = EXCLUDED.heads_after,
                migration_files = EXCLUDED.migration_files, error = EXCLUDED.error""",
        {"run_id": run_id, "runbook": runbook, "operator": operator, "started_at": started_at,
         "heads_before": _jsonb(heads_before), "finished_at": finished_at, "outcome": outcome,
         "statement_sha256": statement_sha256, "heads_after": _jsonb(heads_after),
         "migration_files": _jsonb(migration_files), "error": error},
    )])


def ledger_rows(conn: sa.Engine | sa.Connection) -> list[dict]:
    """All ledger rows, oldest first, as dicts (jsonb columns decoded); [] when there is no ledger yet."""
    exists_sql = "SELECT to_regclass(:name) IS NOT NULL"
    select_sql = f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM {_LEDGER} ORDER BY id"
    if isinstance(conn, sa.Engine):
        with conn.connect() as connection:
            return ledger_rows(connection)
    began = not conn.in_transaction()
    try:
        if not conn.execute(sa.text(exists_sql), {"name": f"{LEDGER_SCHEMA}.{LEDGER_TABLE}"}).scalar():
            return []
        return [dict(row._mapping) for row in conn.execute(sa.text(select_sql))]
    finally:
        if began:
            # Read-only: end the transaction we began rather than leave one open on the caller's connection.
            conn.rollback()
