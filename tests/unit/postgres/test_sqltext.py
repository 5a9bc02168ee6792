"""The statement splitter shared by lint, preflight, troubleshoot and deploy checks."""

from __future__ import annotations

import pytest

from dbrunbook.postgres.sqltext import split_statements


@pytest.mark.parametrize(
    "sql, codes",
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a;b'; SELECT \"x;y\" FROM t", ["SELECT 'a;b'", 'SELECT "x;y" FROM t']),
        ("SELECT 'it''s; fine';", ["SELECT 'it''s; fine'"]),
        ("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;",
         ["CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql"]),
        ("DO $$ BEGIN PERFORM 1; END $$;", ["DO $$ BEGIN PERFORM 1; END $$"]),
        ("-- Running upgrade a -> b\n\nALTER TABLE t ADD x int; -- trailing; comment\n", ["ALTER TABLE t ADD x int"]),
        ("/* block; comment */ UPDATE t SET v = 1;", ["UPDATE t SET v = 1"]),
        ("-- only a comment\n;\n  ;", []),
        ("INSERT INTO t VALUES ('a  b')", ["INSERT INTO t VALUES ('a  b')"]),
    ],
    ids=["plain", "quotes", "doubled-quote", "dollar-tag", "dollar", "line-comments", "block-comment", "empty",
         "no-final-semicolon"],
)
def test_split_statements(sql, codes):
    assert [s.code for s in split_statements(sql)] == codes


def test_offsets_text_and_flat():
    sql = "-- head\nALTER TABLE t\n   ADD x int; UPDATE t SET x = 1;"
    first, second = split_statements(sql)
    assert sql[first.start:first.end] == "-- head\nALTER TABLE t\n   ADD x int;"
    assert first.text.startswith("-- head") and first.flat == "ALTER TABLE t ADD x int"
    assert sql[second.start:second.end] == "UPDATE t SET x = 1;"


FLAT_CASES = [
    "CREATE TABLE t0001 (\n    id SERIAL NOT NULL, \n    name TEXT, \n    PRIMARY KEY (id)\n)",
    "UPDATE alembic_version SET version_num=1 WHERE alembic_version.version_num = 2",
    "ALTER TABLE t\tADD COLUMN x int\x0bDEFAULT -1",  # tab and vertical tab: PostgreSQL's white space too
    "SELECT a::int,b-1, c/2 FROM\r\n  t WHERE x>=1",
    "SELECT 'a  b', \"x  y\" FROM t",  # quotes: the scanner keeps their white space
    "SELECT $$ a  b $$",
    "SELECT 1 --  two  spaces\n, 2",
    "SELECT 1 /*  c  */ + 2",
    "SELECT café\u00a0 FROM t",  # a no-break space is part of a name to PostgreSQL, white space to str.split
    "SELECT a\x1cb FROM t",  # so is \x1c
    "BEGIN",
]


@pytest.mark.parametrize("code", FLAT_CASES)
def test_flat_is_what_postgresqls_scanner_gives(code):
    from dbrunbook.postgres.sqltext import Statement, scanned_flat

    assert Statement(0, len(code), code, code).flat == scanned_flat(code)


def test_flat_keeps_what_the_scanner_keeps():
    from dbrunbook.postgres.sqltext import scanned_flat

    assert scanned_flat("SELECT 'a  b'\n  FROM t") == "SELECT 'a  b' FROM t"
    assert scanned_flat("SELECT café\u00a0 FROM t") == "SELECT café\u00a0 FROM t"
