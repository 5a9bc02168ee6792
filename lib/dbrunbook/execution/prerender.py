"""Work of a run done by a second process of the launcher while the kernel starts (``dbrunbook run``).

A previewing runbook (``PREVIEWING``) reaches its preview step about a second after the launcher starts its
kernel: kernel start-up, the session, the status step. Alembic's offline rendering needs no database, only
the migration files and where the range starts, which the launcher has read before the run; so the
launcher starts one process (``python -m dbrunbook.execution.prerender``) that renders the range on the
other core meanwhile and writes the steps to a file under ``state_dir/prerender/``, with the set's history
(the ledger row names the applied scripts from it at the seal, instead of loading every revision again).
For a graphing runbook (``GRAPHING``) the process draws the revision graph of the position the launcher read.

The kernel takes the steps (``rendered_steps``) or the picture (``drawn_graph``) only when they were made for
the same project, target, migration set and range (or position), and every migration file of the set (ini,
env.py, revisions) has the same size and mtime as then; else, or when the process failed, the kernel does the
work as before. It is the same library call on the same files, so the SQL and the PNG are the same (tests
compare them byte for byte); the step says which process did it. At 1,000 revisions this takes Alembic's
~0.4 s of rendering off the run's path; an interactive run (no launcher) always renders in the kernel.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dbrunbook.chain import migrations
from dbrunbook.chain.digests import file_versions
from dbrunbook.chain.values import RevisionInfo, SqlStep
from dbrunbook.config import Config, MigrationSet, load_config
from dbrunbook.postgres.masking import mask_secrets
from dbrunbook.protocol import environment_variable
from dbrunbook.views.pictures import Plot

#: The result file and the rendering process's pid, for the kernel: ``PID:PATH``.
ENV = "DBRUNBOOK_PRERENDER"
#: Runbooks whose notebook previews ``-p revision`` of ``-p migration_set`` from where the database is.
PREVIEWING = ("apply", "deploy", "preview")
#: Runbooks whose revision graph shows where the database was when the run began.
GRAPHING = ("status",)
#: The longest a preview step waits for a rendering process that is still running, in seconds.
WAIT_SECONDS = 300.0
#: How old a result file in ``state_dir/prerender`` is before the next run removes it, in seconds.
STALE_SECONDS = 3600.0


@dataclasses.dataclass
class Prerender:
    """The launcher's handle on its rendering process."""

    process: subprocess.Popen
    path: Path

    @property
    def env_value(self) -> str:
        return f"{self.process.pid}:{self.path}"

    def histories(self) -> dict[str, tuple[list, list[RevisionInfo]]]:
        """``{set: (its files' versions, its history)}`` as the process read them, if it has finished: the
        ledger row names the applied scripts from these when the files are still the same (``ledger_rows``)."""
        if self.process.poll() is None:
            return {}
        try:
            result = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {name: (entry["files"], [_revision_info(r) for r in entry["history"]])
                for name, entry in result.get("sets", {}).items() if "history" in entry}

    def close(self) -> None:
        """Stop the process if it still runs and remove its file: the record never holds it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.path.unlink(missing_ok=True)


def _revision_info(saved: dict) -> RevisionInfo:
    return RevisionInfo(**{**saved, "down_revisions": tuple(saved["down_revisions"]),
                           "branch_labels": tuple(saved["branch_labels"]), "path": Path(saved["path"])})


def _remove_stale(folder: Path) -> None:
    """Files a killed launcher left (its process wrote them after it was gone): gone after an hour."""
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()


def start(config: Config, runbook: str, run_id: str, values: dict, heads: dict) -> Prerender | None:
    """Start rendering ``values``' range for a previewing runbook, the revision graphs for a graphing one; None
    for any other runbook, or when the process cannot start."""
    if runbook not in PREVIEWING + GRAPHING or config.path is None:
        return None
    try:
        sets = config.select_sets(str(values.get("migration_set", "all")))
    except Exception:  # the kernel says what is wrong with the parameter
        return None
    folder = config.state_dir / "prerender"
    read = {m.name: heads[m.name] for m in sets if heads.get(m.name) is not None}  # None: could not be read
    spec: dict[str, Any] = {"config": str(config.path), "target": str(values.get("target", "")),
                            "end": str(values.get("revision", "heads")), "out": str(folder / f"{run_id}.json"),
                            "sets": {name: ",".join(at) or None for name, at in read.items()}
                            if runbook in PREVIEWING else {},
                            "graphs": read if runbook in GRAPHING else {}}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        process = subprocess.Popen([sys.executable, "-m", "dbrunbook.execution.prerender", json.dumps(spec)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=str(config.root))
    except OSError:
        return None
    threading.Thread(target=process.wait, daemon=True).start()  # reaped when it ends: the kernel sees it gone
    return Prerender(process, Path(spec["out"]))


def for_kernel(rendering: Prerender | None) -> contextlib.AbstractContextManager[None]:
    """Tell the kernel (it inherits the environment) where the rendering goes, for the time of the run."""
    return contextlib.nullcontext() if rendering is None else environment_variable(ENV, rendering.env_value)


def _error_text(err: BaseException) -> str:
    """Why the process could not do something, passwords masked (the file is only read to decide)."""
    return mask_secrets(f"{type(err).__name__}: {err}")[:500]


def render(spec: dict) -> dict:
    """What the process writes: per set, its start and end, its files' versions and its steps (or why not)."""
    config = load_config(Path(spec["config"]))
    out: dict[str, Any] = {"config": spec["config"], "target": spec.get("target"), "end": spec["end"], "sets": {}}
    for name, start_at in spec["sets"].items():
        mset = config.migration_set(name)
        before = file_versions(mset)
        try:
            steps = migrations.offline_sql(mset, start_at, spec["end"])
        except Exception as err:  # the kernel renders, and says what is wrong
            out["sets"][name] = {"error": _error_text(err)}
            continue
        if file_versions(mset) != before:
            continue  # a file changed while it rendered
        history = [{**dataclasses.asdict(r), "path": str(r.path)} for r in migrations.history(mset)]
        out["sets"][name] = {"start": start_at, "files": before, "steps": [dataclasses.asdict(s) for s in steps],
                             "history": history}
    if spec.get("graphs"):
        from dbrunbook.views import plots  # matplotlib: only for a process that draws
    for name, current in spec.get("graphs", {}).items():
        mset = config.migration_set(name)
        before = file_versions(mset)
        plot = plots.revision_graph(mset, current=tuple(current))
        if file_versions(mset) == before:
            out.setdefault("graphs", {})[name] = {
                "current": list(current), "files": before, "title": plot.title, "width": plot.width,
                "height": plot.height, "png": base64.b64encode(plot.png).decode("ascii")}
    return out


def _read(path: Path, pid: int) -> dict | None:
    """The process's result, waiting while it runs; None when it ended without one."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # ended (the launcher reaps it): the file is there now or never
            if not path.exists():
                return None
            break
        except PermissionError:
            pass  # running as another user: it is there
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def rendered_steps(config: Config, target: str, mset: MigrationSet, start_at: str | None, end: str
                   ) -> list[SqlStep] | None:
    """The steps the launcher's process rendered for this run's range, if they still hold; None otherwise."""
    result = _result(config, target)
    if not result or result.get("end") != end:
        return None
    entry = result.get("sets", {}).get(mset.name)
    if not entry or "steps" not in entry or entry.get("start") != start_at or entry["files"] != file_versions(mset):
        return None
    return [SqlStep(**{**s, "down_revision": tuple(s["down_revision"])}) for s in entry["steps"]]


def _result(config: Config, target: str) -> dict | None:
    """The process's result for this project and target, waiting while it runs; None without one."""
    value = os.environ.get(ENV, "")
    pid, _, path = value.partition(":")
    if not pid.isdigit() or not path:
        return None
    result = _read(Path(path), int(pid))
    if not result or (result.get("config"), result.get("target")) != (str(config.path), target):
        return None
    return result


def drawn_graph(config: Config, target: str, mset: MigrationSet, current: tuple[str, ...]) -> Plot | None:
    """The revision graph the launcher's process drew for this position, if the files are still the same."""
    result = _result(config, target)
    entry = (result or {}).get("graphs", {}).get(mset.name)
    if not entry or tuple(entry["current"]) != tuple(current) or entry["files"] != file_versions(mset):
        return None
    return Plot(title=entry["title"], png=base64.b64decode(entry["png"]), width=entry["width"],
                height=entry["height"])


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out = Path(spec["out"])
    try:
        result = render(spec)
    except Exception as err:
        result = {"error": _error_text(err)}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out)  # whole or not at all: the kernel reads it as soon as it exists
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
