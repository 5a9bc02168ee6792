"""dbrunbook.chain.migrations on a real PostgreSQL, with scenario Alembic projects used unchanged.

Each test gets a fresh empty database (``database_url``); the projects are in
tests/fixtures/alembic_projects/.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DialectMismatch, MigrationFailed, RevisionNotFound
from dbrunbook.postgres import db

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects"

A, B, C = "1a0c7e5f9b01", "2b1d8f6a0c02", "3c2e9a7b1d03"                       # connection_attr
BASE, BILL, CRM, MERGE = "b0000000base", "b1111111bill", "c2222222crm0", "d3333333merg"  # branched


def project(name: str, **kw) -> MigrationSet:
    return MigrationSet(name=name, alembic_ini=kw.pop("alembic_ini", PROJECTS / name / "alembic.ini"), **kw)


@pytest.fixture
def engine(database_url):
    eng = db.make_engine(database_url, lock_timeout="2s", statement_timeout="1min")
    yield eng
    eng.dispose()


def tables(engine, schema=None) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def columns(engine, table) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def test_current_heads_pending_before_and_after(engine):
    mset = project("connection_attr")
    assert migrations.current(mset, engine) == ()
    assert migrations.heads(mset) == (C,)
    assert [r.revision for r in migrations.pending(mset, engine)] == [A, B, C]
    assert [r.revision for r in migrations.pending(mset, engine, "+1")] == [A]

    migrations.upgrade(mset, engine, B)
    assert migrations.current(mset, engine) == (B,)
    assert [(r.revision, r.message) for r in migrations.pending(mset, engine)] == [(C, "index account email")]
    frame = migrations.history_frame(mset, current=migrations.current(mset, engine))
    assert frame["status"].tolist() == ["applied", "current", "pending"]


def test_pending_and_history_follow_the_files_and_the_database(engine, tmp_path):
    # The upgrade plan and each revision's info are kept with the loaded scripts: a new or edited revision
    # file, or a database that moved, must still be seen by the next question.
    shutil.copytree(PROJECTS / "connection_attr", tmp_path / "p")
    mset = project("connection_attr", alembic_ini=tmp_path / "p" / "alembic.ini")
    versions = tmp_path / "p" / "migrations" / "versions"
    assert [r.revision for r in migrations.pending(mset, engine)] == [A, B, C]
    assert [r.revision for r in migrations.pending(mset, engine)] == [A, B, C]

    d = "4d3f0b8c2e04"
    (versions / f"{d}_add_note.py").write_text(
        f'"""add note\n\nRevision ID: {d}\nRevises: {C}\n"""\nrevision = "{d}"\ndown_revision = "{C}"\n'
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n")
    assert [r.revision for r in migrations.pending(mset, engine)] == [A, B, C, d]
    assert migrations.history(mset)[-1].message == "add note"

    edited = versions / "3c2e9a7b1d03_index_account_email.py"
    edited.write_text(edited.read_text().replace('"""index account email', '"""index the account emails'))
    assert [r.message for r in migrations.history(mset)][2] == "index the account emails"
    assert [r.message for r in migrations.pending(mset, engine)][2] == "index the account emails"

    migrations.upgrade(mset, engine, B)
    assert [r.revision for r in migrations.pending(mset, engine)] == [C, d]
    assert migrations.history_frame(mset, current=(B,))["status"].tolist() == [
        "applied", "current", "pending", "pending"]


def test_upgrade_downgrade_round_trip(engine):
    mset = project("connection_attr")
    steps = migrations.upgrade(mset, engine)
    assert [(s.revision, s.direction) for s in steps] == [(A, "upgrade"), (B, "upgrade"), (C, "upgrade")]
    assert all(s.seconds >= 0 and s.started_at.tzinfo is dt.UTC for s in steps)
    assert steps[0].started_at <= steps[1].started_at <= steps[2].started_at
    assert migrations.current(mset, engine) == (C,)
    assert columns(engine, "account") == ["id", "email", "name"]
    assert [i["name"] for i in sa.inspect(engine).get_indexes("account")] == ["ix_account_email"]

    assert [(s.revision, s.direction) for s in migrations.downgrade(mset, engine, "-1")] == [(C, "downgrade")]
    assert migrations.current(mset, engine) == (B,)
    assert sa.inspect(engine).get_indexes("account") == []

    assert [s.revision for s in migrations.downgrade(mset, engine, "base")] == [B, A]
    assert migrations.current(mset, engine) == ()
    assert tables(engine) == {"alembic_version"}

    assert [s.revision for s in migrations.upgrade(mset, engine)] == [A, B, C]
    assert migrations.current(mset, engine) == (C,)
    assert migrations.upgrade(mset, engine) == []


def test_stock_env_py_with_its_own_engine(engine):
    mset = project("url_only")
    assert [s.revision for s in migrations.upgrade(mset, engine)] == ["a1f0000000a1", "b2f0000000b2"]
    assert columns(engine, "note") == ["id", "body", "created_at"]
    reverted = migrations.downgrade(mset, engine, "base")
    assert [s.revision for s in reverted] == ["b2f0000000b2", "a1f0000000a1"]
    assert "note" not in tables(engine)


def test_a_connection_is_used_as_given(engine):
    mset = project("connection_attr")
    with engine.connect() as conn:
        assert [s.revision for s in migrations.upgrade(mset, conn, B)] == [A, B]
        assert migrations.current(mset, conn) == (B,)
        assert not conn.in_transaction()
    assert migrations.current(mset, engine) == (B,)  # committed, seen from another connection


def test_env_py_falling_back_to_sqlite_is_refused(engine, tmp_path):
    mset = project("own_env_var", env={"MYAPP_HOME": str(tmp_path)})
    with pytest.raises(DialectMismatch) as err:
        migrations.upgrade(mset, engine)
    assert str(err.value) == (
        f"env.py of migration set 'own_env_var' did not use the target database: it configured the sqlite "
        f"dialect at sqlite:///{tmp_path}/myapp.db, not {db.mask_url(engine.url)}. Nothing was run. It reads "
        f"its own setting for the URL: set url_env = 'VARIABLE' in [migration_sets.own_env_var] of "
        f"dbrunbook.toml to the environment variable env.py reads (and env = {{...}} for any other variable "
        f"it needs)."
    )
    assert err.value.exit_status == 2
    assert tables(engine) == set()
    assert list(tmp_path.iterdir()) == []  # the SQLite file env.py's connect created is gone
    assert "MYAPP_HOME" not in os.environ


def test_env_py_reading_its_own_variable_gets_our_url(engine, tmp_path):
    mset = project("own_env_var", url_env="MYAPP_DATABASE_URL", env={"MYAPP_HOME": str(tmp_path)})
    assert [s.revision for s in migrations.upgrade(mset, engine)] == ["0e1000000001", "0e2000000002"]
    assert columns(engine, "job") == ["id", "state", "priority"]
    assert list(tmp_path.iterdir()) == []
    assert "MYAPP_DATABASE_URL" not in os.environ


def test_env_py_connecting_to_another_postgres_database_is_refused(engine, pg_admin_url):
    other = f"t_{uuid.uuid4().hex[:12]}"
    db.create_database(pg_admin_url, other)
    other_url = db.with_database(pg_admin_url, other)
    try:
        mset = project("own_env_var", env={"MYAPP_DATABASE_URL": other_url})
        with pytest.raises(DialectMismatch) as err:
            migrations.upgrade(mset, engine)
        message = str(err.value)
        assert message.startswith(
            f"env.py of migration set 'own_env_var' did not use the target database: it connected to "
            f"{db.mask_url(sa.make_url(other_url))}, not {db.mask_url(engine.url)}. Nothing was run.")
        other_engine = db.make_engine(other_url)
        try:
            assert tables(other_engine) == set()
        finally:
            other_engine.dispose()
        assert tables(engine) == set()
    finally:
        db.drop_database(pg_admin_url, other)


def test_branches_and_merge(engine):
    mset = project("branched")
    assert [s.revision for s in migrations.upgrade(mset, engine, BILL)] == [BASE, BILL]
    assert migrations.current(mset, engine) == (BILL,)
    assert [r.revision for r in migrations.pending(mset, engine)] == [CRM, MERGE]
    assert [s.revision for s in migrations.upgrade(mset, engine)] == [CRM, MERGE]
    assert migrations.current(mset, engine) == (MERGE,)
    assert tables(engine, "billing") == {"invoice"} and tables(engine, "crm") == {"lead"}

    # Alembic reverts only the merge: the crm branch is not below the target, it stays as a second head.
    assert [s.revision for s in migrations.downgrade(mset, engine, BILL)] == [MERGE]
    assert migrations.current(mset, engine) == (BILL, CRM)
    reverted = [s.revision for s in migrations.downgrade(mset, engine, "base")]
    assert reverted in ([BILL, CRM, BASE], [CRM, BILL, BASE])
    assert tables(engine, "crm") == set()
    assert migrations.current(mset, engine) == ()


def test_two_unmerged_heads(engine):
    mset = project("two_heads")
    with pytest.raises(RevisionNotFound) as err:
        migrations.upgrade(mset, engine, "head")
    assert str(err.value).startswith(
        "Revision 'head' is not defined in migration set 'two_heads': Multiple head revisions are present")
    assert tables(engine) == set()
    migrations.upgrade(mset, engine, "heads")
    assert migrations.current(mset, engine) == ("e1111111left", "e2222222rght")
    assert sorted(columns(engine, "station")) == ["city", "id", "name"]


def test_custom_section_and_version_table(engine):
    mset = project("custom_section_and_version_table", section="myapp_db",
                   version_table="myapp_schema_version")
    migrations.upgrade(mset, engine)
    assert migrations.current(mset, engine) == ("c5000000000b",)
    assert tables(engine) == {"myapp_schema_version", "widget"}
    assert migrations.current(project("custom_section_and_version_table", section="myapp_db"), engine) == ()


def test_wrong_version_table_changes_nothing(engine):
    mset = project("custom_section_and_version_table", section="myapp_db")
    with pytest.raises(DialectMismatch) as err:
        migrations.upgrade(mset, engine)
    assert ("keeps its version in table 'myapp_schema_version'; dbrunbook.toml says 'alembic_version'"
            in str(err.value))
    assert tables(engine) == set()


def test_pyproject_configuration(engine):
    mset = project("pyproject_config", alembic_ini=PROJECTS / "pyproject_config" / "pyproject.toml")
    assert [s.revision for s in migrations.upgrade(mset, engine)] == ["9a0000000001", "9a0000000002"]
    assert columns(engine, "tag") == ["id", "label", "color"]


def test_failure_keeps_the_revisions_before_it(engine):
    # An index name is unique per schema: this one makes revision C's CREATE INDEX fail.
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE other (email text)"))
        conn.execute(sa.text("CREATE INDEX ix_account_email ON other (email)"))
    mset = project("connection_attr")
    with pytest.raises(MigrationFailed) as err:
        migrations.upgrade(mset, engine)
    failed = err.value
    assert (failed.migration_set, failed.revision, failed.completed) == ("connection_attr", C, (B,))
    assert str(failed) == (
        f"Migration set 'connection_attr' failed at revision {C}: relation \"ix_account_email\" already "
        f"exists. The database is at {B}. Run 'dbrunbook run troubleshoot' to diagnose before retrying."
    )
    assert [s.revision for s in failed.steps] == [A, B]
    assert migrations.current(mset, engine) == (B,)
    assert columns(engine, "account") == ["id", "email", "name"]


def test_unknown_revision_changes_nothing(engine):
    with pytest.raises(RevisionNotFound) as err:
        migrations.upgrade(project("connection_attr"), engine, "nope")
    assert str(err.value) == (
        "Revision 'nope' is not defined in migration set 'connection_attr': Can't locate revision identified "
        "by 'nope'. Run 'dbrunbook run status' to list the known revisions."
    )
    assert tables(engine) == set()


def test_stamp(engine):
    mset = project("connection_attr")
    assert migrations.stamp(mset, engine, B) is None
    assert migrations.current(mset, engine) == (B,)
    assert tables(engine) == {"alembic_version"}  # stamping runs no migration
    migrations.stamp(mset, engine, "base")
    assert migrations.current(mset, engine) == ()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('deadbeef0000')"))
    with pytest.raises(RevisionNotFound) as err:
        migrations.stamp(mset, engine, A)
    assert err.value.revision == "deadbeef0000"
    migrations.stamp(mset, engine, A, purge=True)
    assert migrations.current(mset, engine) == (A,)


def test_check_in_sync_and_with_drift(engine):
    in_sync = project("with_models", models="models.py:Base")
    migrations.upgrade(in_sync, engine)
    assert migrations.check(in_sync, engine) == []

    drifted = project("with_models", models="drifted_models:metadata")
    diffs = migrations.check(drifted, engine)
    described = sorted((d[0], d[1].name) if d[0] == "add_table" else (d[0], d[2], d[3].name) for d in diffs)
    assert described == [("add_column", "customer", "phone"), ("add_table", "loyalty_card")]
    assert migrations.current(in_sync, engine) == ("4d0000000002",)  # check writes nothing


def test_check_before_upgrade_lists_the_missing_tables(engine):
    diffs = migrations.check(project("with_models", models="models.py:Base"), engine)
    assert [(d[0], d[1].name) for d in diffs] == [("add_table", "customer")]
    assert tables(engine) == set()
