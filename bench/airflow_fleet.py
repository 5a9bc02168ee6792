"""Run the provider's fleet DAG (dbrunbook.airflow.example_dags) over 20 tenant databases; check every record.

Opt-in, not part of `make test` or `make bench`: Airflow is installed on first use into its own virtualenv,
bench/_work/airflow-venv (shared with bench/airflow_example.py; `pip install apache-airflow==AIRFLOW_VERSION
apache-airflow-providers-papermill -e .`, a few minutes), which registers dbrunbook as a provider through its
`apache_airflow_provider` entry point.

Two `airflow dags test dbrunbook_fleet` runs with waves 1,25%,rest and `max_active_tis_per_dag` 2:

1. group `tenants` (20 fresh databases): every mapped `run` task succeeds, every tenant at heads;
2. group `broken` (a canary database that does not exist, then the same 20): the canary's run fails with a
   signed record, its gate fails, the later waves' tasks end upstream_failed and start no run.

Every record under the project's outputs must verify. Writes the "airflow_fleet" section of RESULTS.md.
Usage: `.venv/bin/python bench/airflow_fleet.py [--tenants 20] [--reinstall]`.
"""

from __future__ import annotations

import argparse
import json
import os
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


def task_states(home: Path) -> dict[str, list[str]]:
    """``{task_id: [state of each map index]}`` of the latest run of the DAG."""
    with sqlite3.connect(home / "airflow.db") as metadata:
        (run_id,) = metadata.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                     (DAG_ID,)).fetchone()
        rows = metadata.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND "
                                "run_id = ? ORDER BY task_id, map_index", (DAG_ID, run_id)).fetchall()
    states: dict[str, list[str]] = {}
    for task_id, _index, state in rows:
        states.setdefault(task_id, []).append(state or "-")
    return states


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
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, cwd=HOME)
    results = []
    for label, conf in (("fleet", {"runbook": "apply", "group": "tenants", "dry_run": False}),
                        ("failing canary", {"runbook": "apply", "group": "broken", "dry_run": False})):
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
    rows = "\n".join(f"| {label} | {code} | {seconds:.0f} | "
                     + "; ".join(f"{t}: {','.join(sorted(set(s)))}" for t, s in sorted(states.items())) + " |"
                     for label, code, seconds, states in results)
    write_section("airflow_fleet", f"""
## Airflow fleet DAG (`bench/airflow_fleet.py`)

Airflow {AIRFLOW_VERSION} (venv {venv_size}{f', installed in {install_seconds:.0f} s' if install_seconds else ''}),
`airflow dags test dbrunbook_fleet`, {args.tenants} tenant databases, waves 1,25%,rest, parallel 2.

| run | exit | seconds | task states |
|---|---|---|---|
{rows}

Records: {sum(c.ok for c in checks)} of {len(checks)} valid. As expected: **{ok}**.
""")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
