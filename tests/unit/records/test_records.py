"""Run records: run ids, statements, writing and verifying signed run directories (no database)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
from datetime import UTC, datetime, timezone
from pathlib import Path

import nbformat
import pytest

from dbrunbook import records
from dbrunbook.errors import ParameterError
from dbrunbook.protocol import INTENT_FILE, NOTEBOOK_FILE, SIGNATURE_FILE, STATEMENT_FILE
from dbrunbook.records import signing
from tests.tools import needs_tool

STARTED = datetime(2026, 11, 23, 22, 5, 1, tzinfo=UTC)
FINISHED = datetime(2026, 11, 23, 22, 6, 30, tzinfo=UTC)
DATABASE = {"system_identifier": "7301234567890123456", "database": "app", "server_version": "15.8",
            "host": "127.0.0.1:55432"}


def _notebook_bytes() -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Apply migrations\n\nUpgrade the target to head."),
        nbformat.v4.new_code_cell("target = 'local'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("Some words first\n## Preview the SQL"),
        nbformat.v4.new_code_cell(
            "session.upgrade()",
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="upgraded to ab12cd\n")],
            execution_count=3,
        ),
    ]
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index}"
    return nbformat.writes(nb).encode("utf-8")


def _statement(run_dir: Path, **overrides) -> dict:
    fields = dict(
        runbook_name="apply", runbook_sha256="ab" * 32, parameters={"target": "local", "revision": "heads"},
        operator="alice@example.com", host="laptop", started_at=STARTED, finished_at=FINISHED,
        outcome="succeeded", exit_status=0, failing_step=None, database=DATABASE,
        heads_before={"main": ["aaa111"]}, heads_after={"main": ["bbb222"]}, migrations_sha256="cd" * 32,
        mode="papermill",
    )
    fields.update(overrides)
    return records.build_statement(run_dir, **fields)


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


def _make_run(outputs: Path, *, runbook="apply", now=STARTED, artifacts=True) -> Path:
    run_id = records.new_run_id(runbook, "local", now)
    run_dir = records.run_dir_for(outputs, run_id, now)
    (run_dir / "artifacts").mkdir(parents=True)
    (run_dir / NOTEBOOK_FILE).write_bytes(_notebook_bytes())
    if artifacts:
        (run_dir / "artifacts" / "snapshot.json").write_text('{"counts": {"users": 3}}\n')
    return run_dir


@pytest.fixture
def sealed_run(outputs, key) -> Path:
    """A run directory with a notebook, one artifact, and a signed statement."""
    run_dir = _make_run(outputs)
    records.write_record(run_dir, _statement(run_dir), key)
    return run_dir


def _writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


# --- run ids and directories ----------------------------------------------------------------------------
def test_run_id_shape_and_uniqueness():
    ids = {records.new_run_id("apply", "local", STARTED) for _ in range(200)}
    assert len(ids) == 200
    for run_id in ids:
        assert re.fullmatch(r"20261123T220501Z-apply-local-[0-9a-f]{6}", run_id)


def test_run_ids_sort_by_start_time():
    utc = UTC
    times = [datetime(2026, 1, 2, 3, 4, 5), datetime(2026, 1, 2, 3, 4, 6, tzinfo=utc),
             datetime(2026, 12, 31, 23, 59, 59, tzinfo=utc), datetime(2027, 1, 1, tzinfo=utc)]
    ids = [records.new_run_id(name, "staging", t) for name, t in zip(["zz", "aa", "mm", "bb"], times, strict=False)]
    assert sorted(ids) == ids


def test_run_id_uses_utc_and_safe_names():
    from datetime import timedelta

    plus_two = timezone(timedelta(hours=2))
    run_id = records.new_run_id("add index/now", "prod-eu", datetime(2026, 1, 1, 1, 0, 0, tzinfo=plus_two))
    assert run_id.startswith("20251231T230000Z-add_index_now-prod_eu-")


def test_run_dir_for_dates_from_now_or_from_the_run_id(outputs):
    run_id = "20261123T220501Z-apply-local-3f9a1c"
    assert records.run_dir_for(outputs, run_id, STARTED) == outputs / "2026" / "11" / "23" / run_id
    assert records.run_dir_for(outputs, run_id) == outputs / "2026" / "11" / "23" / run_id


def test_operator_identity(monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "alice@example.com")
    assert records.operator_identity() == "alice@example.com"
    monkeypatch.delenv("DBRUNBOOK_OPERATOR")
    assert re.fullmatch(r"[^@\s]+@[^@\s]+", records.operator_identity())


# --- canonical JSON and digests -------------------------------------------------------------------------
def test_canonical_json_is_stable():
    assert records.canonical_json({"b": [1, (2, 3)], "a": "é", "t": STARTED}) == (
        '{"a":"é","b":[1,[2,3]],"t":"2026-11-23T22:05:01+00:00"}\n'.encode()
    )
    with pytest.raises(ValueError):
        records.canonical_json({"x": float("nan")})


def test_cell_digests_ignore_line_splitting_but_not_content():
    original = json.loads(_notebook_bytes())
    digests = records.cell_digests(json.dumps(original).encode())
    assert [(d["index"], d["cell_type"], d["id"]) for d in digests] == [
        (0, "markdown", "cell-0"), (1, "code", "cell-1"), (2, "markdown", "cell-2"), (3, "code", "cell-3")]
    split = json.loads(json.dumps(original))
    split["cells"][3]["outputs"][0]["text"] = ["upgraded ", "to ab12cd\n"]
    split["cells"][3]["execution_count"] = 99
    assert records.cell_digests(json.dumps(split, indent=4).encode()) == digests
    split["cells"][3]["outputs"][0]["text"] = "upgraded to ff0000\n"
    changed = records.cell_digests(json.dumps(split).encode())
    assert [a["sha256"] == b["sha256"] for a, b in zip(digests, changed, strict=False)] == [True, True, True, False]


# --- statements -----------------------------------------------------------------------------------------
def test_build_statement_subjects_and_predicate(outputs):
    run_dir = _make_run(outputs)
    (run_dir / INTENT_FILE).write_text('{"runbook": "apply"}\n')
    (run_dir / "artifacts" / "plots").mkdir()
    (run_dir / "artifacts" / "plots" / "counts.png").write_bytes(b"\x89PNG")
    statement = _statement(run_dir, extra={"lint": []}, prev="ef" * 32)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://dbrunbook.dev/run-record/v1"

    def sha(p):
        return hashlib.sha256((run_dir / p).read_bytes()).hexdigest()

    assert statement["subject"] == [
        {"name": "notebook.ipynb", "digest": {"sha256": sha("notebook.ipynb")}},
        {"name": "intent.json", "digest": {"sha256": sha("intent.json")}},
        {"name": "artifacts/plots/counts.png", "digest": {"sha256": sha("artifacts/plots/counts.png")}},
        {"name": "artifacts/snapshot.json", "digest": {"sha256": sha("artifacts/snapshot.json")}},
    ]
    predicate = statement["predicate"]
    assert predicate["run_id"] == run_dir.name
    assert predicate["runbook"] == "apply" and predicate["outcome"] == "succeeded"
    assert predicate["started_at"] == "2026-11-23T22:05:01+00:00"
    assert predicate["database"] == DATABASE
    assert predicate["heads_after"] == {"main": ["bbb222"]}
    assert predicate["mode"] == "papermill" and predicate["prev"] == "ef" * 32
    assert predicate["extra"] == {"lint": []}
    assert predicate["cells"] == records.cell_digests(_notebook_bytes())


@pytest.mark.parametrize("name", ["password", "db_password", "API_TOKEN", "client_secret", "dsn"])
def test_build_statement_refuses_secret_looking_parameters(outputs, name):
    run_dir = _make_run(outputs)
    with pytest.raises(ParameterError) as info:
        _statement(run_dir, parameters={"target": "local", name: "x"})
    assert str(info.value).startswith(f"Parameter '{name}' looks like a secret (its name contains one of ")


@pytest.mark.parametrize(("field", "value", "where"), [
    ("parameters", {"source": "postgresql://app:hunter2@db:5432/app"}, "predicate.parameters.source"),
    ("extra", {"notes": ["ok", "see postgres://u:p@h/d"]}, "predicate.extra.notes[1]"),
    ("failing_step", {"evalue": "no connection: postgresql+psycopg://u:pw@h/db"},
     "predicate.failing_step.evalue"),
])
def test_build_statement_refuses_urls_with_passwords(outputs, field, value, where):
    run_dir = _make_run(outputs)
    with pytest.raises(ParameterError) as info:
        _statement(run_dir, **{field: value})
    assert str(info.value).startswith(f"{where} holds a URL with a password (scheme://user:***@...)")
    assert "hunter2" not in str(info.value)


def test_build_statement_accepts_url_without_password(outputs):
    run_dir = _make_run(outputs)
    statement = _statement(run_dir, database={**DATABASE, "url": "postgresql://app:***@db:5432/app"},
                           extra={"url": "postgresql://app@db/app"})
    assert statement["predicate"]["extra"] == {"url": "postgresql://app@db/app"}


def test_build_statement_refuses_unknown_mode(outputs):
    run_dir = _make_run(outputs)
    with pytest.raises(ValueError, match="mode 'batch' is not one of papermill, interactive, "):
        _statement(run_dir, mode="batch")


# --- writing --------------------------------------------------------------------------------------------
def test_write_record_writes_canonical_statement_and_signature_read_only(sealed_run, allowed_signers):
    body = (sealed_run / STATEMENT_FILE).read_bytes()
    statement = json.loads(body)
    assert body == records.canonical_json(statement)
    signature = (sealed_run / SIGNATURE_FILE).read_bytes()
    assert signing.verify(body, signature, allowed_signers) == "alice@example.com"
    for name in (STATEMENT_FILE, SIGNATURE_FILE, NOTEBOOK_FILE, "artifacts/snapshot.json"):
        assert (sealed_run / name).stat().st_mode & 0o777 == 0o444, name
    assert records.statement_sha256(sealed_run) == hashlib.sha256(body).hexdigest()


def test_write_record_refuses_to_replace_a_record(sealed_run, key):
    before = (sealed_run / STATEMENT_FILE).read_bytes()
    with pytest.raises(records.RecordExists) as info:
        records.write_record(sealed_run, {"other": 1}, key)
    assert str(info.value) == (f"{sealed_run / STATEMENT_FILE} already exists; a record is written once "
                               f"and never replaced. Start a new run (new run id) instead of re-sealing "
                               f"this one.")
    assert (sealed_run / STATEMENT_FILE).read_bytes() == before


def test_write_record_with_unusable_key_writes_nothing(outputs, tmp_path):
    run_dir = _make_run(outputs)
    statement = _statement(run_dir)
    with pytest.raises(signing.SigningKeyError):
        records.write_record(run_dir, statement, tmp_path / "missing_key")
    assert not (run_dir / STATEMENT_FILE).exists() and not (run_dir / SIGNATURE_FILE).exists()


# --- verification ---------------------------------------------------------------------------------------
def test_valid_record(sealed_run, allowed_signers):
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.principal, check.problems, check.changed_cells) == (
        "valid", "alice@example.com", (), ())
    assert check.statement["predicate"]["runbook"] == "apply"
    assert check.as_row() == {"run_id": sealed_run.name, "status": "valid", "signed_by": "alice@example.com",
                              "runbook": "apply", "outcome": "succeeded", "database": "app", "problems": ""}
    assert "<table>" in check._repr_html_()


@needs_tool("ssh-keygen", "openssh-client")
def test_stock_ssh_keygen_verifies_a_record(sealed_run, allowed_signers):
    with (sealed_run / STATEMENT_FILE).open("rb") as statement:
        result = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", "alice@example.com",
             "-n", "dbrunbook-record", "-s", str(sealed_run / SIGNATURE_FILE)],
            stdin=statement, capture_output=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith('Good "dbrunbook-record" signature for alice@example.com ')


def test_jupyter_checkpoints_do_not_break_a_record(sealed_run, allowed_signers):
    (sealed_run / ".ipynb_checkpoints").mkdir()
    (sealed_run / ".ipynb_checkpoints" / "notebook-checkpoint.ipynb").write_text("{}")
    assert records.verify_record(sealed_run, allowed_signers).status == "valid"


def test_record_signed_by_unknown_key_is_untrusted(sealed_run, tmp_path):
    others = tmp_path / "other_signers"
    stranger = signing.generate_key(tmp_path / "stranger", "stranger@example.com")
    signing.add_allowed_signer(others, "stranger@example.com", signing.public_key_line(stranger))
    check = records.verify_record(sealed_run, others)
    assert check.status == "untrusted" and check.principal is None
    assert check.problems[0].startswith("The signature is sound but key SHA256:")


def test_edited_statement_is_tampered(sealed_run, allowed_signers):
    path = _writable(sealed_run / STATEMENT_FILE)
    path.write_bytes(path.read_bytes().replace(b'"outcome":"succeeded"', b'"outcome":"failed"'))
    check = records.verify_record(sealed_run, allowed_signers)
    assert check.status == "tampered"
    assert "does not match the signed file" in check.problems[0]


def test_edited_signature_is_tampered(sealed_run, allowed_signers):
    path = _writable(sealed_run / SIGNATURE_FILE)
    path.write_bytes(path.read_bytes().replace(b"SSH SIGNATURE", b"SSH SIGNATUR"))
    check = records.verify_record(sealed_run, allowed_signers)
    assert check.status == "tampered"
    assert check.problems[0].startswith("The signature is not a valid SSH signature")


def test_one_edited_notebook_byte_names_the_changed_cell(sealed_run, allowed_signers):
    path = _writable(sealed_run / NOTEBOOK_FILE)
    path.write_bytes(path.read_bytes().replace(b"upgraded to ab12cd", b"upgraded to ab12ce"))
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.principal, check.changed_cells) == ("tampered", "alice@example.com", (3,))
    assert check.problems == ("cell 3 (session.upgrade()) differs from the signed record.",)


def test_edited_markdown_cell_is_named_by_its_heading(sealed_run, allowed_signers):
    path = _writable(sealed_run / NOTEBOOK_FILE)
    path.write_bytes(path.read_bytes().replace(b"Some words first", b"Some words later"))
    check = records.verify_record(sealed_run, allowed_signers)
    assert check.changed_cells == (2,)
    assert check.problems == ("cell 2 (## Preview the SQL) differs from the signed record.",)


def test_removed_cell_and_metadata_edit(sealed_run, allowed_signers):
    path = _writable(sealed_run / NOTEBOOK_FILE)
    nb = json.loads(path.read_bytes())
    nb["cells"].pop()
    path.write_text(json.dumps(nb))
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.changed_cells) == ("tampered", (3,))
    assert check.problems == ("cell 3 was removed from notebook.ipynb.",)
    nb = json.loads(_notebook_bytes())
    nb["metadata"]["edited"] = True
    path.write_text(json.dumps(nb))
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.changed_cells) == ("tampered", ())
    assert check.problems == ("notebook.ipynb differs outside cell sources and outputs (metadata or "
                              "execution counts).",)


def test_added_artifact_is_tampered(sealed_run, allowed_signers):
    (sealed_run / "artifacts" / "extra.csv").write_text("a,b\n")
    check = records.verify_record(sealed_run, allowed_signers)
    assert check.status == "tampered"
    assert check.problems == ("artifacts/extra.csv is not in the signed statement (added after signing).",)


def test_changed_and_missing_artifacts_are_tampered(sealed_run, allowed_signers):
    _writable(sealed_run / "artifacts" / "snapshot.json").write_text('{"counts": {"users": 4}}\n')
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.problems) == (
        "tampered", ("artifacts/snapshot.json differs from the signed digest.",))
    (sealed_run / "artifacts" / "snapshot.json").unlink()
    check = records.verify_record(sealed_run, allowed_signers)
    assert (check.status, check.problems) == (
        "tampered", ("artifacts/snapshot.json is listed in the statement but missing.",))


def test_record_moved_to_another_run_directory_is_tampered(sealed_run, allowed_signers):
    moved = sealed_run.with_name("20261123T220501Z-apply-local-000000")
    sealed_run.rename(moved)
    check = records.verify_record(moved, allowed_signers)
    assert check.status == "tampered"
    assert check.problems == (f"the statement is for run {sealed_run.name}, but sits in {moved.name}/.",)


def test_unsigned_and_incomplete(outputs, allowed_signers):
    run_dir = _make_run(outputs)
    check = records.verify_record(run_dir, allowed_signers)
    assert (check.status, check.problems) == ("unsigned", (f"no statement.json in {run_dir}.",))
    (run_dir / INTENT_FILE).write_text('{"runbook": "apply"}\n')
    check = records.verify_record(run_dir, allowed_signers)
    assert check.status == "incomplete"
    assert check.problems[0].startswith(
        "intent.json but no statement.json: the run was killed before it was sealed")


def test_statement_without_signature_is_unsigned(outputs, allowed_signers):
    run_dir = _make_run(outputs)
    (run_dir / STATEMENT_FILE).write_bytes(records.canonical_json(_statement(run_dir)))
    check = records.verify_record(run_dir, allowed_signers)
    assert (check.status, check.problems) == ("unsigned", ("no statement.json.sig next to statement.json.",))
    assert check.statement["predicate"]["runbook"] == "apply"


def test_out_of_order_interactive_run_is_valid_with_a_problem(outputs, key, allowed_signers):
    run_dir = _make_run(outputs)
    records.write_record(run_dir, _statement(run_dir, mode="interactive-out-of-order"), key)
    check = records.verify_record(run_dir, allowed_signers)
    assert check.status == "valid"
    assert check.problems == ("the notebook was run interactively with cells out of order: its outputs may "
                              "not follow from its code top to bottom.",)


# --- finding records ------------------------------------------------------------------------------------
def test_find_records_and_last_record(outputs, key):
    assert records.find_records(outputs) == []
    made = []
    runs = [(1, "apply", "succeeded", "app"), (2, "apply", "failed", "app"),
            (3, "rollback", "succeeded", "app"), (4, "apply", "succeeded", "other")]
    for day, runbook, outcome, database in runs:
        now = datetime(2026, 3, day, 12, 0, 0, tzinfo=UTC)
        run_dir = _make_run(outputs, runbook=runbook, now=now, artifacts=False)
        records.write_record(run_dir, _statement(run_dir, runbook_name=runbook, outcome=outcome,
                                                 database={**DATABASE, "database": database}), key)
        made.append(run_dir)
    unfinished = _make_run(outputs, now=datetime(2026, 3, 5, tzinfo=UTC), artifacts=False)
    (unfinished / INTENT_FILE).write_text("{}\n")
    (outputs / "README.md").write_text("not a run\n")
    assert records.find_records(outputs) == [*made, unfinished]
    assert records.last_record(outputs) == made[3]
    assert records.last_record(outputs, database="app") == made[2]
    assert records.last_record(outputs, database="app", runbook="apply") == made[0]
    assert records.last_record(outputs, runbook="apply", outcome=None, database="app") == made[1]
    by_system_id = records.last_record(outputs, database_system_identifier=7301234567890123456,
                                       runbook="rollback")
    assert by_system_id == made[2]
    assert records.last_record(outputs, database_system_identifier="1") is None


def test_ensure_operator_key_never_creates_one_and_keygen_trusts_only_when_asked(tmp_path, monkeypatch):
    from dbrunbook.errors import SigningKeyMissing
    from dbrunbook.records import trust

    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "carol@example.com")
    keys, allowed = tmp_path / "keys", tmp_path / "allowed_signers"
    with pytest.raises(SigningKeyMissing, match=r"No signing key at .*operator_ed25519: .* Run 'dbrunbook keygen'"):
        records.ensure_operator_key(keys, allowed)
    assert not keys.exists() and not allowed.exists()
    path, line = trust.create_operator_key(keys)
    assert path == keys / "operator_ed25519" and path.stat().st_mode & 0o777 == 0o600
    assert not allowed.exists()  # created, not trusted: trusting is the team's act
    assert records.ensure_operator_key(keys, allowed) == (path, False)
    key_type, key_base64 = signing.public_key_line(path).split()[:2]
    assert line == f'carol@example.com namespaces="dbrunbook-record" {key_type} {key_base64}'
    signing.add_allowed_signer(allowed, "carol@example.com", f"{key_type} {key_base64}")
    data = b"record"
    assert signing.verify(data, signing.sign(data, path), allowed) == "carol@example.com"
