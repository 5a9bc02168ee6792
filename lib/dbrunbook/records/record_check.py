"""One record's verification: its signature, then every file it covers, and the cells that changed.

``verify_record`` answers what a reviewer asks of one run directory (is it signed by a key we trust, and is
every file as it was signed?) with a status and problems that say what differs, down to the notebook cell.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dbrunbook.errors import SignatureInvalid
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, NOTEBOOK_FILE, SIGNATURE_FILE, STATEMENT_FILE
from dbrunbook.records import dsse, keys, signers, sshsig
from dbrunbook.records.digests import cell_digests, cell_title, sha256_file
from dbrunbook.records.runs import IGNORED_DIRS

__all__ = ["STATUSES", "RecordCheck", "verify_record"]

STATUSES = ("valid", "untrusted", "tampered", "unsigned", "incomplete")


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
                    if entry.name not in IGNORED_DIRS:
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
    signed = [d.get("sha256") if isinstance(d, dict) else None for d in recorded]
    cells = notebook.get("cells", [])
    changed, problems = [], []
    for index in range(max(len(signed), len(current))):
        old = signed[index] if index < len(signed) else None
        new = current[index]["sha256"] if index < len(current) else None
        if old == new:
            continue
        changed.append(index)
        if new is None:
            problems.append(f"cell {index} was removed from {NOTEBOOK_FILE}.")
        elif index >= len(signed):
            problems.append(f"cell {index} ({cell_title(cells[index])}) was added to {NOTEBOOK_FILE}.")
        else:
            problems.append(f"cell {index} ({cell_title(cells[index])}) differs from the signed record.")
    if not changed:
        problems.append(f"{NOTEBOOK_FILE} differs outside cell sources and outputs "
                        f"(metadata or execution counts).")
    return tuple(changed), problems


def _parse_statement(body: bytes) -> tuple[dict | None, str | None]:
    """The statement as a JSON object, or None and what is wrong with it."""
    try:
        statement = json.loads(body)
        if not isinstance(statement, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        return None, f"{STATEMENT_FILE} is not valid JSON ({err})."
    return statement, None


def _file_problems(run_dir: Path, statement: dict) -> tuple[tuple[int, ...], list[str]]:
    """Every file against the statement's subjects: (changed notebook cells, problems); [] when all match.

    A problem here always means tampering: a subject that is unreadable, missing or changed, or a file that
    is not a subject (added after signing).
    """
    changed: tuple[int, ...] = ()
    problems: list[str] = []
    predicate = statement.get("predicate") or {}
    expected = set()
    for subject in statement.get("subject") or []:
        if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
            problems.append(f"the statement has an unreadable subject entry: {str(subject)[:80]}")
            continue
        name = subject["name"]
        expected.add(name)
        path = run_dir / name
        try:
            digest = sha256_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            problems.append(f"{name} is listed in the statement but missing.")
            continue
        if digest != (subject.get("digest") or {}).get("sha256"):
            if name == NOTEBOOK_FILE:
                changed, cell_problems = _compare_cells(predicate.get("cells") or [], path.read_bytes())
                problems += cell_problems
            else:
                problems.append(f"{name} differs from the signed digest.")
    for extra in sorted(_files_in(run_dir) - expected - {STATEMENT_FILE, SIGNATURE_FILE, dsse.DSSE_FILE}):
        problems.append(f"{extra} is not in the signed statement (added after signing).")
    return changed, problems


def _mode_problems(predicate: dict, run_dir: Path) -> list[str]:
    """What a reviewer must know of a record run interactively (none for a papermill run)."""
    problems: list[str] = []
    if str(predicate.get("mode")).startswith("interactive-") and predicate.get("mode") != "interactive-out-of-order":
        from dbrunbook.records.cell_changes import INTERACTIVE_ARTIFACT, record_problems

        problems += record_problems(predicate, run_dir / ARTIFACTS_DIR / INTERACTIVE_ARTIFACT)
    if predicate.get("mode") == "interactive-out-of-order":
        problems.append("the notebook was run interactively with cells out of order: its outputs may not "
                        "follow from its code top to bottom.")
    return problems


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
    statement, statement_problem = _parse_statement(body)
    if not signature_path.is_file():
        return RecordCheck(run_dir, "unsigned", problems=(f"no {SIGNATURE_FILE} next to {STATEMENT_FILE}.",),
                           statement=statement)

    status, principal, problems = "valid", None, []
    try:
        principal = sshsig.verify(body, signature_path.read_bytes(), Path(allowed_signers))
    except SignatureInvalid as err:
        # A malformed signature file is an altered record as far as a reviewer is concerned.
        status = "untrusted" if getattr(err, "status", "") == "untrusted" else "tampered"
        problems.append(str(err))
    if statement is None:  # then statement_problem says why
        return RecordCheck(run_dir, "tampered", principal, (*problems, cast(str, statement_problem)))

    body_sha256 = hashlib.sha256(body).hexdigest()
    predicate = statement.get("predicate") or {}
    changed, file_problems = _file_problems(run_dir, statement)
    tampered = bool(file_problems)
    problems += file_problems
    envelope_path = run_dir / dsse.DSSE_FILE
    if envelope_path.is_file() and status in ("valid", "untrusted"):
        # The envelope must carry this very statement, signed by the key that made the SSH signature.
        signer = keys.format_public_line(sshsig.parse_signature(signature_path.read_bytes()).public_blob)
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
    if status == "valid" and principal and operator and not signers.principal_matches(principal, operator):
        status = "untrusted"
        problems.append(f"signed by '{principal}', but the statement names operator '{operator}': the key "
                        f"does not vouch for the person the record names.")
    problems += _mode_problems(predicate, run_dir)
    return RecordCheck(run_dir, status, principal, tuple(problems), changed, statement, body_sha256)
