"""Authoring on a real PostgreSQL: `dbrunbook new`, the review checks, the review runbook, the pytest plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import ParameterError, UnsafeMigration
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import Session
from dbrunbook.procedures import authoring
from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.pytest_plugin import assert_round_trip, assert_stairway
from tests.projects import ROOT, URL_ENV, write_project

FIXTURES = ROOT / "tests" / "fixtures" / "alembic_projects"
BROKEN = FIXTURES / "broken_review" / "alembic.ini"
MAIN_HEAD = "b7e4f0c2d913"


def write_sets(proj, sets: dict[str, Path]) -> None:
    text = proj.config_path.read_text().split("[migration_sets.main]")[0]
    for name, ini in sets.items():
        text += f'\n[migration_sets.{name}]\nalembic_ini = "{ini}"\n'
    proj.config_path.write_text(text)


def copy_project(proj, source: Path, name: str = "main") -> Path:
    folder = proj.root / f"{name}_copy"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    write_sets(proj, {name: folder / "alembic.ini"})
    return folder


# --- dbrunbook new --------------------------------------------------------------------------------------
def test_new_revision_writes_a_script_on_top_of_the_head(project):
    copy_project(project, ROOT / "migrations" / "main")
    config = load_config(project.config_path)
    path = authoring.new_revision(config, "Add bookings table", "main")
    assert path.is_file() and path.parent.name == "versions"
    text = path.read_text()
    assert '"""Add bookings table' in text and f"down_revision: Union[str, Sequence[str], None] = '{MAIN_HEAD}'" in text
    assert migrations.heads(config.migration_set("main")) == (path.name.split("_")[0],)


def test_new_revision_rejects_a_vague_message_and_writes_nothing(project):
    folder = copy_project(project, ROOT / "migrations" / "main")
    before = sorted(p.name for p in (folder / "versions").iterdir())
    with pytest.raises(ParameterError) as err:
        authoring.new_revision(load_config(project.config_path), "Fix stuff", "main")
    assert str(err.value).startswith("Migration message 'Fix stuff' is too vague: it has generic words only "
                                     "(fix, stuff)")
    assert sorted(p.name for p in (folder / "versions").iterdir()) == before


def test_new_revision_autogenerate_compares_the_models_with_the_target(project):
    copy_project(project, ROOT / "migrations" / "main")
    config = load_config(project.config_path)
    migrations.upgrade(config.migration_set("main"), project.engine)
    with project.engine.begin() as conn:  # the models have an index the database lacks
        conn.execute(sa.text("DROP INDEX ix_user_preferences_user_id"))
    path = authoring.new_revision(config, "Restore user preferences index", "main", autogenerate=True,
                                  target="local")
    text = path.read_text()
    assert ("op.create_index(op.f('ix_user_preferences_user_id'), 'user_preferences', ['user_id'], unique=True)"
            in text)
    # Autogenerate only read the target.
    assert migrations.current(config.migration_set("main"), project.engine) == (MAIN_HEAD,)


def test_merge_heads_writes_the_merge_revision(project):
    copy_project(project, FIXTURES / "two_heads", name="two")
    config = load_config(project.config_path)
    path = authoring.merge_heads(config, "two")
    assert "Revises: e1111111left, e2222222rght" in path.read_text()
    assert len(migrations.heads(config.migration_set("two"))) == 1
    with pytest.raises(ParameterError, match="has one head"):
        authoring.merge_heads(config, "two")


# --- review -------------------------------------------------------------------------------------------
def test_the_sample_migrations_pass_review(project):
    s = Session(load_config(project.config_path), "local")
    main = authoring.review(s, "", "main")
    assert main.revision == MAIN_HEAD and main.passed, main.errors
    assert main.checklist["answer"].tolist() == ["ok", "ok", "ok", "ok", "ok"]
    assert main.checklist["evidence"][0] == "public.users.full_name character varying(255) NOT NULL"
    ai = authoring.review(s, "", "ai")
    assert ai.passed, ai.errors


def test_a_merge_revision_with_empty_functions_passes(project):
    s = Session(load_config(project.config_path), "local")
    source = authoring.revision_source(s, "9fd62e8", "main")
    assert authoring.lint_python(source).findings == ()
    place = authoring.scratch(s)
    trip = place.round_trip(source)
    assert trip.ok and trip.step.changes.empty


def test_a_broken_revision_fails_review_with_the_right_findings(project):
    write_sets(project, {"main": BROKEN})
    s = Session(load_config(project.config_path), "local")
    column = authoring.review(s, "c0ffee000002", "main")
    assert not column.passed
    rules = {(f.rule, f.revision) for f in column.errors}
    assert rules == {("round-trip:schema-not-restored", "c0ffee000002"),
                     ("round-trip:reupgrade-failed", "c0ffee000002"),
                     ("stairway:schema-not-restored", "c0ffee000002"), ("stairway:reupgrade-failed", "c0ffee000002")}
    restored = next(f for f in column.errors if f.rule == "round-trip:schema-not-restored")
    assert restored.message == ("the schema after downgrade differs from before upgrade: "
                                "column added public.account.nickname")
    assert column.checklist["answer"].tolist()[4] == "problem"

    table = authoring.review(s, "", "main")  # the head, c0ffee000003: `pass` downgrade
    assert table.revision == "c0ffee000003"
    assert ("empty-downgrade", "error") in {(f.rule, f.level) for f in table.errors}
    assert "table added public.audit_log" in next(f.message for f in table.errors
                                                    if f.rule == "round-trip:schema-not-restored")
    with pytest.raises(UnsafeMigration) as err:
        authoring.require_passing(table)
    assert str(err.value).startswith("Revision 'c0ffee000003' of migration set 'main' fails review with 5 error(s): "
                                     "empty-downgrade (c0ffee000003): downgrade() does nothing")


def test_review_of_a_protected_target_runs_on_a_throwaway_server(tmp_path, database_url, monkeypatch):
    proj = write_project(tmp_path / "protected", database_url, protected=True)
    monkeypatch.setenv(URL_ENV, database_url)
    write_sets(proj, {"main": BROKEN})
    s = Session(load_config(proj.config_path), "local")
    place = authoring.scratch(s)
    try:
        assert place.kind == "a throwaway embedded server" and "protected" in place.reason
        source = authoring.revision_source(s, "c0ffee000001", "main")
        assert place.round_trip(source).ok
    finally:
        place.close()
    # The target itself was never migrated.
    assert migrations.current(load_config(proj.config_path).migration_set("main"), s.engine) == ()


def test_review_runbook_through_the_launcher_stops_at_the_verdict(project):
    write_sets(project, {"main": BROKEN})
    config = load_config(project.config_path)
    result = run_runbook("review", target="local", parameters={"revision": "c0ffee000002"}, config=config)
    assert (result.outcome, result.exit_status) == ("stopped-at-guard", 3)
    assert result.failing_step["ename"] == "ReviewFailed"
    assert result.failing_step["heading"].startswith("## 10. Verdict")
    body = json.loads((result.record_dir / ARTIFACTS_DIR / "review.json").read_text())
    assert body["passed"] is False and body["revision"] == "c0ffee000002"
    assert (result.record_dir / ARTIFACTS_DIR / "review-c0ffee000002.sql").read_text().count("ADD COLUMN nickname") == 1
    # No scratch database was left behind on the server.
    with project.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbrunbook_scratch_%'")
                            ).scalar() == 0


# --- pytest plugin ------------------------------------------------------------------------------------
def test_assert_stairway_passes_on_the_sample_migrations(database_url):
    result = assert_stairway(ROOT / "migrations" / "main" / "alembic.ini", database_url)
    assert [st.revision for st in result.steps][-1] == MAIN_HEAD and result.not_run == ()


def test_state_that_lives_one_env_py_run_does_not_fail_the_stairway(database_url, caplog):
    """run_scoped_state: up, down, up in one run fails (its connection remembers the enum it dropped); each
    step in a run of its own, as a deployment and a rollback run them, passes. Review reports what deploys do."""
    ini = FIXTURES / "run_scoped_state" / "alembic.ini"
    with caplog.at_level("INFO", logger="dbrunbook"):
        result = assert_stairway(ini, database_url)
    assert [(st.revision, st.ok) for st in result.steps] == [("e0000000001a", True), ("e0000000002b", True)]
    assert "revision e0000000001a failed its reupgrade in the shared env.py run and passed in runs of its own: " \
           "type \"mood\" does not exist" in caplog.text
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "e0000000002b"
            assert [r[0] for r in conn.execute(sa.text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'person' ORDER BY 1"))] == [
                "id", "mood", "name"]
    finally:
        engine.dispose()


def test_assert_round_trip_fails_on_a_downgrade_that_leaves_a_column(database_url):
    with pytest.raises(AssertionError) as err:
        assert_round_trip(BROKEN, database_url, "c0ffee000002")
    assert str(err.value) == (
        f"Round trip of {BROKEN} failed:\n"
        "  round-trip:schema-not-restored (c0ffee000002): the schema after downgrade differs from before upgrade: "
        "column added public.account.nickname\n"
        "  round-trip:reupgrade-failed (c0ffee000002): upgrading again after the downgrade failed: column "
        "\"nickname\" of relation \"account\" already exists")


def test_the_plugin_in_a_users_test_suite(tmp_path, pg_admin_url):
    """A user's project: the one line in a test module, pytest run as they would (the entry point = -p)."""
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ndbrunbook_alembic_ini = {BROKEN}\n")
    (tmp_path / "test_migrations.py").write_text(
        "from dbrunbook.pytest_plugin import test_dbrunbook_round_trip, test_dbrunbook_stairway  # noqa: F401\n")
    env = dict(os.environ, DBRUNBOOK_TEST_DATABASE_URL=pg_admin_url)
    registered = any(ep.value == "dbrunbook.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if registered else ["-p", "dbrunbook.pytest_plugin"]  # until the entry point is installed
    proc = subprocess.run([sys.executable, "-m", "pytest", *load, "-q", "-p", "no:cacheprovider", "-o",
                           "addopts=", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "2 failed" in proc.stdout, proc.stdout[-3000:]
    assert "Stairway of" in proc.stdout and "stairway:schema-not-restored (c0ffee000002)" in proc.stdout
    assert "round-trip:schema-not-restored (c0ffee000003)" in proc.stdout
