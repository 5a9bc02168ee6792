"""The run's row in the target's ledger: opened 'running' before the notebook runs, completed at the seal.

Both go over the launcher's own connection, never the notebook's, and neither stops a run: a row that cannot
be written is recorded (in the pre-state errors, or on stderr once the record is signed). The completed row
names the sha256 of each migration script the run applied, which ``verify -t`` later checks.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from dbrunbook import protocol, records
from dbrunbook.chain import migrations
from dbrunbook.chain.digests import file_versions, sha256_file
from dbrunbook.chain.history import ancestry
from dbrunbook.config import Config
from dbrunbook.execution.parameters import RunbookInfo, mask_secrets
from dbrunbook.postgres import db

if TYPE_CHECKING:
    from dbrunbook.execution.launch import StartedRun

log = logging.getLogger(__name__)


def open_ledger_row(config: Config, target: str, run_id: str, info: RunbookInfo, values: dict,
                    started: datetime, pre_state: dict) -> bool:
    """Insert the 'running' ledger row over the launcher's own connection; False (why: pre_state) if not."""
    try:
        _target, engine = db.connect_target(config, target, run_id=run_id)
        try:
            records.ledger_start(engine, run_id=run_id, runbook=info.name,
                                 operator=records.operator_identity(), started_at=started,
                                 heads_before=pre_state["heads"])
        finally:
            engine.dispose()
    except Exception as err:  # the run goes on; its record says the ledger row is missing and why
        pre_state["errors"].append(mask_secrets(f"ledger start: {type(err).__name__}: {err}"))
        return False
    return True


def _applied_revisions(history: list[migrations.RevisionInfo], before: list | None, after: list | None
                       ) -> list[migrations.RevisionInfo]:
    """Revisions in the ancestry of ``after`` but not of ``before``: what this run applied."""
    by_revision = {r.revision: r for r in history}
    new = ancestry(by_revision, after or []) - ancestry(by_revision, before or [])
    return [r for r in history if r.revision in new]


def _migration_files(config: Config, heads_before: dict, heads_after: dict, histories: dict | None = None
                     ) -> dict:
    """``{set: {revision: sha256 of its script}}`` for each revision applied during the run.

    A set's history comes from ``histories`` (``{set: (files' versions, history)}``, read by another process
    of the launcher during the run) while its files are as they were then; else its revisions are loaded.
    """
    files: dict[str, dict[str, str]] = {}
    for mset in config.migration_sets.values():
        before, after = heads_before.get(mset.name), heads_after.get(mset.name)
        if after is None or sorted(before or []) == sorted(after):
            continue
        known = (histories or {}).get(mset.name)
        history = known[1] if known and known[0] == file_versions(mset) else migrations.history(mset)
        applied = _applied_revisions(history, before, after)
        if applied:
            files[mset.name] = {r.revision: sha256_file(r.path) for r in applied}
    return files


def complete_ledger_row(run: StartedRun, outcome: str, finished: datetime, heads_before: dict,
                        heads_after: dict, error: str | None = None, *, histories: dict | None = None) -> None:
    try:
        files = _migration_files(run.config, heads_before, heads_after, histories)
        _target, engine = db.connect_target(run.config, run.target, run_id=run.run_id)
        statement = run.run_dir / protocol.STATEMENT_FILE
        try:
            records.ledger_finish(
                engine, run_id=run.run_id, finished_at=finished, outcome=outcome, error=error,
                statement_sha256=records.statement_sha256(run.run_dir) if statement.is_file() else None,
                heads_after=heads_after,
                migration_files=files, runbook=run.info.name, operator=records.operator_identity(),
                started_at=datetime.fromisoformat(run.started_at), heads_before=heads_before,
            )
        finally:
            engine.dispose()
    except Exception as err:  # the signed record exists; the database is merely missing its ledger update
        message = mask_secrets(f"{type(err).__name__}: {err}")
        log.warning("Run %s is signed but its ledger row was not completed: %s", run.run_id, message)
        print(f"dbrunbook: run {run.run_id} is signed but its ledger row in target '{run.target}' was not "
              f"completed: {message}", file=sys.stderr)
