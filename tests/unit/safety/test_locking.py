"""Locking and preflight logic that needs no database: names, backoff, SQLSTATE detection, SQL reading."""

from __future__ import annotations

import datetime as dt

import psycopg.errors
import pytest
import sqlalchemy.exc

from dbrunbook.errors import MigrationFailed
from dbrunbook.postgres import sqlparse
from dbrunbook.safety import lock_holder, lock_retries, locking, preflight


# --- application_name ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id, runbook, operator, expected", [
    ("r1", "apply", "alice@host", "dbrunbook:r1:apply:alice@host"),
    ("20261123T220501Z-apply-local-3f9a1c", "apply", "alice@build-host.example.org",
     "dbrunbook:20261123T220501Z-apply-local-3f9a1c:apply:alice@build"),
    ("20261123T220501Z-rollback-production-3f9a1c", "rollback", "alice@host",
     "dbrunbook:20261123T220501Z-rollback-production-3f9a1c:rollback"),
    ("x" * 70, "apply", "alice", "dbrunbook:" + "x" * 53),
    ("r1", "apply", "zoë" * 30, "dbrunbook:r1:apply:" + ("zoë" * 30).encode()[:44].decode(errors="ignore")),
])
def test_application_name_fits_in_63_bytes_cutting_the_operator_first(run_id, runbook, operator, expected):
    name = locking.application_name(run_id, runbook, operator)
    assert name == expected
    assert len(name.encode()) <= 63


@pytest.mark.parametrize("name, expected", [
    ("dbrunbook:r1:apply:alice@host", ("r1", "apply", "alice@host")),
    ("dbrunbook:r1:apply:a:b", ("r1", "apply", "a:b")),
    ("dbrunbook:r1", ("r1", "", "")),
    ("psql", None),
    (None, None),
])
def test_parse_application_name(name, expected):
    assert locking.parse_application_name(name) == expected


def test_lock_comment_round_trips_names_that_would_end_a_comment_or_look_like_binds():
    query = lock_holder.lock_query("r1", "apply", "bob:x*/y").compile().string
    assert "*/y" not in query
    assert lock_holder._lock_comment(query) == {"run_id": "r1", "runbook": "apply", "operator": "bob:x*/y"}
    assert lock_holder._lock_comment("SELECT 1") is None


def test_deployer_lock_key_is_fixed_and_positive():
    assert int.from_bytes(
        __import__("hashlib").sha256(b"dbrunbook-deployer").digest()[:8], "big"
    ) & (2**63 - 1) == locking.DEPLOYER_LOCK_KEY
    high, low = lock_holder._key_parts(locking.DEPLOYER_LOCK_KEY)
    assert (high << 32) | low == locking.DEPLOYER_LOCK_KEY


def test_lock_holder_describes_run_and_foreign_sessions():
    since = dt.datetime(2026, 11, 23, 22, 5, 3, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    ours = locking.LockHolder(42, "dbrunbook:r1:apply:al", "r1", "apply", "alice@host", since, "10.0.0.5")
    assert ours.describe() == ("run r1 (runbook apply, operator alice@host), holding it since "
                               "2026-11-23 21:05:03 UTC (pid 42, from 10.0.0.5)")
    other = locking.LockHolder(7, "psql", "", "", "", None)
    assert other.describe() == ("a session that is not a dbrunbook run (application_name 'psql'), "
                                "since (not visible to this role) (pid 7)")


# --- retries ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failed, rand, expected", [
    (1, 0.5, 0.2), (2, 0.5, 0.4), (3, 0.5, 0.8), (4, 0.5, 1.0), (10, 0.5, 1.0),
    (1, 0.0, 0.1), (1, 0.999, 0.2 * 1.499), (4, 0.0, 0.5),
])
def test_backoff_doubles_up_to_the_cap_with_jitter(failed, rand, expected):
    assert locking.RetryPolicy(retries=5).delay(failed, rand) == pytest.approx(expected)


def _lock_timeout() -> MigrationFailed:
    orig = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    wrapped = sqlalchemy.exc.OperationalError("ALTER TABLE users ADD COLUMN x int", {}, orig)
    failed = MigrationFailed("main", "b7e4", ("a1b2",), "canceling statement due to lock timeout")
    failed.__cause__ = wrapped
    return failed


def test_lock_timeout_is_found_anywhere_in_the_cause_chain():
    assert locking.is_lock_timeout(_lock_timeout())
    other = MigrationFailed("main", "b7e4", (), "column exists")
    other.__cause__ = sqlalchemy.exc.ProgrammingError("x", {}, psycopg.errors.DuplicateColumn("exists"))
    assert not locking.is_lock_timeout(other)
    statement_timeout = sqlalchemy.exc.OperationalError("x", {}, psycopg.errors.QueryCanceled("statement timeout"))
    assert not locking.is_lock_timeout(statement_timeout)
    assert not locking.is_lock_timeout(None)


def test_attempts_frame_and_gave_up_message():
    blocker = locking.Blocker(99, "report-job", "idle in transaction", 12.34, "SELECT 1")
    t = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    attempts = [locking.Attempt("main", 1, t, 0.2, "lock timeout", "b7e4", ("a1b2",), "lock timeout",
                                (blocker,), 0.3),
                locking.Attempt("main", 2, t, 0.2, "lock timeout", "b7e4", (), "lock timeout", (blocker,), None)]
    frame = locking.attempts_frame(attempts)
    blocked_by = "pid 99 'report-job' (idle in transaction, transaction open 12.3s): SELECT 1"
    assert list(frame["blocked_by"]) == [blocked_by] * 2
    assert list(frame["applied"]) == ["a1b2", ""]
    failed = lock_retries._gave_up(_lock_timeout(), attempts, [], locking.RetryPolicy(retries=1))
    assert str(failed) == (
        "Migration set 'main' failed at revision b7e4: canceling statement due to lock timeout, 2 attempts in "
        "0.7s (retries = 1); blocked by pid 99 'report-job' (idle in transaction, transaction open 12.3s): "
        "SELECT 1. The database is at a1b2. Run 'dbrunbook run troubleshoot' to diagnose before retrying.")
    assert failed.attempts == attempts


# --- preflight: reading SQL ---------------------------------------------------------------------------------
def test_split_statements_keeps_quotes_and_dollar_bodies_and_drops_comments():
    sql = ("-- Running upgrade a -> b\nBEGIN;\nUPDATE t SET v = 'a;b' WHERE \"we;ird\" = 1;\n"
           "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n/* x; */COMMIT;\n")
    assert preflight.split_statements(sql) == [
        "BEGIN", "UPDATE t SET v = 'a;b' WHERE \"we;ird\" = 1",
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", "COMMIT"]


@pytest.mark.parametrize("statement, expected", [
    ("ALTER TABLE users ADD COLUMN full_name VARCHAR(255)", [("users", "ACCESS EXCLUSIVE", "ALTER TABLE")]),
    ("ALTER TABLE crm.customers ADD CONSTRAINT fk FOREIGN KEY(station_id) REFERENCES stations (id)",
     [("crm.customers", "SHARE ROW EXCLUSIVE", "ALTER TABLE"), ("stations", "SHARE ROW EXCLUSIVE", "ALTER TABLE")]),
    ("ALTER TABLE ONLY \"My Table\" VALIDATE CONSTRAINT c", [('"My Table"', "SHARE UPDATE EXCLUSIVE",
                                                             "ALTER TABLE")]),
    ("ALTER TABLE IF EXISTS t ALTER COLUMN c SET STATISTICS 100", [("t", "SHARE UPDATE EXCLUSIVE", "ALTER TABLE")]),
    ("CREATE INDEX ix_a ON crm.contacts (customer_id)", [("crm.contacts", "SHARE", "CREATE INDEX")]),
    ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix ON ONLY t (a)",
     [("t", "SHARE UPDATE EXCLUSIVE", "CREATE INDEX CONCURRENTLY")]),
    ("DROP INDEX crm.ix_contacts_kind", [("crm.ix_contacts_kind", "ACCESS EXCLUSIVE", "DROP INDEX")]),
    ("DROP INDEX CONCURRENTLY IF EXISTS ix", [("ix", "SHARE UPDATE EXCLUSIVE", "DROP INDEX CONCURRENTLY")]),
    ("DROP TABLE a, s.b CASCADE", [("a", "ACCESS EXCLUSIVE", "DROP TABLE"), ("s.b", "ACCESS EXCLUSIVE",
                                                                              "DROP TABLE")]),
    ("TRUNCATE TABLE a RESTART IDENTITY", [("a", "ACCESS EXCLUSIVE", "TRUNCATE")]),
    ("UPDATE users SET full_name = first_name", [("users", "ROW EXCLUSIVE", "UPDATE")]),
    ("INSERT INTO alembic_version (version_num) VALUES ('x')", [("alembic_version", "ROW EXCLUSIVE",
                                                                 "INSERT INTO")]),
    ("DELETE FROM ONLY t WHERE x", [("t", "ROW EXCLUSIVE", "DELETE FROM")]),
    ("CREATE TABLE p (id int, user_id int REFERENCES users (id))",
     [("users", "SHARE ROW EXCLUSIVE", "CREATE TABLE (foreign key)")]),
    ("CREATE TABLE p (id int)", []),
    ("LOCK TABLE t IN SHARE MODE", [("t", "SHARE", "LOCK")]),
    ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
     [("t", "SHARE ROW EXCLUSIVE", "CREATE TRIGGER")]),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY read.m", [("read.m", "EXCLUSIVE", "REFRESH MATERIALIZED VIEW")]),
    ("CREATE SCHEMA crm", []),
    ("SELECT 1", []),
])
def test_statement_locks(statement, expected):
    assert preflight.statement_locks(statement) == expected


@pytest.mark.parametrize("statement", [
    "UPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = 'a1';",
    "UPDATE app_versions SET version_num='' WHERE app_versions.version_num = 'x y'",
    "UPDATE user SET version_num='b' WHERE user.version_num = 'a'",  # a reserved word: the parser refuses it
    "UPDATE alembic_version SET version_num='b' WHERE other.version_num = 'a'",  # another shape: parsed
    'UPDATE "Versions" SET version_num=\'b\' WHERE "Versions".version_num = \'a\'',
])
def test_alembic_version_row_moves_read_without_the_parser_as_the_parser_reads_them(statement):
    d = sqlparse.describe(statement)
    expected = ([(t, lock, d.kind) for t, lock in d.tables] if d.parsed else
                [(t, lock, f"{kind} (could not parse)") for t, lock, kind in preflight._fallback_locks(statement)])
    assert preflight.statement_locks(statement) == expected


@pytest.mark.parametrize("held, wanted, expected", [
    ("ACCESS SHARE", "ACCESS EXCLUSIVE", True), ("AccessShareLock", "SHARE", False),
    ("RowExclusiveLock", "SHARE", True), ("ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", False),
    ("SHARE UPDATE EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", True), ("SHARE", "SHARE", False),
    ("ROW EXCLUSIVE", "SHARE ROW EXCLUSIVE", True), ("ACCESS SHARE", "SHARE ROW EXCLUSIVE", False),
])
def test_conflicts_follow_the_postgresql_table(held, wanted, expected):
    assert preflight.conflicts(held, wanted) is expected
    assert preflight.conflicts(wanted, held) is expected  # the table is symmetric


def test_an_attempt_line_lists_a_few_revisions_and_counts_the_rest():
    assert lock_retries._listed(("a", "b")) == "a, b"
    many = tuple(f"r{i:04d}" for i in range(1000))
    line = lock_retries._listed(many)
    assert line == "1,000 revisions: r0000, r0001, r0002, … 995 more …, r0998, r0999"
