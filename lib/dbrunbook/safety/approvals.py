"""Four eyes: a signed approval of a preview record, by someone other than the person who applies it.

A preview record proves which SQL a run would execute; it does not prove anyone other than its author read
it. ``approve`` writes that second fact: an in-toto Statement whose subject is the approved record's
``statement.json`` (by sha256) and whose predicate says who approved it, when, with which note, and the
sha256 of the SQL. It is signed with the approver's own key, so its principal comes from the trust file, not
from an environment variable. Approvals live beside the records, in ``outputs/approvals/<run id>/``, one
file pair per approval (``<when>-<who>.json`` and ``.json.sig``; never rewritten).

``safety.require_approved_preview`` accepts, on a protected target, only an approval that is validly signed
by a trusted principal other than the operator applying the change, of a papermill-mode preview (an
interactive record does not count), younger than the target's ``approval_max_age``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dbrunbook import records
from dbrunbook.errors import ApprovalInvalid, SignatureInvalid
from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.records import signing

__all__ = ["APPROVALS_DIR", "PREDICATE_TYPE", "Approval", "approvals_of", "approve"]

APPROVALS_DIR = "approvals"
PREDICATE_TYPE = "https://dbrunbook.dev/approval/v1"
APPROVABLE = ("preview",)


@dataclass(frozen=True)
class Approval:
    """One approval file as checked: who signed it (from the trust file), what and when it approves."""

    path: Path
    status: str                 # valid | untrusted | tampered
    approver: str | None        # principal the trust file gives the signing key
    approved_run_id: str | None
    statement_sha256: str | None
    sql_sha256: str | None
    approved_at: datetime | None
    note: str = ""
    problems: tuple[str, ...] = ()

    def as_row(self) -> dict:
        return {"approved_run_id": self.approved_run_id, "approver": self.approver, "status": self.status,
                "approved_at": self.approved_at.isoformat() if self.approved_at else None, "note": self.note}


def _folder(outputs_dir: Path, run_id: str) -> Path:
    return Path(outputs_dir) / APPROVALS_DIR / run_id


def approve(config, run_id: str, *, note: str = "", key_path: Path | None = None,
            now: datetime | None = None) -> Path:
    """Sign an approval of the preview record ``run_id`` with the approver's key; returns the file written.

    Args:
        key_path: the approver's key; default the operator key of this machine (``keys_dir``).

    Raises:
        ApprovalInvalid: no such record, or it is not a valid, succeeded, papermill-mode preview; or the key
            is not trusted by ``allowed_signers``.
    """
    from dbrunbook.records import trust
    from dbrunbook.safety.preview_guard import find_run

    run_dir = find_run(config.outputs_dir, run_id)
    if run_dir is None:
        raise ApprovalInvalid(f"No record of run '{run_id}' under {config.outputs_dir}; pass the run id of a "
                              f"preview record (see 'dbrunbook verify').")
    check = records.verify_record(run_dir, config.allowed_signers)
    predicate = (check.statement or {}).get("predicate") or {}
    problems = []
    if check.status != "valid":
        problems.append(f"the record is {check.status} ({'; '.join(check.problems) or 'no detail'})")
    if predicate.get("runbook") not in APPROVABLE:
        problems.append(f"it is a '{predicate.get('runbook')}' run, not a preview")
    if predicate.get("outcome") != "succeeded":
        problems.append(f"its outcome is '{predicate.get('outcome')}'")
    if predicate.get("mode") != "papermill":
        problems.append(f"it was run in mode '{predicate.get('mode')}' (interactive records do not count: "
                        f"their cells could have been edited)")
    preview_json = run_dir / ARTIFACTS_DIR / "preview.json"
    sql_sha256 = None
    if preview_json.is_file():
        sql_sha256 = json.loads(preview_json.read_text(encoding="utf-8")).get("sha256")
    elif not problems:
        problems.append("it has no artifacts/preview.json")
    if problems:
        raise ApprovalInvalid(f"Run {run_id} cannot be approved: {'; '.join(problems)}. Approve a succeeded "
                              f"preview made with 'dbrunbook run preview'.")
    key = Path(key_path) if key_path else trust.operator_key_path(config)
    if not key.is_file():
        raise ApprovalInvalid(f"No signing key at {key}: an approval is signed by the approver. Run "
                              f"'dbrunbook keygen' and have its public key added to {config.allowed_signers}.")
    approver = signing.trusted_principal(signing.public_key_line(key), config.allowed_signers)
    if approver is None:
        raise ApprovalInvalid(f"Key {key} is not trusted by {config.allowed_signers}: nobody could tell who "
                              f"approved. Have its public key added there first.")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    statement = {
        "_type": records.STATEMENT_TYPE,
        "subject": [{"name": f"{run_id}/statement.json", "digest": {"sha256": check.statement_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"approved_run_id": run_id, "runbook": predicate.get("runbook"), "approver": approver,
                      "approved_at": moment.isoformat(), "note": note, "sql_sha256": sql_sha256,
                      "previewed_by": predicate.get("operator"), "database": predicate.get("database")},
    }
    body = records.canonical_json(statement)
    signature = signing.sign(body, key)
    folder = _folder(config.outputs_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{moment:%Y%m%dT%H%M%S%fZ}-{re.sub(r'[^A-Za-z0-9_.@-]+', '_', approver)}.json"
    with path.open("xb") as handle:
        handle.write(body)
    with path.with_name(path.name + ".sig").open("xb") as handle:
        handle.write(signature)
    return path


def _moment(value) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _check(path: Path, allowed_signers: Path, run_id: str, statement_sha256: str | None) -> Approval:
    body = path.read_bytes()
    try:
        statement = json.loads(body)
        predicate = statement["predicate"]
        subject = statement["subject"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return Approval(path, "tampered", None, None, None, None, None, problems=(f"{path.name} is unreadable.",))
    status, approver, problems = "valid", None, []
    try:
        approver = signing.verify(body, path.with_name(path.name + ".sig").read_bytes(), allowed_signers)
    except FileNotFoundError:
        status = "tampered"
        problems.append(f"{path.name} has no signature")
    except SignatureInvalid as err:
        status = "untrusted" if getattr(err, "status", "") == "untrusted" else "tampered"
        problems.append(str(err))
    if statement.get("predicateType") != PREDICATE_TYPE or predicate.get("approved_run_id") != run_id:
        status = "tampered"
        problems.append(f"{path.name} does not approve run {run_id}")
    if statement_sha256 and (subject.get("digest") or {}).get("sha256") != statement_sha256:
        status = "tampered"
        problems.append(f"{path.name} approves another version of {run_id}'s statement")
    return Approval(path, status, approver, predicate.get("approved_run_id"),
                    (subject.get("digest") or {}).get("sha256"), predicate.get("sql_sha256"),
                    _moment(predicate.get("approved_at")), str(predicate.get("note") or ""), tuple(problems))


def approvals_of(outputs_dir: Path, run_id: str, allowed_signers: Path,
                 statement_sha256: str | None = None) -> list[Approval]:
    """Every approval written for ``run_id``, each checked (signature, trust, subject), oldest first."""
    folder = _folder(outputs_dir, run_id)
    if not folder.is_dir():
        return []
    return [_check(p, Path(allowed_signers), run_id, statement_sha256) for p in sorted(folder.glob("*.json"))]
