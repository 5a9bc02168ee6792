"""The safety rules on fixed inputs, one row per rule: revision files (ast), squawk's findings classified and
weighed on fixed SQL strings, dbrunbook's own SQL rules, the parsers behind data loss. No database: the live
facts come in a ``Catalog``; squawk is the real binary from the venv."""

from __future__ import annotations

import textwrap

import pytest

from dbrunbook.chain.migrations import SqlStep
from dbrunbook.safety.guards import LintReport, lint_sql
from dbrunbook.safety.lint_rules import (
    Catalog,
    Finding,
    TableSize,
    heads_finding,
    revision_file_findings,
    split_statements,
    type_change,
)
from dbrunbook.safety.loss_guard import _loss_statements
from dbrunbook.safety.squawk_rules import weigh_by_size

BIG = TableSize("users", True, rows=50_000, rows_at_least=True, bytes=8_000_000)
SMALL = TableSize("users", True, rows=120, bytes=16_384)
EMPTY = TableSize("users", True, rows=0, bytes=8_192)


def catalog(users: TableSize | None = BIG, **kw) -> Catalog:
    tables = {"users": users} if users is not None else {}
    return Catalog(tables=tables, **kw)


def lint_one(sql: str, cat: Catalog, *, protected: bool = False, notes: str = "") -> tuple[list[Finding], int]:
    step = SqlStep(revision="r1", down_revision=("r0",), message="test", sql=sql, notes=notes)
    return lint_sql({"main": [step]}, cat, protected=protected)


def levels(findings: list[Finding]) -> dict[str, str]:
    return {f.rule: f.level for f in findings}


# --- revision files: ast ---------------------------------------------------------------------------------
HEADER = "from alembic import op, context\nimport sqlalchemy as sa\nrevision = 'r1'\ndown_revision = 'r0'\n"
UPGRADE = "def upgrade():\n    op.add_column('t', sa.Column('c', sa.Text))\n"


@pytest.mark.parametrize("body, rule, level, category", [
    (UPGRADE + "def downgrade(): pass\n", "empty-downgrade", "warning", "rollback"),
    (UPGRADE + "def downgrade() -> None:\n    \"\"\"Downgrade schema.\"\"\"\n    pass\n", "empty-downgrade",
     "warning", "rollback"),
    (UPGRADE + "def downgrade():\n    ...\n", "empty-downgrade", "warning", "rollback"),
    (UPGRADE, "empty-downgrade", "warning", "rollback"),  # no downgrade() at all
    (UPGRADE + "def downgrade():\n    raise NotImplementedError('one way')\n", "irreversible-downgrade", "info",
     "rollback"),
    (UPGRADE + "def downgrade():\n    op.drop_column('t', 'c')\n    raise NotImplementedError('data lost')\n",
     "irreversible-downgrade", "info", "rollback"),
    # Checking offline mode makes the preview render, but it shows the offline branch, not what will run.
    ("def upgrade():\n    if context.is_offline_mode():\n        return\n"
     "    op.get_bind().execute(sa.text('SELECT 1'))\n"
     "def downgrade():\n    op.drop_table('t')\n", "online-only-call", "warning", "preview"),
    ("def upgrade():\n    conn = op.get_bind()\n    conn.execute(sa.text('UPDATE t SET c = 1'))\n"
     "def downgrade():\n    op.drop_column('t', 'c')\n", "online-only-call", "warning", "preview"),
    ("def upgrade():\n    insp = sa.inspect(op.get_bind())\n    cols = insp.get_columns('t')\n"
     "def downgrade():\n    op.drop_table('t')\n", "online-only-call", "warning", "preview"),
    ("def upgrade():\n    t = sa.Table('t', sa.MetaData(), autoload_with=None)\n"
     "def downgrade():\n    op.drop_table('t')\n", "online-only-call", "warning", "preview"),
    ("def upgrade():\n    n = op.get_context().connection.execute(sa.text('SELECT 1')).scalar()\n"
     "def downgrade():\n    op.drop_table('t')\n", "online-only-call", "warning", "preview"),
    ("def upgrade():\n    with op.get_context().autocommit_block():\n"
     "        op.create_index('ix', 't', ['c'], postgresql_concurrently=True)\n"
     "def downgrade():\n    op.drop_index('ix', table_name='t')\n", "autocommit-block", "warning", "deploy risk"),
])
def test_revision_file_rule(tmp_path, body, rule, level, category):
    path = tmp_path / "r1_test.py"
    path.write_text(HEADER + body, encoding="utf-8")
    found = revision_file_findings(path, migration_set="main", revision="r1")
    assert [(f.rule, f.level, f.category, f.revision, f.source) for f in found] == [
        (rule, level, category, "r1", "dbrunbook")]
    assert found[0].statement.startswith("r1_test.py")


@pytest.mark.parametrize("body", [
    # A merge point or marker revision: nothing to undo, nothing to flag.
    "def upgrade():\n    pass\ndef downgrade():\n    pass\n",
    # Reading the database only in downgrade() does not make the upgrade's preview wrong.
    UPGRADE + "def downgrade():\n    op.get_bind().execute(sa.text('SELECT 1'))\n    op.drop_column('t', 'c')\n",
    UPGRADE + "def downgrade():\n    op.drop_column('t', 'c')\n",
])
def test_revision_file_clean(tmp_path, body):
    path = tmp_path / "r1_clean.py"
    path.write_text(HEADER + body, encoding="utf-8")
    assert revision_file_findings(path, migration_set="main", revision="r1") == []


@pytest.mark.parametrize("heads, protected, level", [(("b", "a"), False, "warning"), (("a", "b"), True, "error")])
def test_multiple_heads(heads, protected, level):
    found = heads_finding("main", heads, protected=protected)
    assert (found.rule, found.level, found.category, found.revision) == ("multiple-heads", level, "deploy risk",
                                                                         "a,b")
    assert found.instead == "alembic merge -m 'merge' a b"
    assert heads_finding("main", ("a",), protected=True) is None


# --- squawk's findings, classified and weighed ------------------------------------------------------------
@pytest.mark.parametrize("sql, users, protected, rule, level, category", [
    ("CREATE INDEX ix_users_email ON users (email);", BIG, False, "require-concurrent-index-creation", "error",
     "deploy risk"),
    ("CREATE INDEX ix_users_email ON users (email);", SMALL, False, "require-concurrent-index-creation", "info",
     "deploy risk"),
    ("CREATE INDEX ix_users_email ON users (email);", None, False, "require-concurrent-index-creation", "info",
     "deploy risk"),
    ("ALTER TABLE users ADD CONSTRAINT fk_x FOREIGN KEY (station_id) REFERENCES stations (id);", BIG, False,
     "adding-foreign-key-constraint", "error", "deploy risk"),
    ("ALTER TABLE users ADD CONSTRAINT ck_x CHECK (age > 0);", SMALL, False, "constraint-missing-not-valid",
     "info", "deploy risk"),
    ("ALTER TABLE users ADD CONSTRAINT uq_x UNIQUE (email);", BIG, False, "disallowed-unique-constraint", "error",
     "deploy risk"),
    ("DROP INDEX ix_users_email;", BIG, False, "require-concurrent-index-deletion", "error", "deploy risk"),
    ("DROP INDEX ix_made_in_this_run;", BIG, False, "require-concurrent-index-deletion", "info", "deploy risk"),
    ("ALTER TABLE users ADD COLUMN score integer NOT NULL;", SMALL, False, "adding-required-field", "error",
     "deploy risk"),
    ("ALTER TABLE users ADD COLUMN score integer NOT NULL;", EMPTY, False, "adding-required-field", "info",
     "deploy risk"),
    ("BEGIN;\nCREATE INDEX CONCURRENTLY ix_users_email ON users (email);\nCOMMIT;", SMALL, False,
     "ban-concurrent-index-creation-in-transaction", "error", "deploy risk"),
    ("DROP TABLE users;", SMALL, False, "ban-drop-table", "warning", "destructive"),
    ("DROP TABLE users;", SMALL, True, "ban-drop-table", "error", "destructive"),
    ("ALTER TABLE users DROP COLUMN nickname;", BIG, True, "ban-drop-column", "error", "destructive"),
    ("ALTER TABLE users RENAME COLUMN nickname TO handle;", BIG, True, "renaming-column", "warning",
     "compatibility"),
    ("CREATE TABLE notes (id serial PRIMARY KEY, body varchar(100));", None, True, "prefer-text-field", "info",
     "style"),
    ("CREATE TABLE notes (id serial PRIMARY KEY, body text);", None, True, "prefer-identity", "info", "style"),
    ("ALTER TABLE users ADD COLUMN nick text; this is not sql;", SMALL, False, "syntax-error", "warning",
     "preview"),
])
def test_squawk_rule_classified(sql, users, protected, rule, level, category):
    found, _ = lint_one(sql, catalog(users, index_tables={"ix_users_email": "users"}), protected=protected)
    mine = [f for f in found if f.rule == rule]
    assert mine, f"{rule} not found in {[f.rule for f in found]}"
    assert (mine[0].level, mine[0].category, mine[0].source, mine[0].revision) == (level, category, "squawk", "r1")


def test_timeouts_are_left_out_and_counted():
    found, omitted = lint_one("ALTER TABLE users ADD COLUMN nick text;", catalog(SMALL))
    assert omitted == 2  # require-lock-timeout and require-statement-timeout
    assert not any("timeout" in f.rule for f in found)
    report = LintReport(tuple(found), "prod", True, omitted, "lock_timeout=1s and statement_timeout=30min", 1)
    assert report.summary().endswith(
        "2 require-*-timeout finding(s) left out: dbrunbook runs every migration with lock_timeout=1s and "
        "statement_timeout=30min.")


def test_style_is_info_and_collapsed_by_rule():
    found, _ = lint_one("CREATE TABLE notes (id serial PRIMARY KEY, a varchar(10), b varchar(20));", catalog())
    report = LintReport(tuple(found), "local", False, 0, "", 1)
    assert {f.category for f in found} == {"style"} and report.errors == ()
    # prefer-robust-stmts too (without Alembic's BEGIN squawk asks for IF NOT EXISTS); the two varchar
    # columns of one short statement are one finding
    assert sorted(f.rule for f in found) == ["prefer-bigint-over-int", "prefer-identity", "prefer-robust-stmts",
                                             "prefer-text-field"]
    assert f"<summary>{len(found)} style finding(s), by rule</summary>" in report._repr_html_()


def test_alembic_bookkeeping_is_not_linted():
    sql = ("BEGIN;\nCREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);\n"
           "INSERT INTO alembic_version (version_num) VALUES ('r1');\nCOMMIT;\n")
    assert lint_one(sql, catalog())[0] == []


# --- dbrunbook's own SQL rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("sql, cat, rule, level, category", [
    ("ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;", catalog(BIG), "not-null-scan", "error",
     "deploy risk"),
    ("ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;", catalog(SMALL), "not-null-scan", "info",
     "deploy risk"),
    ("ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();", catalog(BIG), "table-rewrite", "error",
     "deploy risk"),
    ("ALTER TABLE users ADD COLUMN n bigserial;", catalog(BIG), "table-rewrite", "error", "deploy risk"),
    ("ALTER TABLE users ALTER COLUMN id TYPE bigint;", catalog(BIG, column_types={("users", "id"): "integer"}),
     "table-rewrite", "error", "deploy risk"),
    ("ALTER TABLE users ALTER COLUMN email TYPE varchar(50);",
     catalog(SMALL, column_types={("users", "email"): "text"}), "type-narrowing", "warning", "destructive"),
    ("VACUUM FULL users;", catalog(BIG), "table-rewrite", "error", "deploy risk"),
    ("CLUSTER users USING ix_users_email;", catalog(BIG), "table-rewrite", "error", "deploy risk"),
    ("ALTER TABLE users SET TABLESPACE slow;", catalog(BIG), "table-rewrite", "error", "deploy risk"),
    ("UPDATE users SET score = 0;", catalog(BIG), "large-data-change", "warning", "deploy risk"),
    ("UPDATE users SET score = 0;", catalog(SMALL), "large-data-change", "info", "deploy risk"),
    ("BEGIN;\nALTER TABLE users ADD COLUMN score int;\nUPDATE users SET score = 0;\nCOMMIT;", catalog(BIG),
     "backfill-under-lock", "error", "deploy risk"),
])
def test_dbrunbook_sql_rule(sql, cat, rule, level, category):
    found, _ = lint_one(sql, cat)
    mine = [f for f in found if f.rule == rule]
    assert [(f.level, f.category, f.source) for f in mine] == [(level, category, "dbrunbook")]


def test_type_narrowing_is_an_error_on_a_protected_target():
    cat = catalog(SMALL, column_types={("users", "email"): "character varying(255)"})
    found, _ = lint_one("ALTER TABLE users ALTER COLUMN email TYPE varchar(50);", cat, protected=True)
    assert levels(found)["type-narrowing"] == "error"
    assert "users.email goes from character varying(255) to varchar(50)" in \
        next(f.why for f in found if f.rule == "type-narrowing")


def test_rewrite_replaces_squawks_finding_on_the_same_statement():
    found, _ = lint_one("ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;", catalog(BIG))
    assert "adding-not-nullable-field" not in levels(found)
    assert levels(found)["not-null-scan"] == "error"


@pytest.mark.parametrize("sql, cat", [
    # a validated CHECK (col IS NOT NULL) on the live table: PostgreSQL 12+ skips the scan
    ("ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;",
     catalog(BIG, not_null_checks=frozenset({("users", "full_name")}))),
    # ... or one added and validated earlier in the same run
    ("ALTER TABLE users ADD CONSTRAINT ck_fn CHECK (full_name IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE users VALIDATE CONSTRAINT ck_fn;\nALTER TABLE users ALTER COLUMN full_name SET NOT NULL;",
     catalog(BIG)),
    # varchar widening needs no rewrite
    ("ALTER TABLE users ALTER COLUMN email TYPE varchar(500);",
     catalog(BIG, column_types={("users", "email"): "character varying(255)"})),
    # a constant default needs no rewrite since PostgreSQL 11
    ("ALTER TABLE users ADD COLUMN score integer DEFAULT 0;", catalog(BIG)),
    # a table created in this run
    ("CREATE TABLE notes (id bigint PRIMARY KEY, body text);\nCREATE INDEX ix_notes_body ON notes (body);\n"
     "ALTER TABLE notes ALTER COLUMN body SET NOT NULL;", catalog(BIG)),
])
def test_harmless_on_this_database(sql, cat):
    found, _ = lint_one(sql, cat)
    assert [f for f in found if f.level == "error" and f.category == "deploy risk"] == []
    assert not {"not-null-scan", "table-rewrite"} & {f.rule for f in found if f.level != "info"}


def test_printed_text_is_attributed_to_the_revision_not_a_syntax_error():
    found, _ = lint_one("UPDATE alembic_version SET version_num='r1';",
                        catalog(), notes="backfilling: this is not SQL\n")
    assert [(f.rule, f.level, f.category, f.revision, f.statement) for f in found] == [
        ("printed-offline", "warning", "preview", "r1", "printed: backfilling: this is not SQL")]


# --- weighing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, level, says", [
    (TableSize("users", False), "info", "users does not exist before this run"),
    (TableSize("users", True, rows=9_999, bytes=1_000_000), "info", "harmless at this size"),
    (TableSize("users", True, rows=10_000, bytes=1_000), "error", "table users has 10,000 rows"),
    (TableSize("users", True, rows=10, bytes=10 * 1024 * 1024), "error", "table users has 10 rows, 10.0 MB"),
    (TableSize("users", True, rows=10_000, rows_at_least=True, bytes=1_000), "error", "at least 10,000 rows"),
])
def test_weigh(size, level, says):
    got, why = weigh_by_size("require-concurrent-index-creation", size, Catalog(), "Blocks writes")
    assert got == level
    assert says in why


@pytest.mark.parametrize("entry, matches", [
    ("not-null-scan", True), ("not-null-scan@b7e4f0c2d913", True), ("not-null-scan@a1b2c3d4e5f6", False),
    ("table-rewrite", False), ("table-rewrite@b7e4f0c2d913", False),
])
def test_allow_entry_matches(entry, matches):
    finding = Finding("not-null-scan", "error", "deploy risk", "main", "b7e4f0c2d913", "", "", "", "dbrunbook")
    assert finding.matches(entry) is matches


@pytest.mark.parametrize("old, new, rewrites, narrows", [
    ("character varying(100)", "varchar(200)", False, False),
    ("character varying(100)", "text", False, False),
    ("character varying(100)", "varchar(50)", True, True),
    ("text", "varchar(50)", True, True),
    ("integer", "bigint", True, False),
    ("bigint", "integer", True, True),
    ("numeric(10,2)", "numeric(12,2)", False, False),
    ("numeric(10,2)", "numeric(8,2)", True, True),
    ("timestamp with time zone", "date", True, True),
    (None, "bigint", True, False),
])
def test_type_change(old, new, rewrites, narrows):
    assert type_change(old, new) == (rewrites, narrows)


def test_split_statements_respects_quotes_comments_and_dollar_quotes():
    sql = textwrap.dedent("""\
        -- a comment; with a semicolon
        INSERT INTO t VALUES ('a;b', "c;d");
        CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
        /* block; comment */ SELECT 2
        """)
    flats = [s.flat for s in split_statements(sql)]
    assert flats == ["INSERT INTO t VALUES ('a;b', \"c;d\")",
                     "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                     "SELECT 2"]


# --- what a downgrade destroys: the parser ----------------------------------------------------------------
@pytest.mark.parametrize("statement, expected", [
    ("DROP TABLE user_preferences;", [("table", "user_preferences", None, None)]),
    ("DROP TABLE IF EXISTS ai.requests, ai.routes CASCADE;",
     [("table", "ai.requests", None, None), ("table", "ai.routes", None, None)]),
    ("ALTER TABLE users DROP COLUMN full_name;", [("column", "users", "full_name", None)]),
    ("ALTER TABLE ai.requests DROP COLUMN IF EXISTS conversation_id, DROP CONSTRAINT fk_x;",
     [("column", "ai.requests", "conversation_id", None)]),
    ("ALTER TABLE users DROP CONSTRAINT uq_users_email;", []),
    ("TRUNCATE TABLE events;", [("truncate", "events", None, None)]),
    ("DELETE FROM event WHERE kind = 'legacy';", [("delete", "event", None, "kind = 'legacy'")]),
    ("DROP INDEX ix_users_email;", []),
])
def test_loss_statements(statement, expected):
    assert _loss_statements(statement) == expected
