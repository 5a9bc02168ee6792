"""Every runbook through the real launcher (`dbrunbook run`, papermill, a real kernel, real PostgreSQL),
then `dbrunbook verify` over the records, then a one-byte edit that verification must catch.

One scenario in order, as an operator would go: apply the older revisions, status, preview, deploy to heads,
verify, roll back one step, stamp, and a refused rollback to base. The target URL carries a password, which
must appear in no file of any record and in no output of any command.
"""

from __future__ import annotations

import json
import re

import pytest

from dbrunbook import cli, records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.protocol import NOTEBOOK_FILE
from tests.projects import URL_ENV

PASSWORD = "s3cr3t-Pw-42"


def _with_password(url: str) -> tuple[str, str]:
    """The URL with a password in it, and that password (an external server's own, or one added for trust auth)."""
    from sqlalchemy.engine import make_url

    existing = make_url(url).password
    if existing:
        return url, existing
    return re.sub(r"^(postgresql\+psycopg://[^:@/]+)(@)", rf"\1:{PASSWORD}\2", url, count=1), PASSWORD


def run(capfd, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.e2e
def test_every_procedure_end_to_end_with_signed_records(project, monkeypatch, capfd):
    url, secret = _with_password(project.url)
    assert secret in url
    monkeypatch.setenv(URL_ENV, url)
    config = load_config(project.config_path)
    main, ai = config.migration_set("main"), config.migration_set("ai")
    outputs = []

    def run_json(*argv):
        code, out, err = run(capfd, "run", *argv, "--json")
        outputs.append(out + err)
        result = json.loads(out)
        return code, result

    code, r = run_json("apply", "-p", "migration_set", "main", "-p", "revision", "ea90695", "-p", "dry_run", "false")
    assert (code, r["outcome"]) == (0, "succeeded"), r
    code, r = run_json("apply", "-p", "migration_set", "ai", "-p", "revision", "56d701cf2472", "-p", "dry_run", "false")
    assert code == 0, r
    assert migrations.current(main, project.engine) == ("ea90695",)
    project.fill_demo_data()

    code, r = run_json("status")
    assert code == 0 and r["heads_before"] == r["heads_after"]
    code, r = run_json("preview")
    assert code == 0
    preview_sql = (records.run_dir_for(config.outputs_dir, r["run_id"]) / "artifacts" / "preview-main.sql").read_text()
    assert "CREATE TABLE" in preview_sql and "Running upgrade" not in preview_sql.split("\n", 1)[0]

    code, r = run_json("deploy", "-p", "dry_run", "false")
    assert code == 0, r
    assert set(migrations.current(main, project.engine)) == set(migrations.heads(main))
    assert set(migrations.current(ai, project.engine)) == set(migrations.heads(ai))
    assert r["heads_before"]["main"] == ["ea90695"] and r["heads_after"]["main"] == list(migrations.heads(main))

    code, r = run_json("verify")
    assert (code, r["outcome"]) == (0, "succeeded"), r

    code, r = run_json("rollback", "-p", "dry_run", "false")
    assert (code, r["failing_step"]["ename"]) == (3, "DataLossRefused"), r  # full_name values would be lost
    head = migrations.heads(main)[0]
    assert migrations.current(main, project.engine) == (head,)
    code, r = run_json("rollback", "-p", "dry_run", "false", "-p", "allow_data_loss", "true")
    assert code == 0, r
    assert migrations.current(main, project.engine) != (head,)

    code, r = run_json("stamp", "-p", "revision", head, "-p", "dry_run", "false")
    assert (code, r["failing_step"]["ename"]) == (3, "StampWouldLie"), r  # users.full_name is not there
    assert migrations.current(main, project.engine) != (head,)
    code, r = run_json("stamp", "-p", "revision", head, "-p", "dry_run", "false", "-p", "force", "true")
    assert code == 0 and migrations.current(main, project.engine) == (head,)

    code, r = run_json("rollback", "-p", "revision", "base", "-p", "dry_run", "false", "-p", "allow_data_loss", "true")
    assert (code, r["outcome"]) == (3, "stopped-at-guard"), r
    assert r["failing_step"]["ename"] == "ConfirmationRequired"
    assert migrations.current(main, project.engine) == (head,)

    # every run left a signed, valid record; the changing ones a ledger row with the statement digest
    dirs = records.find_records(config.outputs_dir)
    assert len(dirs) == 11
    checks = [records.verify_record(d, config.allowed_signers) for d in dirs]
    assert [c.status for c in checks] == ["valid"] * 11
    with project.engine.connect() as conn:
        ledger = {row["run_id"]: row for row in records.ledger_rows(conn)}
    changing = [c for c in checks if c.statement["predicate"]["runbook"] in {"apply", "deploy", "rollback", "stamp"}]
    for check in changing:
        row = ledger[check.statement["predicate"]["run_id"]]
        assert row["statement_sha256"] == records.statement_sha256(check.run_dir)

    code, out, err = run(capfd, "verify", str(config.outputs_dir))
    assert code == 0, out + err

    # no secret anywhere: record files, command outputs
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f
    assert not any(secret in o for o in outputs)

    # a one-byte edit of an executed notebook fails verification and names the cell
    deploy_dir = next(c.run_dir for c in checks if c.statement["predicate"]["runbook"] == "deploy")
    nb_path = deploy_dir / NOTEBOOK_FILE
    nb_path.chmod(0o644)
    data = bytearray(nb_path.read_bytes())
    i = data.index(b"s.upgrade(")
    data[i + 2] = ord("U")
    nb_path.write_bytes(bytes(data))
    check = records.verify_record(deploy_dir, config.allowed_signers)
    assert check.status == "tampered" and check.changed_cells
    code, out, err = run(capfd, "verify", str(deploy_dir))
    assert code == 1 and "tampered" in out + err


@pytest.mark.e2e
def test_a_database_that_is_down_gives_a_clear_error_and_a_record(project, monkeypatch, capfd):
    monkeypatch.setenv(URL_ENV, f"postgresql://app:{PASSWORD}@127.0.0.1:1/nowhere")
    code, out, err = run(capfd, "run", "status", "--json")
    result = json.loads(out)
    assert code == 1 and result["outcome"] == "failed"
    assert result["failing_step"]["ename"] == "DatabaseUnavailable"
    assert PASSWORD not in out + err
    run_dir = records.run_dir_for(load_config(project.config_path).outputs_dir, result["run_id"])
    assert records.verify_record(run_dir, load_config(project.config_path).allowed_signers).status == "valid"
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes()


@pytest.mark.parametrize(
    "params, code, message",
    [
        (["-p", "revision", "nope123"], 2,
         "Revision 'nope123' is not defined in migration set 'main, ai': no script of it defines that id"),
        (["-p", "revision", "ea90695"], 2,
         "Revision 'ea90695' belongs to migration set 'main' only; pass -p migration_set main"),
        (["-p", "revision", "0012", "-p", "migration_set", "main"], 2, "Revision '0012' is not defined"),
    ],
    ids=["unknown", "wrong-set", "leading-zeros-stay-text"],
)
def test_bad_revisions_are_refused_before_anything_runs(project, capfd, params, code, message):
    config = load_config(project.config_path)
    got, out, err = run(capfd, "run", "apply", *params)
    assert got == code
    assert message in out + err
    assert records.find_records(config.outputs_dir) == []  # usage errors leave no record and change nothing
