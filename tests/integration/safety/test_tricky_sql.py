"""SQL that regexes misread, on real PostgreSQL and real Alembic: the ``tricky_sql`` fixture project.

The lint weighs ``"my table"`` (a quoted lower-case name) like ``my_table``, the preflight resolves both, and
the downgrade data-loss count includes ``DELETE … USING``, a DML CTE, ``UPDATE … SET col = NULL``, a narrowing
type change and ``DROP SCHEMA/TYPE … CASCADE`` — each count checked against the database itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import errors, safety
from dbrunbook.chain import migrations
from dbrunbook.execution.session import open_session
from dbrunbook.postgres.sqltext import split_statements
from dbrunbook.safety import preflight
from dbrunbook.safety.lint_rules import Catalog, TableSize, check_sql
from tests.projects import ROOT, URL_ENV

pytestmark = pytest.mark.integration

TRICKY = ROOT / "tests" / "fixtures" / "alembic_projects" / "tricky_sql"


def tricky_project(folder: Path, url: str, *, protected: bool) -> Path:
    shutil.copytree(TRICKY, folder / "tricky")
    config = folder / "dbrunbook.toml"
    config.write_text(f"""
[project]
outputs = "{folder / 'outputs'}"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "{folder / 'state'}"

[targets.local]
url_env = "{URL_ENV}"
protected = {str(protected).lower()}
lock_timeout = "2s"

[migration_sets.tricky]
alembic_ini = "{folder / 'tricky' / 'alembic.ini'}"
""", encoding="utf-8")
    return config


def execute(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@pytest.fixture
def session(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv(URL_ENV, database_url)
    s = open_session("local", config=tricky_project(tmp_path, database_url, protected=True),
                     record_dir=str(tmp_path / "run"))
    migrations.upgrade(s.config.migration_set("tricky"), s.engine, "b0000000base")
    execute(database_url, """
        INSERT INTO "my table" (id, note, code, feeling)
            SELECT g, 'n', CASE WHEN g <= 7 THEN 'abcd' ELSE 'ab' END, CASE WHEN g <= 4 THEN 'calm'::mood END
            FROM generate_series(1, 20000) g;
        INSERT INTO my_table (id, note) SELECT g, 'n' FROM generate_series(1, 20000) g;
        INSERT INTO big SELECT generate_series(1, 100);
        INSERT INTO small SELECT generate_series(1, 10);
        INSERT INTO archive.old_rows SELECT generate_series(1, 5);
        ANALYZE""")
    try:
        yield s
    finally:
        s.engine.dispose()


def test_set_not_null_on_a_quoted_lower_case_table_is_an_error_like_on_my_table(session):
    report = safety.lint(session, session.preview(save=False))
    ours = sorted((f.rule, f.level, f.statement) for f in report.findings if f.rule == "not-null-scan")
    assert ours == [
        ("not-null-scan", "error", 'ALTER TABLE "my table" ALTER COLUMN note SET NOT NULL'),
        ("not-null-scan", "error", "ALTER TABLE My_Table ALTER COLUMN note SET NOT NULL")]
    whys = sorted(re.search(r"table .* has at least [\d,]+ rows", f.why).group(0) for f in report.findings
                  if f.rule == "not-null-scan")
    assert whys == ['table "my table" has at least 20,000 rows', "table my_table has at least 20,000 rows"]
    with pytest.raises(errors.UnsafeMigration, match=r"not-null-scan@b1000000nonn"):
        safety.require_clean(session, report, "")


def test_preflight_resolves_quoted_names_to_the_live_tables(session):
    result = preflight.live_preflight(session, session.preview(save=False))
    rows = {r["table"]: (r["exists"], r["lock"]) for r in result.tables.to_dict("records")}
    assert rows == {'"my table"': (True, "ACCESS EXCLUSIVE"), "my_table": (True, "ACCESS EXCLUSIVE"),
                    "alembic_version": (True, "ROW EXCLUSIVE")}


def test_downgrade_data_loss_counts_what_the_tricky_statements_destroy(session):
    mset = session.config.migration_set("tricky")
    migrations.upgrade(mset, session.engine, "heads")
    report = safety.data_loss(session, "-1", "tricky", save=False)
    assert [(i.object, i.kind, i.lost) for i in report.items] == [
        ("big", "delete", 10),                     # DELETE FROM big b USING small s
        ("big", "delete", 5),                      # WITH d AS (DELETE FROM big WHERE id > 95 ...)
        ('"my table"', "set null", 10),            # UPDATE "my table" SET note = NULL WHERE id <= 10
        ('"my table"', "narrow", 7),               # ALTER COLUMN code TYPE varchar(3): 7 values of 4 chars
        ("archive.old_rows", "table", 5),          # DROP SCHEMA archive CASCADE
        ('"my table".feeling', "column", 4),       # DROP TYPE mood CASCADE drops the column
    ]
    # The counts are the database's own: run the downgrade and look.
    migrations.downgrade(mset, session.engine, "-1")
    with session.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM big")).scalar_one() == 85
        assert conn.execute(sa.text('SELECT count(*) FROM "my table" WHERE note IS NULL')).scalar_one() == 10
        assert conn.execute(sa.text("SELECT count(*) FROM \"my table\" WHERE code = 'abc'")).scalar_one() == 7
        assert conn.execute(sa.text("SELECT to_regnamespace('archive')")).scalar() is None
        assert conn.execute(sa.text("SELECT count(*) FROM pg_attribute WHERE attrelid = '\"my table\"'::regclass "
                                    "AND attname = 'feeling' AND NOT attisdropped")).scalar_one() == 0


@pytest.mark.parametrize("action, rewrites", [
    ("ADD COLUMN id3 bigint GENERATED ALWAYS AS IDENTITY", True),
    ("ADD COLUMN twice int GENERATED ALWAYS AS (id * 2) STORED", True),
    ("ADD COLUMN half int GENERATED ALWAYS AS (id / 2) VIRTUAL", False),
    ("ADD COLUMN n2 bigserial", True),
    ("ADD COLUMN token uuid DEFAULT gen_random_uuid()", True),
    ("ADD COLUMN at timestamptz DEFAULT now()", False),
    ("ADD COLUMN note text DEFAULT 'clock_timestamp()'", False),
    ("ADD COLUMN kind text DEFAULT 'bigserial'", False),
    ("ALTER COLUMN id TYPE bigint", True),
    ("ALTER COLUMN label TYPE varchar(80)", False),
])
def test_the_rewrite_rule_agrees_with_postgresql(database_url, action, rewrites):
    """The lint's table-rewrite finding, against what PostgreSQL does: a rewrite gives the table a new file."""
    execute(database_url, "CREATE TABLE r (id int, label varchar(40)); "
                          "INSERT INTO r SELECT g, 'x' FROM generate_series(1, 10) g")
    file_of = "SELECT relfilenode FROM pg_class WHERE oid = 'r'::regclass"
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            before = conn.execute(sa.text(file_of)).scalar_one()
        execute(database_url, f"ALTER TABLE r {action}")
        with engine.connect() as conn:
            assert (conn.execute(sa.text(file_of)).scalar_one() != before) is rewrites
    finally:
        engine.dispose()
    catalog = Catalog(tables={"r": TableSize("r", True, rows=10)},
                      column_types={("r", "id"): "integer", ("r", "label"): "character varying(40)"})
    issues = check_sql(split_statements(f"ALTER TABLE r {action}"), catalog, set(), set())
    assert [i.rule for i in issues] == (["table-rewrite"] if rewrites else [])
