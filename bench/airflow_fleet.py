"""Run the provider's fleet DAG (dbrunbook.airflow.example_dags) over 20 tenant databases; check every record.

Opt-in, not part of `make test` or `make bench`: Airflow is installed on first use into its own virtualenv,
bench/_work/airflow-venv (shared with bench/airflow_example.py; `pip install apache-airflow==AIRFLOW_VERSION
apache-airflow-providers-papermill -e .`, a few minutes), which registers dbrunbook as a provider through its
`apache_airflow_provider` entry point.

Two runs of the DAG with waves 1,25%,rest and `max_active_tis_per_dag` 2, by default on a real scheduler
with the LocalExecutor (`airflow standalone`: API server, scheduler, DAG processor; Airflow's metadata in a
database of the benchmark server; each run triggered with `airflow dags trigger` and followed to its end),
or with `--executor test` through `airflow dags test` (in-process, SQLite metadata):

1. group `tenants` (20 fresh databases): every mapped `run` task succeeds, every tenant at heads;
2. group `broken` (a canary database that does not exist, then the same 20): the canary's run fails with a
   signed record, its gate fails, the later waves' tasks end upstream_failed and start no run.

Every record under the project's outputs must verify. Writes the "airflow_fleet" section of RESULTS.md.
Usage: `.venv/bin/python bench/airflow_fleet.py [--tenants 20] [--executor local|test] [--reinstall]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, WORK, admin_url, trust_operator_key, write_section
from airflow_example import AIRFLOW_VERSION, VENV, install

HOME = WORK / "airflow-fleet"
DAG_ID = "dbrunbook_fleet"
SERVER_ENV = "DBRUNBOOK_AIRFLOW_FLEET_SERVER"
PREFIX = "af_tenant_"
DAGS = ROOT / "lib" / "dbrunbook" / "airflow" / "example_dags"


def write_project(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{n}"' for n in names)
    path = folder / "dbrunbook.toml"
    path.write_text(f"""\
[project]
outputs = "outputs"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "state"

[groups.tenants]
url_env = "{SERVER_ENV}"
databases = [{listed}]

[groups.broken]
url_env = "{SERVER_ENV}"
databases = ["{PREFIX}missing", {listed}]

[migration_sets.main]
alembic_ini = "{ROOT / 'migrations/main/alembic.ini'}"
version_table = "alembic_version"

[migration_sets.ai]
alembic_ini = "{ROOT / 'migrations/ai/alembic.ini'}"
version_table = "alembic_version_ai"
""", encoding="utf-8")
    trust_operator_key(path, "airflow@bench")
    return path


def task_states(home: Path, metadata_url: str | None = None) -> dict[str, list[str]]:
    """``{task_id: [state of each map index]}`` of the latest run of the DAG (SQLite, or ``metadata_url``)."""
    latest = "SELECT run_id FROM dag_run WHERE dag_id = :d ORDER BY id DESC LIMIT 1"
    tasks = ("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = :d AND run_id = :r "
             "ORDER BY task_id, map_index")
    if metadata_url is None:
        with sqlite3.connect(home / "airflow.db") as metadata:
            (run_id,) = metadata.execute(latest.replace(":d", "?"), (DAG_ID,)).fetchone()
            rows = metadata.execute(tasks.replace(":d", "?").replace(":r", "?"), (DAG_ID, run_id)).fetchall()
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(metadata_url)
        with engine.connect() as conn:
            run_id = conn.execute(sa.text(latest), {"d": DAG_ID}).scalar()
            rows = conn.execute(sa.text(tasks), {"d": DAG_ID, "r": run_id}).all()
        engine.dispose()
    states: dict[str, list[str]] = {}
    for task_id, _index, state in rows:
        states.setdefault(task_id, []).append(state or "-")
    return states


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Scheduler:
    """``airflow standalone`` with the LocalExecutor, its metadata in ``metadata_url``; runs followed by SQL."""

    def __init__(self, env: dict, metadata_url: str):
        port = _free_port()
        self.metadata_url = metadata_url
        self.env = {**env, "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",  # standalone starts `airflow ...`
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url.replace("postgresql+psycopg://",
                                                                                "postgresql+psycopg2://"),
                    # Airflow 3 also opens the metadata database asynchronously: psycopg 3 (no asyncpg needed).
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url,
                    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", "AIRFLOW__CORE__PARALLELISM": "8",
                    "AIRFLOW__API__PORT": str(port),
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                    "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5"}
        self.airflow = str(VENV / "bin" / "airflow")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Scheduler:
        subprocess.run([self.airflow, "db", "migrate"], env=self.env, check=True, capture_output=True, cwd=HOME)
        self.log = open(HOME / "standalone.log", "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen([self.airflow, "standalone"], env=self.env, cwd=HOME, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the DAG processor has parsed the DAG
            listed = subprocess.run([self.airflow, "dags", "list", "-o", "json"], env=self.env, cwd=HOME,
                                    capture_output=True, text=True)
            if DAG_ID in listed.stdout:
                return self
            assert self.proc.poll() is None, (HOME / "standalone.log").read_text()[-3000:]
            time.sleep(3)
        raise SystemExit(f"the DAG processor did not parse {DAG_ID} in 300 s; see {HOME / 'standalone.log'}")

    def run(self, conf: dict, run_id: str, timeout: float = 1800) -> tuple[int, dict]:
        """Trigger a run and wait for its end; (0 for success else 1, task states)."""
        import sqlalchemy as sa

        subprocess.run([self.airflow, "dags", "trigger", DAG_ID, "--run-id", run_id, "-c", json.dumps(conf)],
                       env=self.env, cwd=HOME, check=True, capture_output=True)
        engine = sa.create_engine(self.metadata_url)
        deadline, state = time.monotonic() + timeout, None
        try:
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    state = conn.execute(sa.text("SELECT state FROM dag_run WHERE dag_id = :d AND run_id = :r"),
                                         {"d": DAG_ID, "r": run_id}).scalar()
                if state in ("success", "failed"):
                    break
                time.sleep(2)
        finally:
            engine.dispose()
        return (0 if state == "success" else 1), task_states(HOME, self.metadata_url)

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.log.close()


def _at_heads(url: str) -> bool:
    """The tenant has both sample sets at their script heads (read from its version tables)."""
    import sqlalchemy as sa

    from dbrunbook.chain import migrations
    from dbrunbook.config import load_config

    config = load_config(ROOT / "dbrunbook.toml")
    engine = sa.create_engine(url)
    try:
        return all(migrations.current(m, engine) == migrations.heads(m) for m in config.migration_sets.values())
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--executor", choices=("local", "test"), default="local",
                        help="local: a real scheduler with the LocalExecutor; test: `airflow dags test`")
    parser.add_argument("--reinstall", action="store_true")
    args = parser.parse_args()

    from dbrunbook import records
    from dbrunbook.config import load_config
    from dbrunbook.postgres import db

    install_seconds, venv_size = install(args.reinstall)
    admin = admin_url()
    names = [f"{PREFIX}{i:03d}" for i in range(1, args.tenants + 1)]
    for name in names:
        db.drop_database(admin, name)
        db.create_database(admin, name)
    HOME.mkdir(parents=True, exist_ok=True)
    config_path = write_project(HOME / "project", names)
    env = {**os.environ, "AIRFLOW_HOME": str(HOME), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "DBRUNBOOK_CONFIG": str(config_path),
           "DBRUNBOOK_OPERATOR": "airflow@bench", "DBRUNBOOK_FLEET_WAVES": "1,25%,rest",
           "DBRUNBOOK_FLEET_PARALLEL": "2", SERVER_ENV: admin.replace("postgresql+psycopg://", "postgresql://")}
    airflow = str(VENV / "bin" / "airflow")
    runs = (("fleet", {"runbook": "apply", "group": "tenants", "dry_run": False}),
            ("failing canary", {"runbook": "apply", "group": "broken", "dry_run": False}))
    results = []
    if args.executor == "local":
        db.drop_database(admin, "af_metadata")
        db.create_database(admin, "af_metadata")
        with Scheduler(env, db.with_database(admin, "af_metadata")) as scheduler:
            for number, (label, conf) in enumerate(runs, start=1):
                started = time.perf_counter()
                code, states = scheduler.run(conf, f"bench_{number}_{int(time.time())}")
                results.append((label, code, time.perf_counter() - started, states))
                print(f"{label}: {'success' if code == 0 else 'failed'}", file=sys.stderr)
        db.drop_database(admin, "af_metadata")
    else:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, cwd=HOME)
        for label, conf in runs:
            started = time.perf_counter()
            log = HOME / f"dags-test-{label.replace(' ', '-')}.log"
            with open(log, "w") as out:
                code = subprocess.call([airflow, "dags", "test", DAG_ID, "-c", json.dumps(conf)], env=env,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=HOME)
            results.append((label, code, time.perf_counter() - started, task_states(HOME)))
            print(f"{label}: exit {code}", file=sys.stderr)
    heads = [_at_heads(db.with_database(admin, n)) for n in names]
    config = load_config(config_path)
    checks = [records.verify_record(d, config.allowed_signers) for d in records.find_records(config.outputs_dir)]
    for name in names:
        db.drop_database(admin, name)
    first, second = results[0][3], results[1][3]
    ok = (set(first.get("wave_1.run", [])) | set(first.get("wave_3.run", [])) == {"success"}
          and second.get("wave_1.run") == ["failed"] and "upstream_failed" in "".join(second.get("wave_2.run", []))
          and all(c.ok for c in checks) and all(heads))
    how = ("a real scheduler with the LocalExecutor (`airflow standalone`, metadata in PostgreSQL, each run "
           "`airflow dags trigger`ed and followed to its end)" if args.executor == "local"
           else "`airflow dags test dbrunbook_fleet` (in-process)")
    rows = "\n".join(f"| {label} | {('success' if code == 0 else 'failed') if args.executor == 'local' else code} "
                     f"| {seconds:.0f} | "
                     + "; ".join(f"{t}: {','.join(sorted(set(s)))}" for t, s in sorted(states.items())) + " |"
                     for label, code, seconds, states in results)
    write_section("airflow_fleet", f"""
## Airflow fleet DAG (`bench/airflow_fleet.py`)

Airflow {AIRFLOW_VERSION} (venv {venv_size}{f', installed in {install_seconds:.0f} s' if install_seconds else ''}),
{how}, {args.tenants} tenant databases, waves 1,25%,rest, `max_active_tis_per_dag` 2.

| run | {"DAG run" if args.executor == "local" else "exit"} | seconds | task states |
|---|---|---|---|
{rows}

Records: {sum(c.ok for c in checks)} of {len(checks)} valid. As expected: **{ok}**.
""")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
