"""The signed roll-up record of a fleet, and its check against the child records it names.

A roll-up lives in ``outputs/fleets/<fleet-id>/`` (outside the dated run folders, so it is never taken for
a run): ``fleet.json`` is an in-toto Statement v1 whose subjects are the child records' ``statement.json``
(path relative to outputs/, sha256) and whose predicate holds the group, the waves, the parameters and, per
target, run id, statement digest, outcome and heads before → after; ``fleet.json.sig`` is its SSHSIG, made
with the operator's key exactly like a run record's. ``verify_rollup`` finds a child record that is
missing, edited (its statement no longer has the digest the roll-up signed), or no longer valid itself.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dbrunbook import records
from dbrunbook.config import Config
from dbrunbook.errors import SignatureInvalid
from dbrunbook.records import signing, trust

if TYPE_CHECKING:
    from dbrunbook.execution.fleet import FleetResult

__all__ = ["FLEETS_DIR", "ROLLUP_FILE", "RollupCheck", "find_rollups", "verify_rollup", "write_rollup"]

FLEETS_DIR = "fleets"
ROLLUP_FILE = "fleet.json"
ROLLUP_SIGNATURE = "fleet.json.sig"
PREDICATE_TYPE = "https://dbrunbook.dev/fleet-record/v1"


def write_rollup(config: Config, result: FleetResult, *, parameters: dict, waves: str, parallel: int,
                 max_failures: str, started_at: datetime) -> Path:
    """Sign and write the roll-up of ``result``; returns its folder.

    Raises:
        SigningKeyError: the operator's key cannot sign.
    """
    from dbrunbook.execution.fleet_groups import describe

    outputs = config.outputs_dir.resolve()
    folder = outputs / FLEETS_DIR / result.fleet_id
    folder.mkdir(parents=True, exist_ok=False)
    subject, targets = [], []
    for outcome in result.outcomes:
        entry = outcome.as_dict()
        if outcome.record_dir and outcome.statement_sha256:
            statement_path = Path(outcome.record_dir).resolve() / records.STATEMENT_FILE
            entry["record"] = str(statement_path.parent.relative_to(outputs))
            subject.append({"name": str(statement_path.relative_to(outputs)),
                            "digest": {"sha256": outcome.statement_sha256}})
        entry.pop("record_dir")
        targets.append(entry)
    group = config.groups[result.group]
    statement = {
        "_type": records.STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "fleet_id": result.fleet_id,
            "runbook": result.runbook,
            "group": result.group,
            "group_kind": describe(group),
            "parameters": parameters,
            "waves": waves,
            "wave_sizes": [len(w) for w in result.waves],
            "parallel": parallel,
            "max_failures": max_failures,
            "operator": records.operator_identity(),
            "host": socket.gethostname(),
            "started_at": started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "stopped": result.stopped,
            "exit_status": result.exit_status,
            "tally": {name: result.count(name) for name in sorted({o.outcome for o in result.outcomes})},
            "targets": targets,
        },
    }
    body = records.canonical_json(statement)
    key, _principal = trust.require_signing_key(config)  # never creates or trusts a key by itself
    signature = signing.sign(body, key)
    (folder / ROLLUP_FILE).write_bytes(body)
    (folder / ROLLUP_SIGNATURE).write_bytes(signature)
    return folder


@dataclass(frozen=True)
class RollupCheck:
    """What ``verify_rollup`` found: status "valid", "untrusted", "tampered" or "unsigned", and why."""

    record_dir: Path
    status: str
    principal: str | None = None
    problems: tuple[str, ...] = ()
    predicate: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "valid"

    @property
    def fleet_id(self) -> str:
        return self.record_dir.name


def find_rollups(outputs_dir: Path) -> list[Path]:
    """The roll-up folders under ``outputs_dir/fleets/``, oldest first."""
    return sorted((p.parent for p in (Path(outputs_dir) / FLEETS_DIR).glob(f"*/{ROLLUP_FILE}")),
                  key=lambda p: p.name)


def is_rollup_dir(path: Path) -> bool:
    return (Path(path) / ROLLUP_FILE).is_file()


def verify_rollup(record_dir: Path, allowed_signers: Path, outputs_dir: Path | None = None) -> RollupCheck:
    """Check a roll-up's signature, then every child record it names: present, unchanged, itself valid."""
    record_dir = Path(record_dir)
    outputs = Path(outputs_dir) if outputs_dir else record_dir.parent.parent
    body_path, sig_path = record_dir / ROLLUP_FILE, record_dir / ROLLUP_SIGNATURE
    if not body_path.is_file() or not sig_path.is_file():
        return RollupCheck(record_dir, "unsigned", problems=(f"no {ROLLUP_FILE} and {ROLLUP_SIGNATURE} in "
                                                              f"{record_dir}.",))
    body = body_path.read_bytes()
    status, principal, problems = "valid", None, []
    try:
        principal = signing.verify(body, sig_path.read_bytes(), Path(allowed_signers))
    except SignatureInvalid as err:
        status = "untrusted" if getattr(err, "status", "") == "untrusted" else "tampered"
        problems.append(str(err))
    try:
        predicate = json.loads(body)["predicate"]
        targets = list(predicate["targets"])
    except (ValueError, KeyError, TypeError) as err:
        return RollupCheck(record_dir, "tampered", principal, (*problems, f"{ROLLUP_FILE} is unreadable: {err}"))
    for entry in targets:
        if not entry.get("record"):
            continue
        child = outputs / entry["record"]
        statement = child / records.STATEMENT_FILE
        if not statement.is_file():
            status = "tampered"
            problems.append(f"target {entry['target']}: child record {entry['run_id']} is missing "
                            f"({entry['record']}).")
            continue
        if records.sha256_file(statement) != entry.get("statement_sha256"):
            status = "tampered"
            problems.append(f"target {entry['target']}: the statement of run {entry['run_id']} differs from "
                            f"the one this roll-up signed.")
            continue
        check = records.verify_record(child, allowed_signers)
        if not check.ok:
            status = "tampered" if status == "valid" else status
            problems.append(f"target {entry['target']}: run {entry['run_id']} is {check.status}: "
                            f"{'; '.join(check.problems)}")
            continue
        recorded = (check.statement or {}).get("predicate", {}).get("outcome")
        if entry.get("outcome") not in (recorded, "skipped"):
            status = "tampered"
            problems.append(f"target {entry['target']}: the roll-up says {entry.get('outcome')}, run "
                            f"{entry['run_id']} says {recorded}.")
    return RollupCheck(record_dir, status, principal, tuple(problems), predicate)


def verify_rollups(paths: list[Path], allowed_signers: Path) -> list[RollupCheck]:
    """Every roll-up in ``paths`` (roll-up folders, or outputs folders holding ``fleets/``)."""
    found: list[Path] = []
    for path in paths:
        found += [path] if is_rollup_dir(path) else find_rollups(path)
    return [verify_rollup(p, allowed_signers, p.parent.parent) for p in found]
