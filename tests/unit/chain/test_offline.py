"""Offline SQL is evidence, never a prerequisite: per-revision rendering of online-only revisions, no database.

Scenario: tests/fixtures/alembic_projects/online_only (a1, e5 normal; b2 reads rows through op.get_bind(),
c3 uses the inspector, d4 raises in offline mode).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from pathlib import Path

import pytest

from dbrunbook.chain import capture, migrations
from dbrunbook.config import MigrationSet
from dbrunbook.execution.session import Preview

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects" / "online_only"
A1, B2, C3, D4, E5 = "a1000000own1", "b2000000cnt2", "c3000000nik3", "d4000000idx4", "e5000000pet5"
MSET = MigrationSet(name="online_only", alembic_ini=FIXTURE / "alembic.ini")


def test_online_only_revisions_are_marked_and_the_others_still_render():
    steps = migrations.offline_sql(MSET, None, "heads")
    assert [(s.revision, s.online_only, s.source) for s in steps] == [
        (A1, False, "offline"), (B2, True, "none"), (C3, True, "none"), (D4, True, "none"), (E5, False, "offline")]
    by = {s.revision: s for s in steps}
    assert by[B2].reason == (
        'it calls rows = op.get_bind().execute(sa.text("SELECT id FROM owner")).fetchall() at '
        "versions/b2000000cnt2_count_owners.py:18 (AttributeError: 'NoneType' object has no attribute 'fetchall')")
    assert by[C3].reason == (
        'it calls [c["name"] for c in sa.inspect(op.get_bind()).get_columns("owner")] at '
        "versions/c3000000nik3_add_owner_nickname.py:18 (NoInspectionAvailable: No inspection system is "
        "available for object of type <class 'sqlalchemy.engine.mock.MockConnection'>)")
    assert by[D4].reason == ("it raises at versions/d4000000idx4_index_owner_name.py:18 (NotImplementedError: "
                             "index owner name requires an online migration)")
    assert by[D4].problem == (f"revision {D4} (index owner name) cannot be rendered offline: {by[D4].reason}; "
                              f"its SQL was not captured")
    assert (by[B2].sql, by[C3].sql, by[D4].sql) == ("", "", "")
    # e5 is rendered from d4, as if d4 had run: its version update names d4, and its SQL is only its own.
    assert by[E5].sql.startswith("BEGIN;\n\n-- Running upgrade d4000000idx4 -> e5000000pet5\n\nCREATE TABLE pet")
    assert f"UPDATE alembic_version SET version_num='{E5}' WHERE alembic_version.version_num = '{D4}';" in by[E5].sql
    assert by[A1].sql.count("BEGIN;") == 1 and "owner_stats" in by[A1].sql and "Running upgrade" in by[A1].sql


def test_a_relative_end_is_planned_once_across_the_restarts():
    steps = migrations.offline_sql(MSET, A1, "+3")
    assert [(s.revision, s.source) for s in steps] == [(B2, "none"), (C3, "none"), (D4, "none")]


def test_downgrade_renders_per_revision_too():
    steps = migrations.offline_sql(MSET, E5, "base", direction="downgrade")
    assert [(s.revision, s.source) for s in steps] == [
        (E5, "offline"), (D4, "offline"), (C3, "none"), (B2, "none"), (A1, "offline")]
    by = {s.revision: s for s in steps}
    assert "DROP INDEX ix_owner_name;" in by[D4].sql
    assert by[B2].reason.endswith("at versions/b2000000cnt2_count_owners.py:24 (AttributeError: 'NoneType' object "
                                  "has no attribute 'rowcount')")
    assert by[A1].sql.rstrip().endswith("COMMIT;") and "DELETE FROM alembic_version" in by[A1].sql


def test_preview_digest_and_file_tell_captured_from_uncaptured():
    steps = migrations.offline_sql(MSET, None, "heads")
    captured = [dataclasses.replace(s, sql="ALTER TABLE owner ADD COLUMN nickname VARCHAR(50);\n", source="captured",
                                    sha256="") if s.revision == C3 else s for s in steps]
    plain, with_capture = Preview({"main": steps}), Preview({"main": captured})
    assert plain.sha256 != with_capture.sha256
    text = with_capture.file_text("main")
    assert f"-- main {C3}: add owner nickname\n-- revision {C3} (add owner nickname) cannot be rendered offline: " \
           in text and "its SQL was captured on a scratch database\nALTER TABLE owner ADD COLUMN nickname" in text
    frame = with_capture.as_frame().set_index("revision")
    assert frame["sql"].to_dict() == {A1: "offline", B2: "online-only, not captured", C3: "captured",
                                      D4: "online-only, not captured", E5: "offline"}
    assert frame.loc[A1, "online_only"] is None and frame.loc[D4, "online_only"].startswith("it raises at versions/")


@pytest.mark.parametrize(("value", "sql"), [
    (None, "NULL"), (True, "true"), (42, "42"), (decimal.Decimal("1.50"), "1.50"), (2.5, "2.5"),
    (float("nan"), "'nan'::float8"), ("it's", "'it''s'"), ("a\\b", "'a\\b'"), (b"\x00\xff", "'\\x00ff'::bytea"),
    ([1, "x"], "ARRAY[1, 'x']"), ({"k": 1}, "'{\"k\": 1}'::jsonb"), (dt.date(2024, 6, 1), "'2024-06-01'"),
    (uuid.UUID(int=1), "'00000000-0000-0000-0000-000000000001'"),
])
def test_literal(value, sql):
    assert capture.literal(value) == sql


@pytest.mark.parametrize(("statement", "params", "style", "rendered"), [
    ("UPDATE t SET x = %(v)s WHERE y LIKE 'a%%'", {"v": "o'k"}, "pyformat",
     "UPDATE t SET x = 'o''k' WHERE y LIKE 'a%'"),
    ("INSERT INTO t VALUES (%s, %s)", (1, None), "format", "INSERT INTO t VALUES (1, NULL)"),
    ("SELECT $2, $1, '$$'", (1, "b"), "numeric_dollar", "SELECT 'b', 1, '$$'"),
    ("SELECT ?::int", (7,), "qmark", "SELECT 7::int"),
    ("SELECT :a, x::text", {"a": 3}, "named", "SELECT 3, x::text"),
])
def test_render_statement(statement, params, style, rendered):
    assert capture.render_statement(statement, params, style) == rendered


def test_review_lint_of_an_online_only_revision_gets_its_reason_as_sql_comment():
    from dbrunbook.procedures import revision_lint

    info = next(i for i in migrations.history(MSET) if i.revision == D4)
    step = revision_lint._offline_step(MSET, info)
    assert step.sql == (f"-- revision {D4} (index owner name) cannot be rendered offline: it raises at "
                        f"versions/d4000000idx4_index_owner_name.py:18 (NotImplementedError: index owner name "
                        f"requires an online migration); its SQL was not captured\n")


def test_an_env_py_that_refuses_offline_mode_makes_every_revision_online_only():
    mset = MigrationSet(name="offline_refused", alembic_ini=FIXTURE.parent / "offline_refused" / "alembic.ini")
    steps = migrations.offline_sql(mset, None, "heads")
    assert [(s.revision, s.online_only, s.source, s.reason) for s in steps] == [
        (A1, True, "none", "env.py fails in offline mode (RuntimeError: this project requires an online migration: "
                           "offline mode is not supported)")]
