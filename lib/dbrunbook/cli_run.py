"""The commands that run runbooks: ``run`` (with ``--json``), ``list``, ``lab`` and ``seal``.

Each parses nothing itself (``cli.build_parser`` did), calls the launcher once and prints. ``run`` turns
SIGTERM into an exit the launcher can seal, and ``run --json`` prints exactly one JSON object whatever
happened: a result, an error, an interruption or a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from dbrunbook.cli_output import parameter_values, print_err, print_result, stdout_to_stderr, text_table
from dbrunbook.config import load_config
from dbrunbook.errors import DbRunbookError


def cmd_run(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import run_runbook

    def run():
        return run_runbook(args.runbook, target=args.target, parameters=parameter_values(args.parameter),
                           config=load_config(args.config), progress=print_err,
                           execution_timeout=args.execution_timeout)

    previous = _sigterm_as_exit()
    try:
        if not args.json:
            result = run()
            print_result(result)
            return result.exit_status
        with stdout_to_stderr() as real_stdout:
            document = _run_document(run)
            os.write(real_stdout, (json.dumps(document, sort_keys=True, default=str) + "\n").encode("utf-8"))
        return document["exit_status"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_exit():
    """SIGTERM ends ``run`` as SystemExit(143) (the launcher seals what exists first); returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _run_document(run) -> dict:
    """The one JSON object ``run --json`` prints, whatever happened: a result, an error, or a signal."""
    from dbrunbook.execution.parameters import mask_secrets

    try:
        return run().as_json()
    except DbRunbookError as err:
        print_err(str(err))
        return {"error": str(err), "error_type": type(err).__name__, "exit_status": err.exit_status}
    except (KeyboardInterrupt, SystemExit) as err:
        status = 130 if isinstance(err, KeyboardInterrupt) else (err.code if isinstance(err.code, int) else 1)
        result = getattr(err, "run_result", None)
        document = result.as_json() if result is not None else {
            "error": "interrupted before the run's notebook started: nothing was changed",
            "error_type": type(err).__name__}
        document.update(interrupted=type(err).__name__, exit_status=status)
        print_err("Interrupted." if status == 130 else f"Terminated (exit {status}).")
        return document
    except Exception as err:  # noqa: BLE001 - one object for every outcome, a bug included
        import traceback

        print_err(mask_secrets("".join(traceback.format_exception(err))).rstrip())  # for the bug report, no secret
        message = mask_secrets(f"{type(err).__name__}: {err}")
        return {"error": f"unexpected error: {message}", "error_type": type(err).__name__, "exit_status": 1}


def cmd_list(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import list_runbooks

    runbooks = list_runbooks(load_config(args.config))
    if not runbooks:
        print("No runbooks found.")
        return 0
    print(text_table([{"runbook": r.name, "changes database": "yes" if r.changes_database else "no",
                   "title": r.title} for r in runbooks], ["runbook", "changes database", "title"]))
    for r in runbooks:
        print(f"\n{r.name}: {r.description}".rstrip())
        rows = [{"parameter": p.name, "type": p.type, "default": repr(p.default), "help": p.help}
                for p in r.operator_parameters]
        if rows:
            print("  " + text_table(rows, ["parameter", "type", "default", "help"]).replace("\n", "\n  "))
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    from dbrunbook.execution.interactive import lab_command

    argv, env = lab_command(load_config(args.config), args.jupyter_args)
    return subprocess.call(argv, env=env)


def cmd_seal(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import seal

    result = seal(Path(args.run_dir), config=load_config(args.config))
    print_result(result)
    return result.exit_status
