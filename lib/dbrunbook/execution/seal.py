"""Sealing a run: the state after it, the signed statement, the completed ledger row; ``dbrunbook seal``.

A run is sealed by its launcher as soon as its notebook ends, whatever the outcome. When signing fails the
facts are kept in artifacts/ and ``seal`` finishes the record later; ``seal`` also signs an interactive run
(``dbrunbook open``) and a launched run whose launcher died before it could seal (outcome 'interrupted').
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import nbformat

from dbrunbook import protocol, records
from dbrunbook.chain import migrations
from dbrunbook.config import Config, load_config
from dbrunbook.errors import RunDirectoryInvalid
from dbrunbook.execution import steplog, unfinished
from dbrunbook.execution.launch import StartedRun, database_state, unread_state, write_json
from dbrunbook.execution.ledger_rows import complete_ledger_row
from dbrunbook.execution.outcome import (
    EXIT_STATUS,
    INTERRUPTED,
    RunResult,
    classify_outputs,
    last_started_cell,
    load_output,
    step_heading,
)
from dbrunbook.execution.parameters import RunbookInfo, find_runbook, mask_secrets, read_notebook
from dbrunbook.postgres import db
from dbrunbook.records import archive, trust
from dbrunbook.safety import locking

log = logging.getLogger(__name__)


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
    outcome, failing_step = classify_outputs(nb)
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
    run = StartedRun(config, info, intent["run_id"], run_dir, intent["target"], intent["parameters"],
                     intent["started_at"], intent["runbook_sha256"], intent.get("pre_state") or {},
                     bool(intent.get("ledger")))
    return seal_run(run, outcome, failing_step, mode=mode, progress=lambda message: None)


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
        nb = load_output(run_dir / protocol.NOTEBOOK_FILE)
        cell = last_started_cell(nb)
        outcome, failing_step = INTERRUPTED, {
            "cell": cell, "heading": step_heading(nb, cell), "ename": None,
            "evalue": f"the launcher (pid {intent.get('pid')}) ended before it sealed the run: killed, crashed, "
                      f"or its machine went down; sealed later by 'dbrunbook seal'"}
    run = StartedRun(config, info, run_id, run_dir, intent["target"], intent["parameters"], intent["started_at"],
                     intent["runbook_sha256"], intent.get("pre_state") or {}, bool(intent.get("ledger")))
    lock = None
    if run.ledger and post_state is None:
        _target, engine = db.connect_target(config, run.target, run_id=run_id)
        try:
            lock = locking.acquire_deployer_lock(engine, run_id=run_id, runbook=info.name, target=run.target)
        finally:
            engine.dispose()
    try:
        return seal_run(run, outcome, failing_step, mode="papermill", progress=lambda message: None,
                        post_state=post_state)
    finally:
        if lock is not None:
            lock.release()


def migrations_digest(config: Config) -> str | None:
    try:
        return migrations.directory_digest(list(config.migration_sets.values()))
    except Exception as err:  # a missing scripts folder must not keep the run from being signed
        log.warning("Could not digest the migration scripts: %s", err)
        return None


def seal_run(run: StartedRun, outcome: str, failing_step: dict | None, *, mode: str,
             progress: Callable[[str], None], post_state: dict | None = None,
             histories: dict | None = None) -> RunResult:
    """Read the post-state, build, sign and write the statement, complete the ledger row.

    ``histories`` are the sets' histories as another process of the launcher read them (``prerender``):
    the ledger row takes them for a set whose files are still the same, instead of loading every revision.

    When signing fails the run is not lost: the ledger row is completed with the outcome and the error, the
    unsigned facts are kept in artifacts/ for ``dbrunbook seal``, and the result says so (exit status 1).
    """
    config = run.config
    progress(f"run {run.run_id}: {outcome}; reading the state of target '{run.target}', signing the record")
    if post_state is None:
        # A run refused at the lock reads nothing after either: another run may be changing the database now.
        unread = run.pre_state.get("read") is False
        post_state = unread_state() if unread else database_state(config, run.target, run.run_id)
    heads_before = run.pre_state.get("heads") or {}
    heads_after = post_state["heads"]
    finished = protocol.now()
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
        complete_ledger_row(run, outcome, finished, heads_before, heads_after, histories=histories)
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


def _sign(run: StartedRun, outcome: str, failing_step: dict | None, mode: str, finished: datetime,
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


def _keep_partial_notebook(run: StartedRun) -> None:
    """A notebook file cut short (disk full, a kill during a save) is kept as an artifact, the record's
    notebook then being the runbook with a note saying so: a record must not depend on a whole notebook."""
    notebook = run.run_dir / protocol.NOTEBOOK_FILE
    if notebook.is_file() and load_output(notebook) is not None:
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


def _fold_step_log(run: StartedRun) -> None:
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


def _keep_unsealed(run: StartedRun, outcome: str, failing_step: dict | None, mode: str, err: Exception,
                   finished: datetime, heads_before: dict, heads_after: dict, post_state: dict,
                   progress: Callable[[str], None]) -> RunResult:
    error = mask_secrets(f"{type(err).__name__}: {err}")
    log.warning("run %s could not be sealed: %s", run.run_id, error, exc_info=err)
    saved = {"outcome": outcome, "failing_step": failing_step, "mode": mode, "finished_at": finished.isoformat(),
             "error": error, "post_state": post_state, "launcher_pid": os.getpid()}
    try:
        write_json(run.run_dir / protocol.ARTIFACTS_DIR / unfinished.UNSEALED_ARTIFACT, saved)
    except OSError as write_err:  # the intent and the ledger row remain; seal then records it as interrupted
        log.warning("could not keep the unsealed facts of run %s: %s", run.run_id, write_err)
    if run.ledger:
        complete_ledger_row(run, outcome, finished, heads_before, heads_after, error=f"record not sealed: {error}")
    message = (f"dbrunbook: run {run.run_id} ended '{outcome}' but its record could not be signed: {error}. "
               f"Its evidence is kept in {run.run_dir}; fix the cause, then finish the record with "
               f"'dbrunbook seal {run.run_dir}'.")
    progress(message)
    print(message, file=sys.stderr)
    return RunResult(run_id=run.run_id, runbook=run.info.name, target=run.target, outcome=outcome, exit_status=1,
                     record_dir=run.run_dir, heads_before=heads_before, heads_after=heads_after,
                     failing_step=failing_step, signature="", sealed=False, seal_error=error)
