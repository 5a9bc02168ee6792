"""Safety guards on real PostgreSQL, real Alembic and (for the approved preview) a real papermill run:
lint weighed by the live tables, reviewed preview = applied change, data loss of a downgrade, stamp truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import errors, safety
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import open_session
from dbrunbook.safety.findings import read_findings
from tests.projects import ROOT, URL_ENV, trust_operator, write_project

pytestmark = pytest.mark.integration

UNSAFE = ROOT / "tests" / "fixtures" / "alembic_projects" / "unsafe"


def session_for(config_path: Path, record_dir: Path | None = None):
    return open_session("local", config=config_path, record_dir=str(record_dir) if record_dir else "")


def unsafe_project(folder: Path, url: str, *, protected: bool) -> Path:
    """A project whose only migration set is a copy of the ``unsafe`` fixture (so a test may edit it)."""
    migrations_dir = folder.parent / "unsafe_migrations"
    if not migrations_dir.exists():
        shutil.copytree(UNSAFE, migrations_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dbrunbook.toml"
    config.write_text(f"""
[project]
outputs = "{folder.parent / 'outputs'}"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "{folder.parent / 'state'}"

[targets.local]
url_env = "{URL_ENV}"
protected = {str(protected).lower()}
lock_timeout = "2s"

[migration_sets.unsafe]
alembic_ini = "{migrations_dir / 'alembic.ini'}"
""", encoding="utf-8")
    trust_operator(config, "reviewer@dbrunbook")
    return config


def execute(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def add_users(url: str, n: int, *, full_name: bool = False) -> None:
    extra = (", full_name", ", 'A B'") if full_name else ("", "")
    execute(url, f"INSERT INTO users (email, first_name, last_name{extra[0]}) "
                 f"SELECT 'u' || g || '@example.org', 'A', 'B'{extra[1]} FROM generate_series(1, {n}) g")


# --- 4. lint ---------------------------------------------------------------------------------------------
def test_sample_migrations_lint_without_errors_on_an_empty_database(tmp_path, database_url, monkeypatch):
    config = write_project(tmp_path / "p", database_url, protected=True).config_path
    monkeypatch.setenv(URL_ENV, database_url)
    s = session_for(config, tmp_path / "run")
    try:
        report = safety.lint(s, s.preview(save=False))
        assert report.errors == ()
        assert report.revisions == 12
        assert report.omitted_timeouts > 0
        # Every blocking operation is on a table this run creates: harmless, shown as info.
        risky = [f for f in report.findings if f.category == "deploy risk"]
        assert risky and {f.level for f in risky} == {"info"}
        frame = safety.require_clean(s, report, "")
        # the guard's table holds what it judged: no errors or warnings here, so nothing
        assert len(frame) == sum(f.level != "info" for f in report.findings) and not frame["allowed"].any()
        saved = json.loads((tmp_path / "run" / "artifacts" / "lint.json").read_text())
        key = lambda f: json.dumps(f, sort_keys=True)  # noqa: E731
        assert sorted(key(f.as_dict() | {"allowed": False}) for f in report.findings) == sorted(
            map(key, read_findings(saved)))  # the record keeps every finding, whole
        assert (saved["protected"], saved["stopped"], saved["allow"]) == (True, False, [])
    finally:
        s.engine.dispose()


def test_set_not_null_on_20000_users_stops_a_protected_target_until_allowed(tmp_path, database_url, monkeypatch):
    config = write_project(tmp_path / "p", database_url, protected=True).config_path
    monkeypatch.setenv(URL_ENV, database_url)
    s = session_for(config)  # interactive: no record, so require_clean may be called more than once
    try:
        migrations.upgrade(s.config.migration_set("main"), s.engine, "a1b2c3d4e5f6")
        add_users(database_url, 20_000)
        report = safety.lint(s, s.preview("heads", "main", save=False))
        assert sorted((f.rule, f.revision, f.level) for f in report.errors) == [
            ("backfill-under-lock", "b7e4f0c2d913", "error"), ("not-null-scan", "b7e4f0c2d913", "error")]
        assert "table users has at least 10,000 rows" in report.errors[0].why

        with pytest.raises(errors.UnsafeMigration) as stop:
            safety.require_clean(s, report, "")
        assert str(stop.value).startswith(
            "Lint found 2 error-level problem(s) on protected target 'local': ")
        assert str(stop.value).endswith(
            "run again with -p allow backfill-under-lock@b7e4f0c2d913,not-null-scan@b7e4f0c2d913 (the record "
            "keeps what was allowed).")
        assert {f.rule for f in stop.value.findings} == {"backfill-under-lock", "not-null-scan"}
        assert stop.value.exit_status == 3

        with pytest.raises(errors.UnsafeMigration, match="backfill-under-lock@b7e4f0c2d913"):
            safety.require_clean(s, report, "not-null-scan")  # one of two allowed is not enough
    finally:
        s.engine.dispose()
    s = session_for(config, tmp_path / "run2")
    try:
        frame = safety.require_clean(s, report, "not-null-scan@b7e4f0c2d913, backfill-under-lock")
        assert sorted(frame[frame["allowed"]]["rule"]) == ["backfill-under-lock", "not-null-scan"]
        saved = json.loads((tmp_path / "run2" / "artifacts" / "lint.json").read_text())
        assert saved["allow"] == ["not-null-scan@b7e4f0c2d913", "backfill-under-lock"]
        assert sum(f["allowed"] for f in read_findings(saved)) == 2 and saved["stopped"] is False
    finally:
        s.engine.dispose()


def test_unsafe_revisions_are_found(tmp_path, database_url, monkeypatch):
    config = unsafe_project(tmp_path / "p", database_url, protected=True)
    monkeypatch.setenv(URL_ENV, database_url)
    s = session_for(config)
    try:
        mset = s.config.migration_set("unsafe")
        # Without a database: the revision files alone.
        found = {(f.rule, f.revision) for f in safety.lint_revision_files(mset, migrations.heads(mset) and [
            r.revision for r in migrations.history(mset)])}
        assert found == {("empty-downgrade", "a1000000nodn"), ("online-only-call", "a2000000bind"),
                         ("autocommit-block", "a3000000acbk")}

        report = safety.lint(s, s.preview(save=False))
        rules = {(f.rule, f.revision): f for f in report.findings}
        assert rules[("empty-downgrade", "a1000000nodn")].statement == \
            "a1000000nodn_add_account_plan.py:21: def downgrade(): pass"
        assert rules[("printed-offline", "a2000000bind")].statement == \
            "printed: a2000000bind: the backfill reads rows and cannot run in offline mode"
        assert not any(f.rule == "syntax-error" for f in report.findings)
        assert rules[("ban-drop-column", "a4000000drop")].level == "error"  # destructive, protected target

        # Half applied, with rows: the rest narrows a column that holds data.
        migrations.upgrade(mset, s.engine, "a3000000acbk")
        execute(database_url, "INSERT INTO account (email, nickname) "
                              "SELECT 'user' || g || '@example.org', 'n' FROM generate_series(1, 30) g")
        report = safety.lint(s, s.preview(save=False))
        assert sorted((f.rule, f.revision, f.category) for f in report.errors) == [
            ("ban-drop-column", "a4000000drop", "destructive"),
            ("type-narrowing", "a5000000type", "destructive")]
        narrowing = next(f for f in report.errors if f.rule == "type-narrowing")
        assert narrowing.why.startswith("account.email goes from text to varchar(50)")
        with pytest.raises(errors.UnsafeMigration, match=r"-p allow ban-drop-column@a4000000drop,"
                                                         r"type-narrowing@a5000000type \("):
            safety.require_clean(s, report, "")
    finally:
        s.engine.dispose()


# --- 5. reviewed preview = applied change ----------------------------------------------------------------
def test_approved_preview_must_match_what_is_applied(tmp_path, database_url, monkeypatch):
    config = unsafe_project(tmp_path / "p", database_url, protected=True)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "reviewer@dbrunbook")
    result = run_runbook("preview", target="local", config=load_config(config))
    assert (result.outcome, result.exit_status) == ("succeeded", 0)

    # A second person (bob, with his own trusted key) approves the preview.
    from dbrunbook.records import signing
    from dbrunbook.safety import approvals

    cfg = load_config(config)
    bob = signing.generate_key(tmp_path / "bob" / "id_ed25519", "bob@dbrunbook")
    signing.add_allowed_signer(cfg.allowed_signers, "bob@dbrunbook", signing.public_key_line(bob))
    approvals.approve(cfg, result.run_id, note="read the SQL", key_path=bob)

    s = session_for(config)
    try:
        preview = s.preview(save=False)
        frame = safety.require_approved_preview(s, preview, result.run_id)
        assert dict(zip(frame["check"], frame["result"], strict=False)) == {
            "approved preview": "ok", "record signature": "valid", "same database": "ok",
            "sha256 of the SQL": "identical", "approved by a second person": "ok"}
        assert frame["detail"].iloc[-1].startswith(
            "previewed by reviewer@dbrunbook, approved by bob@dbrunbook at ")
        assert frame["detail"].iloc[-1].endswith(", applied by reviewer@dbrunbook (note: read the SQL)")

        with pytest.raises(errors.PreviewNotApproved) as stop:
            safety.require_approved_preview(s, preview, "")
        assert str(stop.value) == (
            "Target 'local' is protected: applying needs an approved preview. Run 'dbrunbook run preview -t "
            "local', have its record reviewed, then run again with -p approved_preview RUN_ID (the preview's "
            "run id).")
        with pytest.raises(errors.PreviewNotApproved, match="^No record of run '20990101T000000Z-preview-x' "):
            safety.require_approved_preview(s, preview, "20990101T000000Z-preview-x")
        rehearsal = safety.require_approved_preview(s, preview, "", dry_run=True)
        assert list(rehearsal["result"]) == ["would stop: PreviewNotApproved"]

        # Someone edits a migration after the review.
        path = tmp_path / "unsafe_migrations" / "alembic" / "versions" / "a5000000type_narrow_account_email.py"
        path.write_text(path.read_text().replace("sa.String(50)", "sa.String(40)"))
        changed = s.preview(save=False)
        with pytest.raises(errors.PreviewMismatch) as stop:
            safety.require_approved_preview(s, changed, result.run_id)
        assert str(stop.value).startswith(
            f"The SQL to apply differs from approved preview {result.run_id}: sha256 {preview.sha256} approved, "
            f"{changed.sha256} now (changed: preview-unsafe.sql; ")
        assert stop.value.exit_status == 3 and "PreviewMismatch" in errors.GUARD_ENAMES
    finally:
        s.engine.dispose()

    # A target that is not protected needs no approval.
    open_config = unsafe_project(tmp_path / "open", database_url, protected=False)
    s = session_for(open_config)
    try:
        frame = safety.require_approved_preview(s, s.preview(save=False), "")
        assert list(frame["result"]) == ["not required"]
    finally:
        s.engine.dispose()


# --- 8. rollback safety ----------------------------------------------------------------------------------
def test_downgrade_that_destroys_data_reports_counts_and_stops(project, tmp_path):
    s = session_for(project.config_path, tmp_path / "run")
    try:
        migrations.upgrade(s.config.migration_set("main"), s.engine, "heads")
        add_users(project.url, 25, full_name=True)
        execute(project.url, "INSERT INTO user_preferences (user_id) SELECT id FROM users ORDER BY id LIMIT 3")

        report = safety.data_loss(s, "ea90695", "main")
        assert report.steps == ("b7e4f0c2d913", "a1b2c3d4e5f6")
        assert [(i.object, i.kind, i.lost, i.revision) for i in report.items] == [
            ("users.full_name", "column", 25, "b7e4f0c2d913"),
            ("user_preferences", "table", 3, "a1b2c3d4e5f6")]
        assert report.total == 28
        assert "<b>28</b> rows/values would be destroyed" in report._repr_html_()
        saved = json.loads((tmp_path / "run" / "artifacts" / "data_loss.json").read_text())
        assert saved["total"] == 28

        with pytest.raises(errors.DataLossRefused) as stop:
            safety.require_no_data_loss(s, report, allow_data_loss=False)
        assert str(stop.value) == (
            "Downgrading 'main' from b7e4f0c2d913 to ea90695 on target 'local' would destroy 25 values of "
            "users.full_name, 3 rows of user_preferences (28 in all). Back them up first (pg_dump -t TABLE), "
            "then run again with -p allow_data_loss true.")
        assert stop.value.report is report and stop.value.exit_status == 3

        frame = safety.require_no_data_loss(s, report, allow_data_loss=True)
        assert list(frame["rows/values lost"]) == [25, 3]
        # Nothing was changed by the checks.
        assert migrations.current(s.config.migration_set("main"), s.engine) == ("b7e4f0c2d913",)

        # One step back loses only the backfilled column.
        only_column = safety.data_loss(s, "-1", "main", save=False)
        assert [(i.object, i.lost) for i in only_column.items] == [("users.full_name", 25)]
    finally:
        s.engine.dispose()


def test_stamp_check_refuses_a_lying_stamp_and_passes_a_true_one(project, tmp_path):
    s = session_for(project.config_path, tmp_path / "run")
    try:
        main = s.config.migration_set("main")
        migrations.upgrade(main, s.engine, "heads")
        migrations.upgrade(s.config.migration_set("ai"), s.engine, "heads")

        true = safety.stamp_check(s, "heads", "main")
        assert (true.truthful, true.differences, true.resolved) == (True, (), ("b7e4f0c2d913",))
        assert "public.users" in true.tables and not any(t.startswith("ai.") for t in true.tables)
        assert safety.require_truthful_stamp(s, true, force=False).empty

        lie = safety.stamp_check(s, "a1b2c3d4e5f6", "main")
        assert not lie.truthful and "would <b>lie</b>" in lie._repr_html_()
        assert {(d["object"], d["change"]) for d in lie.differences} == {("public.users.full_name",
                                                                           "column added")}
    finally:
        s.engine.dispose()
    s = session_for(project.config_path, tmp_path / "run2")
    try:
        with pytest.raises(errors.StampWouldLie) as stop:
            safety.require_truthful_stamp(s, lie, force=False)
        assert str(stop.value) == (
            "Stamping target 'local' to a1b2c3d4e5f6 would make its version table lie: the live schema differs "
            "from the schema migration set 'main' builds at a1b2c3d4e5f6 in 1 place(s): public.users.full_name: "
            "column added. Stamp the revision the schema really is at, or, if you know better, run again with "
            "-p force true (recorded).")
        assert stop.value.exit_status == 3
    finally:
        s.engine.dispose()
    s = session_for(project.config_path, tmp_path / "run3")
    try:
        frame = safety.require_truthful_stamp(s, lie, force=True)
        assert list(frame["object"]) == ["public.users.full_name"]
        saved = json.loads((tmp_path / "run3" / "artifacts" / "stamp_check.json").read_text())
        assert (saved["force"], saved["truthful"]) == (True, False)
    finally:
        s.engine.dispose()
