"""The papermill engine of a run: a progress line per step, the notebook saved seldom, the step log kept.

papermill writes the whole notebook after every cell start and end and shows a tqdm bar over cells; a run of
a long runbook then spends its time saving, and its operator cannot tell which step is running. The engine
registered here prints each step's heading and duration, saves on a timer and when it matters (see
``SAVE_AFTER``), and appends each cell's start and end to the step log that sealing folds into the record.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat

from dbrunbook.execution import steplog
from dbrunbook.execution.kernel import KERNEL_STARTUP_ARGUMENTS
from dbrunbook.execution.outcome import STEP_HEADING
from dbrunbook.execution.progress import RetryLines


class _PapermillInspectionFilter(logging.Filter):
    """Drop papermill's own parameter inspection warnings: it cannot parse typed lines whose help has
    parentheses, and calls every parameter 'unknown' then, while ``validate_parameters`` has already
    checked each name and value against the notebook."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Passed unknown parameter", "Unable to parse line"))


@contextlib.contextmanager
def quiet_papermill_inspection() -> Iterator[None]:
    loggers = [logging.getLogger("papermill"), logging.getLogger("papermill.translators")]
    quiet = _PapermillInspectionFilter()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _steps(nb: nbformat.NotebookNode) -> dict[int, str]:
    """Code cell index -> the step heading it is the first code cell of (what a progress line shows)."""
    steps, current = {}, None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found = STEP_HEADING.findall(cell.source) or re.findall(r"^##\s+.*$", cell.source, re.MULTILINE)
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


def _saving_client() -> type:
    """papermill's notebook client, saving the notebook on a timer while a code cell runs (see ``SAVE_AFTER``)."""
    import asyncio

    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient

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

    return SavingClient


def _watch_steps(nb_man, progress: Callable[[str], None], log: steplog.StepLog | None) -> None:
    """Hook papermill's notebook manager: a progress line and a step log entry as each cell starts and ends,
    and the notebook saved only when a cell fails or printed ``SAVE_OUTPUT_BYTES`` (the timer does the rest)."""
    steps = _steps(nb_man.nb)
    total = len(steps)
    order = {index: n for n, index in enumerate(sorted(steps), 1)}
    started: dict[int, float] = {}
    cell_start, cell_complete, save = nb_man.cell_start, nb_man.cell_complete, nb_man.save
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


def progress_engine(progress: Callable[[str], None], seen: dict | None = None) -> str:
    """Register a papermill engine that reports each step as it starts and ends; returns its name.

    papermill's own progress bar is a tqdm over cells, which tells an operator nothing about which step of
    the procedure is running; this one prints the step's heading and how long it took, one plain line each
    (readable in a terminal, in cron mail and in Airflow logs alike). It also saves the notebook far less
    often than papermill (see ``SAVE_AFTER``) and keeps the step log (:mod:`dbrunbook.execution.steplog`).
    """
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger as papermill_logger
    from papermill.utils import merge_kwargs, remove_args

    saving_client = _saving_client()

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            if seen is not None:  # the notebook in memory: what is left when its file could not be written
                seen["nb"] = nb_man.nb
            log = steplog.StepLog(steplog.path_for(Path(nb_man.output_path).parent)) \
                if nb_man.output_path else None
            _watch_steps(nb_man, progress, log)
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
                return saving_client(nb_man, **final_kwargs).execute()
            finally:
                if log is not None:
                    log.close()

    name = f"dbrunbook-progress-{uuid.uuid4().hex[:8]}"
    papermill_engines.register(name, ProgressEngine)
    return name
