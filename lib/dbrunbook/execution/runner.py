"""The launcher: read a runbook's parameters, run it with papermill, classify the outcome, seal the record.

The launcher owns what must be true whatever the notebook did: the run id and its directory (never reused),
the deployer lock of a changing run (held from the heads "before" to the signature), the database identity
and Alembic heads before and after (read over the launcher's own connection, not the notebook's), the
outcome, the signed statement and the ledger row. A run that fails, stops at a guard, dies
or is interrupted still ends with a signed record, because the record of a failure is the one people need.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbrunbook import protocol, records
from dbrunbook.config import Config, load_config
from dbrunbook.errors import DatabaseUnavailable, DeployerLockHeld, RunDirectoryInvalid
from dbrunbook.execution import prerender, unfinished
from dbrunbook.execution.engine import (
    SAVE_AFTER,
    SAVE_EVERY,
    SAVE_OUTPUT_BYTES,
    progress_engine,
    quiet_papermill_inspection,
)
from dbrunbook.execution.kernel import ipc_kernel_manager, kernel_for_this_interpreter
from dbrunbook.execution.launch import StartedRun, begin_run, papermill_parameters, resolve_target, usable_signing_key
from dbrunbook.execution.outcome import (
    EXIT_STATUS,
    FAILED,
    INCOMPLETE,
    INTERRUPTED,
    STOPPED_AT_GUARD,
    SUCCEEDED,
    RunResult,
    classify,
    launcher_step,
    load_output,
)
from dbrunbook.execution.parameters import (
    Parameter,
    RunbookInfo,
    find_runbook,
    list_runbooks,
    mask_secrets,
    parse_parameters,
    read_parameters,
    validate_parameters,
)
from dbrunbook.execution.process import config_for_kernel, lock_for_kernel, signals_deferred, sigterm_as_exit
from dbrunbook.execution.seal import PARTIAL_NOTEBOOK, migrations_digest, seal, seal_run
from dbrunbook.postgres import db
from dbrunbook.safety import locking

# Parameters, kernels, outcomes and sealing live in their own modules; re-exported because the launcher is where
# people look.
__all__ = [
    "EXIT_STATUS",
    "FAILED",
    "INCOMPLETE",
    "INTERRUPTED",
    "PARTIAL_NOTEBOOK",
    "SAVE_AFTER",
    "SAVE_EVERY",
    "SAVE_OUTPUT_BYTES",
    "STOPPED_AT_GUARD",
    "SUCCEEDED",
    "Parameter",
    "RunDirectoryInvalid",
    "RunResult",
    "RunbookInfo",
    "find_runbook",
    "kernel_for_this_interpreter",
    "list_runbooks",
    "mask_secrets",
    "migrations_digest",
    "parse_parameters",
    "prepare_runbook",
    "read_parameters",
    "run_runbook",
    "seal",
    "validate_parameters",
]


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
    progress = progress or (lambda message: None)
    config = config or load_config()
    info = find_runbook(config, name)
    values = resolve_target(config, info, target, parameters)
    kernel = kernel_name or kernel_for_this_interpreter()
    # Everything sealing needs is checked before anything runs: a problem here is exit 2, nothing changed.
    unfinished.check_record_can_be_written(config, info.path, info.name)
    usable_signing_key(config)
    run, lock, stop = _start(config, info, values, progress)
    output = run.run_dir / protocol.NOTEBOOK_FILE
    error: BaseException | None = None
    interrupted: BaseException | None = None
    seen: dict = {}
    rendering = prerender.start(config, info.name, run.run_id, run.values, run.pre_state.get("heads") or {}) \
        if stop is None else None
    try:
        if stop is None:
            _execute(run, kernel, lock, progress, execution_timeout, seen, rendering)
        else:
            _write_unexecuted_notebook(info, output)
    except Exception as err:
        error = err
    except BaseException as err:  # KeyboardInterrupt, SIGTERM: seal what exists, then let it go on
        error = interrupted = err
    # Sealing is not interrupted: a second Ctrl-C or SIGTERM waits until the record is signed.
    with signals_deferred() as received:
        try:
            nb = load_output(output) or seen.get("nb")
            outcome, failing_step = stop or classify(error, nb)
            result = seal_run(run, outcome, failing_step, mode="papermill", progress=progress,
                              histories=rendering.histories() if rendering is not None else None)
        finally:
            if rendering is not None:
                rendering.close()
            if lock is not None:
                lock.release()
    if interrupted is None and received:
        interrupted = KeyboardInterrupt() if received[0] == signal.SIGINT else SystemExit(128 + received[0])
    if interrupted is not None:
        # The CLI still prints the run's object with --json; an exception of Python's own has no field for it.
        interrupted.run_result = result  # type: ignore[attr-defined]
        raise interrupted
    return result


def _start(config: Config, info: RunbookInfo, values: dict, progress: Callable[[str], None]
           ) -> tuple[StartedRun, locking.DeployerLock | None, tuple[str, dict] | None]:
    """Take a changing run's deployer lock, then begin the run: (run, lock, stop).

    ``stop`` is the outcome and failing step of a run whose notebook must not run: the lock is held by
    another run or cannot be taken, or a changing run has no ledger row.
    """
    target_name = str(values["target"])
    changing = bool(info.changes_database and not values.get("dry_run", False))
    started = protocol.now()
    run_id = records.new_run_id(info.name, target_name, started)
    lock, stop = None, None
    if changing:
        progress(f"run {run_id}: taking the deployer lock of target '{target_name}'")
        lock, stop = _take_deployer_lock(config, target_name, run_id, info.name)
    try:
        run = begin_run(config, info, values, "papermill", progress, started=started, run_id=run_id,
                        read_state=stop is None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if changing and stop is None and not run.ledger:
        # No ledger row, no change: the row is what 'verify -t' and the next run trust.
        problem = "; ".join(run.pre_state.get("errors") or []) or "the target's identity could not be read"
        stop = FAILED, launcher_step("ledger row", "LedgerUnavailable",
                                     f"the run was stopped before its notebook ran: {problem}")
    return run, lock, stop


def _execute(run: StartedRun, kernel: str, lock: locking.DeployerLock | None, progress: Callable[[str], None],
             execution_timeout: float | None, seen: dict, rendering: prerender.Prerender | None) -> None:
    """Execute the runbook with papermill into the run's notebook; the kernel borrows the run's lock."""
    import papermill

    progress(f"run {run.run_id}: executing {run.info.path.name} on target '{run.target}'")
    with config_for_kernel(run.config), lock_for_kernel(lock), quiet_papermill_inspection(), sigterm_as_exit(), \
            prerender.for_kernel(rendering):
        papermill.execute_notebook(
            str(run.info.path), str(run.run_dir / protocol.NOTEBOOK_FILE), parameters=papermill_parameters(run),
            kernel_name=kernel, cwd=str(run.config.root), progress_bar=False, log_output=False,
            request_save_on_cell_execute=True, execution_timeout=execution_timeout,
            kernel_manager_class=ipc_kernel_manager(), engine_name=progress_engine(progress, seen),
        )


def _take_deployer_lock(config: Config, target: str, run_id: str, runbook: str
                        ) -> tuple[locking.DeployerLock | None, tuple[str, dict] | None]:
    """The deployer lock for a changing run, or why the run stops before its notebook: (lock, stop)."""
    try:
        _target, engine = db.connect_target(config, target, run_id=run_id)
    except DatabaseUnavailable as err:
        return None, (FAILED, launcher_step("deployer lock", type(err).__name__, str(err)))
    try:
        return locking.acquire_deployer_lock(engine, run_id=run_id, runbook=runbook, target=target), None
    except DeployerLockHeld as err:
        return None, (STOPPED_AT_GUARD, launcher_step("deployer lock", type(err).__name__, str(err)))
    except DatabaseUnavailable as err:
        return None, (FAILED, launcher_step("deployer lock", type(err).__name__, str(err)))
    finally:
        engine.dispose()


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
    values = resolve_target(config, info, target, parameters)
    kernel = kernel_for_this_interpreter()
    work = dataclasses.replace(config, outputs_dir=interactive.working_root(config))
    run = begin_run(work, info, values, "interactive", lambda message: None)
    output = run.run_dir / protocol.NOTEBOOK_FILE
    with quiet_papermill_inspection():
        papermill.execute_notebook(str(info.path), str(output), parameters=papermill_parameters(run),
                                   kernel_name=kernel, prepare_only=True, progress_bar=False)
    interactive.mark_prepared(config, output, run.run_id)
    return output
