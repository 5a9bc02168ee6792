"""The troubleshoot checks on a real PostgreSQL: each test first creates the broken state, then diagnoses it.

Projects are the repository's sample migrations (or a copy of them when a test deletes or edits a file) and the
scenario projects under tests/fixtures/alembic_projects/.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import Session
from dbrunbook.postgres import db
from dbrunbook.procedures import diagnose
from dbrunbook.protocol import ARTIFACTS_DIR
from tests.projects import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "alembic_projects"
MAIN_HEAD, AI_HEAD = "b7e4f0c2d913", "cdf6709a3b1e"


def open_session(proj) -> Session:
    return Session(load_config(proj.config_path), "local")


def write_sets(proj, sets: dict[str, tuple[Path, str]]) -> None:
    """Point the project's migration sets at other Alembic projects: {name: (alembic.ini, version_table)}."""
    text = proj.config_path.read_text().split("[migration_sets.main]")[0]
    for name, (ini, table) in sets.items():
        text += f'\n[migration_sets.{name}]\nalembic_ini = "{ini}"\nversion_table = "{table}"\n'
    proj.config_path.write_text(text)


def copy_main(proj) -> Path:
    """A copy of the sample main migrations the test may edit; the project's set 'main' points at it."""
    folder = proj.root / "main_copy"
    shutil.copytree(ROOT / "migrations" / "main", folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_sets(proj, {"main": (folder / "alembic.ini", "alembic_version")})
    return folder


def upgrade(proj, name: str, revision: str = "heads") -> None:
    migrations.upgrade(load_config(proj.config_path).migration_set(name), proj.engine, revision)


def ledger_run(proj, run_id: str, before: dict, after: dict, files: dict) -> None:
    now = datetime.now(UTC)
    records.ledger_start(proj.engine, run_id=run_id, runbook="apply", operator="tester", started_at=now,
                         heads_before=before)
    records.ledger_finish(proj.engine, run_id=run_id, finished_at=now, outcome="succeeded",
                          statement_sha256=None, heads_after=after, migration_files=files)


def test_not_up_to_date_lists_the_pending_revisions(project):
    upgrade(project, "main", "ea90695")
    upgrade(project, "ai")
    s = open_session(project)
    result = diagnose.check_up_to_date(s)
    (problem,) = result.problems
    assert problem.title == "Target database is not up to date" and problem.migration_set == "main"
    assert problem.evidence["revision"].tolist() == ["a1b2c3d4e5f6", MAIN_HEAD]
    assert problem.next_step == "dbrunbook run apply -t local -p migration_set main -p dry_run false"
    assert "alembic current is ea90695; alembic heads is b7e4f0c2d913" in problem.cause
    assert "ai: at cdf6709a3b1e = heads" in result.checked


def test_unknown_revision_is_traced_to_its_nearest_known_ancestor(project):
    folder = copy_main(project)
    upgrade(project, "main")
    ledger_run(project, "run-1", {"main": ["a1b2c3d4e5f6"]}, {"main": [MAIN_HEAD]}, {})
    # A rolled-back application: the file of the revision the database is at is gone.
    next(folder.glob(f"versions/{MAIN_HEAD}_*.py")).unlink()
    s = open_session(project)
    (problem,) = diagnose.check_unknown_revision(s, "main").problems
    assert problem.title == f"Can't locate revision identified by '{MAIN_HEAD}'"
    assert problem.evidence[["run_id", "heads_before", "heads_after"]].values.tolist() == [
        ["run-1", "a1b2c3d4e5f6", MAIN_HEAD]]
    assert problem.next_step == ("dbrunbook run stamp -t local -p migration_set main -p revision a1b2c3d4e5f6 "
                                 "-p dry_run false")
    assert "the next upgrade would run 0 revision(s)" in problem.cause
    # The other checks leave a set they cannot read to this one rather than fail.
    assert "main: skipped" in diagnose.check_up_to_date(s, "main").checked


def test_unknown_revision_without_any_trace_points_to_status(project):
    upgrade(project, "main", "ea90695")
    with project.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'feedface0001'"))
    s = open_session(project)
    (problem,) = diagnose.check_unknown_revision(s, "main").problems
    assert "feedface0001" in problem.title
    assert problem.next_step == "dbrunbook run status -t local -p migration_set main"
    assert "no ledger row or record" in problem.cause


def _run_created_sql(proj, revision: str, kinds: set[str]) -> None:
    """Create by hand, as someone with psql would, the objects a revision creates (not its version row)."""
    mset = load_config(proj.config_path).migration_set("main")
    (step,) = [st for st in migrations.offline_sql(mset, "ea90695", revision) if st.revision == revision]
    statements = [st for st in diagnose.split_statements(step.sql)
                  if any(st.upper().startswith(f"CREATE {k}") or st.upper().startswith(f"CREATE UNIQUE {k}")
                         for k in kinds)]
    with proj.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_objects_that_exist_already_show_when_a_stamp_is_safe(project):
    upgrade(project, "main", "ea90695")
    _run_created_sql(project, "a1b2c3d4e5f6", {"TABLE", "INDEX"})
    s = open_session(project)
    (problem,) = diagnose.check_objects_exist(s, "main").problems
    assert problem.title == "Column already exists"
    rows = problem.evidence[["revision", "kind", "object", "exists"]].values.tolist()
    assert ["a1b2c3d4e5f6", "table", "user_preferences", True] in rows
    assert ["a1b2c3d4e5f6", "index", "ix_user_preferences_user_id", True] in rows
    assert [MAIN_HEAD, "column", "users.full_name", False] in rows
    assert problem.next_step == ("dbrunbook run stamp -t local -p migration_set main -p revision a1b2c3d4e5f6 "
                                 "-p dry_run false")


def test_a_partly_applied_revision_is_not_safe_to_stamp(project):
    upgrade(project, "main", "ea90695")
    _run_created_sql(project, "a1b2c3d4e5f6", {"TABLE"})
    s = open_session(project)
    (problem,) = diagnose.check_objects_exist(s, "main").problems
    assert "Revision 'a1b2c3d4e5f6' is partly applied" in problem.cause
    assert problem.next_step == "dbrunbook run status -t local -p migration_set main"


def test_duplicate_keys_of_a_pending_data_migration(project):
    write_sets(project, {"seed": (FIXTURES / "seed_data" / "alembic.ini", "alembic_version")})
    upgrade(project, "seed", "5e0000000001")
    with project.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO settings (key, value) VALUES ('theme', 'dark'), ('discount', '10%')"))
    s = open_session(project)
    (problem,) = diagnose.check_duplicate_keys(s).problems
    assert problem.title == "Duplicate key value violates unique constraint"
    assert sorted(problem.evidence[["constraint", "key", "value", "conflict"]].values.tolist()) == [
        ["settings_pkey", "key", "discount", "already in the table"],
        ["settings_pkey", "key", "theme", "already in the table"],
    ]
    assert "ON CONFLICT (key) DO NOTHING" in problem.cause
    assert problem.next_step == "dbrunbook run review -t local -p migration_set seed -p revision 5e0000000002"
    # Without the conflicting rows the same check is all clear.
    with project.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM settings"))
    assert diagnose.check_duplicate_keys(s).ok


def test_blocked_migration_shows_the_blocking_tree_and_ends_nothing(project):
    upgrade(project, "main")
    holder = sa.create_engine(project.url)
    waiter_engine = db.make_engine(project.url, run_id="waiter", lock_timeout="30s")
    blocker = holder.connect()
    blocker.execute(sa.text("SELECT count(*) FROM users"))  # holds ACCESS SHARE, idle in transaction
    blocker_pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    outcome = {}

    def migrate():
        try:
            with waiter_engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE users ADD COLUMN nickname text"))
            outcome["done"] = True
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=migrate)
    thread.start()
    s = open_session(project)
    try:
        for _ in range(200):  # until the ALTER waits on the lock
            with project.engine.connect() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                        "'dbrunbook:waiter' AND wait_event_type = 'Lock'")).scalar():
                    break
            time.sleep(0.05)
        (problem,) = diagnose.check_blocking(s).problems
        rows = {r["pid"]: r for r in problem.evidence.to_dict("records")}
        waiter = next(r for r in rows.values() if r["application_name"] == "dbrunbook:waiter")
        assert waiter["role"] == f"blocked by {blocker_pid}" and not waiter["could_end"]
        assert "AccessExclusiveLock on users" in waiter["waiting_for"]
        assert rows[blocker_pid]["could_end"] and "blocks 1 session(s)" in rows[blocker_pid]["role"]
        assert f"pid(s) {blocker_pid} with SELECT pg_terminate_backend(pid)" in problem.cause
        # Reported, not ended: the blocker's transaction is still there.
        assert blocker.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(30)
        holder.dispose()
        waiter_engine.dispose()
    assert outcome == {"done": True}
    assert diagnose.check_blocking(s).ok


def test_multiple_heads_show_the_branches_and_the_merge_command(project):
    write_sets(project, {"two": (FIXTURES / "two_heads" / "alembic.ini", "alembic_version")})
    s = open_session(project)
    (problem,) = diagnose.check_multiple_heads(s).problems
    assert problem.evidence[["head", "branch", "branches_from"]].values.tolist() == [
        ["e1111111left", "e1111111left", "e0000000root"], ["e2222222rght", "e2222222rght", "e0000000root"]]
    assert 'alembic merge -m "merge heads" e1111111left e2222222rght' in problem.cause
    assert problem.next_step == 'dbrunbook new "merge heads" --merge -m two'


def test_drift_lists_each_object_that_differs_from_the_models(project):
    upgrade(project, "main")
    upgrade(project, "ai")
    with project.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN nickname text"))
        conn.execute(sa.text("DROP INDEX crm.ix_leads_email"))
    s = open_session(project)
    (problem,) = diagnose.check_drift(s).problems
    assert problem.migration_set == "main"
    assert sorted(problem.evidence[["change", "object"]].values.tolist()) == [
        ["add_index", "crm.leads.ix_leads_email"], ["remove_column", "users.nickname"]]


def test_edited_applied_migration_is_found_from_the_ledger_digests(project):
    folder = copy_main(project)
    upgrade(project, "main")
    mset = load_config(project.config_path).migration_set("main")
    applied = migrations.file_digests(mset)
    ledger_run(project, "run-apply", {"main": []}, {"main": [MAIN_HEAD]}, {"main": applied})
    s = open_session(project)
    assert diagnose.check_edited_migrations(s, "main").ok
    path = next(folder.glob(f"versions/{MAIN_HEAD}_*.py"))
    path.write_text(path.read_text() + "\n# tweaked after it was applied\n")
    (problem,) = diagnose.check_edited_migrations(s, "main").problems
    assert problem.title == "Never edit applied migrations"
    assert problem.evidence[["revision", "file", "applied_by"]].values.tolist() == [
        [MAIN_HEAD, path.name, "run-apply"]]
    assert problem.evidence["applied_sha256"][0] == applied[MAIN_HEAD][:16]


def test_a_healthy_database_is_all_clear(project):
    upgrade(project, "main")
    upgrade(project, "ai")
    result = diagnose.diagnose(open_session(project))
    assert result.problems == ()
    assert [c.code for c in result.checks] == ["not_up_to_date", "unknown_revision", "already_exists",
                                              "duplicate_key", "blocked", "multiple_heads", "drift",
                                              "edited_migration", "invalid_index"]
    assert all(c.checked for c in result.checks)


def test_troubleshoot_runbook_through_the_launcher(project):
    upgrade(project, "main", "ea90695")
    upgrade(project, "ai")
    result = run_runbook("troubleshoot", target="local", parameters={},
                         config=load_config(project.config_path))
    assert (result.outcome, result.exit_status) == ("succeeded", 0)
    body = json.loads((result.record_dir / ARTIFACTS_DIR / diagnose.DIAGNOSIS_ARTIFACT).read_text())
    assert body["all_clear"] is False
    found = [(p["code"], p["migration_set"]) for c in body["checks"] for p in c["problems"]]
    assert found == [("not_up_to_date", "main")]
    assert records.verify_record(result.record_dir, load_config(project.config_path).allowed_signers).ok
