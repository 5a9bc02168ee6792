"""Run the example Airflow DAG (examples/airflow) once for real and record what happened in RESULTS.md.

Not part of `make test`: Airflow brings ~300 packages (1.1 GB), so it lives in its own virtualenv,
bench/_work/airflow-venv (git-ignored), created on first use with
`pip install apache-airflow==AIRFLOW_VERSION apache-airflow-providers-papermill -e .` and reused afterwards.

Then, with a fresh AIRFLOW_HOME (SQLite metadata) and a fresh database on the benchmark server
($DBRUNBOOK_BENCH_DATABASE_URL, else an embedded one), three `airflow dags test dbrunbook_deploy` runs:

1. `{"dry_run": false}`: status -> preview -> deploy (applies the sample migrations) -> verify, all succeed;
2. `{"target": "unhealthy"}` (same database, a health_url nobody answers): the dry-run deploy fails at its
   health check step (exit status 1, a signed record), so verify does not run;
3. `{"revision": "nosuchrev"}`: dbrunbook refuses the parameter before any run (no record), the preview
   task fails with that message.

Each task's state and its dbrunbook run (from XCom), and `dbrunbook verify` of every record, go to the
"airflow" section of bench/RESULTS.md. Usage: `.venv/bin/python bench/airflow_example.py [--reinstall]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, WORK, admin_url, fresh_database, trust_operator_key, write_section

AIRFLOW_VERSION = "3.3.2"
VENV = WORK / "airflow-venv"
HOME = WORK / "airflow"
EXAMPLE = ROOT / "examples" / "airflow"
URL_ENV = "DBRUNBOOK_AIRFLOW_EXAMPLE_URL"
DAG_ID = "dbrunbook_deploy"
TASKS = ("status", "preview", "deploy", "verify")
RUNS = (
    ("deploy", {"target": "scheduled", "dry_run": False}),
    ("failing step", {"target": "unhealthy"}),
    ("bad parameter", {"target": "scheduled", "revision": "nosuchrev"}),
)


def _run(command: list[str], env: dict | None = None, log: Path | None = None, check: bool = True
         ) -> tuple[float, int]:
    """Run ``command``, output to ``log``; (seconds it took, exit status). ``check``: SystemExit if it fails."""
    started = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        code = subprocess.call(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=HOME)
    if code != 0 and check:
        tail = log.read_text().splitlines()[-30:] if log else []
        raise SystemExit("\n".join([f"{' '.join(command[:4])} ... exited {code}:", *tail]))
    return time.perf_counter() - started, code


def install(reinstall: bool) -> tuple[float | None, str]:
    """The Airflow virtualenv; (seconds the install took, or None when reused; its size)."""
    seconds = None
    if reinstall and VENV.exists():
        shutil.rmtree(VENV)
    if not (VENV / "bin" / "airflow").exists():
        HOME.mkdir(parents=True, exist_ok=True)
        print(f"Installing apache-airflow {AIRFLOW_VERSION} into {VENV} (a few minutes) ...", file=sys.stderr)
        started = time.perf_counter()
        _run([sys.executable, "-m", "venv", str(VENV)])
        # psycopg2: bench/airflow_fleet.py's scheduler run keeps Airflow's metadata on the benchmark server.
        _run([str(VENV / "bin" / "python"), "-m", "pip", "install", f"apache-airflow=={AIRFLOW_VERSION}",
              "apache-airflow-providers-papermill", "psycopg2-binary", "-e", str(ROOT)], log=HOME / "pip-install.log")
        seconds = time.perf_counter() - started
    size = subprocess.run(["du", "-sh", str(VENV)], check=True, capture_output=True, text=True).stdout.split()[0]
    return seconds, size


def write_project(folder: Path) -> Path:
    """A dbrunbook.toml: target 'scheduled' = the bench database via URL_ENV, the repository's runbooks."""
    folder.mkdir(parents=True)
    config = folder / "dbrunbook.toml"
    config.write_text(f"""\
[project]
outputs = "outputs"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "state"
default_target = "scheduled"

[targets.scheduled]
url_env = "{URL_ENV}"
lock_timeout = "2s"

[targets.unhealthy]
url_env = "{URL_ENV}"
health_url = "http://127.0.0.1:9/health"

[migration_sets.main]
alembic_ini = "{ROOT / 'migrations/main/alembic.ini'}"
version_table = "alembic_version"

[migration_sets.ai]
alembic_ini = "{ROOT / 'migrations/ai/alembic.ini'}"
version_table = "alembic_version_ai"
""", encoding="utf-8")
    trust_operator_key(config, "airflow@bench")
    return config


def task_runs(run_id: str) -> list[dict]:
    """State of each task of the DAG run ``run_id`` and the dbrunbook run its XCom holds."""
    with sqlite3.connect(HOME / "airflow.db") as metadata:
        states = dict(metadata.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)))
        xcoms = dict(metadata.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'dbrunbook_run'",
            (DAG_ID, run_id)))
    rows = []
    for task in TASKS:
        run = json.loads(xcoms[task]) if task in xcoms else {}
        if isinstance(run, str):  # some metadata backends store the JSON document as a JSON string
            run = json.loads(run)
        rows.append({"task": task, "state": states.get(task) or "-", **run})
    return rows


def latest_dag_run() -> str:
    with sqlite3.connect(HOME / "airflow.db") as metadata:
        return metadata.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                (DAG_ID,)).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reinstall", action="store_true", help="recreate the Airflow virtualenv")
    args = parser.parse_args()

    from dbrunbook import records
    from dbrunbook.config import load_config
    from dbrunbook.postgres.db import mask_url

    install_seconds, venv_size = install(args.reinstall)
    if HOME.exists():
        for child in HOME.iterdir():  # a fresh AIRFLOW_HOME and project; the pip log stays
            if child.name != "pip-install.log":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    HOME.mkdir(parents=True, exist_ok=True)
    url = fresh_database(admin_url(), "airflow_example")
    config_path = write_project(HOME / "project")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(EXAMPLE / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DBRUNBOOK_CONFIG": str(config_path),
        "DBRUNBOOK_OPERATOR": "airflow@bench",
        URL_ENV: url.replace("postgresql+psycopg://", "postgresql://", 1),
    }
    airflow = str(VENV / "bin" / "airflow")
    print(f"Database {mask_url(url)}; AIRFLOW_HOME {HOME}", file=sys.stderr)
    migrate_seconds, _ = _run([airflow, "db", "migrate"], env, HOME / "db-migrate.log")

    results = []
    for label, conf in RUNS:
        print(f"airflow dags test {DAG_ID} -c '{json.dumps(conf)}' ...", file=sys.stderr)
        started = time.perf_counter()
        # `dags test` exits 1 when the DAG run failed; the task states below say which task and why.
        seconds, code = _run([airflow, "dags", "test", DAG_ID, "-c", json.dumps(conf)], env,
                             _log(label), check=False)
        results.append((label, conf, seconds, code, task_runs(latest_dag_run())))
        print(f"  exit status {code}, {time.perf_counter() - started:.1f} s", file=sys.stderr)

    config = load_config(config_path)
    checks = {c.run_id: c for c in (records.verify_record(d, config.allowed_signers)
                                    for d in records.find_records(config.outputs_dir))}
    body = report(results, checks, install_seconds, venv_size, migrate_seconds)
    write_section("airflow", body)
    print(body)
    return 0 if as_expected(results) and all(c.ok for c in checks.values()) else 1


def task_error(log: Path, module: str) -> str | None:
    """The last error of class ``module.*`` a task raised, 'Class: message', from the `dags test` log."""
    found = re.findall(rf"^{re.escape(module)}\.(\w+: .*)$", log.read_text(), re.MULTILINE)
    return found[-1] if found else None


def _log(label: str) -> Path:
    return HOME / f"dags-test-{label.replace(' ', '-')}.log"


def as_expected(results: list) -> bool:
    """Run 1 all success; run 2 deploy failed with a record, verify not run; run 3 preview refused."""
    states = [{r["task"]: r["state"] for r in rows} for *_, rows in results]
    deploy_2 = next(r for r in results[1][4] if r["task"] == "deploy")
    return (set(states[0].values()) == {"success"}
            and states[1]["deploy"] == "failed" and deploy_2.get("exit_status") == 1
            and states[1]["verify"] != "success"
            and states[2]["preview"] == "failed" and not any(r.get("run_id") for r in results[2][4][1:]))


def report(results: list, checks: dict, install_seconds: float | None, venv_size: str,
           migrate_seconds: float) -> str:
    lines = [
        "## Airflow example DAG (`bench/airflow_example.py`)",
        "",
        f"apache-airflow {AIRFLOW_VERSION} + apache-airflow-providers-papermill + dbrunbook (editable) in "
        f"bench/_work/airflow-venv ({venv_size}): "
        + (f"installed in **{install_seconds:.0f} s**." if install_seconds is not None
           else "reused (`--reinstall` to time the install)."),
        (f"`airflow db migrate` (SQLite): {migrate_seconds:.1f} s. Each DAG run is `airflow dags test {DAG_ID} "
         f"-c CONF` on one database with the sample migrations; records checked with `records.verify_record`. "
         f"Load average while it ran: {os.getloadavg()[1]:.1f} (5 min) on {os.cpu_count()} cores."),
        "",
        "| DAG run (conf) | wall s, exit | task | state | dbrunbook outcome (exit) | record | verify |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, conf, seconds, code, rows in results:
        refused = task_error(_log(label), "dbrunbook.errors")
        for i, row in enumerate(rows):
            check = checks.get(row.get("run_id", ""))
            if row.get("outcome"):
                outcome = f"{row['outcome']} ({row['exit_status']})"
            elif row["state"] == "failed" and refused:
                outcome = f"refused before the run: {refused.split(':')[0]}"
            else:
                outcome = "-"
            first = i == 0
            lines.append(
                f"| {f'{label} `{json.dumps(conf)}`' if first else ''} | {f'{seconds:.1f}, {code}' if first else ''} "
                f"| {row['task']} | {row['state']} | {outcome} | {row.get('run_id', '-')} "
                f"| {check.status if check else '-'} |"
            )
    deploy = next(r for r in results[0][4] if r["task"] == "deploy")
    lines += ["", (f"Run 1, deploy: heads {json.dumps(deploy.get('heads_before'))} -> "
                   f"{json.dumps(deploy.get('heads_after'))}.")]
    for label, *_ in results[1:]:
        error = task_error(_log(label), "airflow.sdk.exceptions") or task_error(_log(label), "dbrunbook.errors")
        lines.append(f"Run '{label}', the failed task's error: `{error}`")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
