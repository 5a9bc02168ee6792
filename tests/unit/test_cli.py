"""The CLI without a database: usage errors exit 2 with the message and no traceback, nothing is created."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dbrunbook.cli import main
from tests.projects import trust_operator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

TOML = """
[project]
default_target = "t"

[targets.t]
url_env = "DBRUNBOOK_UNIT_TARGET_URL"

[targets.other]
url_env = "DBRUNBOOK_UNIT_UNSET_URL"

[migration_sets.app]
alembic_ini = "migrations/app/alembic.ini"
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Path of the dbrunbook.toml of a project with the fixture runbooks; target 't' points nowhere."""
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "dbrunbook.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.setenv("DBRUNBOOK_UNIT_TARGET_URL", "postgresql://app@127.0.0.1:1/app")
    monkeypatch.delenv("DBRUNBOOK_UNIT_UNSET_URL", raising=False)
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    trust_operator(root / "dbrunbook.toml", "tester@example.org")
    return root / "dbrunbook.toml"


def _main(project: Path, *args: str) -> int:
    return main(["--config", str(project), *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope"],
         "Unknown runbook 'nope'; known runbooks: fails_at_step_2, kernel_dies, no_sentinel, "
         "slow_cell, stops_at_guard, succeeds, upgrades. Run 'dbrunbook list' to see them."),
        (["run", "succeeds", "-p", "lable", "x"],
         "Runbook 'succeeds' has no parameter 'lable'; its parameters are: target, label, count, ratio, "
         "dry_run."),
        (["run", "succeeds", "-p", "count", "1", "-p", "count", "2"],
         "Parameter 'count' is given twice (-p count ...); pass it once."),
        (["run", "succeeds", "-p", "count", "three"],
         "Parameter 'count' of runbook 'succeeds' is an int; 'three' is not one."),
        (["run", "succeeds", "-p", "run_id", "x"],
         "Parameter 'run_id' of runbook 'succeeds' is set by the launcher"),
        (["run", "succeeds", "-p", "db_password", "x"], "Parameter name 'db_password' looks like a secret"),
        (["run", "succeeds", "-t", "prod"], "Unknown target 'prod'"),
        (["run", "succeeds", "-t", "t", "-p", "target", "other"],
         "Target given twice with different values: -t t and -p target other. Pass it once."),
        (["run", "succeeds", "-t", "other"],
         "Target 'other' reads its connection URL from the environment variable DBRUNBOOK_UNIT_UNSET_URL"),
        (["open", "succeeds", "-p", "ratio", "x"], "Parameter 'ratio' of runbook 'succeeds' is a float"),
        (["seal", "."], "is not a run directory: it needs intent.json and notebook.ipynb"),
    ],
)
def test_usage_errors_exit_2_with_the_message_and_create_nothing(project, capsys, args, message):
    assert _main(project, *args) == 2
    out, err = capsys.readouterr()
    assert message in err
    assert "Traceback" not in err and out == ""
    assert not (project.parent / "outputs").exists()


def test_run_json_reports_a_usage_error_as_one_object(project, capfd):
    assert _main(project, "run", "succeeds", "--json", "-p", "dry_run", "perhaps") == 2
    out, err = capfd.readouterr()
    document = json.loads(out)
    assert document["exit_status"] == 2 and document["error_type"] == "ParameterError"
    assert document["error"] in err


def test_argparse_usage_errors_exit_2(project, capsys):
    assert _main(project, "run") == 2
    assert "the following arguments are required: runbook" in capsys.readouterr().err
    assert _main(project, "db", "restart") == 2
    assert main(["--help"]) == 0


def test_missing_config_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.toml"), "list"]) == 2
    assert f"{tmp_path / 'none.toml'} does not exist" in capsys.readouterr().err


def test_list_shows_runbooks_and_parameters(project, capsys):
    assert _main(project, "list") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["runbook", "changes", "database", "title"]
    rows = {line.split()[0]: line.split() for line in lines if line.strip()}
    assert rows["upgrades"] == ["upgrades", "yes", "Upgrades"]
    assert rows["succeeds"] == ["succeeds", "no", "Succeeds"]
    assert rows["label"][:3] == ["label", "str", "'0001'"]
    assert rows["count"][:3] == ["count", "int", "1"]
    assert "run_id" not in out  # launcher-only parameters are not the operator's to set


def test_verify_without_records_and_with_a_missing_folder(project, tmp_path, capsys):
    assert _main(project, "verify") == 0
    assert "No run records under" in capsys.readouterr().out
    assert _main(project, "verify", str(tmp_path / "missing")) == 2
    assert f"Not a folder: {tmp_path / 'missing'}" in capsys.readouterr().err


def test_keygen_creates_then_keeps_then_replaces(project, capsys):
    keys = project.parent / ".dbrunbook" / "keys"
    trusted = project.parent / "allowed_signers"
    for old in keys.glob("operator_ed25519*"):  # the fixture's key: this test makes its own
        old.unlink()
    trusted.unlink()
    assert _main(project, "keygen") == 0
    out = capsys.readouterr().out
    assert f"Created signing key {keys / 'operator_ed25519'}" in out
    assert f"Runs refuse to start until the team trusts it: add this line to {trusted}" in out
    assert not trusted.exists()
    first = (keys / "operator_ed25519.pub").read_text()

    assert _main(project, "keygen", "--trust") == 0
    assert "exists already; pass --force to replace it" in capsys.readouterr().out
    assert trusted.read_text().split()[0] == "tester@example.org"

    assert _main(project, "keygen", "--force", "--trust") == 0
    assert "Moved the old key aside" in capsys.readouterr().out
    assert (keys / "operator_ed25519.pub").read_text() != first
    assert sorted(p.name.split(".replaced-")[0] for p in keys.glob("*.replaced-*")) == [
        "operator_ed25519", "operator_ed25519.pub"]
    # Both keys stay trusted: records signed with the old one still verify.
    assert len(trusted.read_text().splitlines()) == 2


def test_run_json_reports_an_unexpected_exception_as_one_object(project, capfd, monkeypatch):
    from dbrunbook.execution import runner

    def broken(*args, **kwargs):  # a bug in the launcher, with a secret in its message
        raise RuntimeError("boom at postgresql://app:Hunter2@db/app")

    monkeypatch.setattr(runner, "run_runbook", broken)
    assert _main(project, "run", "succeeds", "--json") == 1
    out, err = capfd.readouterr()
    assert out.count("\n") == 1
    assert json.loads(out) == {"error": "unexpected error: RuntimeError: boom at postgresql://app:***@db/app",
                               "error_type": "RuntimeError", "exit_status": 1}
    assert "Hunter2" not in out + err and "Traceback" in err




def test_run_without_a_key_exits_2_before_anything_runs(project, capsys):
    for old in (project.parent / ".dbrunbook" / "keys").glob("operator_ed25519*"):
        old.unlink()
    assert _main(project, "run", "succeeds") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"No signing key at {project.parent / '.dbrunbook' / 'keys' / 'operator_ed25519'}: "
                          f"every run is signed, and dbrunbook does not create or trust a key on its own. "
                          f"Run 'dbrunbook keygen'")
    assert not (project.parent / "outputs").exists()  # no run directory, no intent: nothing ran
    assert not (project.parent / ".dbrunbook" / "keys" / "operator_ed25519").exists()


def test_run_with_a_key_trusted_as_someone_else_exits_2(project, capsys, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "mallory@example.org")
    assert _main(project, "run", "succeeds") == 2
    err = capsys.readouterr().err
    assert "trusts it as 'tester@example.org', but this run's operator is 'mallory@example.org'" in err
    assert not (project.parent / "outputs").exists()
