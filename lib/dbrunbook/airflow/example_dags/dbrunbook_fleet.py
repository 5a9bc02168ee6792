"""Airflow DAG ``dbrunbook_fleet``: one runbook over every member of a dbrunbook group, in waves.

    airflow dags trigger dbrunbook_fleet -c '{"runbook": "apply", "group": "tenants", "dry_run": false}'

``plan`` lists the group's members (at run time: a ``databases_query`` sees today's tenants) and cuts them
into WAVES; each wave is a task group whose ``run`` task is a ``DbRunbookOperator`` mapped over the wave's
members (dynamic task mapping), with ``max_active_tis_per_dag`` as the parallelism; its ``gate`` (all_done)
fails past the failure limit (the canary: any failure), so the next wave's tasks end upstream_failed. The
same DAG runs on the Local, Celery or Kubernetes executor; every member's run is a signed dbrunbook record.
Environment: ``DBRUNBOOK_CONFIG``, the group's ``url_env``, the signing key; ``DBRUNBOOK_FLEET_GROUP``,
``DBRUNBOOK_FLEET_RUNBOOK`` and ``DBRUNBOOK_FLEET_PARALLEL`` set the defaults below.
"""

from __future__ import annotations

import os
from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, Param, TaskGroup, task
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param
    from airflow.utils.task_group import TaskGroup

from dbrunbook.airflow.operators import DbRunbookOperator, fleet_plan, wave_gate

WAVES = os.environ.get("DBRUNBOOK_FLEET_WAVES", "1,10%,rest")
WAVE_COUNT = len([p for p in WAVES.split(",") if p.strip()])
PARALLEL = int(os.environ.get("DBRUNBOOK_FLEET_PARALLEL", "2"))

with DAG(
    dag_id="dbrunbook_fleet",
    description="One dbrunbook runbook over a group of tenant databases, in waves; a signed record each",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "runbook": Param(os.environ.get("DBRUNBOOK_FLEET_RUNBOOK", "apply"), type="string"),
        "group": Param(os.environ.get("DBRUNBOOK_FLEET_GROUP", "tenants"), type="string"),
        "dry_run": Param(True, type="boolean", description="false to apply"),
        "max_failures": Param("0", type="string", description="failures a wave after the canary may have"),
    },
    tags=["dbrunbook", "migrations", "fleet"],
) as dag:

    @task
    def plan(params=None) -> dict:
        return fleet_plan(params["group"], WAVES, WAVE_COUNT)

    @task
    def members(planned: dict, number: int) -> list[dict]:
        # Airflow maps over a task's return value only (not a key of it): one small task per wave.
        return planned[f"wave_{number}"]

    planned = plan()
    previous = None
    for number in range(1, WAVE_COUNT + 1):
        with TaskGroup(group_id=f"wave_{number}") as wave:
            wave_members = members(planned, number)
            run = DbRunbookOperator.partial(
                task_id="run", runbook="{{ params.runbook }}", parameters={"dry_run": "{{ params.dry_run }}"},
                max_active_tis_per_dag=PARALLEL,
            ).expand(target=wave_members)

            @task(trigger_rule="all_done")
            def gate(results, targets, number=number, params=None) -> dict:
                return wave_gate(number, params["max_failures"], list(results or []), len(targets))

            gate(run.output, wave_members)
        if previous is not None:
            previous >> wave
        previous = wave
