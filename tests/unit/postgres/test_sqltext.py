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
