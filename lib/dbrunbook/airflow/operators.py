"""``DbRunbookOperator``: one ``dbrunbook run`` as an Airflow task, and the tasks of a fleet DAG.

``DbRunbookOperator`` subclasses the papermill provider's ``PapermillOperator`` (Airflow shows it as the
notebook task it is), but ``execute`` calls ``dbrunbook.execution.runner.run_runbook``: the launcher checks the
parameters, reads identity and heads over its own connection, writes the ledger row and signs the record
exactly as ``dbrunbook run``. ``target`` is a template field and a mappable argument, so
``DbRunbookOperator.partial(...).expand(target=...)`` runs one task instance per fleet member.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.providers.papermill.operators.papermill import NoteBook, PapermillOperator

try:  # Airflow 3
    from airflow.sdk.exceptions import AirflowException
except ImportError:  # Airflow 2
    from airflow.exceptions import AirflowException

log = logging.getLogger(__name__)

__all__ = ["XCOM_KEY", "DbRunbookOperator", "failure_message", "fleet_plan", "wave_gate"]

XCOM_KEY = "dbrunbook_run"


class DbRunbookOperator(PapermillOperator):
    """Run ``runbooks/<runbook>.ipynb`` on ``target`` with dbrunbook's launcher; the record is signed.

    The run's ``RunResult.as_json()`` is the task's return value and is pushed under XCom key
    ``dbrunbook_run`` (a failed task has it too). Any exit status but 0 fails the task. Retries default to 0:
    a retry is a second run, a second record — a person's decision after reading the first.

    Args:
        runbook: the runbook's name (``dbrunbook list``).
        target: a target of dbrunbook.toml, or a fleet member ``GROUP:MEMBER``.
        parameters: runbook parameters; strings are parsed to the declared types.
        config_path: dbrunbook.toml; None = ``$DBRUNBOOK_CONFIG`` or the nearest one.
        member_env: environment of a fleet member's run (``-x tenant=NAME`` of a schema-per-tenant group).
    """

    template_fields: Sequence[str] = (*PapermillOperator.template_fields, "runbook", "target", "config_path")
    ui_color = "#d9ecf2"

    def __init__(self, *, runbook: str, target: str | None = None, parameters: dict[str, Any] | None = None,
                 config_path: str | None = None, member_env: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(input_nb=f"runbooks/{runbook}.ipynb", output_nb="outputs/<run-id>/notebook.ipynb",
                         parameters=parameters or {}, **kwargs)
        self.runbook, self.target, self.config_path = runbook, target, config_path
        self.member_env = member_env

    def execute(self, context: Any) -> dict:
        import os

        from dbrunbook import protocol
        from dbrunbook.config import X_ARGUMENTS_ENV, load_config
        from dbrunbook.execution.fleet_groups import member_env
        from dbrunbook.execution.runner import find_runbook, run_runbook

        target = self.target
        if isinstance(target, dict):  # a fleet member from fleet_plan: {"target": ..., "env": {...}}
            target, env = target["target"], target.get("env") or {}
        else:
            env = self.member_env or {}
        config = load_config(self.config_path or None)
        env = env or member_env(config, target)
        os.environ.pop(X_ARGUMENTS_ENV, None)
        os.environ.update(env)
        info = find_runbook(config, self.runbook)
        result = run_runbook(self.runbook, target=target or None, parameters=dict(self.parameters or {}),
                             config=load_config(self.config_path or None), progress=log.info)
        document = result.as_json()
        self.input_nb = NoteBook(url=str(info.path), parameters=dict(self.parameters or {}))
        self.output_nb = NoteBook(url=str(result.record_dir / protocol.NOTEBOOK_FILE))
        context["ti"].xcom_push(key=XCOM_KEY, value=document)
        log.info("dbrunbook run %s: %s (exit status %s), record %s", result.run_id, result.outcome,
                 result.exit_status, result.record_dir)
        if result.exit_status != 0:
            raise AirflowException(failure_message(document))
        return document


def failure_message(run: dict) -> str:
    """Why a run failed the task: outcome, failing step, where the record is."""
    step = run.get("failing_step") or {}
    where = (step.get("heading") or "").lstrip("# ") or (f"cell {step['cell']}" if "cell" in step else "")
    what = ": ".join(str(step[k]) for k in ("ename", "evalue") if step.get(k))
    at = f" at step '{where}'" + (f" ({what})" if what else "") if where else ""
    return (f"Runbook '{run['runbook']}' on target '{run['target']}' {run['outcome']}{at}, exit status "
            f"{run['exit_status']}. Read the record {run['record_dir']}; check it with "
            f"'dbrunbook verify {run['record_dir']}'.")


def fleet_plan(group: str, waves: str, count: int, config_path: str | None = None) -> dict[str, list[dict]]:
    """The members of ``group`` cut into ``count`` waves: ``{"wave_1": [member, ...], ...}`` (empty waves too).

    The DAG's shape (one task group per wave) is fixed when it is parsed; the members are read when it runs.
    """
    from dbrunbook.config import load_config
    from dbrunbook.execution.fleet import plan_waves
    from dbrunbook.execution.fleet_groups import group_members

    planned = plan_waves(group_members(load_config(config_path or None), group), waves)
    if len(planned) > count:  # more members than the fixed waves take: the last wave takes the rest
        planned = [*planned[:count - 1], [m for w in planned[count - 1:] for m in w]]
    planned += [[] for _ in range(count - len(planned))]
    return {f"wave_{n}": [m.as_dict() for m in wave] for n, wave in enumerate(planned, start=1)}


def wave_gate(wave: int, max_failures: str, results: list[dict | None], size: int) -> dict:
    """After a wave (trigger rule all_done): fail — and so stop later waves — past the failure limit.

    The canary (wave 1) may not fail at all. ``results`` are the wave's XComs (None for a task that failed
    before returning); ``size`` how many tasks the wave had.
    """
    from dbrunbook.execution.fleet import parse_max_failures

    succeeded = sum(1 for r in results or [] if r and r.get("exit_status") == 0)
    failures = size - succeeded
    allowed = 0 if wave == 1 else parse_max_failures(max_failures)(size)
    if failures > allowed:
        raise AirflowException(f"Wave {wave}: {failures} of {size} target(s) failed, over the limit of "
                               f"{allowed}; later waves do not start. Read the failed tasks' records.")
    return {"wave": wave, "size": size, "failures": failures}
