"""The ledger ``dbrunbook.ledger`` in each changed database: one row per run, "what ran here?".

The ledger answers the question the archive cannot, the way Flyway's and Sqitch's registries do: one row per
run, written when the run starts (so a killed run leaves a 'running' row) and completed with the statement's
digest when it ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dbrunbook.protocol import LEDGER_SCHEMA, LEDGER_TABLE
from dbrunbook.records.digests import canonical_json

__all__ = ["ensure_ledger", "ledger_finish", "ledger_rows", "ledger_start"]


_LEDGER = f'"{LEDGER_SCHEMA}"."{LEDGER_TABLE}"'
_LEDGER_COLUMNS = ("id", "run_id", "runbook", "operator", "started_at", "finished_at", "outcome",
                   "statement_sha256", "heads_before", "heads_after", "migration_files", "recorded_at", "error")


def _run(conn: sa.Engine | sa.Connection, statements: list[tuple[str, dict]]) -> list[Any]:
    """Execute in one transaction: our own on an Engine; on a Connection, commit only if we began it.

    Committing what we began matters: a 'running' row must survive the run being killed a moment later.
    """
    if isinstance(conn, sa.Engine):
        with conn.begin() as connection:
            return [connection.execute(sa.text(sql), params) for sql, params in statements]
    began = not conn.in_transaction()
    results = [conn.execute(sa.text(sql), params) for sql, params in statements]
    if began:
        conn.commit()
    return results


def _jsonb(value: Any) -> str | None:
    return None if value is None else canonical_json(value).decode("utf-8")


def ensure_ledger(conn: sa.Engine | sa.Connection) -> None:
    """Create schema ``dbrunbook`` and table ``dbrunbook.ledger`` when missing (idempotent, race-free)."""
    _run(conn, [
        # Two runs creating the ledger at once would otherwise race on the catalog's unique indexes.
        ("SELECT pg_advisory_xact_lock(hashtext(:name))", {"name": f"{LEDGER_SCHEMA}.{LEDGER_TABLE}"}),
        (f'CREATE SCHEMA IF NOT EXISTS "{LEDGER_SCHEMA}"', {}),
        (f"""CREATE TABLE IF NOT EXISTS {_LEDGER} (
                id bigserial PRIMARY KEY,
                run_id text NOT NULL UNIQUE,
                runbook text,
                operator text,
                started_at timestamptz,
                finished_at timestamptz,
                outcome text NOT NULL DEFAULT 'running',
                statement_sha256 text,
                heads_before jsonb,
                heads_after jsonb,
                migration_files jsonb,
                recorded_at timestamptz NOT NULL DEFAULT now(),
                error text
            )""", {}),
        # `error`: why a finished run has no signed record (statement_sha256 NULL) until 'dbrunbook seal'
        # finishes it. Added to older ledgers only when missing: ALTER TABLE takes ACCESS EXCLUSIVE even
        # when IF NOT EXISTS finds the column, and would queue behind any reader of the ledger.
        (f"""DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{LEDGER_SCHEMA}'
                               AND table_name = '{LEDGER_TABLE}' AND column_name = 'error') THEN
                    ALTER TABLE {_LEDGER} ADD COLUMN error text;
                END IF;
            END $$""", {}),
    ])


def ledger_start(conn: sa.Engine | sa.Connection, *, run_id: str, runbook: str, operator: str,
                 started_at: datetime, heads_before: dict) -> None:
    """Insert the run's row with outcome 'running' (creating the ledger if needed), committed at once.

    Calling it again for the same run id changes nothing, so a launcher may retry it after a lost connection.
    """
    ensure_ledger(conn)
    _run(conn, [(
        f"""INSERT INTO {_LEDGER} (run_id, runbook, operator, started_at, outcome, heads_before)
            VALUES (:run_id, :runbook, :operator, :started_at, 'running', CAST(:heads_before AS jsonb))
            ON CONFLICT (run_id) DO NOTHING""",
        {"run_id": run_id, "runbook": runbook, "operator": operator, "started_at": started_at,
         "heads_before": _jsonb(heads_before)},
    )])


def ledger_finish(conn: sa.Engine | sa.Connection, *, run_id: str, finished_at: datetime, outcome: str,
                  statement_sha256: str | None, heads_after: dict, migration_files: dict,
                  runbook: str | None = None, operator: str | None = None, started_at: datetime | None = None,
                  heads_before: dict | None = None, error: str | None = None) -> None:
    """Complete the run's row: outcome, end time, statement digest, heads after, migration file digests.

    ``error`` says why the run has no signed record yet (``statement_sha256`` None); a later call with the
    statement clears it.

    When the row is missing (the run restored or recreated this database after ``ledger_start``), it is
    inserted from the optional ``runbook``/``operator``/``started_at``/``heads_before`` instead.
    """
    ensure_ledger(conn)
    _run(conn, [(
        f"""INSERT INTO {_LEDGER} (run_id, runbook, operator, started_at, heads_before, finished_at, outcome,
                                   statement_sha256, heads_after, migration_files, error)
            VALUES (:run_id, :runbook, :operator, :started_at, CAST(:heads_before AS jsonb), :finished_at,
                    :outcome, :statement_sha256, CAST(:heads_after AS jsonb), CAST(:migration_files AS jsonb),
                    :error)
            ON CONFLICT (run_id) DO UPDATE SET finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome,
                statement_sha256 = EXCLUDED.statement_sha256, heads_after = EXCLUDED.heads_after,
                migration_files = EXCLUDED.migration_files, error = EXCLUDED.error""",
        {"run_id": run_id, "runbook": runbook, "operator": operator, "started_at": started_at,
         "heads_before": _jsonb(heads_before), "finished_at": finished_at, "outcome": outcome,
         "statement_sha256": statement_sha256, "heads_after": _jsonb(heads_after),
         "migration_files": _jsonb(migration_files), "error": error},
    )])


def ledger_rows(conn: sa.Engine | sa.Connection) -> list[dict]:
    """All ledger rows, oldest first, as dicts (jsonb columns decoded); [] when there is no ledger yet."""
    exists_sql = "SELECT to_regclass(:name) IS NOT NULL"
    select_sql = f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM {_LEDGER} ORDER BY id"
    if isinstance(conn, sa.Engine):
        with conn.connect() as connection:
            return ledger_rows(connection)
    began = not conn.in_transaction()
    try:
        if not conn.execute(sa.text(exists_sql), {"name": f"{LEDGER_SCHEMA}.{LEDGER_TABLE}"}).scalar():
            return []
        return [dict(row._mapping) for row in conn.execute(sa.text(select_sql))]
    finally:
        if began:
            # Read-only: end the transaction we began rather than leave one open on the caller's connection.
            conn.rollback()
