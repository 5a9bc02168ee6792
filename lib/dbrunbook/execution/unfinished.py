"""Runs whose record is not finished: what is checked before a run so that it can finish its record, and
the register of launched runs that have no signed record yet.

The invariant is "a database change always has a record". Two halves keep it: before the first statement
runs, everything sealing needs is checked (folders writable, the trust file, room for the record), so a
problem refuses the run with nothing changed; and every launched run is registered in
``<state_dir>/runs/`` until its record is signed, so a launcher that was killed, or a seal that failed, is
noticed by the next ``dbrunbook`` command instead of waiting for someone to look.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dbrunbook.config import Config
from dbrunbook.errors import RecordNotWritable
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, SIGNATURE_FILE

log = logging.getLogger(__name__)

__all__ = [
    "UNSEALED_ARTIFACT",
    "UnfinishedRun",
    "check_record_can_be_written",
    "estimate_record_size",
    "launcher_alive",
    "notices",
    "register",
    "unfinished_runs",
    "unregister",
]

#: Written into artifacts/ when a run's record could not be signed: what ``dbrunbook seal`` finishes it from.
UNSEALED_ARTIFACT = "launcher-unsealed.json"
_REGISTER = "runs"
_MIB = 1024 * 1024
#: An executed notebook is its source plus outputs (tables, plots): the sample runbooks grow 40-60 times
#: (apply.ipynb: 8 kB -> 425 kB). Twice the larger of that and the last record of the runbook, plus 1 MiB.
_GROWTH, _MARGIN = 64, _MIB


@dataclass(frozen=True)
class UnfinishedRun:
    """A launched run with no signed record whose launcher is not running any more."""

    run_id: str
    run_dir: Path
    runbook: str
    target: str
    started_at: str
    pid: int
    host: str
    seal_error: str | None = None  # the launcher finished the run but could not sign it

    def message(self) -> str:
        why = (f"its record could not be signed ({self.seal_error})" if self.seal_error else
               f"its launcher (pid {self.pid} on {self.host}) ended before sealing it")
        return (f"dbrunbook: run {self.run_id} (runbook {self.runbook}, target '{self.target}', started "
                f"{self.started_at}) has no signed record: {why}. Finish it with 'dbrunbook seal {self.run_dir}'.")


# --- before a run ---------------------------------------------------------------------------------------
def _writable_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dbrunbook-probe-"):
            pass
    except OSError as err:
        raise RecordNotWritable(folder, f"({what}) cannot be written: {err.strerror or err}",
                                "Make it a writable folder, or point dbrunbook.toml at one.") from err


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _last_record_size(outputs_dir: Path, runbook: str) -> int:
    """Size of the newest run directory of ``runbook`` in the three newest day folders (not a full scan)."""
    days = sorted(outputs_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]"))[-3:]
    for day in reversed(days):
        runs = sorted(p for p in day.iterdir() if p.is_dir() and f"-{runbook}-" in p.name)
        if runs:
            try:
                return _folder_size(runs[-1])
            except OSError:
                return 0
    return 0


def estimate_record_size(config: Config, runbook_path: Path, runbook: str) -> int:
    """Bytes a record of ``runbook`` may need: twice the larger of 64 x its source and its last record, + 1 MiB."""
    grown = Path(runbook_path).stat().st_size * _GROWTH
    return 2 * max(grown, _last_record_size(config.outputs_dir, runbook)) + _MARGIN


def check_record_can_be_written(config: Config, runbook_path: Path, runbook: str) -> int:
    """Check that a run of ``runbook`` can write and register its record; returns the size estimate.

    The outputs and state folders must be writable, the trust file readable, and the free space and this
    process's file-size limit (``ulimit -f``, inherited by the kernel) must hold the estimated record.

    Raises:
        RecordNotWritable: one of them is not so (a usage problem: exit 2, nothing has run).
    """
    _writable_folder(config.outputs_dir, "the outputs folder")
    _writable_folder(config.state_dir / _REGISTER, "the state folder's run register")
    allowed = Path(config.allowed_signers)
    if allowed.exists() and not os.access(allowed, os.R_OK):
        raise RecordNotWritable(allowed, "(the trust file, allowed_signers) cannot be read",
                                "Make it readable: 'dbrunbook verify' checks every record against it.")
    need = estimate_record_size(config, runbook_path, runbook)
    free = shutil.disk_usage(config.outputs_dir).free
    if free < need:
        raise RecordNotWritable(config.outputs_dir, f"has {free / _MIB:.1f} MiB free; a record of runbook "
                                f"'{runbook}' may need {need / _MIB:.1f} MiB",
                                "Free some space (or move outputs to a larger disk) and run again.")
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raise RecordNotWritable(config.outputs_dir, f"cannot get files larger than {soft / _MIB:.2f} MiB "
                                f"(file size limit, ulimit -f); a record of runbook '{runbook}' may need "
                                f"{need / _MIB:.1f} MiB", "Raise the limit (ulimit -f unlimited) and run again.")
    return need


# --- the register ---------------------------------------------------------------------------------------
def _entry_path(config: Config, run_id: str) -> Path:
    return config.state_dir / _REGISTER / f"{run_id}.json"


def register(config: Config, *, run_id: str, run_dir: Path, runbook: str, target: str, started_at: str) -> None:
    """Note a launched run as unfinished until ``unregister`` (called once its record is signed)."""
    entry = {"run_id": run_id, "run_dir": str(run_dir), "runbook": runbook, "target": target,
             "started_at": started_at, "pid": os.getpid(), "host": socket.gethostname()}
    path = _entry_path(config, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def unregister(config: Config, run_id: str) -> None:
    try:
        _entry_path(config, run_id).unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # a stale entry is only a false notice, which notices() clears once sealed
        log.warning("could not remove the register entry of run %s: %s", run_id, err)


def launcher_alive(pid: int | None, host: str | None) -> bool:
    """True when the process ``pid`` on this host exists (a launcher on another host counts as alive)."""
    if not pid:
        return False
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unfinished_runs(config: Config) -> list[UnfinishedRun]:
    """Registered runs without a signed record whose launcher is gone, oldest first.

    Entries of runs that were sealed since (by ``dbrunbook seal``) are removed on the way.
    """
    folder = config.state_dir / _REGISTER
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        run_dir = Path(entry.get("run_dir", ""))
        if (run_dir / SIGNATURE_FILE).exists() or not (run_dir / INTENT_FILE).exists():
            unregister(config, entry.get("run_id", path.stem))
            continue
        unsealed = run_dir / ARTIFACTS_DIR / UNSEALED_ARTIFACT
        seal_error = None
        if unsealed.is_file():
            try:
                seal_error = json.loads(unsealed.read_text(encoding="utf-8")).get("error")
            except (OSError, ValueError):
                seal_error = "see " + str(unsealed)
        elif launcher_alive(entry.get("pid"), entry.get("host")):
            continue  # still running
        found.append(UnfinishedRun(run_id=entry["run_id"], run_dir=run_dir, runbook=entry.get("runbook", "?"),
                                   target=entry.get("target", "?"), started_at=entry.get("started_at", "?"),
                                   pid=int(entry.get("pid") or 0), host=entry.get("host", "?"),
                                   seal_error=seal_error))
    return found


def notices(config: Config) -> list[str]:
    """One line per unfinished run, for the CLI to print before a command; [] when all is sealed."""
    try:
        return [run.message() for run in unfinished_runs(config)]
    except OSError as err:  # the notice must never keep a command from running
        log.warning("could not read the run register: %s", err)
        return []
