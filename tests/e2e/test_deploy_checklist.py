"""The deploy runbook's failure paths and a protected deploy, through the real launcher (`dbrunbook run`,
papermill, a real kernel, real PostgreSQL), each ending in a signed record that verifies.

- a deploy whose health check fails: the database is migrated, the run fails at the health check, and
  maintenance mode, turned on before the upgrade, is off again, with the record saying so;
- a deploy to a protected target: refused without a backup, without a preview, with a preview nobody else
  approved (four eyes: `dbrunbook approve` by a second trusted principal), without the confirmation, then
  done with all of them, its changelog linking the backup and preview records.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import sqlalchemy as sa

from dbrunbook import cli, records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.records import signing

pytestmark = pytest.mark.e2e


def _run(capfd, *argv: str) -> tuple[int, dict]:
    code = cli.main(["run", *argv, "--json"])
    out, err = capfd.readouterr()
    return code, json.loads(out)


def _artifact(config, result: dict, name: str) -> dict:
    return json.loads((records.run_dir_for(config.outputs_dir, result["run_id"]) / "artifacts" / name).read_text())


def _valid(config, result: dict) -> str:
    return records.verify_record(records.run_dir_for(config.outputs_dir, result["run_id"]),
                                 config.allowed_signers).status


class _Unhealthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failed_health_check_leaves_maintenance_off_and_the_record_says_so(project, tmp_path, capfd):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    health = f"http://127.0.0.1:{server.server_address[1]}/health"
    flag = tmp_path / "app" / "maintenance"
    text = project.config_path.read_text().replace(
        'lock_timeout = "2s"', f'lock_timeout = "2s"\nmaintenance_flag = "{flag}"\nhealth_url = "{health}"', 1)
    project.config_path.write_text(text)
    config = load_config(project.config_path)
    try:
        code, r = _run(capfd, "deploy", "-p", "dry_run", "false")
    finally:
        server.shutdown()
        server.server_close()
    assert (code, r["outcome"], r["failing_step"]["ename"]) == (1, "failed", "HealthCheckFailed"), r
    assert f"Health check of {health} answered HTTP 503" in r["failing_step"]["evalue"]
    main = config.migration_set("main")
    assert set(migrations.current(main, project.engine)) == set(migrations.heads(main))  # the upgrade ran
    assert not flag.exists()  # maintenance mode is off again
    assert _artifact(config, r, "maintenance_on.json")["state"] == "on"
    off = _artifact(config, r, "maintenance_off.json")
    assert (off["state"], off["after_failure"]) == ("off", True)
    assert off["failed_step_error"].startswith(f"HealthCheckFailed: Health check of {health} answered HTTP 503")
    assert _valid(config, r) == "valid"


def test_a_protected_deploy_needs_backup_approved_preview_and_approval(project, tmp_path, capfd):
    project.config_path.write_text(project.config_path.read_text().replace("protected = false", "protected = true", 1))
    config = load_config(project.config_path)
    # A second person, trusted by the project, who reviews the preview (the deployer is tester@dbrunbook).
    reviewer = signing.generate_key(tmp_path / "reviewer" / "id_ed25519", "reviewer@example.com")
    signing.add_allowed_signer(config.allowed_signers, "reviewer@example.com", signing.public_key_line(reviewer))
    main, ai = config.migration_set("main"), config.migration_set("ai")
    database = sa.make_url(project.url).database

    code, r = _run(capfd, "deploy", "-p", "dry_run", "false")
    assert (code, r["failing_step"]["ename"]) == (3, "BackupRequired"), r
    code, backup = _run(capfd, "backup")
    assert (code, backup["outcome"]) == (0, "succeeded"), backup

    code, r = _run(capfd, "deploy", "-p", "dry_run", "false")
    assert (code, r["failing_step"]["ename"]) == (3, "PreviewNotApproved"), r
    code, preview = _run(capfd, "preview")
    assert code == 0, preview

    code, r = _run(capfd, "deploy", "-p", "dry_run", "false", "-p", "approved_preview", preview["run_id"])
    assert (code, r["failing_step"]["ename"]) == (3, "PreviewNotApproved"), r
    assert "nobody has approved it" in r["failing_step"]["evalue"]
    assert migrations.current(main, project.engine) == ()
    # The reviewer (not the deployer: self-approval does not count) signs an approval of the preview.
    assert cli.main(["approve", preview["run_id"], "--key", str(reviewer), "--note", "read the SQL"]) == 0
    assert capfd.readouterr().out.startswith(f"Approved {preview['run_id']}: ")

    code, r = _run(capfd, "deploy", "-p", "dry_run", "false", "-p", "approved_preview", preview["run_id"])
    assert (code, r["failing_step"]["ename"]) == (3, "ConfirmationRequired"), r
    assert f"-p approve {database}" in r["failing_step"]["evalue"]
    assert migrations.current(main, project.engine) == ()  # every refusal left the database untouched

    code, r = _run(capfd, "deploy", "-p", "dry_run", "false", "-p", "approved_preview", preview["run_id"],
                   "-p", "approve", database)
    assert (code, r["outcome"]) == (0, "succeeded"), r
    assert set(migrations.current(main, project.engine)) == set(migrations.heads(main))
    assert set(migrations.current(ai, project.engine)) == set(migrations.heads(ai))
    links = _artifact(config, r, "changelog.json")["records"]
    assert (links["preview"], links["backup"]) == (preview["run_id"], backup["run_id"])
    assert [_valid(config, x) for x in (backup, preview, r)] == ["valid"] * 3
