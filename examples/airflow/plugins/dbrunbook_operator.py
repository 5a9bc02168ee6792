"""An Airflow operator that runs a dbrunbook runbook through dbrunbook's own launcher.

It subclasses the papermill provider's ``PapermillOperator`` so Airflow shows it as what it is, a notebook
task (its rendered fields name the runbook notebook and the executed copy), but ``execute`` calls
``dbrunbook.execution.runner.run_runbook`` instead of papermill directly: the launcher checks the parameters, reads the
database's identity and Alembic heads before and after over its own connection, writes the ledger row and
signs the record exactly as ``dbrunbook run`` does. A plain papermill run would leave an unsigned notebook.

Lives in the plugins folder (Airflow puts it on ``sys.path``), not in dbrunbook: Airflow is no dependency of
dbrunbook, and the Airflow workers only need ``pip install dbrunbook apache-airflow-providers-papermill``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airflow.providers.papermill.operators.papermill import NoteBook, PapermillOperator
from airflow.sdk.exceptions import AirflowException

log = logging.getLogger(__name__)

__all__ = ["XCOM_KEY", "DbRunbookOperator", "failure_message"]

XCOM_KEY = "dbrunbook_run"


class DbRunbookOperator(PapermillOperator):
    """Run ``runbooks/<runbook>.ipynb`` on ``target`` with dbrunbook's launcher; the record is signed.

    The result of the run (``RunResult.as_json()``: run id, outcome, exit status, record directory, heads
    before and after, failing step) is the task's return value and is also pushed under the XCom key
    ``dbrunbook_run``, so it is there for a failed task too. Any exit status but 0 fails the task, a guard
    stop (3) included: for a scheduler a deploy that refused to go on is a failure someone must look at.

    Args:
        runbook: the runbook's name (``dbrunbook list``).
        target: the database target from dbrunbook.toml; None = the config's default target.
        parameters: runbook parameters, ``{name: value}``; strings (Jinja renders to strings) are parsed to
            the type the notebook declares, so ``"{{ params.dry_run }}"`` becomes a bool and a revision id
            stays text.
        config_path: the dbrunbook.toml; None = ``$DBRUNBOOK_CONFIG`` or the nearest one from the cwd.

    Retries default to 0: a retry would be a second run (a second record, a second ledger row), which is a
    decision for a person after reading the first record.
    """

    template_fields: Sequence[str] = (*PapermillOperator.template_fields, "runbook", "target", "config_path")
    ui_color = "#d9ecf2"

    def __init__(self, *, runbook: str, target: str | None = None, parameters: dict[str, Any] | None = None,
                 config_path: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        # The real paths are known only once the config is loaded and the run directory exists (execute);
        # these keep the UI's rendered fields meaningful before that.
        super().__init__(input_nb=f"runbooks/{runbook}.ipynb", output_nb="outputs/<run-id>/notebook.ipynb",
                         parameters=parameters or {}, **kwargs)
        self.runbook = runbook
        self.target = target
        self.config_path = config_path

    def execute(self, context: Any) -> dict:
        from dbrunbook import protocol
        from dbrunbook.config import load_config
        from dbrunbook.execution.runner import find_runbook, run_runbook

        config = load_config(self.config_path or None)
        info = find_runbook(config, self.runbook)
        result = run_runbook(self.runbook, target=self.target or None, parameters=dict(self.parameters or {}),
                             config=config, progress=log.info)
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
    """Why a run failed the task, from ``RunResult.as_json()``: outcome, failing step, where the record is."""
    step = run.get("failing_step") or {}
    where = (step.get("heading") or "").lstrip("# ") or (f"cell {step['cell']}" if "cell" in step else "")
    what = ": ".join(str(step[k]) for k in ("ename", "evalue") if step.get(k))
    at = f" at step '{where}'" + (f" ({what})" if what else "") if where else ""
    return (f"Runbook '{run['runbook']}' on target '{run['target']}' {run['outcome']}{at}, exit status "
            f"{run['exit_status']}. Read the record {run['record_dir']}; check it with "
            f"'dbrunbook verify {run['record_dir']}'.")
