"""The start of a run: its parameters checked, its run directory and intent, the database state before it.

Everything a run needs to end with a signed record is checked before anything exists (target and secrets,
revision, signing key), so that a usage error is exit status 2 with nothing changed. Once the run directory
and its intent are written, whatever happens next is a fact of the run: ``StartedRun`` holds what sealing needs.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dbrunbook import protocol, records
from dbrunbook.chain import migrations
from dbrunbook.config import Config
from dbrunbook.errors import (
    DatabaseUnavailable,
    MissingSecret,
    ParameterError,
    RevisionNotFound,
    RunDirectoryInvalid,
)
from dbrunbook.execution import unfinished
from dbrunbook.execution.ledger_rows import open_ledger_row
from dbrunbook.execution.parameters import RunbookInfo, mask_secrets, validate_parameters
from dbrunbook.postgres import db
from dbrunbook.records import signing, trust


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_target(config: Config, info: RunbookInfo, target: str | None,
                   parameters: dict[str, Any] | None) -> dict[str, object]:
    raw = dict(parameters or {})
    if target is not None:
        if "target" in raw and raw["target"] != target:
            raise ParameterError(
                f"Target given twice with different values: -t {target} and -p target {raw['target']}. "
                f"Pass it once."
            )
        raw["target"] = target
    raw.setdefault("target", config.default_target)
    if info.parameter("target") is None:
        raise ParameterError(
            f"Runbook '{info.name}' declares no 'target' parameter; add the line "
            f"target: str = \"local\"  # database target from dbrunbook.toml to its parameters cell."
        )
    values = validate_parameters(info, raw)
    selected = config.target(str(values["target"]))
    # A missing secret is a usage error: refuse before a run directory exists rather than record a non-run.
    if selected.url_env and not os.environ.get(selected.url_env):
        raise MissingSecret(selected.name, selected.url_env, str(config.path))
    if selected.url_env:  # a URL that cannot be parsed is a usage error too (InvalidUrl masks its password)
        db.check_url(os.environ[selected.url_env])
    # Before any revision script is read: a project's settings module may read its URL variable on import.
    # The kernel inherits this environment (issue 8).
    from dbrunbook.chain.drivers import export_environment

    export_environment(config, selected)
    _check_revision(config, values)
    # Every run ends signed: without a key trusted as this operator, refuse before anything exists.
    trust.require_signing_key(config)
    return values


_SYMBOLIC_REVISION = re.compile(r"^(heads?|base|[+-]\d+|.+@[+-]?\w+)$")


def _check_revision(config: Config, values: dict[str, object]) -> None:
    """Refuse an unknown revision id before anything runs: it is bad input (exit 2), not a failed step.

    Symbolic and relative revisions need the database to resolve; the runbook checks those.
    """
    revision = str(values.get("revision") or "").strip()
    if not revision or _SYMBOLIC_REVISION.match(revision):
        return
    sets = config.select_sets(str(values.get("migration_set") or "all"))
    knows = []
    for mset in sets:
        try:
            migrations.resolve(mset, revision)
            knows.append(mset.name)
        except RevisionNotFound:
            continue
    if not knows:
        names = ", ".join(m.name for m in sets)
        raise RevisionNotFound(revision, names, "no script of it defines that id (check for a typo, "
                               "or pull the migration files that define it)")
    if len(knows) < len(sets):
        raise ParameterError(
            f"Revision '{revision}' belongs to migration set '{', '.join(knows)}' only; pass "
            f"-p migration_set {knows[0]} so the other sets are not asked for it."
        )


def new_run_dir(config: Config, runbook: str, target: str, started: datetime,
                run_id: str | None = None) -> tuple[str, Path]:
    """Create the run directory of a new run id (or of ``run_id``); an existing directory is never reused."""
    tries = 20 if run_id is None else 1
    for _ in range(tries):
        candidate = run_id or records.new_run_id(runbook, target, started)
        run_dir = records.run_dir_for(config.outputs_dir, candidate, started)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir(exist_ok=False)
        except FileExistsError:
            continue
        (run_dir / protocol.ARTIFACTS_DIR).mkdir()
        return candidate, run_dir
    raise RunDirectoryInvalid(f"Could not create a new run directory under {config.outputs_dir}: {tries} run "
                              f"id(s) were taken. Check the clock and records.new_run_id.")


def database_state(config: Config, target_name: str, run_id: str) -> dict:
    """Identity and Alembic heads of the target, over a connection of the launcher's own.

    Never raises: a database that is down is a fact of the run, recorded as ``database: None`` with the
    reason (passwords masked).
    """
    state: dict[str, Any] = {"database": None, "heads": {}, "errors": []}
    try:
        _target, engine = db.connect_target(config, target_name, run_id=run_id)
    except DatabaseUnavailable as err:
        state["errors"].append(mask_secrets(str(err)))
        return state
    except Exception as err:  # anything else on the way to a connection is recorded, not raised
        state["errors"].append(mask_secrets(f"{type(err).__name__}: {err}"))
        return state
    try:
        state["database"] = db.identity(engine).as_dict()
        for mset in config.migration_sets.values():
            try:
                state["heads"][mset.name] = list(migrations.current(mset, engine))
            except Exception as err:
                state["heads"][mset.name] = None
                problem = f"migration set '{mset.name}': {type(err).__name__}: {err}"
                state["errors"].append(mask_secrets(problem))
    except Exception as err:
        state["errors"].append(mask_secrets(f"{type(err).__name__}: {err}"))
    finally:
        engine.dispose()
    return state


def unread_state() -> dict:
    """The state of a run refused before it could read the database under the lock: nothing claimed."""
    return {"database": None, "heads": {}, "errors": [], "read": False}


@dataclass(frozen=True)
class StartedRun:
    """What exists once a run has begun: enough to seal it whatever happens next."""

    config: Config
    info: RunbookInfo
    run_id: str
    run_dir: Path
    target: str
    values: dict
    started_at: str
    runbook_sha256: str
    pre_state: dict
    ledger: bool


def begin_run(config: Config, info: RunbookInfo, values: dict, mode: str,
              progress: Callable[[str], None], *, started: datetime | None = None, run_id: str | None = None,
              read_state: bool = True) -> StartedRun:
    """Create the run directory, write the intent, read the pre-state, open the ledger row.

    ``read_state`` False (a run the launcher refused, e.g. at the deployer lock) reads nothing of the
    database: its record claims no heads it did not see under the lock.
    """
    started = started or protocol.now()
    runbook_sha256 = records.sha256_file(info.path)
    target = str(values["target"])
    run_id, run_dir = new_run_dir(config, info.name, target, started, run_id)
    intent = {
        "run_id": run_id,
        "runbook": info.name,
        "runbook_path": str(info.path),
        "runbook_sha256": runbook_sha256,
        "target": target,
        "parameters": values,
        "operator": records.operator_identity(),
        "started_at": started.isoformat(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "mode": mode,
    }
    # Written before anything touches the database: a run killed at any later point leaves this trace.
    write_json(run_dir / protocol.INTENT_FILE, intent)
    if mode == "papermill":  # until its record is signed, the next dbrunbook command can say it is unfinished
        unfinished.register(config, run_id=run_id, run_dir=run_dir, runbook=info.name, target=target,
                            started_at=started.isoformat())
    if read_state:
        progress(f"run {run_id}: reading the state of target '{target}'")
        pre_state = database_state(config, target, run_id)
    else:
        pre_state = unread_state()
    ledger = bool(info.changes_database and not values.get("dry_run", False) and pre_state["database"])
    if ledger:
        ledger = open_ledger_row(config, target, run_id, info, values, started, pre_state)
    intent["pre_state"] = pre_state
    intent["ledger"] = ledger
    write_json(run_dir / protocol.INTENT_FILE, intent)
    return StartedRun(config, info, run_id, run_dir, target, values, started.isoformat(), runbook_sha256,
                      pre_state, ledger)


def papermill_parameters(run: StartedRun) -> dict:
    return {**run.values, "run_id": run.run_id, "record_dir": str(run.run_dir)}


def usable_signing_key(config: Config) -> Path:
    """The signing key, proven to sign before anything runs (a key found unusable after a change is too late).

    Raises:
        SigningKeyError: missing (when the key policy does not create one), unreadable, or not a usable key.
        RecordNotWritable: the key folder cannot be written.
    """
    try:
        key, _principal = trust.require_signing_key(config)  # never creates or trusts a key by itself
    except OSError as err:
        from dbrunbook.errors import RecordNotWritable

        raise RecordNotWritable(config.keys_dir, f"(the signing key folder) cannot be written: "
                                f"{err.strerror or err}", "Make it a writable folder (state_dir in "
                                "dbrunbook.toml) or run 'dbrunbook keygen' there first.") from err
    signing.sign(b"dbrunbook: can this key sign?", key)
    return key
