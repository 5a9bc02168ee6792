"""Reviewed preview = applied change: the SQL about to run is byte for byte that of an approved preview record.

A protected target applies only SQL whose sha256 a valid, signed, papermill-run preview record of the same
database recorded, approved by a second person within ``approval_max_age``; any other target checks it when
an ``approved_preview`` is given.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from pathlib import Path
from typing import cast

import pandas as pd

from dbrunbook import errors, records
from dbrunbook.protocol import ARTIFACTS_DIR, SessionLike
from dbrunbook.records import signing


# --- 5. reviewed preview = applied change ------------------------------------------------------------------
def _preview_files(preview) -> dict[str, str]:
    """sha256 of each preview-SET.sql, rendered exactly as ``Session.preview`` saves it."""
    out = {}
    for name, steps in preview.steps.items():
        if steps:
            text = preview.file_text(name)
            out[f"preview-{name}.sql"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return out


def find_run(outputs_dir: Path, run_id: str) -> Path | None:
    """The record folder of run ``run_id`` under ``outputs_dir`` (where the run id says, else by search); None."""
    try:
        candidate = records.run_dir_for(outputs_dir, run_id)
        if candidate.is_dir():
            return candidate
    except ValueError:
        pass
    return next((p for p in records.find_records(outputs_dir) if p.name == run_id), None)


def require_approved_preview(session: SessionLike, preview, approved_preview: str = "", *, dry_run: bool = False
                             ) -> pd.DataFrame:
    """Guard: the SQL about to run is byte for byte the SQL of an approved (signed) preview record.

    On a protected target ``approved_preview`` (the run id of a ``preview`` record) is required; elsewhere it
    is checked when given and otherwise reported as not required. ``dry_run`` reports a refusal instead of
    raising it.

    Raises:
        PreviewNotApproved: none given on a protected target; record missing, not valid, not a succeeded
            preview, or of another database.
        PreviewMismatch: the preview's sha256 differs from the approved one.
    """
    try:
        return _approved_preview(session, preview, approved_preview)
    except (errors.PreviewNotApproved, errors.PreviewMismatch) as err:
        if not dry_run:
            raise
        print(f"dry_run=True: a real run would stop here. {err}")
        return pd.DataFrame([{"check": "approved preview", "result": f"would stop: {type(err).__name__}",
                              "detail": str(err)}])


def _approved_preview(session: SessionLike, preview, approved_preview: str) -> pd.DataFrame:
    target = session.target
    now = preview.sha256
    if not approved_preview:
        if target.protected:
            raise errors.PreviewNotApproved(
                f"Target '{target.name}' is protected: applying needs an approved preview. Run 'dbrunbook run "
                f"preview -t {target.name}', have its record reviewed, then run again with "
                f"-p approved_preview RUN_ID (the preview's run id).")
        return pd.DataFrame([{"check": "approved preview", "result": "not required",
                              "detail": f"target '{target.name}' is not protected; sha256 now {now}"}])
    run_dir, check = _approving_record(session, approved_preview)
    ident = session.identity
    approved_path = run_dir / ARTIFACTS_DIR / "preview.json"
    if not approved_path.is_file():
        raise errors.PreviewNotApproved(f"Preview record {approved_preview} has no artifacts/preview.json. "
                                        f"Run 'dbrunbook run preview -t {target.name}' again.")
    approved = json.loads(approved_path.read_text(encoding="utf-8"))
    if approved.get("sha256") != now:
        raise _mismatch(approved, preview, approved_preview, target.name)
    rows = [
        {"check": "approved preview", "result": "ok", "detail": approved_preview},
        {"check": "record signature", "result": "valid", "detail": f"signed by {check.principal}"},
        {"check": "same database", "result": "ok", "detail": f"{ident.database} (system {ident.system_identifier})"},
        {"check": "sha256 of the SQL", "result": "identical", "detail": now},
    ]
    if target.protected:
        rows += _second_person(session, approved_preview, check, now)
    return pd.DataFrame(rows)


def _approving_record(session: SessionLike, approved_preview: str) -> tuple[Path, records.RecordCheck]:
    """The record folder and verification of run ``approved_preview``, if it can approve this change at all.

    Raises:
        PreviewNotApproved: no such record, not valid, not a succeeded preview of this database, or (on a
            protected target) not run by papermill.
    """
    target = session.target
    run_dir = find_run(session.config.outputs_dir, approved_preview)
    if run_dir is None:
        raise errors.PreviewNotApproved(
            f"No record of run '{approved_preview}' under {session.config.outputs_dir}. Pass the run id of a "
            f"preview record of target '{target.name}' (see 'dbrunbook verify').")
    check = records.verify_record(run_dir, session.config.allowed_signers)
    if check.status != "valid":
        raise errors.PreviewNotApproved(
            f"Preview record {approved_preview} is {check.status}: {'; '.join(check.problems) or 'no detail'}. "
            f"Only a valid signed preview can approve a change; run 'dbrunbook run preview -t {target.name}' "
            f"again.")
    predicate = (check.statement or {}).get("predicate") or {}
    recorded_db = predicate.get("database") or {}
    ident = session.identity
    problems = []
    if predicate.get("runbook") != "preview":
        problems.append(f"it is a '{predicate.get('runbook')}' run, not a preview")
    if predicate.get("outcome") != "succeeded":
        problems.append(f"its outcome is '{predicate.get('outcome')}'")
    if (str(recorded_db.get("system_identifier")) != str(ident.system_identifier)
            or recorded_db.get("database") != ident.database):
        problems.append(f"it previewed database '{recorded_db.get('database')}' (system "
                        f"{recorded_db.get('system_identifier')}), not '{ident.database}' (system "
                        f"{ident.system_identifier})")
    if problems:
        raise errors.PreviewNotApproved(
            f"Run {approved_preview} cannot approve this change: {'; '.join(problems)}. Pass the run id of a "
            f"succeeded preview of target '{target.name}'.")
    if target.protected and predicate.get("mode") != "papermill":
        raise errors.PreviewNotApproved(
            f"Preview record {approved_preview} was run in mode '{predicate.get('mode')}': on protected target "
            f"'{target.name}' only a preview run by 'dbrunbook run preview' counts (an interactive notebook's "
            f"cells could have been edited). Run 'dbrunbook run preview -t {target.name}' and have it approved.")
    return run_dir, check


def _mismatch(approved: dict, preview, approved_preview: str, target_name: str) -> errors.PreviewMismatch:
    """The error for SQL that differs from the approved preview's: which files and revisions changed."""
    now = preview.sha256
    changed = sorted(n for n, d in {**approved.get("files", {}), **_preview_files(preview)}.items()
                     if approved.get("files", {}).get(n) != _preview_files(preview).get(n))
    revs_then = approved.get("revisions", {})
    revs_now = {k: [s.revision for s in v] for k, v in preview.steps.items()}
    err = errors.PreviewMismatch(
        f"The SQL to apply differs from approved preview {approved_preview}: sha256 {approved.get('sha256')} "
        f"approved, {now} now (changed: {', '.join(changed) or 'the set of revisions'}; revisions approved "
        f"{revs_then}, now {revs_now}). A migration file or the database changed since the review. Run "
        f"'dbrunbook run preview -t {target_name}' again and have the new SQL reviewed.",
        approved_sha256=approved.get("sha256"), sha256=now)
    return err


def _second_person(session: SessionLike, approved_preview: str, check: records.RecordCheck,
                   sql_sha256: str) -> list[dict]:
    """Four eyes: a valid approval of the preview by a trusted principal who is not the one applying it."""
    from datetime import datetime

    from dbrunbook.config import parse_duration
    from dbrunbook.safety import approvals

    config, target = session.config, session.target
    operator = records.operator_identity()
    max_age = parse_duration(target.approval_max_age, key="approval_max_age")
    now = datetime.now(UTC)
    found = approvals.approvals_of(config.outputs_dir, approved_preview, config.allowed_signers,
                                   check.statement_sha256)
    refused = []
    for approval in reversed(found):  # newest first
        if approval.status != "valid":
            refused.append(f"{approval.path.name} is {approval.status} ({'; '.join(approval.problems)})")
        elif signing.principal_matches(cast(str, approval.approver), operator):
            refused.append(f"{approval.path.name} is by '{approval.approver}', who is applying it: "
                           f"self-approval does not count")
        elif approval.sql_sha256 != sql_sha256:
            refused.append(f"{approval.path.name} approved SQL sha256 {approval.sql_sha256}, not {sql_sha256}")
        elif approval.approved_at is None or (now - approval.approved_at).total_seconds() > max_age:
            refused.append(f"{approval.path.name} is from {approval.approved_at}, older than approval_max_age "
                           f"{target.approval_max_age}")
        else:
            previewed_by = ((check.statement or {}).get("predicate") or {}).get("operator")
            return [
                {"check": "approved by a second person", "result": "ok",
                 "detail": f"previewed by {previewed_by}, approved by {approval.approver} at "
                           f"{approval.approved_at:%Y-%m-%d %H:%M:%SZ}, applied by {operator}"
                           + (f" (note: {approval.note})" if approval.note else "")},
            ]
    raise errors.PreviewNotApproved(
        f"Preview record {approved_preview} has no approval that counts on protected target '{target.name}'"
        + (f": {'; '.join(refused)}" if refused else ": nobody has approved it")
        + f". Someone other than '{operator}' runs 'dbrunbook approve {approved_preview}' with their own key "
          f"(within {target.approval_max_age} of this run).")
