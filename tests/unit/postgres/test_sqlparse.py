"""SQL read by PostgreSQL's own parser (pglast): the tricky-SQL table. No database.

One row per tricky statement: the kind, the tables with the lock each takes (what the live preflight asks
the database about), the table the lint weighs, what a downgrade destroys and what breaks running code.
"""

from __future__ import annotations

import pytest

from dbrunbook.chain.migrations import SqlStep
from dbrunbook.postgres import sqlimpact, sqlparse
from dbrunbook.postgres.sqltext import split_statements
from dbrunbook.procedures import deploy
from dbrunbook.safety import preflight
from dbrunbook.safety.guards import lint_sql
from dbrunbook.safety.lint_rules import Catalog, TableSize, check_sql, normalize_name, table_of
from dbrunbook.safety.loss_guard import _loss_statements

AE, SRE, SUE, RE = "ACCESS EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "ROW EXCLUSIVE"
RENAME = ("renames a column or table", "running code that uses the old name fails")

# statement, kind, [(table, lock)], lint's table, losses [(kind, table, column, where)], breaking changes
TRICKY = [
    ('ALTER TABLE "my table" ALTER COLUMN note SET NOT NULL', "ALTER TABLE", [('"my table"', AE)], '"my table"',
     [], [("makes a column NOT NULL", "old code inserting NULL fails; existing NULLs fail the migration")]),
    ("ALTER TABLE My_Table ALTER note SET NOT NULL", "ALTER TABLE", [("my_table", AE)], "my_table", [],
     [("makes a column NOT NULL", "old code inserting NULL fails; existing NULLs fail the migration")]),
    ('ALTER TABLE ONLY public."My_Table" ADD COLUMN x int', "ALTER TABLE", [('"My_Table"', AE)], '"My_Table"',
     [], []),
    ('ALTER TABLE IF EXISTS crm."Order" DROP COLUMN IF EXISTS "old name"', "ALTER TABLE", [('crm."Order"', AE)],
     'crm."Order"', [("column", 'crm."Order"', '"old name"', None)],
     [("drops a column", "running code that still selects it fails")]),
    ('ALTER TABLE t RENAME COLUMN "old name" TO new_name', "ALTER TABLE", [("t", AE)], "t", [], [RENAME]),
    ("ALTER TABLE t RENAME TO t2", "ALTER TABLE", [("t", AE)], "t", [], [RENAME]),
    ("ALTER TABLE t ALTER COLUMN c TYPE varchar(10)", "ALTER TABLE", [("t", AE)], "t",
     [("narrow", "t", "c", 'length("c"::text) > 10')],
     [("changes a column type", "may rewrite the table and break code expecting the old type")]),
    ("ALTER TABLE t ALTER COLUMN n SET DATA TYPE int", "ALTER TABLE", [("t", AE)], "t",
     [("narrow", "t", "n", '"n"::numeric NOT BETWEEN -2147483648 AND 2147483647')],
     [("changes a column type", "may rewrite the table and break code expecting the old type")]),
    ("ALTER TABLE t ALTER COLUMN c TYPE text", "ALTER TABLE", [("t", AE)], "t", [],
     [("changes a column type", "may rewrite the table and break code expecting the old type")]),
    ("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES crm.users (id) NOT VALID", "ALTER TABLE",
     [("t", SRE), ("crm.users", SRE)], "t", [], []),
    ("ALTER TABLE t VALIDATE CONSTRAINT fk", "ALTER TABLE", [("t", SUE)], "t", [], []),
    ("ALTER TABLE t DETACH PARTITION t_2020 CONCURRENTLY", "ALTER TABLE", [("t", SUE)], "t", [], []),
    ("ALTER TABLE t ATTACH PARTITION t_2021 FOR VALUES FROM (1) TO (2)", "ALTER TABLE",
     [("t", SUE), ("t_2021", AE)], "t", [], []),
    ("CREATE TABLE t_2022 PARTITION OF t FOR VALUES FROM (2) TO (3)", "CREATE TABLE PARTITION OF", [("t", AE)],
     "t_2022", [], []),
    ("CREATE TABLE IF NOT EXISTS s.p (id int, u int REFERENCES users (id))", "CREATE TABLE", [("users", SRE)],
     "s.p", [], []),
    ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix ON ONLY \"my table\" (a)", "CREATE INDEX CONCURRENTLY",
     [('"my table"', SUE)], '"my table"', [], []),
    ("CREATE INDEX ix ON s.t (a)", "CREATE INDEX", [("s.t", "SHARE")], "s.t", [], []),
    ("DROP INDEX CONCURRENTLY IF EXISTS s.ix", "DROP INDEX CONCURRENTLY", [("s.ix", SUE)], None, [], []),
    ('DROP TABLE IF EXISTS a, s."B" CASCADE', "DROP TABLE", [("a", AE), ('s."B"', AE)], "a",
     [("table", "a", None, None), ("table", 's."B"', None, None)], [("drops a table", "code that reads it fails")]),
    ("TRUNCATE ONLY a, b RESTART IDENTITY", "TRUNCATE", [("a", AE), ("b", AE)], "a",
     [("truncate", "a", None, None), ("truncate", "b", None, None)], []),
    ("DELETE FROM ONLY big WHERE kind = 'a;b'", "DELETE FROM", [("big", RE)], "big",
     [("delete", "big", None, "kind = 'a;b'")], []),
    ("DELETE FROM big b USING small s WHERE b.id = s.id", "DELETE FROM", [("big", RE), ("small", "ACCESS SHARE")],
     "big", [("delete", "big", None, '(tableoid, ctid) IN (SELECT "b".tableoid, "b".ctid FROM big AS b, '
                                      'small AS s WHERE b.id = s.id)')], []),
    ("WITH d AS (DELETE FROM big WHERE id > 5 RETURNING id) SELECT count(*) FROM d", "DELETE FROM",
     [("big", RE)], "big", [("delete", "big", None, "id > 5")], []),
    ("UPDATE t SET a = NULL, b = 1 WHERE c", "UPDATE", [("t", RE)], "t",
     [("set null", "t", "a", '(c) AND "a" IS NOT NULL')], []),
    ('UPDATE "my table" SET "Note" = NULL', "UPDATE", [('"my table"', RE)], '"my table"',
     [("set null", '"my table"', '"Note"', '"Note" IS NOT NULL')], []),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", "UPDATE", [("t", RE), ("u", "ACCESS SHARE")], "t", [], []),
    ("INSERT INTO s.t (a) SELECT a FROM u", "INSERT INTO", [("s.t", RE)], "s.t", [], []),
    ("DROP SCHEMA archive CASCADE", "DROP SCHEMA", [], None, [("schema", "archive", None, None)], []),
    ("DROP SCHEMA archive", "DROP SCHEMA", [], None, [], []),
    ("DROP TYPE s.mood CASCADE", "DROP TYPE", [], None, [("type", "s.mood", None, None)], []),
    ("ALTER TYPE mood RENAME VALUE 'a' TO 'b'", "ALTER ENUM", [], None, [],
     [("changes enum values", "rows or code using the old value break")]),
    ("COMMENT ON TABLE t IS 'we DROP TABLE later'", "COMMENT", [("t", SUE)], "t", [], []),
    ("COMMENT ON COLUMN s.t.c IS 'RENAME COLUMN x TO y'", "COMMENT", [("s.t", SUE)], "s.t", [], []),
    ("LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE", "LOCK", [("t", SRE)], "t", [], []),
    ("VACUUM (FULL, ANALYZE) t", "VACUUM FULL", [("t", AE)], "t", [], []),
    ("REINDEX TABLE CONCURRENTLY t", "REINDEX CONCURRENTLY", [("t", SUE)], "t", [], []),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY m", "REFRESH MATERIALIZED VIEW", [("m", "EXCLUSIVE")], "m", [], []),
    ("CREATE FUNCTION f() RETURNS int AS $fn1$ SELECT 1; DROP TABLE x; $fn1$ LANGUAGE sql", "CREATE FUNCTION",
     [], None, [], []),
    ('CREATE TABLE "user" (id int)', "CREATE TABLE", [], '"user"', [], []),
]


@pytest.mark.parametrize("sql, kind, locks, table, losses, breaks", TRICKY, ids=[row[0][:48] for row in TRICKY])
def test_tricky_sql(sql, kind, locks, table, losses, breaks):
    d = sqlparse.describe(sql)
    assert d.parsed and d.kind == kind
    assert [(t, lk) for t, lk, _ in preflight.statement_locks(sql)] == locks
    assert table_of(sql) == table
    assert _loss_statements(sql) == losses
    assert sqlimpact.breaking(sql) == breaks


@pytest.mark.parametrize("written, canonical", [
    ("users", "users"), ("Users", "users"), ('"users"', "users"), ('"Users"', '"Users"'),
    ('"my table"', '"my table"'), ("My_Table", "my_table"), ('public."my table"', '"my table"'),
    ('Crm."Order"', 'crm."Order"'), ('"user"', '"user"'), ('"a""b"', '"a""b"'),
])
def test_names_are_canonical_like_regclass_text(written, canonical):
    assert normalize_name(written) == canonical


# --- splitting ---------------------------------------------------------------------------------------------
def test_split_keeps_literals_of_every_kind_whole():
    sql = ("SELECT E'it\\'s; fine';\nCREATE FUNCTION f() RETURNS int AS $fn1$ SELECT 1; $fn1$ LANGUAGE sql;\n"
           "-- Running upgrade a -> b; with a semicolon\nSELECT U&'d\\0061t;a' /* c; */; SELECT 'x''; y'")
    assert [s.flat for s in split_statements(sql)] == [
        "SELECT E'it\\'s; fine'", "CREATE FUNCTION f() RETURNS int AS $fn1$ SELECT 1; $fn1$ LANGUAGE sql",
        "SELECT U&'d\\0061t;a'", "SELECT 'x''; y'"]
    assert all(s.parsed and not s.noise for s in split_statements(sql))


def test_split_sets_printed_noise_apart_and_reports_what_does_not_parse():
    sql = ("Backfilling plans in batches\nUPDATE account SET plan = 'free';\n"
           "ALTER TABLE t ADD COLUMN;\nSELECT 1;")
    backfill, broken, select = split_statements(sql)
    assert (backfill.code, backfill.noise, backfill.error) == (
        "UPDATE account SET plan = 'free'", "Backfilling plans in batches", "")
    assert broken.flat == "ALTER TABLE t ADD COLUMN" and broken.error.startswith("syntax error at end of input")
    assert select.flat == "SELECT 1" and select.parsed


def test_split_falls_back_by_hand_for_text_the_scanner_rejects():
    sql = "SELECT $tag1$ a; b $tag1$; SELECT E'x\\'; y'; SELECT 'unterminated; here"
    statements = split_statements(sql)
    assert [s.flat for s in statements] == ["SELECT $tag1$ a; b $tag1$", "SELECT E'x\\'; y'",
                                            "SELECT 'unterminated; here"]
    assert [bool(s.error) for s in statements] == [False, False, True]


# --- the lint and the deploy checks on the parse ----------------------------------------------------------
BIG = TableSize('"my table"', True, rows=20_000, bytes=1_000_000)


@pytest.mark.parametrize("sql", ['ALTER TABLE "my table" ALTER COLUMN note SET NOT NULL',
                                 'alter table public."my table" alter note set not null',
                                 'WITH d AS (DELETE FROM "my table" RETURNING 1) SELECT 1'])
def test_a_quoted_lower_case_table_is_weighed_as_the_live_table(sql):
    catalog = Catalog(tables={'"my table"': BIG})
    (issue,) = check_sql(split_statements(sql), catalog, set(), set())
    assert issue.table == '"my table"'
    step = SqlStep(revision="r1", down_revision=("r0",), message="m", sql=sql + ";\n")
    findings, _ = lint_sql({"main": [step]}, catalog, protected=True)
    mine = [(f.rule, f.level) for f in findings if f.source == "dbrunbook"]
    assert mine in ([("not-null-scan", "error")], [("large-data-change", "warning")])


def test_unparsable_sql_is_a_finding_not_a_guess():
    step = SqlStep(revision="r1", down_revision=("r0",), message="m",
                   sql="ALTER TABLE t ADD COLUMN;\nprinted by the migration\nSELECT 1;\n")
    findings, _ = lint_sql({"main": [step]}, Catalog(), protected=True)
    found = {(f.rule, f.level, f.statement) for f in findings if f.source == "dbrunbook"}
    assert found == {("unparsed-sql", "warning", "ALTER TABLE t ADD COLUMN"),
                     ("non-sql-text", "warning", "printed by the migration")}
    unparsed = next(f for f in findings if f.rule == "unparsed-sql")
    assert unparsed.why.startswith("PostgreSQL's parser could not parse this statement (syntax error at end")


class _Preview:
    def __init__(self, sql: str):
        self.steps = {"main": [SqlStep(revision="r1", down_revision=("r0",), message="m", sql=sql)]}


def test_breaking_changes_read_the_parse_not_the_text():
    sql = ("COMMENT ON TABLE t IS 'we DROP TABLE later';\n"
           'ALTER TABLE t RENAME COLUMN "old name" TO new_name;\n'
           "-- DROP COLUMN in a comment\nALTER TABLE t ALTER COLUMN \"My Col\" TYPE bigint, DROP COLUMN x;\n"
           "ALTER TABLE t ADD COLUMN;\n")
    frame = deploy.breaking_changes(_Preview(sql))
    assert list(zip(frame["change"], frame["statement"], strict=False)) == [
        ("renames a column or table", 'ALTER TABLE t RENAME COLUMN "old name" TO new_name'),
        ("changes a column type", 'ALTER TABLE t ALTER COLUMN "My Col" TYPE bigint, DROP COLUMN x'),
        ("drops a column", 'ALTER TABLE t ALTER COLUMN "My Col" TYPE bigint, DROP COLUMN x'),
        ("could not parse", "ALTER TABLE t ADD COLUMN")]


def test_strip_version_updates_keeps_only_the_change():
    sql = ("BEGIN;\n-- Running downgrade b -> a\nALTER TABLE t DROP COLUMN c;\n"
           "UPDATE alembic_version SET version_num='a' WHERE alembic_version.version_num = 'b';\nCOMMIT;\n")
    assert deploy._strip_version_updates(sql) == "ALTER TABLE t DROP COLUMN c;"
    assert deploy._statements(deploy._strip_version_updates("BEGIN;\nDELETE FROM alembic_version;\nCOMMIT;")) == []


# --- troubleshoot's readers: objects created, rows inserted ---------------------------------------------
@pytest.mark.parametrize("sql, expected", [
    ('CREATE TABLE "my table" (id int)', [("table", '"my table"', "")]),
    ("CREATE TABLE IF NOT EXISTS t (id int)", []),
    ("CREATE UNIQUE INDEX CONCURRENTLY ix ON crm.\"Leads\" (a)", [("index", "crm.ix", 'crm."Leads"')]),
    ("CREATE INDEX IF NOT EXISTS ix ON t (a)", []),
    ("CREATE OR REPLACE VIEW v AS SELECT 1", []),
    ("CREATE MATERIALIZED VIEW read.funnel AS SELECT 1", [("view", "read.funnel", "")]),
    ("CREATE TYPE mood AS ENUM ('a;b')", [("type", "mood", "")]),
    ("CREATE SCHEMA IF NOT EXISTS crm", []),
    ('ALTER TABLE t ADD COLUMN "Full Name" varchar(255), ADD COLUMN IF NOT EXISTS z int, '
     "ADD CONSTRAINT uq UNIQUE (a)", [("column", '"Full Name"', "t"), ("constraint", "uq", "t")]),
    ("COMMENT ON TABLE t IS 'CREATE TABLE x (id int)'", []),
])
def test_created_objects_by_the_parser(sql, expected):
    found = sqlimpact.creates(sql)
    assert [(o["kind"], o["name"], o["table"]) for o in found] == expected


def test_created_objects_keep_what_the_migration_expects():
    column, constraint = sqlimpact.creates("ALTER TABLE t ADD COLUMN c varchar(5) NOT NULL, "
                                           "ADD CONSTRAINT uq UNIQUE (c)")
    assert (column["expected"], constraint["expected"]) == ("varchar(5) NOT NULL", "UNIQUE (c)")
    assert sqlimpact.creates("CREATE TABLE (") is None  # rejected: the caller's fallback reads it


@pytest.mark.parametrize("sql, expected", [
    ("INSERT INTO s.\"Settings\" (key, \"Value\") VALUES ($$a$$, E'b\\';c') ON CONFLICT (key) DO NOTHING",
     {"table": 's."Settings"', "columns": ["key", "Value"], "values": "('a', 'b'';c')", "on_conflict": True}),
    ("INSERT INTO t (a) VALUES (1), (2) RETURNING a",
     {"table": "t", "columns": ["a"], "values": "(1), (2)", "on_conflict": False}),
    ("INSERT INTO t (a) SELECT 1", None),
    ("INSERT INTO t VALUES (1)", None),
])
def test_inserted_rows(sql, expected):
    assert sqlimpact.inserted_rows(sql) == expected


# --- the fallback: text PostgreSQL's parser rejects, read by its first words and said so -----------------
def test_unparsable_statements_fall_back_and_say_so():
    broken = "ALTER TABLE \"my table\" ADD COLUMN x int,"  # a trailing comma: the parser rejects it
    assert not sqlparse.describe(broken).parsed
    assert preflight.statement_locks(broken) == [('"my table"', AE, "ALTER TABLE (could not parse)")]
    assert table_of(broken) == '"my table"'
    assert _loss_statements("DROP TABLE a, b,") == [("table", "a", None, None), ("table", "b", None, None)]
    # A DELETE the parser rejects is not counted with a WHERE nobody can trust: the lint reports it instead.
    assert _loss_statements("DELETE FROM big WHERE id IN (1,") == []
    assert deploy.breaking_changes(_Preview("DROP TABLE a,;")).to_dict("records") == [
        {"migration_set": "main", "revision": "r1", "change": "could not parse",
         "why it matters": "PostgreSQL's parser rejects it: read it yourself", "statement": "DROP TABLE a,"}]


# --- the tricky-SQL table, lint findings: every table below is live and big; dbrunbook's own rules --------
def _big(*names: str) -> dict[str, TableSize]:
    return {n: TableSize(n, True, rows=50_000, rows_at_least=True, bytes=9_000_000) for n in names}


LIVE = Catalog(tables=_big('"my table"', "my_table", "big", "small", 'crm."Order"', "t"),
               column_types={('"my table"', "code"): "text", ("t", "n"): "bigint", ("t", '"My Col"'): "integer",
                             ("t", "c"): "character varying(50)"})

FINDINGS = [
    ('ALTER TABLE "my table" ALTER COLUMN note SET NOT NULL', [("not-null-scan", "error")]),
    ("ALTER TABLE My_Table ALTER note SET NOT NULL", [("not-null-scan", "error")]),
    ('ALTER TABLE "my table" ADD CONSTRAINT nn CHECK (note IS NOT NULL) NOT VALID;\n'
     'ALTER TABLE "my table" VALIDATE CONSTRAINT nn;\nALTER TABLE "my table" ALTER note SET NOT NULL', []),
    ("ALTER TABLE new_t ALTER COLUMN x SET NOT NULL", [("not-null-scan", "info")]),  # not live: created here
    ('ALTER TABLE "my table" ALTER COLUMN code TYPE varchar(10)',
     [("type-narrowing", "error"), ("table-rewrite", "error")]),
    ("ALTER TABLE t ALTER COLUMN c TYPE varchar(80)", []),  # widening varchar: no rewrite
    ("ALTER TABLE t ALTER COLUMN n TYPE int", [("type-narrowing", "error"), ("table-rewrite", "error")]),
    ('ALTER TABLE t ALTER COLUMN "My Col" TYPE bigint', [("table-rewrite", "error")]),
    ("ALTER TABLE t ADD COLUMN id2 bigserial", [("table-rewrite", "error")]),
    ("ALTER TABLE t ADD COLUMN token uuid DEFAULT gen_random_uuid()", [("table-rewrite", "error")]),
    ("ALTER TABLE t ADD COLUMN note text DEFAULT 'clock_timestamp()'", []),  # a literal, not a call
    ("ALTER TABLE t ADD COLUMN kind text DEFAULT 'bigserial'", []),
    ("ALTER TABLE t ADD COLUMN twice int GENERATED ALWAYS AS (n * 2) STORED", [("table-rewrite", "error")]),
    ("ALTER TABLE t ADD COLUMN at timestamptz DEFAULT now()", []),  # stable: stored once, no rewrite
    ("ALTER TABLE t ADD COLUMN half int GENERATED ALWAYS AS (n / 2) VIRTUAL", []),
    ("ALTER TABLE t ADD COLUMN id3 bigint GENERATED ALWAYS AS IDENTITY", [("table-rewrite", "error")]),
    ("WITH d AS (DELETE FROM big WHERE id > 5 RETURNING id) SELECT count(*) FROM d",
     [("large-data-change", "warning")]),
    ("DELETE FROM big b USING small s WHERE b.id = s.id", [("large-data-change", "warning")]),
    ('ALTER TABLE crm."Order" ADD COLUMN x int;\nUPDATE crm."Order" SET x = 1',
     [("backfill-under-lock", "error")]),
    ("VACUUM (FULL) big", [("table-rewrite", "error")]),
    ("CREATE TABLE big2 (id int);\nALTER TABLE big2 ALTER COLUMN id SET NOT NULL", [("not-null-scan", "info")]),
    ("COMMENT ON TABLE big IS 'ALTER TABLE big ALTER COLUMN id SET NOT NULL; VACUUM FULL big'", []),
    ("-- ALTER TABLE big ALTER COLUMN id SET NOT NULL\nSELECT 1", []),
]


@pytest.mark.parametrize("sql, expected", FINDINGS, ids=[row[0][:48] for row in FINDINGS])
def test_tricky_sql_findings(sql, expected):
    step = SqlStep(revision="r1", down_revision=("r0",), message="m", sql=sql + ";\n")
    findings, _ = lint_sql({"main": [step]}, LIVE, protected=True)
    assert [(f.rule, f.level) for f in findings if f.source == "dbrunbook"] == expected


def test_flat_folds_white_space_between_tokens_only():
    (statement,) = split_statements("DELETE  FROM t\n  WHERE name = 'a  b' -- old rows\n  AND \"my  col\" > 1;")
    assert statement.flat == "DELETE FROM t WHERE name = 'a  b' AND \"my  col\" > 1"
    # The data-loss count reads the WHERE from it: the literal must still mean what the migration says.
    assert _loss_statements(statement.flat) == [("delete", "t", None, "name = 'a  b' AND \"my  col\" > 1")]
