"""The launcher: read a runbook's parameters, run it with papermill, classify the outcome, seal the record.

The launcher owns what must be true whatever the notebook did: the run id and its directory (never reused),
the deployer lock of a changing run (held from the heads "before" to the signature), the database identity
and Alembic heads before and after (read over the launcher's own connection, not the notebook's), the
outcome, the signed statement and the ledger row. A run that fails, stops at a guard, dies
or is interrupted still ends with a signed record, because the record of a failure is the one people need.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import ENV_CONFIG, Config, load_config
from dbrunbook.errors import (
    GUARD_ENAMES,
    DatabaseUnavailable,
    DeployerLockHeld,
    MissingSecret,
    ParameterError,
    RevisionNotFound,
    RunDirectoryInvalid,
)
from dbrunbook.execution import protocol, steplog, unfinished
from dbrunbook.execution.kernel import (
    KERNEL_STARTUP_ARGUMENTS,
    ipc_kernel_manager,
    kernel_for_this_interpreter,
)
from dbrunbook.execution.parameters import (
    Parameter,
    RunbookInfo,
    find_runbook,
    list_runbooks,
    mask_secrets,
    parse_parameters,
    read_notebook,
    read_parameters,
    validate_parameters,
)
from dbrunbook.postgres import db
from dbrunbook.records import archive, signing, trust
from dbrunbook.safety import locking

log = logging.getLogger(__name__)

# Parameters and kernels live in their own modules; re-exported because the launcher is where people look.
__all__ = [
    "Parameter",
    "RunDirectoryInvalid",
    "RunResult",
    "RunbookInfo",
    "find_runbook",
    "kernel_for_this_interpreter",
    "list_runbooks",
    "mask_secrets",
    "parse_parameters",
    "prepare_runbook",
    "read_parameters",
    "run_runbook",
    "seal",
    "validate_parameters",
]

SUCCEEDED, FAILED, STOPPED_AT_GUARD, INCOMPLETE = "succeeded", "failed", "stopped-at-guard", "incomplete"
#: The launcher died (kill -9, a crash, the machine) before sealing; 'dbrunbook seal' records that later.
INTERRUPTED = "interrupted"
EXIT_STATUS = {SUCCEEDED: 0, FAILED: 1, STOPPED_AT_GUARD: 3, INCOMPLETE: 1, INTERRUPTED: 1}

_STEP_HEADING = re.compile(r"^##\s+\d+\.\s*.*$", re.MULTILINE)


# --- results ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    """What a run came to; the same facts are in the signed statement of ``record_dir``."""

    run_id: str
    runbook: str
    target: str
    outcome: str
    exit_status: int
    record_dir: Path
    heads_before: dict = field(default_factory=dict)
    heads_after: dict = field(default_factory=dict)
    failing_step: dict | None = None
    signature: str = ""
    sealed: bool = True
    seal_error: str | None = None  # why the record could not be signed; 'dbrunbook seal' finishes it

    def as_json(self) -> dict:
        return {
            "sealed": self.sealed,
            "seal_error": self.seal_error,
            "run_id": self.run_id,
            "runbook": self.runbook,
            "target": self.target,
            "outcome": self.outcome,
            "exit_status": self.exit_status,
            "record_dir": str(self.record_dir),
            "heads_before": self.heads_before,
            "heads_after": self.heads_after,
            "failing_step": self.failing_step,
            "signature": self.signature,
        }

    def _repr_html_(self) -> str:
        rows = [(k, v) for k, v in self.as_json().items() if k != "signature"]
        return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


# --- helpers of a run -------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)



def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _resolve_target(config: Config, info: RunbookInfo, target: str | None,
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


def _new_run_dir(config: Config, runbook: str, target: str, started: datetime,
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


def _database_state(config: Config, target_name: str, run_id: str) -> dict:
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


def _UNREAD_STATE() -> dict:
    """The state of a run refused before it could read the database under the lock: nothing claimed."""
    return {"database": None, "heads": {}, "errors": [], "read": False}


@contextlib.contextmanager
def _config_for_kernel(config: Config) -> Iterator[None]:
    """Point the kernel's ``load_config()`` at the launcher's dbrunbook.toml (the kernel inherits the env)."""
    before = os.environ.get(ENV_CONFIG)
    os.environ[ENV_CONFIG] = str(config.path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_CONFIG, None)
        else:
            os.environ[ENV_CONFIG] = before


class _PapermillInspectionFilter(logging.Filter):
    """Drop papermill's own parameter inspection warnings: it cannot parse typed lines whose help has
    parentheses, and calls every parameter 'unknown' then, while ``validate_parameters`` has already
    checked each name and value against the notebook."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Passed unknown parameter", "Unable to parse line"))


@contextlib.contextmanager
def _quiet_papermill_inspection() -> Iterator[None]:
    loggers = [logging.getLogger("papermill"), logging.getLogger("papermill.translators")]
    quiet = _PapermillInspectionFilter()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while papermill runs, so the run is sealed before the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _text_of(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _has_sentinel(nb: nbformat.NotebookNode) -> bool:
    cells = _code_cells(nb)
    return bool(cells) and any(protocol.SENTINEL in _text_of(o) for o in cells[-1][1].get("outputs", []))


def _step_heading(nb: nbformat.NotebookNode | None, cell_index: int | None) -> str | None:
    """The nearest ``## N. ...`` markdown heading at or before a cell: the step an operator reads."""
    if nb is None or cell_index is None:
        return None
    for cell in reversed(nb.cells[: cell_index + 1]):
        if cell.cell_type == "markdown":
            found = _STEP_HEADING.findall(cell.source)
            if found:
                return found[-1].strip()
    return None


def _steps(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Code cell index -> the step heading it is the first code cell of (what a progress line shows)."""
    steps, current = {}, None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found = _STEP_HEADING.findall(cell.source) or re.findall(r"^##\s+.*$", cell.source, re.MULTILINE)
            if found:
                current = found[-1].strip().lstrip("#").strip()
        elif current is not None:
            steps[index] = current
            current = None
    return steps


# When the engine writes the whole notebook. papermill does after every cell start and end (cells x size);
# this one at the start, when a cell has run SAVE_AFTER seconds and then every SAVE_EVERY seconds while it
# runs (so a watcher of the file, and a killed run, see the step that is running), when a cell fails, when
# a cell printed SAVE_OUTPUT_BYTES or more (a full disk then stops the run at the step that filled it, before
# any later step changes the database), and at the end. Each cell's start and end also go to the step log,
# which sealing folds into the record.
SAVE_AFTER = 2.0
SAVE_EVERY = 30.0
SAVE_OUTPUT_BYTES = 256 * 1024


def _output_bytes(cell: nbformat.NotebookNode) -> int:
    """Roughly how much a cell's outputs add to the notebook file (text and data, as stored)."""
    total = 0
    for output in cell.get("outputs", []):
        for value in [output.get("text", ""), *output.get("data", {}).values(), *output.get("traceback", [])]:
            total += sum(map(len, value)) if isinstance(value, list) else len(str(value))
    return total


def _progress_engine(progress: Callable[[str], None], seen: dict | None = None) -> str:
    """Register a papermill engine that reports each step as it starts and ends; returns its name.

    papermill's own progress bar is a tqdm over cells, which tells an operator nothing about which step of
    the procedure is running; this one prints the step's heading and how long it took, one plain line each
    (readable in a terminal, in cron mail and in Airflow logs alike). It also saves the notebook far less
    often than papermill (see ``SAVE_AFTER``) and keeps the step log (:mod:`dbrunbook.execution.steplog`).
    """
    import asyncio
    import time

    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger as papermill_logger
    from papermill.utils import merge_kwargs, remove_args

    async def save_while_running(nb_man) -> None:
        await asyncio.sleep(SAVE_AFTER)
        while True:
            nb_man.save()
            await asyncio.sleep(SAVE_EVERY)

    class SavingClient(PapermillNotebookClient):
        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            if cell.get("cell_type") != "code":
                return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            # In the client's own event loop: the save never races nbclient's updates of the notebook.
            timer = asyncio.ensure_future(save_while_running(self.nb_man))
            try:
                return await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            finally:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer

        execute_cell = run_sync(async_execute_cell)  # nbclient binds the base class's coroutine otherwise

    from dbrunbook.execution.progress import RetryLines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            if seen is not None:  # the notebook in memory: what is left when its file could not be written
                seen["nb"] = nb_man.nb
            steps = _steps(nb_man.nb)
            total = len(steps)
            order = {index: n for n, index in enumerate(sorted(steps), 1)}
            started: dict[int, float] = {}
            cell_start, cell_complete, save = nb_man.cell_start, nb_man.cell_complete, nb_man.save
            log = steplog.StepLog(steplog.path_for(Path(nb_man.output_path).parent)) \
                if nb_man.output_path else None
            quiet = [False]

            def quiet_save(**kw):
                if not quiet[0]:
                    save(**kw)

            def without_save(fn, *args, **kw):
                quiet[0] = True
                try:
                    return fn(*args, **kw)
                finally:
                    quiet[0] = False

            retries, autosave_cell = RetryLines(progress), nb_man.autosave_cell

            def on_message():  # papermill calls this on every message of the running cell
                if retries.cell_index is not None:
                    retries.update(nb_man.nb.cells[retries.cell_index])
                return autosave_cell()

            def on_start(cell, cell_index=None, **kw):
                retries.start(cell_index)
                if cell_index in steps:
                    started[cell_index] = time.monotonic()
                    progress(f"  [{order[cell_index]}/{total}] {steps[cell_index]} ...")
                if log is not None and cell.get("cell_type") == "code":
                    log.start(cell_index)
                return without_save(cell_start, cell, cell_index, **kw)

            def on_complete(cell, cell_index=None, **kw):
                # papermill calls this from a `finally`: a dead kernel or a timeout is in flight here.
                failed = sys.exc_info()[1] is not None or any(
                    o.get("output_type") == "error" for o in cell.get("outputs", []))
                if cell_index in started:
                    seconds = time.monotonic() - started.pop(cell_index)
                    progress(f"  [{order[cell_index]}/{total}] {'FAILED' if failed else 'done'} in {seconds:.1f}s")
                if log is not None and cell.get("cell_type") == "code":
                    log.end(cell_index, failed=failed)
                if failed or _output_bytes(cell) >= SAVE_OUTPUT_BYTES:
                    return cell_complete(cell, cell_index=cell_index, **kw)
                return without_save(cell_complete, cell, cell_index=cell_index, **kw)

            nb_man.cell_start, nb_man.cell_complete, nb_man.save = on_start, on_complete, quiet_save
            nb_man.autosave_cell = on_message
            # NBClientEngine's own body, with the client that saves on a timer.
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(
                safe_kwargs, timeout=execution_timeout or kwargs.get("timeout"),
                startup_timeout=start_timeout, kernel_name=kernel_name, log=papermill_logger,
                log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file)
            final_kwargs["extra_arguments"] = [*final_kwargs.get("extra_arguments", []),
                                               *KERNEL_STARTUP_ARGUMENTS]
            try:
                return SavingClient(nb_man, **final_kwargs).execute()
            finally:
                if log is not None:
                    log.close()

    name = f"dbrunbook-progress-{uuid.uuid4().hex[:8]}"
    papermill_engines.register(name, ProgressEngine)
    return name


def _last_started_cell(nb: nbformat.NotebookNode | None) -> int | None:
    """The last code cell papermill started: where a dead kernel or a timeout stopped the run."""
    if nb is None:
        return None
    started = [i for i, c in _code_cells(nb) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _load_output(path: Path) -> nbformat.NotebookNode | None:
    """The executed notebook as last saved, with the step log folded in (the cell a kill stopped shows)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception:  # missing or half-written: the classification says what it can without it
        return None
    steplog.fold(nb, steplog.read(steplog.path_for(path.parent)))
    return nb


def _classify(error: BaseException | None, nb: nbformat.NotebookNode | None) -> tuple[str, dict | None]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        outcome = STOPPED_AT_GUARD if error.ename in GUARD_ENAMES else FAILED
        return outcome, {"cell": error.cell_index, "heading": _step_heading(nb, error.cell_index),
                         "ename": error.ename, "evalue": mask_secrets(str(error.evalue))}
    if error is not None:
        cell = _last_started_cell(nb)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            ename, evalue = type(error).__name__, "the launcher was interrupted or terminated"
        else:
            lines = str(error).strip().splitlines()
            ename, evalue = type(error).__name__, mask_secrets(lines[0] if lines else "")
        return FAILED, {"cell": cell, "heading": _step_heading(nb, cell), "ename": ename, "evalue": evalue}
    if nb is None or not _has_sentinel(nb):
        cells = _code_cells(nb) if nb is not None else []
        cell = cells[-1][0] if cells else None
        return INCOMPLETE, {"cell": cell, "heading": _step_heading(nb, cell), "ename": None,
                            "evalue": f"the last code cell did not print '{protocol.SENTINEL}'"}
    return SUCCEEDED, None


def _classify_outputs(nb: nbformat.NotebookNode) -> tuple[str, dict | None]:
    """Outcome of an interactively executed notebook, from what its cells show."""
    for index, cell in _code_cells(nb):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                ename = output.get("ename", "")
                outcome = STOPPED_AT_GUARD if ename in GUARD_ENAMES else FAILED
                return outcome, {"cell": index, "heading": _step_heading(nb, index), "ename": ename,
                                 "evalue": mask_secrets(str(output.get("evalue", "")))}
    return _classify(None, nb)


# --- running ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Started:
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


def _begin(config: Config, info: RunbookInfo, values: dict, mode: str,
           progress: Callable[[str], None], *, started: datetime | None = None, run_id: str | None = None,
           read_state: bool = True) -> _Started:
    """Create the run directory, write the intent, read the pre-state, open the ledger row.

    ``read_state`` False (a run the launcher refused, e.g. at the deployer lock) reads nothing of the
    database: its record claims no heads it did not see under the lock.
    """
    started = started or _now()
    runbook_sha256 = records.sha256_file(info.path)
    target = str(values["target"])
    run_id, run_dir = _new_run_dir(config, info.name, target, started, run_id)
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
    _write_json(run_dir / protocol.INTENT_FILE, intent)
    if mode == "papermill":  # until its record is signed, the next dbrunbook command can say it is unfinished
        unfinished.register(config, run_id=run_id, run_dir=run_dir, runbook=info.name, target=target,
                            started_at=started.isoformat())
    if read_state:
        progress(f"run {run_id}: reading the state of target '{target}'")
        pre_state = _database_state(config, target, run_id)
    else:
        pre_state = _UNREAD_STATE()
    ledger = bool(info.changes_database and not values.get("dry_run", False) and pre_state["database"])
    if ledger:
        ledger = _ledger_start(config, target, run_id, info, values, started, pre_state)
    intent["pre_state"] = pre_state
    intent["ledger"] = ledger
    _write_json(run_dir / protocol.INTENT_FILE, intent)
    return _Started(config, info, run_id, run_dir, target, values, started.isoformat(), runbook_sha256,
                    pre_state, ledger)


def _papermill_parameters(run: _Started) -> dict:
    return {**run.values, "run_id": run.run_id, "record_dir": str(run.run_dir)}


def run_runbook(name: str, *, target: str | None = None, parameters: dict[str, Any] | None = None,
                config: Config | None = None, kernel_name: str | None = None,
                progress: Callable[[str], None] | None = None,
                execution_timeout: float | None = None) -> RunResult:
    """Run a runbook with papermill and seal its record; returns how it went.

    A failed step, a guard stop, a dead kernel or a missing sentinel are outcomes, not exceptions: each ends
    with a signed record and a ``RunResult`` whose ``exit_status`` says which (0, 1 or 3).

    A run that changes the database holds its deployer lock from before the heads "before" are read until
    the record is signed; the kernel borrows it. A second run is refused at the lock (stopped-at-guard,
    reading nothing). When the record cannot be signed after all, the result has ``sealed`` False, exit
    status 1, and ``dbrunbook seal`` finishes it.

    Args:
        name: the runbook (file name under runbooks/, without .ipynb).
        target: the database target; default the runbook's ``-p target`` or the config's default target.
        parameters: ``{name: value}``; strings are parsed to the declared type.
        config: the project configuration; default ``load_config()``.
        kernel_name: a Jupyter kernel; default one that runs this interpreter.
        progress: called with one line per stage (the CLI prints them to stderr).
        execution_timeout: seconds a single cell may run before the run is failed.

    Raises:
        ConfigError, TargetNotFound, MissingSecret, RunbookNotFound, ParameterError: before anything runs.
        RecordNotWritable, SigningKeyError: the record could not be finished; raised before anything runs.
        KeyboardInterrupt, SystemExit: re-raised after the interrupted run is sealed as failed; the
            exception's ``run_result`` is the sealed run's ``RunResult``.
    """
    import papermill

    progress = progress or (lambda message: None)
    config = config or load_config()
    info = find_runbook(config, name)
    values = _resolve_target(config, info, target, parameters)
    kernel = kernel_name or kernel_for_this_interpreter()
    # Everything sealing needs is checked before anything runs: a problem here is exit 2, nothing changed.
    unfinished.check_record_can_be_written(config, info.path, info.name)
    _usable_signing_key(config)
    target_name = str(values["target"])
    changing = bool(info.changes_database and not values.get("dry_run", False))
    started = _now()
    run_id = records.new_run_id(info.name, target_name, started)
    lock, stop = None, None
    if changing:
        progress(f"run {run_id}: taking the deployer lock of target '{target_name}'")
        lock, stop = _take_deployer_lock(config, target_name, run_id, info.name)
    try:
        run = _begin(config, info, values, "papermill", progress, started=started, run_id=run_id,
                     read_state=stop is None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if changing and stop is None and not run.ledger:
        # No ledger row, no change: the row is what 'verify -t' and the next run trust.
        problem = "; ".join(run.pre_state.get("errors") or []) or "the target's identity could not be read"
        stop = FAILED, _launcher_step("ledger row", "LedgerUnavailable",
                                      f"the run was stopped before its notebook ran: {problem}")
    output = run.run_dir / protocol.NOTEBOOK_FILE
    error: BaseException | None = None
    interrupted: BaseException | None = None
    seen: dict = {}
    try:
        if stop is None:
            progress(f"run {run.run_id}: executing {info.path.name} on target '{run.target}'")
            with _config_for_kernel(config), _lock_for_kernel(lock), _quiet_papermill_inspection(), \
                    _sigterm_as_exit():
                papermill.execute_notebook(
                    str(info.path), str(output), parameters=_papermill_parameters(run), kernel_name=kernel,
                    cwd=str(config.root), progress_bar=False, log_output=False,
                    request_save_on_cell_execute=True, execution_timeout=execution_timeout,
                    kernel_manager_class=ipc_kernel_manager(), engine_name=_progress_engine(progress, seen),
                )
        else:
            _write_unexecuted_notebook(info, output)
    except Exception as err:
        error = err
    except BaseException as err:  # KeyboardInterrupt, SIGTERM: seal what exists, then let it go on
        error = interrupted = err
    # Sealing is not interrupted: a second Ctrl-C or SIGTERM waits until the record is signed.
    with _signals_deferred() as received:
        try:
            nb = _load_output(output) or seen.get("nb")
            outcome, failing_step = stop or _classify(error, nb)
            result = _seal_run(run, outcome, failing_step, mode="papermill", progress=progress)
        finally:
            if lock is not None:
                lock.release()
    if interrupted is None and received:
        interrupted = KeyboardInterrupt() if received[0] == signal.SIGINT else SystemExit(128 + received[0])
    if interrupted is not None:
        interrupted.run_result = result  # the CLI still prints the run's object with --json
        raise interrupted
    return result


def _usable_signing_key(config: Config) -> Path:
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


def _launcher_step(heading: str, ename: str, evalue: str) -> dict:
    """The failing step of a run the launcher stopped before its notebook ran (no cell of it started)."""
    return {"cell": None, "heading": f"launcher: {heading}", "ename": ename, "evalue": mask_secrets(evalue)}


def _take_deployer_lock(config: Config, target: str, run_id: str, runbook: str
                        ) -> tuple[locking.DeployerLock | None, tuple[str, dict] | None]:
    """The deployer lock for a changing run, or why the run stops before its notebook: (lock, stop)."""
    try:
        _target, engine = db.connect_target(config, target, run_id=run_id)
    except DatabaseUnavailable as err:
        return None, (FAILED, _launcher_step("deployer lock", type(err).__name__, str(err)))
    try:
        return locking.acquire_deployer_lock(engine, run_id=run_id, runbook=runbook, target=target), None
    except DeployerLockHeld as err:
        return None, (STOPPED_AT_GUARD, _launcher_step("deployer lock", type(err).__name__, str(err)))
    except DatabaseUnavailable as err:
        return None, (FAILED, _launcher_step("deployer lock", type(err).__name__, str(err)))
    finally:
        engine.dispose()


@contextlib.contextmanager
def _lock_for_kernel(lock: locking.DeployerLock | None) -> Iterator[None]:
    """Tell the kernel (through its environment) which session holds this run's lock, so it borrows it."""
    if lock is None:
        yield
        return
    before = os.environ.get(locking.LAUNCHER_LOCK_ENV)
    os.environ[locking.LAUNCHER_LOCK_ENV] = locking.launcher_lock_env(lock)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(locking.LAUNCHER_LOCK_ENV, None)
        else:
            os.environ[locking.LAUNCHER_LOCK_ENV] = before


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """Hold SIGTERM and SIGINT until the block ends; yields the signals received meanwhile."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_unexecuted_notebook(info: RunbookInfo, output: Path) -> None:
    """The runbook as it is, for the record of a run stopped before its notebook ran (no cell executed)."""
    import shutil

    shutil.copyfile(info.path, output)


def prepare_runbook(name: str, *, target: str | None = None, parameters: dict[str, Any] | None = None,
                    config: Config | None = None) -> Path:
    """Prepare a working copy of the parameterised notebook for an operator to run in JupyterLab.

    Same validation, intent, pre-state and ledger row as ``run_runbook``, but the run directory is a working
    copy under ``state_dir/interactive/`` (not in ``outputs/``: JupyterLab's saves must not touch the
    archive); the digest of every code cell is kept so that ``seal`` can name edited cells. ``seal`` signs it
    and moves it into ``outputs/``. Returns the notebook's path.
    """
    import dataclasses

    import papermill

    from dbrunbook.execution import interactive

    config = config or load_config()
    info = find_runbook(config, name)
    values = _resolve_target(config, info, target, parameters)
    kernel = kernel_for_this_interpreter()
    work = dataclasses.replace(config, outputs_dir=interactive.working_root(config))
    run = _begin(work, info, values, "interactive", lambda message: None)
    output = run.run_dir / protocol.NOTEBOOK_FILE
    with _quiet_papermill_inspection():
        papermill.execute_notebook(str(info.path), str(output), parameters=_papermill_parameters(run),
                                   kernel_name=kernel, prepare_only=True, progress_bar=False)
    interactive.mark_prepared(config, output, run.run_id)
    return output


def seal(run_dir: Path, *, config: Config | None = None) -> RunResult:
    """Sign an interactively run notebook (``dbrunbook open``): outcome from its outputs, post-state, record.

    The mode says how far the record is evidence: 'interactive' (code cells ran once each, in order),
    'interactive-out-of-order', 'interactive-edited' (a code cell or intent.json changed since ``open``; the
    record's ``artifacts/interactive.json`` names each) or 'interactive-unsaved' (the notebook on disk never
    ran: it was not saved). A working copy is moved into ``outputs/`` first, then sealed there.

    Raises:
        RunDirectoryInvalid: no intent or notebook in ``run_dir``, or it is sealed already.
    """
    from dbrunbook.execution import interactive

    config = config or load_config()
    run_dir = Path(run_dir).resolve()
    intent_path = run_dir / protocol.INTENT_FILE
    notebook = run_dir / protocol.NOTEBOOK_FILE
    if not intent_path.is_file() or not (notebook.is_file() or _launched(intent_path)):
        raise RunDirectoryInvalid(
            f"{run_dir} is not a run directory: it needs {protocol.INTENT_FILE} and "
            f"{protocol.NOTEBOOK_FILE}. Pass the folder 'dbrunbook open' printed."
        )
    if (run_dir / protocol.SIGNATURE_FILE).exists():
        raise RunDirectoryInvalid(
            f"{run_dir} is sealed already ({protocol.SIGNATURE_FILE} exists); a record is never re-signed. "
            f"Check it with 'dbrunbook verify {run_dir}'."
        )
    intent = json.loads(intent_path.read_text(encoding="utf-8"))
    info = find_runbook(config, intent["runbook"])
    trust.require_signing_key(config)
    if intent.get("mode") == "papermill":
        return _finish_launched_run(config, info, run_dir, intent)
    nb = read_notebook(notebook)
    outcome, failing_step = _classify_outputs(nb)
    changes, intent_edited, opened = interactive.compare_cells(config, run_dir, intent["run_id"])
    mode = interactive.interactive_mode(nb, changes, intent_edited)
    if opened is not None or mode != "interactive":
        interactive.write_interactive_artifact(run_dir, mode, changes, intent_edited, opened)
    for change in changes:
        print(f"dbrunbook: {change.describe()}", file=sys.stderr)
    if mode == "interactive-unsaved":
        print(f"dbrunbook: {notebook} shows no executed cell: it was not saved before sealing (save with "
              f"Ctrl+S, then seal). It is sealed as it is on disk.", file=sys.stderr)
    try:
        run_dir = interactive.move_into_archive(config, run_dir, intent["run_id"])
    except FileExistsError as err:
        raise RunDirectoryInvalid(f"Cannot move {run_dir} into the archive: {err}. Check the run id.") from err
    run = _Started(config, info, intent["run_id"], run_dir, intent["target"], intent["parameters"],
                   intent["started_at"], intent["runbook_sha256"], intent.get("pre_state") or {},
                   bool(intent.get("ledger")))
    return _seal_run(run, outcome, failing_step, mode=mode, progress=lambda message: None)


def _launched(intent_path: Path) -> bool:
    try:
        return json.loads(intent_path.read_text(encoding="utf-8")).get("mode") == "papermill"
    except (OSError, ValueError):
        return False


def _finish_launched_run(config: Config, info: RunbookInfo, run_dir: Path, intent: dict) -> RunResult:
    """Seal a ``dbrunbook run`` whose launcher did not: it could not sign, or it died (outcome 'interrupted').

    A changing run's heads "after" are read under the deployer lock, as the launcher would have.

    Raises:
        RunDirectoryInvalid: its launcher is still running (it will seal the run itself).
        DeployerLockHeld: another run is changing the database now; seal again once it is done.
    """
    run_id = intent["run_id"]
    saved_path = run_dir / protocol.ARTIFACTS_DIR / unfinished.UNSEALED_ARTIFACT
    post_state = None
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        outcome, failing_step, post_state = saved["outcome"], saved.get("failing_step"), saved.get("post_state")
    else:
        if unfinished.launcher_alive(intent.get("pid"), intent.get("host")):
            raise RunDirectoryInvalid(
                f"Run {run_id} is still running: its launcher (pid {intent.get('pid')} on "
                f"{intent.get('host')}) is alive and will seal the record itself. Wait for it to end.")
        nb = _load_output(run_dir / protocol.NOTEBOOK_FILE)
        cell = _last_started_cell(nb)
        outcome, failing_step = INTERRUPTED, {
            "cell": cell, "heading": _step_heading(nb, cell), "ename": None,
            "evalue": f"the launcher (pid {intent.get('pid')}) ended before it sealed the run: killed, crashed, "
                      f"or its machine went down; sealed later by 'dbrunbook seal'"}
    run = _Started(config, info, run_id, run_dir, intent["target"], intent["parameters"], intent["started_at"],
                   intent["runbook_sha256"], intent.get("pre_state") or {}, bool(intent.get("ledger")))
    lock = None
    if run.ledger and post_state is None:
        _target, engine = db.connect_target(config, run.target, run_id=run_id)
        try:
            lock = locking.acquire_deployer_lock(engine, run_id=run_id, runbook=info.name, target=run.target)
        finally:
            engine.dispose()
    try:
        return _seal_run(run, outcome, failing_step, mode="papermill", progress=lambda message: None,
                         post_state=post_state)
    finally:
        if lock is not None:
            lock.release()


# --- sealing ----------------------------------------------------------------------------------------------
def _ledger_start(config: Config, target: str, run_id: str, info: RunbookInfo, values: dict,
                  started: datetime, pre_state: dict) -> bool:
    """Insert the 'running' ledger row over the launcher's own connection; False (why: pre_state) if not."""
    try:
        _target, engine = db.connect_target(config, target, run_id=run_id)
        try:
            records.ledger_start(engine, run_id=run_id, runbook=info.name,
                                 operator=records.operator_identity(), started_at=started,
                                 heads_before=pre_state["heads"])
        finally:
            engine.dispose()
    except Exception as err:  # the run goes on; its record says the ledger row is missing and why
        pre_state["errors"].append(mask_secrets(f"ledger start: {type(err).__name__}: {err}"))
        return False
    return True


def _applied_revisions(history: list[migrations.RevisionInfo], before: list | None, after: list | None
                       ) -> list[migrations.RevisionInfo]:
    """Revisions in the ancestry of ``after`` but not of ``before``: what this run applied."""
    by_revision = {r.revision: r for r in history}

    def ancestry(heads: list | None) -> set[str]:
        seen: set[str] = set()
        stack = list(heads or [])
        while stack:
            revision = stack.pop()
            if revision in seen or revision not in by_revision:
                continue
            seen.add(revision)
            stack.extend(by_revision[revision].down_revisions)
        return seen

    new = ancestry(after) - ancestry(before)
    return [r for r in history if r.revision in new]


def _migration_files(config: Config, heads_before: dict, heads_after: dict) -> dict:
    """``{set: {revision: sha256 of its script}}`` for each revision applied during the run."""
    files: dict[str, dict[str, str]] = {}
    for mset in config.migration_sets.values():
        before, after = heads_before.get(mset.name), heads_after.get(mset.name)
        if after is None or sorted(before or []) == sorted(after):
            continue
        applied = _applied_revisions(migrations.history(mset), before, after)
        if not applied:
            continue
        digests = migrations.file_digests(mset)
        files[mset.name] = {r.revision: digests[r.revision] for r in applied}
    return files


def migrations_digest(config: Config) -> str | None:
    try:
        return migrations.directory_digest(list(config.migration_sets.values()))
    except Exception as err:  # a missing scripts folder must not keep the run from being signed
        log.warning("Could not digest the migration scripts: %s", err)
        return None


def _seal_run(run: _Started, outcome: str, failing_step: dict | None, *, mode: str,
              progress: Callable[[str], None], post_state: dict | None = None) -> RunResult:
    """Read the post-state, build, sign and write the statement, complete the ledger row.

    When signing fails the run is not lost: the ledger row is completed with the outcome and the error, the
    unsigned facts are kept in artifacts/ for ``dbrunbook seal``, and the result says so (exit status 1).
    """
    config = run.config
    progress(f"run {run.run_id}: {outcome}; reading the state of target '{run.target}', signing the record")
    if post_state is None:
        # A run refused at the lock reads nothing after either: another run may be changing the database now.
        unread = run.pre_state.get("read") is False
        post_state = _UNREAD_STATE() if unread else _database_state(config, run.target, run.run_id)
    heads_before = run.pre_state.get("heads") or {}
    heads_after = post_state["heads"]
    finished = _now()
    exit_status = EXIT_STATUS[outcome]
    extra = {
        "target": run.target,
        "database_after": post_state["database"],
        "errors_before": run.pre_state.get("errors", []),
        "errors_after": post_state["errors"],
        "ledger": run.ledger,
        "launcher_pid": os.getpid(),
    }
    database = run.pre_state.get("database") or post_state["database"]
    try:
        _keep_partial_notebook(run)
        _fold_step_log(run)
        statement_path = _sign(run, outcome, failing_step, mode, finished, database, heads_before, heads_after,
                               extra)
    except Exception as err:  # the run happened: keep its facts where 'dbrunbook seal' finishes them
        return _keep_unsealed(run, outcome, failing_step, mode, err, finished, heads_before, heads_after,
                              post_state, progress)
    if run.ledger:
        _ledger_finish(run, outcome, finished, heads_before, heads_after)
    unfinished.unregister(config, run.run_id)
    return RunResult(
        run_id=run.run_id,
        runbook=run.info.name,
        target=run.target,
        outcome=outcome,
        exit_status=exit_status,
        record_dir=run.run_dir,
        heads_before=heads_before,
        heads_after=heads_after,
        failing_step=failing_step,
        signature=str(statement_path.with_name(protocol.SIGNATURE_FILE)),
    )


def _sign(run: _Started, outcome: str, failing_step: dict | None, mode: str, finished: datetime,
          database: dict | None, heads_before: dict, heads_after: dict, extra: dict) -> Path:
    config = run.config
    exit_status = EXIT_STATUS[outcome]
    # Chain the records of each database, so that a deleted or reordered record shows in 'dbrunbook verify'.
    prev = archive.previous_statement(config.outputs_dir, database)
    statement = records.build_statement(
        run.run_dir,
        runbook_name=run.info.name,
        runbook_sha256=run.runbook_sha256,
        parameters=run.values,
        operator=records.operator_identity(),
        host=socket.gethostname(),
        started_at=run.started_at,
        finished_at=finished.isoformat(),
        outcome=outcome,
        exit_status=exit_status,
        failing_step=failing_step,
        database=database,
        heads_before=heads_before,
        heads_after=heads_after,
        migrations_sha256=migrations_digest(config),
        mode=mode,
        extra=extra,
        prev=prev,
    )
    key, _principal = trust.require_signing_key(config)
    return records.write_record(run.run_dir, statement, key)


PARTIAL_NOTEBOOK = "notebook.ipynb.partial"


def _keep_partial_notebook(run: _Started) -> None:
    """A notebook file cut short (disk full, a kill during a save) is kept as an artifact, the record's
    notebook then being the runbook with a note saying so: a record must not depend on a whole notebook."""
    notebook = run.run_dir / protocol.NOTEBOOK_FILE
    if notebook.is_file() and _load_output(notebook) is not None:
        return
    size = notebook.stat().st_size if notebook.is_file() else 0
    if notebook.exists():
        os.replace(notebook, run.run_dir / protocol.ARTIFACTS_DIR / PARTIAL_NOTEBOOK)
    nb = nbformat.read(str(run.info.path), as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        f"**The executed notebook of run {run.run_id} could not be written in full.** Its first {size} bytes "
        f"are kept in `{protocol.ARTIFACTS_DIR}/{PARTIAL_NOTEBOOK}`; below is the runbook as it was run, "
        f"without outputs. The outcome and failing step of the record come from the launcher."))
    nbformat.write(nb, str(notebook))


def _fold_step_log(run: _Started) -> None:
    """Bring the record's notebook up to date with the step log: a killed launcher saved it only so often.

    Not when _keep_partial_notebook put the runbook in its place (its cells are not the run's), and a
    notebook that cannot be rewritten is signed as it is: the failing step was read with the log folded in.
    """
    if (run.run_dir / protocol.ARTIFACTS_DIR / PARTIAL_NOTEBOOK).exists():
        return
    try:
        steplog.fold_file(run.run_dir / protocol.NOTEBOOK_FILE, steplog.path_for(run.run_dir))
    except (OSError, ValueError) as err:
        log.warning("run %s: the step log could not be folded into its notebook: %s", run.run_id, err)


def _keep_unsealed(run: _Started, outcome: str, failing_step: dict | None, mode: str, err: Exception,
                   finished: datetime, heads_before: dict, heads_after: dict, post_state: dict,
                   progress: Callable[[str], None]) -> RunResult:
    error = mask_secrets(f"{type(err).__name__}: {err}")
    log.warning("run %s could not be sealed: %s", run.run_id, error, exc_info=err)
    saved = {"outcome": outcome, "failing_step": failing_step, "mode": mode, "finished_at": finished.isoformat(),
             "error": error, "post_state": post_state, "launcher_pid": os.getpid()}
    try:
        _write_json(run.run_dir / protocol.ARTIFACTS_DIR / unfinished.UNSEALED_ARTIFACT, saved)
    except OSError as write_err:  # the intent and the ledger row remain; seal then records it as interrupted
        log.warning("could not keep the unsealed facts of run %s: %s", run.run_id, write_err)
    if run.ledger:
        _ledger_finish(run, outcome, finished, heads_before, heads_after, error=f"record not sealed: {error}")
    message = (f"dbrunbook: run {run.run_id} ended '{outcome}' but its record could not be signed: {error}. "
               f"Its evidence is kept in {run.run_dir}; fix the cause, then finish the record with "
               f"'dbrunbook seal {run.run_dir}'.")
    progress(message)
    print(message, file=sys.stderr)
    return RunResult(run_id=run.run_id, runbook=run.info.name, target=run.target, outcome=outcome, exit_status=1,
                     record_dir=run.run_dir, heads_before=heads_before, heads_after=heads_after,
                     failing_step=failing_step, signature="", sealed=False, seal_error=error)


def _ledger_finish(run: _Started, outcome: str, finished: datetime, heads_before: dict,
                   heads_after: dict, error: str | None = None) -> None:
    try:
        files = _migration_files(run.config, heads_before, heads_after)
        _target, engine = db.connect_target(run.config, run.target, run_id=run.run_id)
        statement = run.run_dir / protocol.STATEMENT_FILE
        try:
            records.ledger_finish(
                engine, run_id=run.run_id, finished_at=finished, outcome=outcome, error=error,
                statement_sha256=records.statement_sha256(run.run_dir) if statement.is_file() else None,
                heads_after=heads_after,
                migration_files=files, runbook=run.info.name, operator=records.operator_identity(),
                started_at=datetime.fromisoformat(run.started_at), heads_before=heads_before,
            )
        finally:
            engine.dispose()
    except Exception as err:  # the signed record exists; the database is merely missing its ledger update
        message = mask_secrets(f"{type(err).__name__}: {err}")
        log.warning("Run %s is signed but its ledger row was not completed: %s", run.run_id, message)
        print(f"dbrunbook: run {run.run_id} is signed but its ledger row in target '{run.target}' was not "
              f"completed: {message}", file=sys.stderr)
