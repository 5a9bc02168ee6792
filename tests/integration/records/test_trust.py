"""Records a reviewer can trust: the chain under a lock, the anchored newest record, no trust on first use,
four eyes on protected targets, and a scheduled verify that believes only valid records of its database."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import errors, protocol, records, safety
from dbrunbook.cli import main
from dbrunbook.config import load_config
from dbrunbook.execution.runner import run_runbook
from dbrunbook.execution.session import SNAPSHOT_ARTIFACT, open_session
from dbrunbook.postgres import db, snapshots
from dbrunbook.postgres.snapshots import load_snapshot
from dbrunbook.procedures.verification import compare_with_snapshot
from dbrunbook.records import archive, signing, tips
from dbrunbook.safety import approvals
from tests.projects import OPERATOR, throwaway_project, write_project

pytestmark = pytest.mark.integration

DATABASE = {"database": "app", "system_identifier": "7301234567890123456", "oid": 16384}


def _writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


def _kinds(report) -> list[tuple[str, str | None]]:
    return sorted((f.kind, f.run_id or "") for f in report.findings)


# --- 1. the chain under a lock ------------------------------------------------------------------------------
def _seal_one(outputs: str, key: str, n: int, barrier) -> str:
    """One launcher's seal, in its own process: the link as the launcher computes it, then write_record."""
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    run_id = f"{moment:%Y%m%dT%H%M%SZ}-status-local-{n:06x}"
    run_dir = records.run_dir_for(Path(outputs), run_id)
    run_dir.mkdir(parents=True)
    (run_dir / protocol.NOTEBOOK_FILE).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                              "nbformat_minor": 5}))
    prev = archive.previous_statement(Path(outputs), DATABASE)  # unlocked, as _seal_run asks: may be stale
    statement = records.build_statement(
        run_dir, runbook_name="status", runbook_sha256="0" * 64, parameters={}, operator="alice@example.com",
        host="h", started_at=moment, finished_at=moment, outcome="succeeded", exit_status=0, failing_step=None,
        database=DATABASE, heads_before={}, heads_after={}, migrations_sha256=None, mode="papermill", prev=prev)
    barrier.wait()  # every process holds the same stale prev: only the lock keeps the chain straight
    records.write_record(run_dir, statement, Path(key))
    return run_id


def test_simultaneous_seals_never_fork_the_chain(tmp_path, key, allowed_signers):
    outputs = tmp_path / "outputs"
    workers = 6
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(workers)
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            run_ids = pool.starmap(_seal_one, [(str(outputs), str(key), n, barrier) for n in range(workers)])
    report = archive.verify_archive(outputs, allowed_signers)
    assert report.findings == ()
    predicates = [json.loads((records.run_dir_for(outputs, r) / protocol.STATEMENT_FILE).read_bytes())["predicate"]
                  for r in run_ids]
    assert sorted(p["seq"] for p in predicates) == list(range(1, workers + 1))
    assert len({p["prev"] for p in predicates}) == workers  # nobody shares a predecessor
    [tip] = tips.read_tips(outputs).values()
    assert tip.seq == workers and tip.run_id == next(r for r, p in zip(run_ids, predicates, strict=False)
                                                     if p["seq"] == workers)


def test_chain_lock_is_exclusive_between_processes(tmp_path):
    outputs = tmp_path / "outputs"

    def hold(ready, release):
        with tips.locked(outputs):
            ready.set()
            release.wait(10)

    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold, args=(ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(errors.ChainLockTimeout) as timeout, tips.locked(outputs, timeout=0.3):
            pass
        assert str(timeout.value).startswith(f"Could not take the chain lock {outputs / '.chain.lock'} within 0s: "
                                             f"another seal holds it.")
    finally:
        release.set()
        holder.join(10)
    with tips.locked(outputs, timeout=1):  # released when the holder's block ended
        pass


# --- the newest record cannot vanish ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(pg_admin_url, tmp_path_factory):
    """A changing run then a read-only run of one database: apply (base -> heads), status."""
    with throwaway_project(pg_admin_url, tmp_path_factory.mktemp("trust")) as (proj, config):
        results = [run_runbook("apply", target="local", parameters={"dry_run": "false"}, config=config),
                   run_runbook("status", target="local", config=config)]
        assert [r.outcome for r in results] == ["succeeded", "succeeded"]
        yield config, proj.url, results


@pytest.fixture
def copy(built, tmp_path) -> Path:
    config, _url, _results = built
    target = tmp_path / "outputs"
    shutil.copytree(config.outputs_dir, target)
    return target


def _in(copy: Path, config, run_dir: Path) -> Path:
    return copy / run_dir.relative_to(config.outputs_dir)


def test_deleting_the_newest_read_only_record_is_reported(built, copy):
    config, url, (apply_, status) = built
    engine = db.make_engine(url)
    try:
        assert archive.verify_archive(copy, config.allowed_signers, [engine]).findings == ()
        shutil.rmtree(_in(copy, config, status.record_dir))
        report = archive.verify_archive(copy, config.allowed_signers, [engine])
    finally:
        engine.dispose()
    # A status run leaves no ledger row: only the signed chain index knows it existed.
    [finding] = report.findings
    assert (finding.kind, finding.run_id) == ("tip", status.run_id)
    assert finding.message.startswith(f"the newest record of {finding.database} is {status.run_id} (number 2 of "
                                      f"its chain, statement sha256 ")
    assert finding.message.endswith("according to .tips.json, but it is not in the archive: it was deleted or "
                                    "moved away. Restore it from a copy of the archive.")


def test_deleting_the_newest_records_of_a_changing_run_is_reported_by_index_and_ledger(built, copy):
    config, url, (apply_, status) = built
    for result in (status, apply_):
        shutil.rmtree(_in(copy, config, result.record_dir))
    engine = db.make_engine(url)
    try:
        report = archive.verify_archive(copy, config.allowed_signers, [engine])
    finally:
        engine.dispose()
    assert _kinds(report) == sorted([("tip", status.run_id), ("ledger", apply_.run_id)])
    ledger = next(f for f in report.findings if f.kind == "ledger")
    assert ledger.message.endswith("but the archive has no record of it: it was deleted or is kept elsewhere.")


def test_deleting_the_index_too_is_reported_not_silently_rebuilt(built, copy):
    config, _url, (_apply, status) = built
    shutil.rmtree(_in(copy, config, status.record_dir))
    (copy / tips.TIPS_FILE).unlink()
    report = archive.verify_archive(copy, config.allowed_signers)
    [finding] = report.findings
    assert finding.kind == "tip"
    assert finding.message.startswith(f"{copy / tips.TIPS_FILE} is missing although records were sealed with it")


def test_a_forged_index_is_not_trusted(built, copy, tmp_path):
    config, _url, _results = built
    mallory = signing.generate_key(tmp_path / "mallory", "mallory@example.com")
    index = _writable(copy / tips.TIPS_FILE)
    (copy / tips.TIPS_SIGNATURE).write_bytes(signing.sign(index.read_bytes(), mallory))
    [finding] = archive.verify_archive(copy, config.allowed_signers).findings
    assert finding.kind == "tip" and "cannot be trusted: The signature is sound but key SHA256:" in finding.message


# --- 2. no trust on first use -------------------------------------------------------------------------------
def test_run_without_a_key_changes_nothing(tmp_path, database_url, monkeypatch, capsys):
    proj = write_project(tmp_path / "p", database_url, signing_key=False)
    monkeypatch.setenv("DBRUNBOOK_TEST_TARGET_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", OPERATOR)
    code = main(["--config", str(proj.config_path), "run", "apply", "-p", "dry_run", "false"])
    assert code == 2
    assert "every run is signed, and dbrunbook does not create or trust a key on its own. Run 'dbrunbook keygen'" \
        in capsys.readouterr().err
    config = load_config(proj.config_path)
    assert not Path(config.keys_dir).exists() and not config.allowed_signers.exists()
    assert not config.outputs_dir.exists()
    with proj.engine.connect() as conn:
        tables = conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
                                      "('pg_catalog', 'information_schema')")).scalar_one()
    assert tables == 0  # no alembic_version, no ledger, no application table


def test_record_whose_operator_is_not_its_signer_is_untrusted(built, copy):
    config, _url, (_apply, status) = built
    run_dir = _in(copy, config, status.record_dir)
    statement = json.loads((run_dir / protocol.STATEMENT_FILE).read_bytes())
    statement["predicate"]["operator"] = "alice@example.com"  # the env var said alice; the key is tester's
    for name in (protocol.STATEMENT_FILE, protocol.SIGNATURE_FILE, "statement.dsse.json"):
        (run_dir / name).unlink()
    records.write_record(run_dir, statement, Path(config.keys_dir) / records.OPERATOR_KEY, chain=False)
    check = records.verify_record(run_dir, config.allowed_signers)
    assert check.status == "untrusted"
    assert check.problems == (f"signed by '{OPERATOR}', but the statement names operator 'alice@example.com': "
                              f"the key does not vouch for the person the record names.",)


# --- 3. four eyes -------------------------------------------------------------------------------------------
@pytest.fixture
def protected(tmp_path, database_url, monkeypatch):
    """A protected project with a succeeded papermill preview by the deployer, and bob's trusted key."""
    proj = write_project(tmp_path / "p", database_url, protected=True)
    monkeypatch.setenv("DBRUNBOOK_TEST_TARGET_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", OPERATOR)
    config = load_config(proj.config_path)
    bob = signing.generate_key(tmp_path / "bob" / "id_ed25519", "bob@example.com")
    signing.add_allowed_signer(config.allowed_signers, "bob@example.com", signing.public_key_line(bob))
    preview = run_runbook("preview", target="local", config=config)
    assert preview.outcome == "succeeded"
    session = open_session("local", config=proj.config_path)
    try:
        yield config, preview, bob, session
    finally:
        session.engine.dispose()


def test_self_approval_is_refused_and_a_second_principal_accepted(protected):
    config, preview, bob, s = protected
    sql = s.preview(save=False)
    with pytest.raises(errors.PreviewNotApproved) as stop:
        safety.require_approved_preview(s, sql, preview.run_id)
    assert str(stop.value) == (
        f"Preview record {preview.run_id} has no approval that counts on protected target 'local': nobody has "
        f"approved it. Someone other than '{OPERATOR}' runs 'dbrunbook approve {preview.run_id}' with their own "
        f"key (within 24h of this run).")

    mine = approvals.approve(config, preview.run_id, note="looks fine to me")  # the deployer's own key
    with pytest.raises(errors.PreviewNotApproved) as stop:
        safety.require_approved_preview(s, sql, preview.run_id)
    assert f"{mine.name} is by '{OPERATOR}', who is applying it: self-approval does not count" in str(stop.value)

    old = approvals.approve(config, preview.run_id, key_path=bob, now=datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(errors.PreviewNotApproved) as stop:
        safety.require_approved_preview(s, sql, preview.run_id)
    assert f"{old.name} is from " in str(stop.value) and "older than approval_max_age 24h" in str(stop.value)

    assert main(["approve", preview.run_id, "--key", str(bob), "--note", "checked the SQL"]) == 0
    frame = safety.require_approved_preview(s, sql, preview.run_id)
    row = frame.set_index("check").loc["approved by a second person"]
    assert row["result"] == "ok"
    assert row["detail"].startswith(f"previewed by {OPERATOR}, approved by bob@example.com at ")
    assert row["detail"].endswith(f", applied by {OPERATOR} (note: checked the SQL)")
    [newest] = [a for a in approvals.approvals_of(config.outputs_dir, preview.run_id, config.allowed_signers)
                if a.note == "checked the SQL"]
    assert (newest.status, newest.approver, newest.sql_sha256) == ("valid", "bob@example.com", sql.sha256)


def test_an_approval_signed_by_an_untrusted_key_or_edited_does_not_count(protected, tmp_path):
    config, preview, bob, s = protected
    mallory = signing.generate_key(tmp_path / "mallory" / "k", "mallory@example.com")
    with pytest.raises(errors.ApprovalInvalid, match=r"^Key .*mallory/k is not trusted by "):
        approvals.approve(config, preview.run_id, key_path=mallory)
    path = approvals.approve(config, preview.run_id, key_path=bob)
    body = json.loads(path.read_bytes())
    body["predicate"]["approver"] = "carol@example.com"
    path.write_bytes(records.canonical_json(body))
    with pytest.raises(errors.PreviewNotApproved) as stop:
        safety.require_approved_preview(s, s.preview(save=False), preview.run_id)
    assert f"{path.name} is tampered (The signature by key SHA256:" in str(stop.value)


def test_interactive_and_non_preview_records_cannot_be_approved(protected):
    config, preview, bob, _s = protected
    status = run_runbook("status", target="local", config=config)
    with pytest.raises(errors.ApprovalInvalid) as refused:
        approvals.approve(config, status.run_id, key_path=bob)
    assert str(refused.value) == (f"Run {status.run_id} cannot be approved: it is a 'status' run, not a preview. "
                                  f"Approve a succeeded preview made with 'dbrunbook run preview'.")
    from dbrunbook.execution.runner import prepare_runbook, seal

    working = prepare_runbook("preview", config=config)
    sealed = seal(working.parent, config=config)
    with pytest.raises(errors.ApprovalInvalid) as refused:
        approvals.approve(config, sealed.run_id, key_path=bob)
    assert "it was run in mode 'interactive-unsaved' (interactive records do not count: their cells could " \
           "have been edited)" in str(refused.value)


# --- 5. the scheduled verify believes only valid records of the same database -------------------------------
@pytest.fixture
def moved(project):
    """A verify run at base (the snapshot), then an apply that moved the heads: its record is the proof."""
    config = load_config(project.config_path)
    baseline = run_runbook("verify", target="local", config=config)
    apply_ = run_runbook("apply", target="local", parameters={"dry_run": "false"}, config=config)
    assert (baseline.outcome, apply_.outcome) == ("succeeded", "succeeded")
    counts, schema, meta = load_snapshot(baseline.record_dir / protocol.ARTIFACTS_DIR / SNAPSHOT_ARTIFACT)
    session = open_session("local", config=project.config_path)
    try:
        yield config, session, (baseline.record_dir, counts, schema, meta), apply_
    finally:
        session.engine.dispose()


def _resign(run_dir: Path, config, change) -> None:
    statement = json.loads((run_dir / protocol.STATEMENT_FILE).read_bytes())
    change(statement["predicate"])
    for name in (protocol.STATEMENT_FILE, protocol.SIGNATURE_FILE, "statement.dsse.json"):
        (run_dir / name).unlink()
    records.write_record(run_dir, statement, Path(config.keys_dir) / records.OPERATOR_KEY, chain=False)


def test_verify_accepts_a_move_with_a_valid_record_and_refuses_an_unsigned_or_foreign_one(moved):
    config, s, snapshot, apply_ = moved
    result = compare_with_snapshot(s, snapshot)
    assert not any(p.startswith("version moved") for p in result.problems), result.problems
    assert result.heads_then != result.heads_now

    signature = apply_.record_dir / protocol.SIGNATURE_FILE
    saved = signature.read_bytes()
    signature.rename(signature.with_name("aside"))
    try:
        unsigned = compare_with_snapshot(s, snapshot)
    finally:
        signature.with_name("aside").rename(signature)
    assert signature.read_bytes() == saved
    assert f"version moved from {result.heads_then} to {result.heads_now} with no signed record of the change" \
        in unsigned.problems

    # The same move, validly signed, but recorded for another database of the same server.
    _resign(apply_.record_dir, config, lambda p: p["database"].update(database="other_db"))
    assert records.verify_record(apply_.record_dir, config.allowed_signers).ok
    foreign = compare_with_snapshot(s, snapshot)
    assert f"version moved from {result.heads_then} to {result.heads_now} with no signed record of the change" \
        in foreign.problems


def test_verify_reports_vanished_rows_and_drift(moved, project):
    _config, s, (_run_dir, _c, _s, _meta), apply_ = moved
    heads = {k: sorted(v) for k, v in s.current().items()}
    with project.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (email, first_name, last_name, full_name) "
                             "SELECT 'u' || g || '@example.org', 'A', 'B', 'A B' FROM generate_series(1, 10) g"))
    now = (apply_.record_dir, s.row_counts(), snapshots.schema_snapshot(s.engine), {"heads": heads})
    with project.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM users WHERE email LIKE 'u1%'"))  # u1, u10: 2 of 10
        conn.execute(sa.text("ALTER TABLE users ADD COLUMN nickname text"))
    result = compare_with_snapshot(s, now, tolerance=10)
    assert result.problems[0] == "public.users lost 2 of 10 rows (20.0% > tolerance 10%)"
    assert result.problems[1].startswith("schema drift with no version change: 1 difference(s), e.g. ")
    assert "nickname" in result.problems[1]
    with pytest.raises(errors.UnexpectedChange):
        result.raise_if_unexpected()
    assert compare_with_snapshot(s, now, tolerance=25).problems[0].startswith("schema drift")
