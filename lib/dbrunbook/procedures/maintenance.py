"""The deploy checklist's maintenance mode: switch it on and off, in a window that closes itself after a failure.

The guide's `touch .../maintenance`, per target a flag file and/or a command. A failed step must not leave
the application in maintenance: the window is closed by an IPython hook after a failed cell and at exit,
and the record says what happened (``maintenance_on.json``, ``maintenance_off.json``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from dbrunbook.errors import MaintenanceFailed
from dbrunbook.postgres.db import mask_secrets
from dbrunbook.protocol import SessionLike


def maintenance(session: SessionLike, on: bool, *, dry_run: bool = True) -> pd.DataFrame:
    """Put the application in maintenance mode or take it out (the guide's `touch .../maintenance`).

    Per target, ``maintenance_flag`` names a file to create/remove and ``maintenance_command`` a command run
    with ``{state}`` replaced by on/off (no shell). Neither configured: say so and go on.

    Turning it on opens a maintenance window that closes itself: in a notebook, a step that fails while the
    window is open turns maintenance off right after it (an IPython ``post_run_cell`` hook, so it happens
    before papermill stops the run), and so does the end of the process. The record says what happened
    either way: ``artifacts/maintenance_on.json`` when it went on, ``artifacts/maintenance_off.json`` when it
    went off (``after_failure`` and the failed step's error when the window closed itself, ``still_on`` when
    even that failed). An ``on`` without an ``off`` in a record means it may still be on.
    """
    window = not dry_run and _configured(session.target)
    if window and on:
        _Window.open(session)  # before switching: a half-done switch (flag made, command failed) is closed too
    try:
        frame = _switch(session, on, dry_run=dry_run)
    except Exception as err:
        if window and on:  # undo a half-done switch at once, whoever called
            _Window.close(session, after_failure=f"{type(err).__name__}: {err}")
        raise
    if window and not on:
        _Window.close(session, after_failure=None)
    return frame


@contextlib.contextmanager
def maintenance_window(session: SessionLike, *, dry_run: bool = True):
    """``with maintenance_window(s, dry_run=False): ...`` — on for the block, off after it, also after an error."""
    maintenance(session, True, dry_run=dry_run)
    try:
        yield
    except BaseException as err:
        if not dry_run and _configured(session.target):
            _Window.close(session, after_failure=f"{type(err).__name__}: {err}")
        raise
    maintenance(session, False, dry_run=dry_run)


def _configured(target) -> bool:
    return bool(target.maintenance_flag or target.maintenance_command)


class _Window:
    """The one open maintenance window of this process (a runbook deploys to one target)."""

    session = None
    hook = None

    @classmethod
    def open(cls, session: SessionLike) -> None:
        cls.session = session
        _save(session, "maintenance_on.json", {"state": "on", "target": session.target.name})
        if cls.hook is None:
            cls.hook = _install_hook()

    @classmethod
    def close(cls, session: SessionLike, *, after_failure: str | None) -> None:
        if cls.session is None:
            return
        cls.session = None
        body = {"state": "off", "target": session.target.name, "after_failure": after_failure is not None}
        if after_failure is not None:
            body["failed_step_error"] = after_failure
            try:
                _switch(session, False, dry_run=False)
                print(f"Maintenance mode turned off after the failed step ({after_failure[:200]}).")
            except Exception as err:  # noqa: BLE001 - recorded and shown; the step's own failure stays the error
                body.update(state="still on", error=f"{type(err).__name__}: {err}")
                print(f"MAINTENANCE MODE IS STILL ON for target '{session.target.name}': turning it off after the "
                      f"failed step failed too ({err}). Switch it off by hand.")
        _save(session, "maintenance_off.json", body)


def _save(session: SessionLike, name: str, body: dict) -> None:
    body = {**body, "when": datetime.now(UTC).isoformat(timespec="seconds")}
    with contextlib.suppress(FileExistsError):  # a second window in one run: the first one's files stay
        session.save_artifact(name, json.dumps(body, indent=1, sort_keys=True) + "\n")


def _install_hook():
    """Close the window after any failed cell (papermill runs no further cells after one); and at exit."""
    def after_cell(result) -> None:
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if error is not None and _Window.session is not None:
            _Window.close(_Window.session, after_failure=f"{type(error).__name__}: {error}")

    def at_exit() -> None:
        if _Window.session is not None:
            _Window.close(_Window.session, after_failure="the process ended with maintenance on")

    atexit.register(at_exit)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the kernel
        return at_exit
    shell = get_ipython()
    if shell is not None:
        shell.events.register("post_run_cell", after_cell)
    return after_cell


def _switch(session: SessionLike, on: bool, *, dry_run: bool = True) -> pd.DataFrame:
    """Switch maintenance as configured for the target; the table of what was done."""
    target, state = session.target, "on" if on else "off"
    rows = []
    if not target.maintenance_flag and not target.maintenance_command:
        print(f"No maintenance_flag or maintenance_command for target '{target.name}': maintenance {state} skipped.")
        return pd.DataFrame(columns=["action", "state", "done", "output"])
    if target.maintenance_flag:
        flag = Path(target.maintenance_flag).expanduser()
        if not dry_run:
            if on:
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.touch()
            else:
                flag.unlink(missing_ok=True)
        rows.append({"action": f"flag file {flag}", "state": state, "done": not dry_run,
                     "output": "exists" if flag.exists() else "absent"})
    if target.maintenance_command:
        argv = [part.replace("{state}", state) for part in shlex.split(target.maintenance_command)]
        output = "(dry run: not run)"
        if not dry_run:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_command_env(target))
            output = mask_secrets((proc.stdout + proc.stderr).strip())[-500:]
            if proc.returncode != 0:
                raise MaintenanceFailed(f"Maintenance {state} command {argv[0]} exited {proc.returncode}: {output}. "
                                        f"Fix it, or switch maintenance {state} by hand before going on.")
        rows.append({"action": f"command {' '.join(argv)}", "state": state, "done": not dry_run, "output": output})
    return pd.DataFrame(rows, columns=["action", "state", "done", "output"])


def _command_env(target) -> dict[str, str]:
    """The maintenance command's environment: ours without the target's connection URL and PGPASSWORD."""
    import os

    return {k: v for k, v in os.environ.items() if k not in {target.url_env, "PGPASSWORD"}}
