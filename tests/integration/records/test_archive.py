"""Verifying a whole archive: records made by the launcher on a real database, then deleted, reordered,
edited, unsigned, moved, or contradicted by the database's ledger and its current Alembic heads."""

from __future__ import annotations

import json
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import protocol, records
from dbrunbook.chain import migrations
from dbrunbook.config import Config
from dbrunbook.execution import runner
from dbrunbook.postgres import db
from dbrunbook.records import archive
from tests.projects import throwaway_project

pytestmark = pytest.mark.integration


@dataclass
class Archive:
    """Three signed records of one database: status (at base), apply (base -> heads), status (at heads)."""

    config: Config
    outputs: Path
    url: str
    run_ids: tuple[str, str, str]
    run_dirs: tuple[Path, Path, Path]


@pytest.fixture(scope="module")
def built(pg_admin_url, tmp_path_factory) -> Archive:
    with throwaway_project(pg_admin_url, tmp_path_factory.mktemp("archive")) as (project, config):
        results = [
            runner.run_runbook("status", target="local", config=config),
            runner.run_runbook("apply", target="local", parameters={"dry_run": "false"}, config=config),
            runner.run_runbook("status", target="local", config=config),
        ]
        assert [r.outcome for r in results] == ["succeeded"] * 3
        yield Archive(config, config.outputs_dir, project.url, tuple(r.run_id for r in results),
                      tuple(r.record_dir for r in results))


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A writable copy of the archive's outputs folder, to damage."""
    target = tmp_path / "outputs"
    shutil.copytree(built.outputs, target)
    return target


@pytest.fixture
def engine(built):
    engine = db.make_engine(built.url)
    try:
        yield engine
    finally:
        engine.dispose()


def _in_copy(copy: Path, built: Archive, index: int) -> Path:
    return copy / built.run_dirs[index].relative_to(built.outputs)


def _writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _kinds(report: archive.ArchiveReport) -> list[tuple[str, str | None]]:
    return sorted((f.kind, f.run_id) for f in report.findings)


def _sets(config: Config):
    return list(config.migration_sets.values())


def test_intact_archive_is_a_chain_and_matches_the_ledger(built, engine):
    report = archive.verify_archive(built.outputs, built.config.allowed_signers, {"local": engine},
                                    migration_sets=_sets(built.config))
    assert report.findings == ()
    assert report.ok and report.exit_status == 0
    assert [c.status for c in report.checks] == ["valid"] * 3
    [key] = report.databases
    assert report.ledgers == (key,)
    assert report.chains[key] == built.run_ids
    statements = [json.loads((d / protocol.STATEMENT_FILE).read_bytes())["predicate"] for d in built.run_dirs]
    assert statements[0]["prev"] is None
    assert statements[1]["prev"] == records.statement_sha256(built.run_dirs[0])
    assert statements[2]["prev"] == records.statement_sha256(built.run_dirs[1])
    assert report.summary() == "3 of 3 records valid; ledger cross-checked for 1 database(s)."
    assert [r["chain"] for r in report.rows()] == ["ok", "ok", "ok"]


def test_previous_statement_is_the_last_sealed_record_of_the_database(built):
    predicate = json.loads((built.run_dirs[0] / protocol.STATEMENT_FILE).read_bytes())["predicate"]
    assert archive.previous_statement(built.outputs, predicate["database"]) == \
        records.statement_sha256(built.run_dirs[2])
    assert archive.previous_statement(built.outputs, {"database": "other", "system_identifier": "1"}) is None
    assert archive.previous_statement(built.outputs, None) is None


def test_deleted_record_is_missing_from_the_chain_the_heads_and_the_ledger(built, copy, engine):
    deleted = _in_copy(copy, built, 1)
    shutil.rmtree(deleted)
    report = archive.verify_archive(copy, built.config.allowed_signers, [engine])
    first, apply_, last = built.run_ids
    assert _kinds(report) == [("ledger", apply_), ("missing", last), ("unrecorded-change", last)]
    missing = next(f for f in report.findings if f.kind == "missing")
    assert missing.message.startswith(f"the record sealed before {last} on {missing.database} (statement "
                                      f"sha256 {records.statement_sha256(built.run_dirs[1])[:16]}…) is not "
                                      f"in the archive")
    ledger = next(f for f in report.findings if f.kind == "ledger")
    assert f"the ledger of {ledger.database} has run {apply_} (apply, succeeded," in ledger.message
    assert ledger.message.endswith("but the archive has no record of it: it was deleted or is kept elsewhere.")
    assert report.orphan_findings() == (ledger,)
    assert report.exit_status == 1


def test_reordered_record_is_out_of_order(built, copy):
    """The apply record re-signed (by a trusted key) with a seal time after the last record."""
    run_dir = _in_copy(copy, built, 1)
    statement = json.loads((run_dir / protocol.STATEMENT_FILE).read_bytes())
    later = json.loads((built.run_dirs[2] / protocol.STATEMENT_FILE).read_bytes())["predicate"]["finished_at"]
    statement["predicate"]["finished_at"] = (datetime.fromisoformat(later) + timedelta(seconds=1)).isoformat()
    statement["predicate"]["seq"] = 4  # its place in the chain, after the last record
    for name in (protocol.STATEMENT_FILE, protocol.SIGNATURE_FILE, "statement.dsse.json"):
        (run_dir / name).unlink()
    key = Path(built.config.keys_dir) / "operator_ed25519"
    records.write_record(run_dir, statement, key, chain=False)  # an attacker sets the link himself
    report = archive.verify_archive(copy, built.config.allowed_signers)
    first, apply_, last = built.run_ids
    assert [c.status for c in report.checks] == ["valid"] * 3
    [key_] = report.databases
    assert report.chains[key_] == (first, last, apply_)
    assert ("out-of-order", apply_) in _kinds(report)
    out = next(f for f in report.findings if f.kind == "out-of-order")
    assert out.message.startswith(f"{apply_} names {first} as the record sealed before it on {key_}, but "
                                  f"{last} was sealed just before it")
    # Its re-signed statement has a new digest, so the record that named the old one finds it missing.
    assert ("missing", last) in _kinds(report)


def test_edited_notebook_is_tampered_and_breaks_no_link(built, copy):
    notebook = _in_copy(copy, built, 0) / protocol.NOTEBOOK_FILE
    _writable(notebook)
    nb = json.loads(notebook.read_bytes())
    nb["cells"][0]["source"] = "# Nothing to see here\n"
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    report = archive.verify_archive(copy, built.config.allowed_signers)
    assert _kinds(report) == [("tampered", built.run_ids[0])]
    assert "cell 0 (# Nothing to see here) differs from the signed record." in report.findings[0].message
    assert report.rows()[0]["status"] == "tampered"


def test_unsigned_record_is_reported(built, copy):
    (_in_copy(copy, built, 2) / protocol.SIGNATURE_FILE).unlink()
    report = archive.verify_archive(copy, built.config.allowed_signers)
    assert _kinds(report) == [("unsigned", built.run_ids[2])]
    assert report.findings[0].message == "no statement.json.sig next to statement.json."
    assert report.summary() == "2 of 3 records valid."


def test_records_of_an_untrusted_key_are_reported(built, copy, tmp_path):
    nobody = tmp_path / "allowed_signers"
    nobody.write_text("", encoding="utf-8")
    report = archive.verify_archive(copy, nobody)
    # The chain index is signed by the same key, so it cannot anchor the newest record either.
    assert _kinds(report) == sorted([("tip", None), *(("untrusted", run_id) for run_id in built.run_ids)])
    assert [c.status for c in report.checks] == ["untrusted"] * 3


def test_moved_record_is_misfiled(built, copy):
    source = _in_copy(copy, built, 0)
    elsewhere = copy / "2001" / "01" / "01" / source.name
    elsewhere.parent.mkdir(parents=True)
    source.rename(elsewhere)
    report = archive.verify_archive(copy, built.config.allowed_signers)
    assert _kinds(report) == [("misfiled", built.run_ids[0])]
    assert report.findings[0].message.startswith(f"{source.name} sits in {elsewhere.parent}, not under the "
                                                 f"date of its run id ({source.parent})")


def test_version_change_without_a_record_is_reported(built, engine):
    main = built.config.migration_set("main")
    before = migrations.current(main, engine)
    migrations.downgrade(main, engine, "-1")  # by hand: no run, no record, no ledger row
    try:
        report = archive.verify_archive(built.outputs, built.config.allowed_signers, [engine],
                                        migration_sets=_sets(built.config))
    finally:
        migrations.upgrade(main, engine, "heads")
    assert migrations.current(main, engine) == before
    [finding] = report.findings
    assert (finding.kind, finding.run_id) == ("unrecorded-change", None)
    now = migrations.current(main, engine)
    assert finding.message.startswith(f"{report.databases[0]} is at ")
    assert f"but its last record {built.run_ids[2]} left it at ai: " in finding.message
    assert f"main: {'+'.join(now)}" in finding.message


def test_ledger_row_that_disagrees_with_its_record_is_reported(built, engine):
    apply_ = built.run_ids[1]
    ledger = f'"{protocol.LEDGER_SCHEMA}"."{protocol.LEDGER_TABLE}"'
    with engine.begin() as conn:
        real = conn.execute(sa.text(f"SELECT statement_sha256 FROM {ledger} WHERE run_id = :r"),
                            {"r": apply_}).scalar_one()
        conn.execute(sa.text(f"UPDATE {ledger} SET statement_sha256 = :s WHERE run_id = :r"),
                     {"s": "0" * 64, "r": apply_})
    try:
        report = archive.verify_archive(built.outputs, built.config.allowed_signers, [engine])
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {ledger} SET statement_sha256 = :s WHERE run_id = :r"),
                         {"s": real, "r": apply_})
    [finding] = report.findings
    assert (finding.kind, finding.run_id) == ("ledger", apply_)
    assert finding.message == (
        f"run {apply_}: the ledger of {finding.database} holds statement sha256 {'0' * 16}…, the record's "
        f"statement is {real[:16]}…: one of them was replaced.")
