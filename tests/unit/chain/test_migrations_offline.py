"""dbrunbook.chain.migrations without a database: reading scripts, resolving revisions, offline SQL.

Every scenario is a complete Alembic project under tests/fixtures/alembic_projects/, used unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError, DialectMismatch, RevisionNotFound

PROJECTS = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects"

# connection_attr: three revisions in a line.
A, B, C = "1a0c7e5f9b01", "2b1d8f6a0c02", "3c2e9a7b1d03"
# branched: base, two labelled branches, a merge.
BASE, BILL, CRM, MERGE = "b0000000base", "b1111111bill", "c2222222crm0", "d3333333merg"


def project(name: str, **kw) -> MigrationSet:
    ini = kw.pop("alembic_ini", PROJECTS / name / "alembic.ini")
    return MigrationSet(name=name, alembic_ini=ini, **kw)


# --- scripts ----------------------------------------------------------------------------------------------
def test_heads_and_history_of_a_line():
    mset = project("connection_attr")
    assert migrations.heads(mset) == (C,)
    hist = migrations.history(mset)
    assert [h.revision for h in hist] == [A, B, C]
    first, _, last = hist
    assert (first.is_base, first.is_head, first.down_revisions) == (True, False, ())
    assert first.message == "create account table"
    assert (last.is_head, last.down_revisions, last.create_date) == (True, (B,), "2024-05-03 09:00:00.000000")
    assert last.path == PROJECTS / "connection_attr/migrations/versions/3c2e9a7b1d03_index_account_email.py"


def test_history_of_branches_and_merge_is_topological():
    hist = {h.revision: h for h in migrations.history(project("branched"))}
    order = list(hist)
    assert order[0] == BASE and order[-1] == MERGE and set(order[1:3]) == {BILL, CRM}
    assert hist[BASE].is_branch_point and not hist[BASE].is_merge
    assert hist[MERGE].is_merge and hist[MERGE].down_revisions == (BILL, CRM) and hist[MERGE].is_head
    labels = (hist[BILL].branch_labels, hist[CRM].branch_labels, hist[MERGE].branch_labels)
    assert labels == (("billing",), ("crm",), ())  # as declared; Alembic's attribute adds inherited ones


def test_two_unmerged_heads():
    assert migrations.heads(project("two_heads")) == ("e1111111left", "e2222222rght")


def test_history_frame_status():
    frame = migrations.history_frame(project("connection_attr"), current=(B,))
    assert list(frame.columns) == ["revision", "parents", "description", "date", "status"]
    assert frame[["revision", "status"]].values.tolist() == [[A, "applied"], [B, "current"], [C, "pending"]]
    assert frame.loc[2, "description"] == "index account email" and frame.loc[2, "parents"] == B


def test_history_frame_of_a_partly_applied_branch():
    frame = migrations.history_frame(project("branched"), current=(BILL,))
    assert dict(frame[["revision", "status"]].values.tolist()) == {
        BASE: "applied", BILL: "current", CRM: "pending", MERGE: "pending"}


def test_history_frame_of_a_database_at_an_unknown_revision():
    with pytest.raises(RevisionNotFound) as err:
        migrations.history_frame(project("connection_attr"), current=("deadbeef0000",))
    assert str(err.value).startswith("Revision 'deadbeef0000' is not defined in migration set 'connection_attr': "
                                     "No such revision or branch 'deadbeef0000'")


@pytest.mark.parametrize(("name", "kw", "head"), [
    ("custom_section_and_version_table", {"section": "myapp_db"}, "c5000000000b"),
    ("pyproject_config", {"alembic_ini": PROJECTS / "pyproject_config" / "pyproject.toml"}, "9a0000000002"),
    ("connection_attr (script_location only)",
     {"alembic_ini": None, "script_location": PROJECTS / "connection_attr" / "migrations"}, C),
])
def test_configurations_alembic_supports(name, kw, head):
    assert migrations.heads(project(name.split()[0], **kw)) == (head,)


def test_wrong_ini_section_names_the_sections():
    ini = PROJECTS / "custom_section_and_version_table" / "alembic.ini"
    with pytest.raises(ConfigError) as err:
        migrations.heads(project("custom_section_and_version_table"))
    assert str(err.value).startswith(f"{ini} has no [alembic] section (sections: myapp_db, loggers,")
    assert "Set section = 'NAME' in [migration_sets.custom_section_and_version_table]" in str(err.value)


def test_url_with_percent_survives_configparser():
    url = "postgresql+psycopg://app:p%40ss%25word@db.example:5432/app?options=-c%20lock_timeout%3D2s"
    cfg = migrations.alembic_config(project("url_only"), url=url)
    assert cfg.get_main_option("sqlalchemy.url") == url
    assert cfg.attributes["configure_logger"] is False


def test_relative_script_location_is_made_absolute():
    cfg = migrations.alembic_config(project("connection_attr"))
    assert cfg.get_main_option("script_location") == str(PROJECTS / "connection_attr" / "migrations")


# --- resolve ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "revision", "current", "expected"), [
    ("connection_attr", "heads", None, (C,)),
    ("connection_attr", "head", None, (C,)),
    ("connection_attr", "base", None, ()),
    ("connection_attr", "2b1d", None, (B,)),
    ("connection_attr", "-1", None, (B,)),            # Alembic's reading: one below the head
    ("connection_attr", "+1", (), (A,)),
    ("connection_attr", "+2", (A,), (C,)),
    ("connection_attr", "-1", (C,), (B,)),
    ("connection_attr", "-3", (C,), ()),
    ("connection_attr", "-2", None, (A,)),            # from the head, without a database
    ("connection_attr", "-3", None, ()),              # ... down to base: Alembic yields 'base', no id
    ("connection_attr", f"{A}+1", None, (B,)),
    ("connection_attr", f"{C},{A}", None, (C, A)),
    ("branched", "heads", None, (MERGE,)),
    ("branched", "crm@head", None, (MERGE,)),         # the merge inherits both labels
    ("branched", "crm@+1", (BASE,), (CRM,)),
    ("branched", "+1", (BILL,), (MERGE,)),            # Alembic: next on this lineage is the merge; CRM too
    ("two_heads", "heads", None, ("e1111111left", "e2222222rght")),
])
def test_resolve(name, revision, current, expected):
    assert migrations.resolve(project(name), revision, current=current) == expected


@pytest.mark.parametrize(("name", "revision", "current", "named", "detail"), [
    ("connection_attr", "zzzz", None, "zzzz", "No such revision or branch 'zzzz'"),
    ("branched", "nobranch@head", None, "nobranch@head", "No such revision or branch 'nobranch'"),
    ("connection_attr", "+1", None, "+1", "relative revision '+1' needs the current revision to count from"),
    ("connection_attr", "-4", (C,), "-4", "Relative revision -4 didn't produce 4 migrations"),
    ("two_heads", "head", None, "head",
     "Multiple heads are present for given argument 'head'; e1111111left, e2222222rght"),
    ("custom_section_and_version_table", "c500", None, "c500",
     "Multiple revisions start with 'c500': 'c5000000000a', 'c5000000000b'"),
])
def test_resolve_unknown(name, revision, current, named, detail):
    mset = project(name, section="myapp_db" if name.startswith("custom") else "alembic")
    with pytest.raises(RevisionNotFound) as err:
        migrations.resolve(mset, revision, current=current)
    assert (err.value.revision, err.value.migration_set) == (named, name)
    message = str(err.value)
    assert message.startswith(f"Revision '{named}' is not defined in migration set '{name}': {detail}")
    assert message.endswith("Run 'dbrunbook run status' to list the known revisions.")


# --- offline SQL --------------------------------------------------------------------------------------------
def test_offline_sql_is_split_per_revision():
    steps = migrations.offline_sql(project("connection_attr"), None)
    assert [(s.revision, s.down_revision) for s in steps] == [(A, ()), (B, (A,)), (C, (B,))]
    assert steps[0].sql.startswith("BEGIN;\n\nCREATE TABLE alembic_version")
    assert f"-- Running upgrade  -> {A}" in steps[0].sql and "CREATE TABLE account" in steps[0].sql
    assert f"-- Running upgrade {A} -> {B}" in steps[1].sql
    assert "ALTER TABLE account ADD COLUMN name VARCHAR(100);" in steps[1].sql
    assert "CREATE UNIQUE INDEX ix_account_email ON account (email);" in steps[2].sql
    for step in steps:
        assert step.sql.count("-- Running upgrade") == 1
        assert step.sql.rstrip().endswith("COMMIT;")
        assert step.sha256 == hashlib.sha256(step.sql.encode()).hexdigest()
        assert step.notes == ""


def test_offline_sql_of_a_range_and_a_relative_end():
    mset = project("connection_attr")
    assert [s.revision for s in migrations.offline_sql(mset, A, "heads")] == [B, C]
    assert [s.revision for s in migrations.offline_sql(mset, A, "+1")] == [B]
    assert "CREATE TABLE alembic_version" not in migrations.offline_sql(mset, A)[0].sql


def test_offline_downgrade_sql():
    steps = migrations.offline_sql(project("connection_attr"), C, "base", direction="downgrade")
    assert [s.revision for s in steps] == [C, B, A]
    assert f"-- Running downgrade {C} -> {B}" in steps[0].sql
    assert "DROP INDEX ix_account_email;" in steps[0].sql
    assert "DROP TABLE account;" in steps[2].sql
    assert [s.revision for s in migrations.offline_sql(project("connection_attr"), C, "-1",
                                                       direction="downgrade")] == [C]
    assert migrations.offline_sql(project("connection_attr"), None, "-1", direction="downgrade") == []


def test_offline_sql_keeps_prints_out_of_the_sql(capsys):
    steps = migrations.offline_sql(project("prints_offline"), None)
    assert [s.revision for s in steps] == ["f1000000aaaa", "f2000000bbbb"]
    backfill = steps[1]
    assert backfill.notes == "backfilling event.kind: this is not SQL\nbackfill done\n"
    assert "this is not SQL" not in backfill.sql and "logged, not SQL" not in backfill.sql
    assert "backfill done" not in backfill.sql
    assert "UPDATE event SET kind = 'legacy' WHERE kind IS NULL;" in backfill.sql
    assert "not SQL" not in capsys.readouterr().out


def test_offline_sql_of_branches_and_merge():
    steps = migrations.offline_sql(project("branched"), None)
    assert steps[0].revision == BASE and steps[-1].revision == MERGE
    assert steps[-1].down_revision == (BILL, CRM)
    assert "CREATE TABLE billing.invoice" in next(s.sql for s in steps if s.revision == BILL)
    assert [s.revision for s in migrations.offline_sql(project("branched"), f"{BILL},{CRM}")] == [MERGE]


def test_offline_sql_unknown_revision():
    with pytest.raises(RevisionNotFound) as err:
        migrations.offline_sql(project("connection_attr"), None, "nope")
    assert str(err.value).startswith(
        "Revision 'nope' is not defined in migration set 'connection_attr': "
        "Can't locate revision identified by 'nope'")


def test_offline_env_that_falls_back_to_sqlite_is_refused(tmp_path):
    mset = project("own_env_var", env={"MYAPP_HOME": str(tmp_path)})
    with pytest.raises(DialectMismatch) as err:
        migrations.offline_sql(mset, None)
    assert str(err.value) == (
        f"env.py of migration set 'own_env_var' did not use the target database: it configured the sqlite "
        f"dialect at sqlite:///{tmp_path}/myapp.db, not PostgreSQL. Nothing was run. It reads its own "
        f"setting for the URL: set url_env = 'VARIABLE' in [migration_sets.own_env_var] of dbrunbook.toml to "
        f"the environment variable env.py reads (and env = {{...}} for any other variable it needs)."
    )
    assert list(tmp_path.iterdir()) == []
    assert "MYAPP_HOME" not in os.environ


def test_offline_env_reading_its_own_variable_gets_ours():
    mset = project("own_env_var", url_env="MYAPP_DATABASE_URL")
    steps = migrations.offline_sql(mset, None)
    assert [s.revision for s in steps] == ["0e1000000001", "0e2000000002"]
    assert "CREATE TABLE job" in steps[0].sql
    assert "MYAPP_DATABASE_URL" not in os.environ


def test_version_table_must_match_the_configured_one():
    mset = project("custom_section_and_version_table", section="myapp_db")
    with pytest.raises(DialectMismatch) as err:
        migrations.offline_sql(mset, None)
    assert str(err.value) == (
        "env.py of migration set 'custom_section_and_version_table' keeps its version in table "
        "'myapp_schema_version'; dbrunbook.toml says 'alembic_version'. Nothing was run. Set version_table = "
        "'myapp_schema_version' in [migration_sets.custom_section_and_version_table] of dbrunbook.toml."
    )
    ok = project("custom_section_and_version_table", section="myapp_db", version_table="myapp_schema_version")
    assert "CREATE TABLE myapp_schema_version" in migrations.offline_sql(ok, None)[0].sql


def test_env_py_logging_setup_does_not_leak():
    ours = logging.getLogger("dbrunbook.test_migrations_offline")
    root_handlers = list(logging.getLogger().handlers)
    cwd = os.getcwd()
    migrations.offline_sql(project("url_only"), None)  # its env.py calls logging.config.fileConfig
    assert ours.disabled is False
    assert logging.getLogger().handlers == root_handlers
    assert os.getcwd() == cwd


# --- digests --------------------------------------------------------------------------------------------
def test_file_digests():
    digests = migrations.file_digests(project("connection_attr"))
    path = PROJECTS / "connection_attr/migrations/versions/1a0c7e5f9b01_create_account_table.py"
    assert set(digests) == {A, B, C}
    assert digests[A] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_digest_changes_with_any_migration_file(tmp_path):
    shutil.copytree(PROJECTS / "url_only", tmp_path / "url_only",
                    ignore=shutil.ignore_patterns("__pycache__"))
    copy = project("url_only", alembic_ini=tmp_path / "url_only" / "alembic.ini")
    original = project("url_only")
    assert migrations.directory_digest([copy]) == migrations.directory_digest([original])
    assert migrations.directory_digest([copy, project("branched")]) == migrations.directory_digest(
        [project("branched"), copy])
    env = tmp_path / "url_only" / "alembic" / "env.py"
    env.write_text(env.read_text() + "\n# edited\n")
    assert migrations.directory_digest([copy]) != migrations.directory_digest([original])


def test_directory_digest_is_the_documented_one_over_the_walk(tmp_path):
    # Approvals and reviews name this digest: its files and format must not move between versions. The
    # expected value is built here the plain way, from the docstring: every file of the script folders but
    # bytecode and __pycache__, symlinked folders not entered, a symlinked file by its target, and the ini.
    root = tmp_path / "url_only"
    shutil.copytree(PROJECTS / "url_only", root, ignore=shutil.ignore_patterns("__pycache__"))
    versions = root / "alembic" / "versions"
    (versions / "nested").mkdir()
    (versions / "nested" / "x1_more.py").write_text("# a script one folder down\n")
    (versions / "__pycache__").mkdir()
    (versions / "__pycache__" / "x1_more.cpython-311.pyc").write_bytes(b"\0bytecode")
    (versions / "stale.pyc").write_bytes(b"\0bytecode")
    outside = tmp_path / "shared"
    outside.mkdir()
    (outside / "helpers.py").write_text("# shared, linked in\n")
    (versions / "helpers.py").symlink_to(outside / "helpers.py")
    (versions / "linked_folder").symlink_to(outside, target_is_directory=True)
    (versions / "dangling.py").symlink_to(tmp_path / "gone.py")
    mset = project("url_only", alembic_ini=root / "alembic.ini")

    base = root.resolve()
    files = {root / "alembic.ini"}
    for folder, dirs, names in os.walk(root / "alembic"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files |= {Path(folder, n).resolve() for n in names
                  if not n.endswith(".pyc") and Path(folder, n).is_file()}
    expected = hashlib.sha256()
    for name, path in sorted((f"url_only/{p.relative_to(base).as_posix()}" if p.is_relative_to(base)
                              else f"url_only/{p.as_posix()}", p) for p in files):
        for chunk in (name.encode(), path.read_bytes()):
            expected.update(len(chunk).to_bytes(8, "big") + chunk)
    assert "url_only/" + (outside / "helpers.py").resolve().as_posix() in {
        f"url_only/{p.as_posix()}" for p in files}
    assert migrations.directory_digest([mset]) == expected.hexdigest()


def test_as_frame():
    frame = migrations.as_frame(migrations.history(project("branched")))
    assert frame.loc[frame.revision == MERGE, "down_revisions"].item() == f"{BILL}, {CRM}"
