"""The ledger table dbrunbook keeps in each database it changes, on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.postgres import db

pytestmark = pytest.mark.integration

STARTED = datetime(2026, 11, 23, 22, 5, 1, tzinfo=UTC)
FINISHED = datetime(2026, 11, 23, 22, 6, 30, tzinfo=UTC)


@pytest.fixture
def engine(database_url):
    engine = db.make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _ledger_columns(engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'dbrunbook' AND table_name = 'ledger' ORDER BY ordinal_position"))]


def test_ensure_ledger_creates_the_table_once(engine):
    assert records.ledger_rows(engine) == []
    records.ensure_ledger(engine)
    records.ensure_ledger(engine)
    assert _ledger_columns(engine) == [
        ("id", "bigint"), ("run_id", "text"), ("runbook", "text"), ("operator", "text"),
        ("started_at", "timestamp with time zone"), ("finished_at", "timestamp with time zone"),
        ("outcome", "text"), ("statement_sha256", "text"), ("heads_before", "jsonb"),
        ("heads_after", "jsonb"), ("migration_files", "jsonb"), ("recorded_at", "timestamp with time zone"),
        ("error", "text"),
    ]
    assert records.ledger_rows(engine) == []


def test_a_ledger_made_before_the_error_column_gets_it(engine):
    records.ensure_ledger(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE dbrunbook.ledger DROP COLUMN error"))
    records.ledger_start(engine, run_id="old", runbook="apply", operator="a", started_at=STARTED, heads_before={})
    assert _ledger_columns(engine)[-1] == ("error", "text")


def test_finish_without_a_record_keeps_the_error_until_the_record_is_signed(engine):
    records.ledger_start(engine, run_id="r2", runbook="apply", operator="a", started_at=STARTED, heads_before={})
    records.ledger_finish(engine, run_id="r2", finished_at=FINISHED, outcome="succeeded", statement_sha256=None,
                          heads_after={"main": ["bbb222"]}, migration_files={},
                          error="record not sealed: SigningKeyError: ...")
    [row] = records.ledger_rows(engine)
    assert (row["outcome"], row["statement_sha256"], row["error"]) == (
        "succeeded", None, "record not sealed: SigningKeyError: ...")
    records.ledger_finish(engine, run_id="r2", finished_at=FINISHED, outcome="succeeded",
                          statement_sha256="ab" * 32, heads_after={"main": ["bbb222"]}, migration_files={})
    [row] = records.ledger_rows(engine)
    assert (row["statement_sha256"], row["error"]) == ("ab" * 32, None)


def test_start_then_finish(engine):
    run_id = "20261123T220501Z-apply-local-3f9a1c"
    records.ledger_start(engine, run_id=run_id, runbook="apply", operator="alice@example.com",
                         started_at=STARTED, heads_before={"main": ["aaa111"], "ai": []})
    # Committed at once: another connection sees the 'running' row, as it would after a killed run.
    [running] = records.ledger_rows(engine)
    assert (running["run_id"], running["runbook"], running["operator"], running["outcome"]) == (
        run_id, "apply", "alice@example.com", "running")
    assert running["started_at"] == STARTED and running["finished_at"] is None
    assert running["heads_before"] == {"main": ["aaa111"], "ai": []}
    assert running["recorded_at"] is not None

    records.ledger_finish(engine, run_id=run_id, finished_at=FINISHED, outcome="succeeded",
                          statement_sha256="ab" * 32, heads_after={"main": ["bbb222"], "ai": []},
                          migration_files={"bbb222": "cd" * 32})
    [row] = records.ledger_rows(engine)
    assert row["id"] == running["id"]
    assert (row["outcome"], row["finished_at"], row["statement_sha256"]) == ("succeeded", FINISHED, "ab" * 32)
    assert row["heads_before"] == {"main": ["aaa111"], "ai": []}
    assert row["heads_after"] == {"main": ["bbb222"], "ai": []}
    assert row["migration_files"] == {"bbb222": "cd" * 32}


def test_rows_come_back_in_order_and_start_is_retry_safe(engine):
    for n in range(3):
        records.ledger_start(engine, run_id=f"2026112{n}T000000Z-apply-local-00000{n}", runbook="apply",
                             operator="alice", started_at=STARTED, heads_before={})
    records.ledger_start(engine, run_id="20261120T000000Z-apply-local-000000", runbook="other",
                         operator="mallory", started_at=STARTED, heads_before={})
    rows = records.ledger_rows(engine)
    assert [(r["run_id"][-1], r["runbook"]) for r in rows] == [("0", "apply"), ("1", "apply"), ("2", "apply")]


def test_finish_without_start_inserts_the_row(engine):
    # A restore during the run can wipe the row written at start; the finish must still leave a trace.
    records.ensure_ledger(engine)
    records.ledger_finish(engine, run_id="r1", finished_at=FINISHED, outcome="failed", statement_sha256=None,
                          heads_after={"main": []}, migration_files={}, runbook="restore",
                          operator="alice", started_at=STARTED, heads_before={"main": ["aaa111"]})
    [row] = records.ledger_rows(engine)
    assert (row["run_id"], row["runbook"], row["outcome"], row["started_at"], row["heads_before"]) == (
        "r1", "restore", "failed", STARTED, {"main": ["aaa111"]})


def test_on_a_caller_connection_we_commit_only_what_we_began(engine):
    with engine.connect() as conn:
        records.ledger_start(conn, run_id="mine", runbook="apply", operator="a", started_at=STARTED,
                             heads_before={})
        assert not conn.in_transaction()
        conn.begin()
        records.ledger_start(conn, run_id="callers", runbook="apply", operator="a", started_at=STARTED,
                             heads_before={})
        assert conn.in_transaction()
        conn.rollback()
        assert [r["run_id"] for r in records.ledger_rows(conn)] == ["mine"]
        assert not conn.in_transaction()
