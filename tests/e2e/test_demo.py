"""The main job (`make demo` = `dbrunbook demo`) end to end: older revisions, sample rows, deploy, verify,
every step a valid signed record, and the database at heads with its rows still there."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.demo import run_demo
from dbrunbook.postgres import snapshots
from tests.projects import URL_ENV


@pytest.mark.e2e
def test_demo_deploys_the_sample_migrations_with_signed_records(project, capfd):
    with project.config_path.open("a") as f:
        f.write(f'\n[targets.demo]\nurl_env = "{URL_ENV}"\n')
    config = load_config(project.config_path)
    # The demo is run by someone without a key: it makes one and trusts it explicitly (keygen --trust).
    for key in Path(config.keys_dir).glob("operator_ed25519*"):
        key.unlink()
    config.allowed_signers.unlink()
    results = run_demo(config)
    out, err = capfd.readouterr()

    assert [r.runbook for r in results] == ["apply", "apply", "deploy", "verify"]
    assert [r.outcome for r in results] == ["succeeded"] * 4
    assert [records.verify_record(r.record_dir, config.allowed_signers).status for r in results] == ["valid"] * 4
    deploy = results[2]
    assert deploy.heads_before == {"main": ["ea90695"], "ai": ["56d701cf2472"]}
    assert deploy.heads_after == {"main": list(migrations.heads(config.migration_set("main"))),
                                  "ai": list(migrations.heads(config.migration_set("ai")))}
    counts = snapshots.row_counts(project.engine)
    assert counts.counts["public.users"] >= 1000 and counts.total_rows > 50_000
    assert "Created a local operator signing key" in err
    # The same per-step progress as 'dbrunbook run': a start and an end line for each step of each run.
    assert err.count("] 1. ") >= 4 and "] done in " in err
    assert "Signed records:" in out and str(deploy.record_dir) in out
