"""Revisions that cannot be rendered offline, through the real launcher: preview, apply and rollback work.

Scenario: tests/fixtures/alembic_projects/online_only (b2 reads rows through op.get_bind(), c3 uses the
inspector, d4 raises in offline mode; a1 and e5 are normal). The database state is checked with SQL.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import cli, records
from dbrunbook.config import load_config
from tests.projects import trust_operator, write_one_set_project

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "alembic_projects" / "online_only"
A1, B2, C3, D4, E5 = "a1000000own1", "b2000000cnt2", "c3000000nik3", "d4000000idx4", "e5000000pet5"
URL_ENV = "DBRUNBOOK_TEST_ONLINE_URL"


@pytest.fixture
def online_project(tmp_path, embedded_root, database_url, monkeypatch):
    # The scratch servers' data outside pytest's basetemp, which other pytest sessions make 0700.
    state = embedded_root / f"state-{uuid.uuid4().hex[:8]}"
    config = write_one_set_project(tmp_path / "project", FIXTURE / "alembic.ini", url_env=URL_ENV, state=state)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    trust_operator(config, "tester@dbrunbook")
    engine = sa.create_engine(database_url)
    yield load_config(config), engine
    engine.dispose()


def run_json(capfd, *argv):
    code = cli.main(["run", *argv, "--json"])
    out, err = capfd.readouterr()
    return code, json.loads(out), err


@pytest.mark.e2e
def test_preview_apply_and_rollback_of_online_only_revisions(online_project, capfd):
    config, engine = online_project

    code, r, err = run_json(capfd, "preview")
    assert (code, r["outcome"]) == (0, "succeeded"), err[-3000:]
    artifacts = records.run_dir_for(config.outputs_dir, r["run_id"]) / "artifacts"
    sql = (artifacts / "preview-main.sql").read_text()
    assert "could not be captured" not in sql, sql
    assert "CREATE INDEX ix_owner_name ON owner (name);" in sql and "ADD COLUMN nickname" in sql
    assert f"-- revision {D4} (index owner name) cannot be rendered offline: it raises at " \
           f"versions/d4000000idx4_index_owner_name.py:18" in sql
    meta = json.loads((artifacts / "preview.json").read_text())
    assert {rev: v["source"] for rev, v in meta["online_only"]["main"].items()} == {
        B2: "captured", C3: "captured", D4: "captured"}
    with engine.connect() as conn:  # the preview wrote nothing
        assert conn.execute(sa.text("SELECT to_regclass('owner')")).scalar() is None

    code, r, err = run_json(capfd, "apply", "-p", "dry_run", "false")
    assert (code, r["outcome"]) == (0, "succeeded"), err[-3000:]
    assert r["heads_after"] == {"main": [E5]}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [E5]
        assert conn.execute(sa.text("SELECT owners, note FROM owner_stats")).all() == [
            (0, "owners counted: it's a data migration")]
        assert conn.execute(sa.text(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'owner'::regclass AND attnum > 0 ORDER BY attnum"
        )).scalars().all() == ["id", "name", "nickname"]
        assert conn.execute(sa.text("SELECT to_regclass('ix_owner_name')::text, to_regclass('pet')::text")
                            ).one() == ("ix_owner_name", "pet")

    database = engine.url.database
    code, r, err = run_json(capfd, "rollback", "-p", "revision", "base", "-p", "confirm", database,
                            "-p", "dry_run", "false")
    assert (code, r["outcome"]) == (3, "stopped-at-guard"), err[-3000:]  # b2's row in owner_stats is data
    code, r, err = run_json(capfd, "rollback", "-p", "revision", "base", "-p", "confirm", database,
                            "-p", "allow_data_loss", "true", "-p", "dry_run", "false")
    assert (code, r["outcome"]) == (0, "succeeded"), err[-3000:]
    loss = json.loads((records.run_dir_for(config.outputs_dir, r["run_id"]) / "artifacts" / "data_loss.json")
                      .read_text())
    assert loss["steps"] == [E5, D4, C3, B2, A1] and loss["uncounted"] == []
    # b2's downgrade (online-only: it reads .rowcount) was captured: its DELETE counts the row it destroys.
    assert {(i["object"], i["kind"], i["lost"], i["revision"]) for i in loss["items"] if i["lost"]} == {
        ("owner_stats", "delete", 1, B2), ("owner_stats", "table", 1, A1)}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT to_regclass('owner'), to_regclass('owner_stats'), to_regclass('pet')")
                            ).one() == (None, None, None)
