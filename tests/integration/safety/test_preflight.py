"""Live preflight on real PostgreSQL: the tables the pending sample migrations touch, and who holds them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import BlockersPresent
from dbrunbook.execution.session import open_session
from dbrunbook.safety import preflight
from tests.projects import URL_ENV, write_project

pytestmark = pytest.mark.integration


@pytest.fixture
def make_session(tmp_path, database_url, monkeypatch):
    """A Session on a fresh database at main ea90695 with 500 analysed users; policy as asked."""
    monkeypatch.setenv(URL_ENV, database_url)
    sessions = []

    def make(*, protected: bool, blocker_max_age: str):
        proj = write_project(tmp_path / f"p{len(sessions)}", database_url, protected=protected)
        text = proj.config_path.read_text().replace(
            'lock_timeout = "2s"', f'lock_timeout = "2s"\nblocker_max_age = "{blocker_max_age}"')
        proj.config_path.write_text(text)
        if not sessions:
            config = load_config(proj.config_path)
            migrations.upgrade(config.migration_set("main"), proj.engine, "ea90695")
            with proj.engine.begin() as conn:
                conn.execute(sa.text(
                    "INSERT INTO users (email, first_name, last_name) "
                    "SELECT 'u' || i || '@example.org', 'First', 'Last' FROM generate_series(1, 500) i"))
            with proj.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("ANALYZE users"))
            proj.engine.dispose()
        s = open_session("local", run_id=f"run-preflight-{len(sessions)}", config=proj.config_path)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.engine.dispose()


@pytest.fixture
def blocker(database_url):
    """An application transaction that read users and sits idle in transaction (ACCESS SHARE on users)."""
    engine = sa.create_engine(database_url, connect_args={"application_name": "report-job"})
    conn = engine.connect()
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    yield lambda: (conn.execute(sa.text("SELECT count(*) FROM users")), pid)[1]
    conn.rollback()
    conn.close()
    engine.dispose()


def _rows(frame, *columns):
    return {tuple(r) for r in frame[list(columns)].itertuples(index=False)}


def test_preflight_lists_tables_locks_and_the_blocker_and_stops_a_protected_target(make_session, blocker):
    s = make_session(protected=True, blocker_max_age="0s")
    pid = blocker()
    result = preflight.live_preflight(s, s.preview("heads", "main", save=False))

    assert {
        ("a1b2c3d4e5f6", "CREATE TABLE (foreign key)", "users", "SHARE ROW EXCLUSIVE"),
        ("b7e4f0c2d913", "ALTER TABLE", "users", "ACCESS EXCLUSIVE"),
        ("b7e4f0c2d913", "UPDATE", "users", "ROW EXCLUSIVE"),
        ("b7e4f0c2d913", "UPDATE", "alembic_version", "ROW EXCLUSIVE"),
    } <= _rows(result.statements, "revision", "kind", "table", "lock")
    users = result.tables.set_index("table").loc["users"]
    assert (users["exists"], users["rows_estimate"], users["lock"]) == (True, 500, "ACCESS EXCLUSIVE")
    assert users["size_bytes"] > 0

    (row,) = result.sessions.to_dict("records")
    assert (row["pid"], row["application_name"], row["state"], row["table"], row["mode"], row["needed"],
            row["conflicts"], row["blocker"]) == (
        pid, "report-job", "idle in transaction", "users", "ACCESS SHARE", "ACCESS EXCLUSIVE", True, True)
    assert row["query"] == "SELECT count(*) FROM users"
    assert list(result.blockers["pid"]) == [pid]

    with pytest.raises(BlockersPresent) as caught:
        preflight.require_no_blockers(s, result)
    err = caught.value
    assert (err.target, err.max_age, [b["pid"] for b in err.blockers]) == ("local", "0s", [pid])
    assert str(err).startswith(
        f"Target 'local': 1 session(s) hold locks the pending migrations need and are older than "
        f"blocker_max_age 0s: pid {pid} 'report-job' (idle in transaction, transaction open ")
    assert "holds ACCESS SHARE on users, the migrations need ACCESS EXCLUSIVE." in str(err)
    assert f"SELECT pg_terminate_backend(pid) for {pid}" in str(err)
    assert "-p ignore_blockers true" in str(err)

    passed = preflight.require_no_blockers(s, result, ignore_blockers=True)
    assert list(passed["pid"]) == [pid]


def test_a_blocker_younger_than_blocker_max_age_is_listed_but_does_not_stop(make_session, blocker):
    s = make_session(protected=True, blocker_max_age="1h")
    pid = blocker()
    result = preflight.live_preflight(s, s.preview("heads", "main", save=False))
    assert _rows(result.sessions, "pid", "conflicts", "blocker") == {(pid, True, False)}
    assert preflight.require_no_blockers(s, result).empty


def test_an_unprotected_target_goes_on_with_blockers_present(make_session, blocker):
    s = make_session(protected=False, blocker_max_age="0s")
    pid = blocker()
    result = preflight.live_preflight(s, s.preview("heads", "main", save=False))
    assert list(preflight.require_no_blockers(s, result)["pid"]) == [pid]


def test_nothing_pending_means_nothing_to_check(make_session):
    s = make_session(protected=True, blocker_max_age="0s")
    config = s.config
    migrations.upgrade(config.migration_set("main"), s.engine, "heads")
    result = preflight.live_preflight(s, s.preview("heads", "main", save=False))
    assert (len(result.statements), len(result.tables), len(result.sessions)) == (0, 0, 0)
    assert preflight.require_no_blockers(s, result).empty
    assert result.blockers.empty


def test_a_dropped_index_is_weighed_as_its_table_and_unknown_names_as_new(make_session, blocker):
    """DROP INDEX locks the index's table: the preflight resolves it (all names in one query) to that table."""
    from types import SimpleNamespace

    from dbrunbook.chain.migrations import SqlStep

    s = make_session(protected=False, blocker_max_age="0s")
    with s.engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_users_last ON users (last_name)"))
    pid = blocker()
    steps = [SqlStep("r1", (), "drop it", "DROP INDEX ix_users_last;"),
             SqlStep("r2", ("r1",), "later", "ALTER TABLE made_by_r0 ADD COLUMN x int;")]
    result = preflight.live_preflight(s, SimpleNamespace(steps={"main": steps}))
    tables = result.tables.set_index("table")
    assert tables.loc["users", "exists"] and tables.loc["users", "rows_estimate"] == 500
    assert not tables.loc["made_by_r0", "exists"]  # a table the database does not have (yet)
    assert "ix_users_last" not in tables.index
    assert pid in set(result.sessions["pid"])  # the report job's ACCESS SHARE on users conflicts with DROP INDEX
