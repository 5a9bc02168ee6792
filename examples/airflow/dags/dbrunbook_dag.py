"""Airflow DAG ``dbrunbook_deploy``: status -> preview -> deploy -> verify, each a signed dbrunbook record.

Triggered by hand or by a release pipeline (no schedule), one run at a time. ``deploy`` is a dry run unless
the run's ``dry_run`` param is false:

    airflow dags trigger dbrunbook_deploy -c '{"target": "staging", "dry_run": false}'

Each task is a ``DbRunbookOperator`` (plugins/dbrunbook_operator.py): dbrunbook's launcher runs the notebook
and signs the record as ``dbrunbook run`` would; the run's JSON (run id, outcome, record directory, heads
before/after) is the task's XCom. The workers need ``DBRUNBOOK_CONFIG`` (the project's dbrunbook.toml), the
target's ``url_env`` variable and ``~/.pgpass`` in their environment, and the operator's signing key.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from dbrunbook_operator import DbRunbookOperator

# Jinja renders params as strings; dbrunbook parses them to the declared types ("False" -> False), and a
# revision such as "0012" stays text (why render_template_as_native_obj stays off: it would make it 12).
TARGET = "{{ params.target }}"
MIGRATION_SET = "{{ params.migration_set }}"
REVISION = "{{ params.revision }}"
DRY_RUN = "{{ params.dry_run }}"

with DAG(
    dag_id="dbrunbook_deploy",
    description="Deploy Alembic migrations with dbrunbook runbooks; every step a signed record",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two deploys of one database at once would race for its version table
    params={
        "target": Param("staging", type="string", description="database target from dbrunbook.toml"),
        "migration_set": Param("all", type="string", description="'all' or a comma-separated list of sets"),
        "revision": Param("heads", type="string", description="Alembic revision to deploy to"),
        "dry_run": Param(True, type="boolean", description="false to apply; true only renders and checks"),
    },
    tags=["dbrunbook", "migrations"],
) as dag:
    status = DbRunbookOperator(
        task_id="status", runbook="status", target=TARGET,
        parameters={"migration_set": MIGRATION_SET},
    )
    preview = DbRunbookOperator(
        task_id="preview", runbook="preview", target=TARGET,
        parameters={"migration_set": MIGRATION_SET, "revision": REVISION},
    )
    deploy = DbRunbookOperator(
        task_id="deploy", runbook="deploy", target=TARGET,
        parameters={"migration_set": MIGRATION_SET, "revision": REVISION, "dry_run": DRY_RUN},
    )
    verify = DbRunbookOperator(
        task_id="verify", runbook="verify", target=TARGET,
        parameters={},
    )

    status >> preview >> deploy >> verify
