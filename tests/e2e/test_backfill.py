"""`dbrunbook run backfill` through the real launcher, papermill and kernel, the database checked by SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import cli, records
from dbrunbook.config import load_config
from tests.projects import URL_ENV, write_project

BACKFILL_TOML = """
[backfills.items_score]
table = "items"
key = "id"
set = "score = id % 7, counter = counter + 1"
where = "score IS NULL"
"""


@pytest.fixture
def project(tmp_path, database_url, monkeypatch):
    proj = write_project(tmp_path / "project", database_url)
    with proj.config_path.open("a", encoding="utf-8") as f:
        f.write(BACKFILL_TOML)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    with proj.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE items (id bigint PRIMARY KEY, score int, counter int NOT NULL DEFAULT 0)"))
        conn.execute(sa.text("INSERT INTO items (id) SELECT g FROM generate_series(1, 5000) g"))
    yield proj
    proj.engine.dispose()


@pytest.mark.e2e
def test_run_backfill_dry_then_for_real_with_a_signed_record(project, capfd):
    code = cli.main(["run", "backfill", "-p", "name", "items_score", "--json"])
    out, err = capfd.readouterr()
    dry = json.loads(out)
    assert (code, dry["outcome"]) == (0, "succeeded"), out + err
    with project.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM items WHERE score IS NULL")).scalar() == 5000

    code = cli.main(["run", "backfill", "-p", "name", "items_score", "-p", "dry_run", "false",
                     "-p", "batch_size", "500", "--json"])
    out, err = capfd.readouterr()
    real = json.loads(out)
    assert (code, real["outcome"]) == (0, "succeeded"), out + err
    with project.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT count(*) FILTER (WHERE score IS NULL), count(*) FILTER (WHERE counter = 1), "
            "count(*) FILTER (WHERE score = id % 7) FROM items")).one()
        state = conn.execute(sa.text("SELECT status, rows_changed, run_ids FROM dbrunbook.backfills "
                                     "WHERE name = 'items_score'")).one()
    assert tuple(row) == (0, 5000, 5000)
    assert tuple(state) == ("complete", 5000, [real["run_id"]])
    assert "backfill items_score: 5,000 of ~5,000 rows (100%)" in err  # the progress line reached stderr
    run_dir = Path(real["record_dir"])
    figures = json.loads((run_dir / "artifacts" / "backfill-items_score.json").read_text())
    assert sum(b["rows"] for b in figures["batches"]) == 5000 and figures["status"] == "complete"
    config = load_config(project.config_path)
    assert records.verify_record(run_dir, config.allowed_signers).status == "valid"


@pytest.mark.e2e
def test_run_backfill_with_its_defaults_lists_the_declared_ones_and_changes_nothing(project, capfd):
    code = cli.main(["run", "backfill", "--json"])
    out, err = capfd.readouterr()
    result = json.loads(out)
    assert (code, result["outcome"]) == (0, "succeeded"), out + err
    notebook = json.loads((Path(result["record_dir"]) / "notebook.ipynb").read_text())
    text = json.dumps(notebook)
    assert "No backfill chosen (-p name NAME). Declared in " in text and "items_score" in text
    with project.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM items WHERE score IS NULL")).scalar() == 5000
        assert conn.execute(sa.text("SELECT to_regclass('dbrunbook.backfills')")).scalar() is None
