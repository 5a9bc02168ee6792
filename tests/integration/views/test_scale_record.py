"""A recorded apply of a long synthetic chain keeps a record sized for people, the full data as artifacts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.execution.runner import run_runbook
from dbrunbook.protocol import ARTIFACTS_DIR
from tests.projects import trust_operator

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
from _chains import make_chain, rev_id, write_config  # noqa: E402 - bench/ is on the path only from here

N = 300
# 12 KB per trivial revision before (issue 15); what stays is per-revision metadata (papermill, the lint and
# preview tables' summaries are bounded), so the bound is well under that and independent of the SQL's size.
NOTEBOOK_BOUND = 400 * 1024


@pytest.fixture
def long_chain(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("BENCH_TARGET_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    ini = make_chain(tmp_path / "chain", N, merges=5)
    config = load_config(write_config(tmp_path, ini, ROOT / "runbooks"))
    trust_operator(config.path, "tester@example.org")
    return config


def test_the_apply_record_of_300_revisions_stays_small_and_keeps_everything_as_artifacts(long_chain,
                                                                                        database_url):
    result = run_runbook("apply", parameters={"dry_run": "false"}, config=long_chain)

    assert (result.outcome, result.exit_status) == ("succeeded", 0), result.failing_step
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            heads = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            tables = conn.execute(sa.text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't%'")).scalar()
    finally:
        engine.dispose()
    assert heads == [rev_id(N - 1)] and tables == N

    notebook = result.record_dir / "notebook.ipynb"
    assert notebook.stat().st_size < NOTEBOOK_BOUND, notebook.stat().st_size
    text = notebook.read_text()
    assert "more revision(s): their SQL is in artifacts/preview-main.sql" in text
    assert f"{N:,} step(s) in" in text

    artifacts = result.record_dir / ARTIFACTS_DIR
    steps = pd.read_csv(artifacts / "steps.csv")
    assert len(steps) == N and set(steps["revision"]) == {rev_id(i) for i in range(N)}
    preview_sql = (artifacts / "preview-main.sql").read_text()
    assert all(f'CREATE TABLE t{i:04d} ' in preview_sql for i in range(N))
    statement = json.loads((result.record_dir / "statement.json").read_text())
    assert "steps.csv" in json.dumps(statement)  # hashed in the statement like every artifact
    assert records.verify_record(result.record_dir, long_chain.allowed_signers).status == "valid"


def test_scripts_are_loaded_once_while_their_files_are_unchanged(long_chain, tmp_path):
    mset = long_chain.migration_set("main")
    first = migrations.script_directory(mset)
    assert migrations.script_directory(mset) is first
    assert len(migrations.history(mset)) == N

    extra = tmp_path / "chain" / "versions" / "zz_extra.py"
    extra.write_text((tmp_path / "chain" / "versions" / f"{rev_id(N - 1)}_t{N - 1:04d}.py").read_text()
                     .replace(f'revision = "{rev_id(N - 1)}"', 'revision = "zz0000000001"')
                     .replace(f"down_revision = '{rev_id(N - 2)}'", f"down_revision = '{rev_id(N - 1)}'"))
    assert migrations.script_directory(mset) is not first
    assert migrations.heads(mset) == ("zz0000000001",)
