"""Online-only revisions on real PostgreSQL: their SQL captured on a scratch server, the target untouched.

The scenario is tests/fixtures/alembic_projects/online_only: a1 and e5 render offline; b2 reads rows with
``op.get_bind().execute(...).fetchall()``, c3 uses the inspector, d4 raises in offline mode.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import safety
from dbrunbook.chain import capture, migrations
from dbrunbook.errors import DataLossRefused, OnlineOnlyNotCovered
from dbrunbook.execution.session import open_session
from dbrunbook.records import signing
from tests.projects import trust_operator, write_one_set_project

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects" / "online_only"
A1, B2, C3, D4, E5 = "a1000000own1", "b2000000cnt2", "c3000000nik3", "d4000000idx4", "e5000000pet5"
URL_ENV = "DBRUNBOOK_TEST_ONLINE_URL"


def write_config(folder: Path, state: Path, *, protected: bool = False) -> Path:
    return write_one_set_project(folder, FIXTURE / "alembic.ini", url_env=URL_ENV, state=state, protected=protected)


@pytest.fixture
def session_for(tmp_path, embedded_root, database_url, monkeypatch):
    monkeypatch.setenv(URL_ENV, database_url)
    opened = []

    def make(*, protected: bool = False, lock: bool = False):
        # Scratch servers' data outside pytest's basetemp, which other pytest sessions make 0700.
        state = embedded_root / f"state-{uuid.uuid4().hex[:8]}"
        s = open_session("local", config=write_config(tmp_path / f"p{len(opened)}", state, protected=protected),
                         run_id=f"capture-test-{len(opened)}", lock=lock)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.engine.dispose()


def tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())


def test_preview_captures_the_online_only_revisions_and_leaves_the_target_alone(session_for):
    s = session_for()
    mset = s.config.migration_set("main")
    migrations.upgrade(mset, s.engine, A1)
    with s.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO owner (name) VALUES ('ann'), ('bob')"))
    before = tables(s.engine)

    preview = s.preview("heads", "main", save=False)

    steps = {st.revision: st for st in preview.steps["main"]}
    assert list(steps) == [B2, C3, D4, E5]
    assert {r: st.source for r, st in steps.items()} == {
        B2: "captured", C3: "captured", D4: "captured", E5: "offline"}
    assert [st.online_only for st in steps.values()] == [True, True, True, False]
    # b2 counted the owners of the scratch database (the target's schema, not its rows): zero, quoted safely.
    # (psycopg 3 adds casts to its placeholders, psycopg2 does not)
    assert re.search(r"^INSERT INTO owner_stats \(owners, note\) VALUES \(0(::INTEGER)?, 'owners counted: "
                     r"it''s a data migration'(::VARCHAR)?\);$", steps[B2].sql, re.MULTILINE), steps[B2].sql
    assert "SELECT id FROM owner;" in steps[B2].sql
    # The inspector's catalog queries are reads of pg_catalog, counted, not shown.
    assert "-- (1 catalog query of the inspector left out)" in steps[C3].sql and "pg_attribute" not in steps[C3].sql
    assert "ALTER TABLE owner ADD COLUMN nickname VARCHAR(50);" in steps[C3].sql
    assert "CREATE INDEX ix_owner_name ON owner (name);" in steps[D4].sql
    assert f"UPDATE alembic_version SET version_num='{D4}' WHERE alembic_version.version_num = '{C3}';" \
        in steps[D4].sql
    assert steps[D4].problem == (
        f"revision {D4} (index owner name) cannot be rendered offline: it raises at "
        f"versions/d4000000idx4_index_owner_name.py:18 (NotImplementedError: index owner name requires an "
        f"online migration); its SQL was captured on a scratch database")
    # The frame says where each revision's SQL comes from.
    frame = preview.as_frame()
    assert frame.set_index("revision")["sql"].to_dict() == {
        B2: "captured", C3: "captured", D4: "captured", E5: "offline"}
    # The lint and the live preflight read the captured SQL like any other.
    from dbrunbook.safety import preflight

    report = safety.lint(s, preview)
    assert ("require-concurrent-index-creation", D4) in {(f.rule, f.revision) for f in report.findings}
    locks = preflight.live_preflight(s, preview)
    assert "owner" in set(locks.tables["table"].str.split(".").str[-1]), locks.tables
    # Nothing was written to the target.
    assert migrations.current(mset, s.engine) == (A1,)
    assert tables(s.engine) == before
    with s.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM owner_stats")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbrunbook_capture_%'")
                            ).scalar_one() == 0
    # The scratch server is stopped and its folder removed.
    scratch = Path(s.config.state_dir) / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_a_failed_capture_is_reported_on_the_step_not_raised(session_for):
    s = session_for()
    mset = s.config.migration_set("main")
    steps = migrations.offline_sql(mset, None, "heads")

    def broken(mset, engine, revision):
        raise migrations.MigrationFailed("main", C3, (B2,), "RuntimeError: boom")

    got = {st.revision: st for st in capture.capture_steps(s, mset, steps, "heads", run=broken)}
    assert (got[C3].source, got[C3].capture_error) == (
        "none", "it failed on the scratch database: RuntimeError: boom")
    assert got[B2].capture_error == f"the capture stopped before it, at revision {C3}: it failed on the scratch " \
                                    f"database: RuntimeError: boom"
    assert got[A1] == steps[0]


def test_protected_target_needs_a_captured_preview_or_an_allow(session_for):
    s = session_for(protected=True, lock=True)  # applying takes the deployer lock, as a deploy run does
    mset = s.config.migration_set("main")
    uncaptured = s.preview("heads", "main", save=False, capture=False)
    with pytest.raises(OnlineOnlyNotCovered) as err:
        s.upgrade("heads", "main", dry_run=False, preview=uncaptured)
    assert str(err.value).startswith(
        f"Target 'local' is protected and 3 revision(s) of 'main' cannot be rendered offline and were not "
        f"captured: revision {B2} (count owners) cannot be rendered offline: it calls rows = op.get_bind()")
    assert f"-p allow online-only@{B2},online-only@{C3},online-only@{D4}" in str(err.value)
    assert migrations.current(mset, s.engine) == ()
    # An explicit allow lets it through; a captured preview too.
    done = s.upgrade(E5, "main", dry_run=False, preview=uncaptured,
                     allow=f"online-only@{B2},online-only@{C3},online-only@{D4}")
    assert done["revision"].tolist() == [A1, B2, C3, D4, E5]
    assert migrations.current(mset, s.engine) == (E5,)
    assert tables(s.engine) >= {"owner", "owner_stats", "pet", "alembic_version"}


def test_downgrade_data_loss_counts_captured_sql(session_for):
    s = session_for(protected=True)
    mset = s.config.migration_set("main")
    migrations.upgrade(mset, s.engine, "heads")
    with s.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO owner (name, nickname) VALUES ('ann', 'a'), ('bob', NULL)"))
    report = safety.data_loss(s, B2, "main", save=False)
    assert report.steps == (E5, D4, C3)
    assert [(i.object, i.kind, i.lost, i.revision) for i in report.items] == [
        ("pet", "table", 0, E5), ("owner.nickname", "column", 1, C3)]
    assert report.uncounted == ()
    with pytest.raises(DataLossRefused):
        safety.require_no_data_loss(s, report)


def test_the_approved_preview_hash_covers_the_captured_sql(session_for, monkeypatch, tmp_path):
    from dbrunbook.errors import PreviewMismatch
    from dbrunbook.execution.runner import run_runbook
    from dbrunbook.safety import approvals

    s = session_for(protected=True)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "deployer@dbrunbook")
    trust_operator(s.config.path, "deployer@dbrunbook")  # runs never create or trust a key by themselves
    result = run_runbook("preview", target="local", config=s.config)
    assert (result.outcome, result.exit_status) == ("succeeded", 0)
    # Four eyes: a second trusted principal approves the preview the deployer made.
    reviewer = signing.generate_key(tmp_path / "reviewer" / "id_ed25519", "reviewer@dbrunbook")
    signing.add_allowed_signer(s.config.allowed_signers, "reviewer@dbrunbook", signing.public_key_line(reviewer))
    approvals.approve(s.config, result.run_id, key_path=reviewer, note="read the captured SQL")
    captured = s.preview(save=False)
    frame = safety.require_approved_preview(s, captured, result.run_id)
    checks = dict(zip(frame["check"], frame["result"], strict=False))
    assert (checks["sha256 of the SQL"], checks["approved by a second person"]) == ("identical", "ok")
    # The same revisions without their captured SQL are not what was approved.
    with pytest.raises(PreviewMismatch) as stop:
        safety.require_approved_preview(s, s.preview(save=False, capture=False), result.run_id)
    assert "changed: preview-main.sql;" in str(stop.value)


def test_rollback_plan_lists_online_only_downgrades_instead_of_calling_them_no_ops(session_for):
    from dbrunbook.procedures import deploy

    s = session_for()
    migrations.upgrade(s.config.migration_set("main"), s.engine, A1)
    row = deploy.rollback_plan(s, "heads", "main").iloc[0]
    assert (row["steps"], row["rollback to"], row["reversible"], row["no-op downgrades"]) == (4, A1, True, None)
    assert row["online-only downgrades"].startswith(f"{C3}: it calls [c[\"name\"] for c in sa.inspect(")
    assert f"; {B2}: it calls count = op.get_bind().execute(" in row["online-only downgrades"]


def test_without_a_usable_pg_dump_the_chain_builds_the_scratch_schema(session_for, monkeypatch):
    from dbrunbook.errors import BackupFailed
    from dbrunbook.postgres import dump

    def no_dump(session):
        raise BackupFailed("No pg_dump for PostgreSQL 99 (server 99.0)")

    monkeypatch.setattr(dump, "dump_tool", no_dump)
    s = session_for()
    migrations.upgrade(s.config.migration_set("main"), s.engine, B2)
    steps = {st.revision: st for st in s.preview("heads", "main", save=False).steps["main"]}
    assert {r: st.source for r, st in steps.items()} == {C3: "captured", D4: "captured", E5: "offline"}
    assert "ALTER TABLE owner ADD COLUMN nickname VARCHAR(50);" in steps[C3].sql
