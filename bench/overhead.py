"""What a recorded runbook costs over the tools it wraps.

On the sample migrations (both sets, base -> heads, on a fresh database each time), medians of several runs of:
(a) bare `alembic upgrade heads` (the CLI, once per migration set), (b) papermill executing an empty notebook
(kernel start and save), (c) `dbrunbook run apply -p dry_run false` (status, preview, counts before/after,
upgrade, schema check, snapshot, signed record, ledger). Target: (c) <= 1.2 x ((a) + (b)) (issue 8 part 7).

Where (c)'s time goes is read from its progress lines (each step's seconds, as the kernel ran it); the rest
is the launcher's own work plus the kernel's start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from _common import ROOT, admin_url, fresh_database, trust_operator_key, write_section

REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
BIN = Path(sys.executable).parent


def _ini_for(url: str, set_name: str, folder: Path) -> Path:
    """A copy of the sample's alembic.ini pointing at ``url`` (bare Alembic reads its URL from the ini)."""
    src = ROOT / "migrations" / set_name / "alembic.ini"
    text = src.read_text().replace("%(here)s", str(src.parent))
    lines = [f"sqlalchemy.url = {url.replace('%', '%%')}" if line.startswith("sqlalchemy.url") else line
             for line in text.splitlines()]
    path = folder / f"{set_name}.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_alembic(url: str, folder: Path) -> float:
    t0 = time.perf_counter()
    for set_name in ("main", "ai"):
        subprocess.run([str(BIN / "alembic"), "-c", str(_ini_for(url, set_name, folder)), "upgrade", "heads"],
                       check=True, capture_output=True)
    return time.perf_counter() - t0


def empty_papermill(folder: Path) -> float:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("pass")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = folder / "empty.ipynb"
    nbformat.write(nb, src)
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "papermill"), "--no-progress-bar", "-k", "python3", str(src), str(folder / "out.ipynb")],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


STEP = re.compile(r"^\s*\[(\d+)/\d+\] (.*) \.\.\.$")
DONE = re.compile(r"^\s*\[(\d+)/\d+\] (?:done|FAILED) in ([0-9.]+)s$")


def step_seconds(stderr: str) -> dict[str, float]:
    """{step heading: seconds} from the launcher's progress lines."""
    names, seconds = {}, {}
    for line in stderr.splitlines():
        if m := STEP.match(line):
            names[m.group(1)] = m.group(2)
        elif (m := DONE.match(line)) and m.group(1) in names:
            seconds[names[m.group(1)]] = float(m.group(2))
    return seconds


def dbrunbook_apply(url: str, folder: Path, steps: list[dict[str, float]] | None = None) -> float:
    env = dict(os.environ, DBRUNBOOK_CONFIG=str(folder / "dbrunbook.toml"), BENCH_TARGET_URL=url)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "dbrunbook"), "run", "apply", "-t", "bench", "-p", "dry_run", "false"],
                          env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dbrunbook run apply failed:\n{proc.stdout}\n{proc.stderr}")
    if steps is not None:
        steps.append(step_seconds(proc.stderr))
    return elapsed


def write_config(folder: Path) -> None:
    (folder / "dbrunbook.toml").write_text(f"""
[project]
outputs = "{folder / 'outputs'}"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "{folder / 'state'}"
default_target = "bench"
[targets.bench]
url_env = "BENCH_TARGET_URL"
[migration_sets.main]
alembic_ini = "{ROOT / 'migrations/main/alembic.ini'}"
version_table = "alembic_version"
models = "{ROOT / 'migrations/main/models.py'}:Base"
[migration_sets.ai]
alembic_ini = "{ROOT / 'migrations/ai/alembic.ini'}"
version_table = "alembic_version_ai"
""")


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def main() -> int:
    admin = admin_url()
    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-bench-"))
    write_config(folder)
    trust_operator_key(folder / "dbrunbook.toml")
    a, b, c = [], [], []
    steps: list[dict[str, float]] = []
    loads: list[float] = []
    try:
        for i in range(REPEAT):
            a.append(bare_alembic(fresh_database(admin, "bench_overhead"), folder))
            b.append(empty_papermill(folder))
            c.append(dbrunbook_apply(fresh_database(admin, "bench_overhead"), folder, steps))
            loads.append(os.getloadavg()[0])
            print(f"run {i + 1}/{REPEAT}: alembic {a[-1]:.2f}s papermill {b[-1]:.2f}s dbrunbook {c[-1]:.2f}s",
                  file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ma, mb, mc = median(a), median(b), median(c)
    ratio = mc / (ma + mb)
    in_steps = [sum(run.values()) for run in steps]
    slowest = sorted(steps[0], key=lambda name: -median([run.get(name, 0.0) for run in steps]))[:6]
    breakdown = "\n".join(f"| {name} | {median([run.get(name, 0.0) for run in steps]):.2f} |"
                          for name in slowest)
    write_section("overhead", f"""
## Overhead of a recorded apply (`bench/overhead.py`)

Sample migrations (main + ai, base to heads, {REPEAT} runs on a fresh database each; median seconds;
1-minute load average after each run {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores).

| bare `alembic upgrade heads` (both sets) | empty papermill notebook | `dbrunbook run apply` | ratio to alembic + papermill (target ≤ 1.2) |
|---|---|---|---|
| {ma:.2f} | {mb:.2f} | {mc:.2f} | **{ratio:.2f}x** |

Where the apply's time goes (median seconds): all steps as the kernel ran them {median(in_steps):.2f}; the
launcher, the kernel's start and the saves of the notebook {mc - median(in_steps):.2f}. Slowest steps:

| step | seconds |
|---|---|
{breakdown}

`dbrunbook run apply` includes the launcher's own before/after queries, the preview SQL, exact row counts
before and after, `alembic check` against the models, the snapshot, the signed record and the ledger row.
""")
    print(f"ratio {ratio:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
