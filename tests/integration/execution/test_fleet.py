"""Fleets on a real server: tenant databases (and tenant schemas), real papermill runs, real signatures.

Every target is a real ``dbrunbook run`` (a kernel start each), so each test checks several things at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import protocol, records
from dbrunbook.cli import main
from dbrunbook.config import load_config
from dbrunbook.execution.fleet import run_fleet
from dbrunbook.execution.fleet_groups import GroupNotFound, group_members
from dbrunbook.execution.fleet_rollup import verify_rollup
from dbrunbook.postgres import db
from dbrunbook.views.report import build_report
from tests.integration.views.test_report_browser import ARTIFACTS
from tests.integration.views.test_report_browser import browser as browser
from tests.projects import trust_operator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HEAD = "3c2e9a7b1d03"
SERVER_ENV = "DBRUNBOOK_TEST_FLEET_SERVER"
HOME_ENV = "DBRUNBOOK_TEST_FLEET_HOME"


def _project(root: Path, alembic_project: str, groups: str, version_table_schema: str | None = None) -> Path:
    shutil.copytree(FIXTURES / "fleet" / "runbooks", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / alembic_project, root / "migrations" / "app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    schema = f'version_table_schema = "{version_table_schema}"\n' if version_table_schema else ""
    (root / "dbrunbook.toml").write_text(
        f'[targets.home]\nurl_env = "{HOME_ENV}"\n\n{groups}\n'
        f'[migration_sets.app]\nalembic_ini = "migrations/app/alembic.ini"\n{schema}', encoding="utf-8")
    trust_operator(root / "dbrunbook.toml", "tester@example.org")
    return root / "dbrunbook.toml"


@pytest.fixture
def tenants(request, tmp_path, pg_admin_url, monkeypatch):
    """Six empty tenant databases ``<prefix>_t1..t6`` and a project whose group ``tenants`` queries them."""
    count = getattr(request, "param", 6)
    prefix = f"ft{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_t{i}" for i in range(1, count + 1)]
    for name in names:
        db.create_database(pg_admin_url, name)
    monkeypatch.setenv(SERVER_ENV, pg_admin_url)
    monkeypatch.setenv(HOME_ENV, db.with_database(pg_admin_url, names[0]))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    group = (f'[groups.tenants]\nurl_env = "{SERVER_ENV}"\n'
             f"databases_query = \"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}\\\\_%'\"\n")
    path = _project(tmp_path / "project", "connection_attr", group)
    try:
        yield load_config(path), names, pg_admin_url
    finally:
        for name in names:
            db.drop_database(pg_admin_url, name)


def _scalar(url: str, sql: str):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def _version(admin_url: str, database: str, schema: str = "public") -> str | None:
    url = db.with_database(admin_url, database)
    if _scalar(url, f"SELECT to_regclass('\"{schema}\".alembic_version')") is None:
        return None
    return _scalar(url, f'SELECT version_num FROM "{schema}".alembic_version')


def _break(admin_url: str, database: str) -> None:
    """Give a tenant a table revision 1 creates, so its upgrade fails for real."""
    engine = sa.create_engine(db.with_database(admin_url, database))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE account (id int)"))
    engine.dispose()


def _predicate(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / protocol.STATEMENT_FILE).read_bytes())["predicate"]


def test_waves_in_order_records_rollup_and_resume(tenants):
    config, names, admin = tenants
    assert [m.target for m in group_members(config, "tenants")] == [f"tenants:{n}" for n in names]
    lines: list[str] = []
    result = run_fleet("tenant_upgrade", "tenants", waves="1,2,rest", parallel=2, config=config,
                       progress=lines.append)

    assert result.stopped is None and result.exit_status == 0
    assert [[o.target for o in wave] for wave in result.waves] == [
        [f"tenants:{n}" for n in names[:1]], [f"tenants:{n}" for n in names[1:3]],
        [f"tenants:{n}" for n in names[3:]]]
    assert {o.outcome for o in result.outcomes} == {"succeeded"}
    assert [_version(admin, n) for n in names] == [HEAD] * len(names)
    # Waves in order: every run of a wave started after every run of the wave before had finished.
    for earlier, later in zip(result.waves, result.waves[1:], strict=False):
        last_end = max(_predicate(o.record_dir)["finished_at"] for o in earlier)
        first_start = min(_predicate(o.record_dir)["started_at"] for o in later)
        assert last_end < first_start
    for outcome in result.outcomes:
        assert records.verify_record(Path(outcome.record_dir), config.allowed_signers).status == "valid"
        assert _predicate(outcome.record_dir)["heads_after"] == {"app": [HEAD]}
        assert outcome.heads_before == {"app": []} and outcome.heads_after == {"app": [HEAD]}
    assert sum(line.startswith("start ") for line in lines) == len(names)
    assert lines[-2].startswith("end ") and "done 6, failed 0, skipped 0, remaining 0" in lines[-2]

    check = verify_rollup(result.record_dir, config.allowed_signers)
    assert (check.status, check.problems) == ("valid", ())
    assert check.predicate["wave_sizes"] == [1, 2, 3]
    assert [t["run_id"] for t in check.predicate["targets"]] == [o.run_id for o in result.outcomes]

    # The same command again resumes: everything is done, nothing runs, nothing changes.
    before = set(records.find_records(config.outputs_dir))
    again = run_fleet("tenant_upgrade", "tenants", waves="1,2,rest", parallel=2, config=config)
    assert {o.outcome for o in again.outcomes} == {"skipped"} and again.exit_status == 0
    assert [o.run_id for o in again.outcomes] == [o.run_id for o in result.outcomes]
    assert set(records.find_records(config.outputs_dir)) == before

    # An edited child record and a missing one are both found, by the library and by 'dbrunbook verify'.
    edited, removed = Path(result.outcomes[1].record_dir), Path(result.outcomes[2].record_dir)
    statement = edited / protocol.STATEMENT_FILE
    statement.chmod(statement.stat().st_mode | stat.S_IWUSR)
    statement.write_bytes(statement.read_bytes().replace(b'"succeeded"', b'"failed"'))
    shutil.rmtree(removed, onerror=lambda f, p, e: (os.chmod(p, 0o700), f(p)))
    check = verify_rollup(result.record_dir, config.allowed_signers)
    assert check.status == "tampered"
    assert (f"target tenants:{names[1]}: the statement of run {edited.name} differs from the one this roll-up "
            f"signed.") in check.problems
    assert (f"target tenants:{names[2]}: child record {removed.name} is missing "
            f"({removed.relative_to(config.outputs_dir)}).") in check.problems
    assert main(["--config", str(config.path), "verify", str(result.record_dir)]) == 1


def test_canary_failure_stops_the_rest(tenants, browser):
    config, names, admin = tenants
    _break(admin, names[0])
    result = run_fleet("tenant_upgrade", "tenants", waves="1,rest", parallel=2, config=config)

    assert result.stopped == "the canary wave failed on 1 of 1 target(s)" and result.exit_status == 1
    canary = result.outcomes[0]
    assert canary.outcome == "failed" and _predicate(canary.record_dir)["outcome"] == "failed"
    assert [o.outcome for o in result.outcomes[1:]] == ["not-started"] * (len(names) - 1)
    # Nothing changed on the later tenants: no version table, no account table.
    for name in names[1:]:
        url = db.with_database(admin, name)
        assert _scalar(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    assert verify_rollup(result.record_dir, config.allowed_signers).status == "valid"
    assert len(records.find_records(config.outputs_dir)) == 1

    # The report in a browser: the index lists the stopped fleet; its page puts the failure first.
    built = build_report(config.outputs_dir, config.allowed_signers)
    browser.get(built.index.as_uri())
    row = browser.script("return Array.from(document.querySelectorAll('#fleets tbody tr td')).map(c => c.textContent);")
    assert row[1:6] == ["tenant_upgrade", "tenants", f"failed 1, not-started {len(names) - 1}", result.stopped, "valid"]
    browser.click(browser.find(f'#fleets a[href="fleets/{result.fleet_id}.html"]'))
    assert browser.script("return document.title;") == f"fleet {result.fleet_id}"
    waves = browser.script("return Array.from(document.querySelectorAll('table.dbr-table')).slice(1)"
                           ".map(t => Array.from(t.rows).slice(1).map(r => r.cells[1].textContent));")
    assert waves == [["failed"], ["not-started"] * (len(names) - 1)]
    assert browser.find_all(f'a[href="../records/{canary.run_id}.html"]')
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report-fleet-stopped.png")


def test_max_failures_stops_a_wave_past_the_limit(tenants):
    config, names, admin = tenants
    _break(admin, names[2])
    _break(admin, names[4])
    result = run_fleet("tenant_upgrade", "tenants", waves="1,rest", parallel=1, max_failures="1",
                       config=config)

    assert result.stopped == "wave 2 had 2 failure(s) of 5, over the limit of 1"
    assert [o.outcome for o in result.outcomes] == ["succeeded", "succeeded", "failed", "succeeded", "failed",
                                                    "not-started"]
    assert [_version(admin, n) for n in names] == [HEAD, HEAD, None, HEAD, None, None]


@pytest.mark.parametrize("tenants", [4], indirect=True)
def test_sigterm_mid_fleet_lets_the_running_target_finish_then_resume(tenants):
    config, names, admin = tenants
    command = [sys.executable, "-m", "dbrunbook.cli", "--config", str(config.path), "fleet", "tenant_upgrade",
               "-g", "tenants", "-p", "pause", "3", "--waves", "1,rest"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait (not a timed assertion) until the second target's run has begun.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(config.outputs_dir.glob(f"*/*/*/*/{protocol.INTENT_FILE}"))) >= 2:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM during wave 2" in err
    (rollup,) = (config.outputs_dir / "fleets").iterdir()
    check = verify_rollup(rollup, config.allowed_signers)
    assert check.status == "valid", check.problems
    assert [t["outcome"] for t in check.predicate["targets"]] == ["succeeded", "succeeded", "not-started",
                                                                  "not-started"]
    assert [_version(admin, n) for n in names] == [HEAD, HEAD, None, None]

    result = run_fleet("tenant_upgrade", "tenants", parameters={"pause": "3"}, waves="1,rest", config=config)
    assert [o.outcome for o in result.outcomes] == ["skipped", "skipped", "succeeded", "succeeded"]
    assert [_version(admin, n) for n in names] == [HEAD] * 4
    assert verify_rollup(result.record_dir, config.allowed_signers).status == "valid"


def test_schema_per_tenant(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv(HOME_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    group = '[groups.shops]\ntarget = "home"\nschemas = ["shop_a", "shop_b", "shop_c"]\n'
    config = load_config(_project(tmp_path / "project", "schema_per_tenant", group, "{tenant}"))
    with pytest.raises(GroupNotFound, match=r"^Unknown group 'shop' in .*dbrunbook.toml; known groups: shops\. "):
        run_fleet("tenant_upgrade", "shop", config=config)

    result = run_fleet("tenant_upgrade", "shops", waves="1,rest", config=config)

    assert result.exit_status == 0, [o.error for o in result.outcomes]
    assert [(o.target, o.outcome, o.heads_after) for o in result.outcomes] == [
        (f"shops:{s}", "succeeded", {"app": [HEAD]}) for s in ("shop_a", "shop_b", "shop_c")]
    for schema in ("shop_a", "shop_b", "shop_c"):
        assert _scalar(database_url, f"SELECT version_num FROM {schema}.alembic_version") == HEAD
        assert _scalar(database_url, f"SELECT to_regclass('{schema}.account') IS NOT NULL") is True
    assert _scalar(database_url, "SELECT to_regclass('public.account')") is None
    assert verify_rollup(result.record_dir, config.allowed_signers).status == "valid"

    # The HTML archive has a page for the fleet that links each target's record page.
    built = build_report(config.outputs_dir, config.allowed_signers)
    page = (built.out_dir / "fleets" / f"{result.fleet_id}.html").read_text(encoding="utf-8")
    for outcome in result.outcomes:
        assert f'href="../records/{outcome.run_id}.html"' in page
        assert (built.out_dir / "records" / f"{outcome.run_id}.html").is_file()
    # ... and the index lists the fleet, linking that page, with its tally and the roll-up's status.
    assert [(f.fleet_id, f.status, f.page) for f in built.fleets] == [
        (result.fleet_id, "valid", f"fleets/{result.fleet_id}.html")]
    index = built.index.read_text(encoding="utf-8")
    assert f'<a href="fleets/{result.fleet_id}.html">' in index and built.fleets[0].tally in index
