"""A CREATE INDEX CONCURRENTLY whose first attempt times out, on real PostgreSQL with a real Alembic project.

The blocker is what production has: an application transaction that wrote to ``events`` and stays open. The
index build commits its catalog entry, then waits for that writer under ``lock_timeout`` and gives up, leaving
``ix_events_kind`` INVALID. The scenario project is tests/fixtures/alembic_projects/cic.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import InvalidIndex, MigrationFailed
from dbrunbook.execution.session import Session
from dbrunbook.postgres import db, indexes
from dbrunbook.procedures import diagnose
from dbrunbook.safety import locking
from tests.projects import ROOT

pytestmark = pytest.mark.integration

CIC = ROOT / "tests" / "fixtures" / "alembic_projects" / "cic" / "alembic.ini"
FIX = "DROP INDEX CONCURRENTLY IF EXISTS public.ix_events_kind"


@pytest.fixture
def cic(project):
    """The project with its one migration set 'cic' at c1c000000001 (events exists, the index does not)."""
    text = project.config_path.read_text().split("[migration_sets.main]")[0]
    project.config_path.write_text(text + f'\n[migration_sets.cic]\nalembic_ini = "{CIC}"\n')
    mset = load_config(project.config_path).migration_set("cic")
    migrations.upgrade(mset, project.engine, "c1c000000001")
    return project, mset


class Writer:
    """An application transaction that inserted into ``events`` and stays open (ROW EXCLUSIVE on it)."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, connect_args={"application_name": "writer-test"})
        self.conn = self.engine.connect()
        self.conn.execute(sa.text("INSERT INTO events (id, kind) VALUES (1, 'signup')"))
        self.open = True

    def end(self) -> None:
        if self.open:
            self.conn.rollback()
            self.conn.close()
            self.engine.dispose()
            self.open = False


def _index_state(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "WHERE c.relname = 'ix_events_kind'"))]


def _version(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def _upgrade(mset, url, *, retries: int, report):
    engine = db.make_engine(url, run_id="cic-test", lock_timeout="300ms", statement_timeout="60s")
    try:
        return locking.with_lock_retries(lambda conn: migrations.upgrade(mset, conn, "heads"), engine,
                                         policy=locking.RetryPolicy(retries=retries, base_delay=0.05),
                                         migration_set=mset.name, report=report)
    finally:
        engine.dispose()


def test_the_retry_drops_the_invalid_index_the_timed_out_attempt_left_and_builds_a_valid_one(cic):
    project, mset = cic
    writer, lines = Writer(project.url), []

    def report(line: str) -> None:
        lines.append(line)
        if line.startswith("attempt 1/"):
            writer.end()  # the application commits after the first attempt gave up

    try:
        done = _upgrade(mset, project.url, retries=3, report=report)
    finally:
        writer.end()
    assert [s.revision for s in done] == ["c1c000000002"]
    assert lines[0].startswith("attempt 1/4 cic: lock timeout after ")
    assert lines[1] == ("attempt 1 left invalid index(es) public.ix_events_kind: dropped with DROP INDEX "
                        "CONCURRENTLY before trying again")
    assert lines[2].startswith("attempt 2/4 cic: succeeded after ")
    assert _index_state(project.engine) == [("ix_events_kind", True)]
    assert _version(project.engine) == ["c1c000000002"]


def test_an_invalid_index_that_cannot_be_dropped_stops_the_retries(cic):
    project, mset = cic
    writer, lines = Writer(project.url), []
    try:
        with pytest.raises(InvalidIndex) as err:
            _upgrade(mset, project.url, retries=3, report=lines.append)
    finally:
        writer.end()
    assert [a.number for a in err.value.attempts] == [1]  # no second attempt on top of a broken index
    assert [i["index"] for i in err.value.indexes] == ["ix_events_kind"]
    assert "lock timeout" in err.value.indexes[0]["error"]
    assert str(err.value) == (
        "Migration set 'cic' failed at revision c1c000000002: invalid index(es) ix_events_kind on events "
        "(dropping it timed out too, so it was not retried): pg_index.indisvalid = false, left by an interrupted "
        "CREATE INDEX CONCURRENTLY; queries do not use it, writes still maintain it, and IF NOT EXISTS skips it. "
        f"Run {FIX}, then run the migration again. The database is at c1c000000001. "
        "Run 'dbrunbook run troubleshoot' to diagnose before retrying.")
    assert isinstance(err.value, MigrationFailed) and err.value.exit_status == 1
    assert _index_state(project.engine) == [("ix_events_kind", False)]
    assert _version(project.engine) == ["c1c000000001"]


def test_an_upgrade_that_skips_an_invalid_index_with_if_not_exists_fails(cic):
    """The issue's case: an earlier run's CIC timed out; this run's IF NOT EXISTS passes over its index."""
    project, mset = cic
    writer = Writer(project.url)
    try:
        with project.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text("SET lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                conn.execute(sa.text("CREATE INDEX CONCURRENTLY ix_events_kind ON events (kind)"))
    finally:
        writer.end()
    assert _index_state(project.engine) == [("ix_events_kind", False)]

    with pytest.raises(InvalidIndex) as err:
        _upgrade(mset, project.url, retries=0, report=None)
    assert [i["index"] for i in err.value.indexes] == ["ix_events_kind"]
    assert err.value.indexes[0]["before_this_run"] is True
    assert "ix_events_kind on events (invalid before this run):" in str(err.value)
    assert f"Run {FIX}, then run the migration again. The database is at c1c000000002." in str(err.value)
    assert [s.revision for s in err.value.steps] == ["c1c000000002"]  # the step committed; the record says so
    assert _version(project.engine) == ["c1c000000002"]

    # troubleshoot reports it with the fix, and the fix works
    s = Session(load_config(project.config_path), "local")
    (problem,) = diagnose.check_invalid_indexes(s).problems
    assert problem.title == "Invalid index left by CREATE INDEX CONCURRENTLY"
    assert problem.evidence[["index", "table", "fix"]].values.tolist() == [["ix_events_kind", "events", FIX]]
    assert problem.next_step == FIX
    assert indexes.drop_invalid_indexes(project.engine, indexes.invalid_indexes(project.engine)) == []
    assert diagnose.check_invalid_indexes(s).ok
    assert _index_state(project.engine) == []


def test_apply_through_the_launcher_fails_on_an_invalid_index_with_a_record_and_a_ledger_row(cic):
    """The same case end to end: `apply` exits 1 naming the index; ledger row, record and database agree."""
    from dbrunbook import records
    from dbrunbook.execution.runner import run_runbook

    project, mset = cic
    writer = Writer(project.url)
    try:
        with project.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text("SET lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                conn.execute(sa.text("CREATE INDEX CONCURRENTLY ix_events_kind ON events (kind)"))
    finally:
        writer.end()
    config = load_config(project.config_path)
    result = run_runbook("apply", target="local", parameters={"dry_run": "false"}, config=config)
    assert (result.outcome, result.exit_status) == ("failed", 1)
    assert result.failing_step["ename"] == "InvalidIndex"
    assert f"Run {FIX}, then run the migration again" in result.failing_step["evalue"]
    assert result.heads_after == {"cic": ["c1c000000002"]}
    assert _version(project.engine) == ["c1c000000002"]
    assert records.verify_record(result.record_dir, config.allowed_signers).ok
    rows = records.ledger_rows(project.engine)
    assert [(r["run_id"], r["outcome"]) for r in rows] == [(result.run_id, "failed")]
