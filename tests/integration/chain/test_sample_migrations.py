"""The sample Alembic projects under migrations/ and the demo data generator, on a real PostgreSQL.

Alembic is driven through its own API (alembic.command with a Config), not through dbrunbook, so these
tests say whether the sample projects themselves are sound: every downgrade reverts its upgrade, the
history has the guide's shape (one branch point, one merge), the models match the head schema, the whole
chain renders as valid offline SQL, and the demo rows make the full_name backfill meaningful.
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SETS = {
    "main": (ROOT / "migrations/main/alembic.ini", "alembic_version", "migrations.main.models"),
    "ai": (ROOT / "migrations/ai/alembic.ini", "alembic_version_ai", "migrations.ai.models"),
}
MAIN_REVISIONS = {"001", "001s", "002", "003n", "003s", "004", "9fd62e8", "ea90695", "a1b2c3d4e5f6",
                  "b7e4f0c2d913"}
AI_REVISIONS = {"56d701cf2472", "cdf6709a3b1e"}
HEADS = {"main": "b7e4f0c2d913", "ai": "cdf6709a3b1e"}
FULL_NAME_IS_FIRST_LAST = "SELECT count(*) FROM users WHERE full_name = first_name || ' ' || last_name"


@pytest.fixture
def project(monkeypatch):
    """Import a module of the project root (``migrations.*``), as dbrunbook.toml's ``models`` does."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module


def _config(set_name: str, **kwargs) -> Config:
    cfg = Config(str(SETS[set_name][0]), **kwargs)
    cfg.attributes["configure_logger"] = False
    return cfg


def _run(set_name: str, url: str, fn, *args, **kwargs) -> None:
    """Run an alembic.command function on our own connection (config.attributes['connection'])."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            cfg = _config(set_name)
            cfg.attributes["connection"] = conn
            fn(cfg, *args, **kwargs)
            conn.commit()
    finally:
        engine.dispose()


def _current(url: str, version_table: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": version_table})
            return set(context.get_current_heads())
    finally:
        engine.dispose()


def _scalar(url: str, sql: str):
    with psycopg.connect(_libpq(url)) as conn:
        return conn.execute(sql).fetchone()[0]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _schema_fingerprint(url: str) -> dict[str, list[tuple]]:
    """Everything a revision may create, as pg_catalog describes it (version tables left out)."""
    user_schemas = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    queries = {
        "schemas": f"SELECT nspname FROM pg_namespace n WHERE {user_schemas} ORDER BY 1",
        "relations": f"""
            SELECT n.nspname, c.relname, c.relkind
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {user_schemas} AND c.relname NOT LIKE 'alembic_version%' ORDER BY 1, 2""",
        "columns": """
            SELECT table_schema, table_name, column_name, data_type, character_maximum_length,
                   numeric_precision, numeric_scale, is_nullable, column_default
            FROM information_schema.columns
            WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
              AND table_name NOT LIKE 'alembic_version%'
            ORDER BY 1, 2, ordinal_position""",
        "constraints": f"""
            SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
            FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE {user_schemas} AND c.conrelid::regclass::text NOT LIKE '%alembic_version%'
            ORDER BY 1, 2, 3""",
        "indexes": """
            SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
              AND tablename NOT LIKE 'alembic_version%'
            ORDER BY 1, 2, 3""",
        "matviews": "SELECT schemaname, matviewname, definition FROM pg_matviews ORDER BY 1, 2",
    }
    with psycopg.connect(_libpq(url)) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}


# --- round trip ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("set_name", ["main", "ai"])
def test_upgrade_downgrade_base_upgrade_restores_the_same_schema(database_url, set_name):
    _run(set_name, database_url, command.upgrade, "heads")
    at_head = _schema_fingerprint(database_url)
    assert _current(database_url, SETS[set_name][1]) == {HEADS[set_name]}

    _run(set_name, database_url, command.downgrade, "base")
    at_base = _schema_fingerprint(database_url)
    assert _current(database_url, SETS[set_name][1]) == set()
    assert at_base == {"schemas": [("public",)], "relations": [], "columns": [], "constraints": [],
                       "indexes": [], "matviews": []}

    _run(set_name, database_url, command.upgrade, "heads")
    assert _schema_fingerprint(database_url) == at_head
    assert len(at_head["relations"]) > 10


def test_main_downgrades_through_the_merge_into_both_branches(database_url):
    """Below the merge the database carries two heads again; each branch then steps down on its own."""
    _run("main", database_url, command.upgrade, "heads")
    _run("main", database_url, command.downgrade, "a1b2c3d4e5f6")
    assert _scalar(database_url, "SELECT count(*) FROM information_schema.columns "
                                 "WHERE table_name = 'users' AND column_name = 'full_name'") == 0
    _run("main", database_url, command.downgrade, "9fd62e8")
    checks = "SELECT count(*) FROM pg_constraint WHERE conname = 'ck_payments_amount_positive'"
    assert _scalar(database_url, checks) == 0
    # '-1' from a merge is ambiguous for Alembic ("Ambiguous walk"): name the target instead.
    _run("main", database_url, command.downgrade, "004")
    assert _current(database_url, "alembic_version") == {"004", "003s"}
    _run("main", database_url, command.downgrade, "003s@-1")
    assert _current(database_url, "alembic_version") == {"004", "001s"}
    assert _scalar(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'social'") == 0
    _run("main", database_url, command.upgrade, "heads")
    assert _current(database_url, "alembic_version") == {"b7e4f0c2d913"}


# --- history shape ------------------------------------------------------------------------------------------
def test_main_history_has_one_branch_point_and_one_merge():
    script = ScriptDirectory.from_config(_config("main"))
    revisions = list(script.walk_revisions())
    assert {r.revision for r in revisions} == MAIN_REVISIONS
    assert [r.revision for r in revisions if r.is_branch_point] == ["001"]
    assert sorted(script.get_revision("001").nextrev) == ["001s", "002"]
    merges = [r for r in revisions if r.is_merge_point]
    assert [(m.revision, m.down_revision) for m in merges] == [("9fd62e8", ("004", "003s"))]
    assert script.get_heads() == ["b7e4f0c2d913"]
    assert script.get_bases() == ["001"]
    assert script.get_revision("b7e4f0c2d913").doc == "Backfill users full_name"
    assert script.get_revision("a1b2c3d4e5f6").doc == "Add user preferences table"


def test_ai_history_is_linear_and_independent():
    script = ScriptDirectory.from_config(_config("ai"))
    revisions = list(script.walk_revisions())
    assert {r.revision for r in revisions} == AI_REVISIONS
    assert not any(r.is_branch_point or r.is_merge_point for r in revisions)
    assert script.get_revision("cdf6709a3b1e").down_revision == "56d701cf2472"
    assert script.get_bases() == ["56d701cf2472"]


# --- models match head --------------------------------------------------------------------------------------
def test_models_match_head_with_both_sets_in_one_database(database_url, project):
    for set_name in SETS:
        _run(set_name, database_url, command.upgrade, "heads")
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        for set_name, (_, version_table, module_name) in SETS.items():
            models = project(module_name)
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={
                    "include_schemas": True, "include_name": models.include_name,
                    "version_table": version_table, "target_metadata": models.Base.metadata,
                })
                assert compare_metadata(context, models.Base.metadata) == [], set_name
    finally:
        engine.dispose()
    # `alembic check` through each env.py, connecting by the ini's sqlalchemy.url this time.
    for set_name in SETS:
        cfg = _config(set_name)
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
        command.check(cfg)


def test_compare_reports_an_index_the_database_lacks(database_url, project):
    """The comparison is live: drop an index the models declare and it is reported missing."""
    models = project("migrations.main.models")
    _run("main", database_url, command.upgrade, "heads")
    with psycopg.connect(_libpq(database_url)) as conn:
        conn.execute("DROP INDEX crm.ix_leads_email")
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_schemas": True, "include_name": models.include_name})
            diffs = compare_metadata(context, models.Base.metadata)
    finally:
        engine.dispose()
    assert [(d[0], d[1].name, d[1].table.fullname) for d in diffs] == [
        ("add_index", "ix_leads_email", "crm.leads")
    ]


# --- offline SQL ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("set_name", ["main", "ai"])
def test_offline_sql_of_the_whole_chain_runs_on_an_empty_database(database_url, set_name, project):
    buffer = io.StringIO()
    command.upgrade(_config(set_name, output_buffer=buffer), "heads", sql=True)
    sql = buffer.getvalue()
    version_table = SETS[set_name][1]
    for revision in (MAIN_REVISIONS if set_name == "main" else AI_REVISIONS):
        assert f"'{revision}'" in sql, revision
    if set_name == "main":
        assert "CREATE TABLE crm.customers" in sql
        assert "CREATE MATERIALIZED VIEW read.lead_funnel_daily" in sql
        assert "UPDATE users SET full_name = first_name || ' ' || last_name" in sql
        assert "ALTER TABLE users ALTER COLUMN full_name SET NOT NULL" in sql
    # The rendered script is what an operator would hand to psql: run it as is.
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        conn.execute(sql)
    assert _current(database_url, version_table) == {HEADS[set_name]}
    models = project(SETS[set_name][2])
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_schemas": True, "include_name": models.include_name, "version_table": version_table})
            assert compare_metadata(context, models.Base.metadata) == []
    finally:
        engine.dispose()


def test_offline_downgrade_sql_renders_back_to_base():
    buffer = io.StringIO()
    command.downgrade(_config("main", output_buffer=buffer), "b7e4f0c2d913:base", sql=True)
    sql = buffer.getvalue()
    assert "ALTER TABLE users DROP COLUMN full_name" in sql
    assert "DROP MATERIALIZED VIEW read.lead_funnel_daily" in sql
    assert sql.rstrip().endswith("COMMIT;")
    assert "DELETE FROM alembic_version WHERE alembic_version.version_num = '001'" in sql


# --- demo data --------------------------------------------------------------------------------------------
def test_fill_before_backfill_then_upgrade_gives_every_user_a_full_name(database_url, project):
    demo_data = project("migrations.demo_data")
    _run("main", database_url, command.upgrade, "a1b2c3d4e5f6")
    _run("ai", database_url, command.upgrade, "heads")

    counts = demo_data.fill(database_url, seed=7)

    assert counts["crm.customers"] == 5000
    assert counts["public.users"] == 2000
    assert counts["payments.payments"] == 20000
    assert counts["ai.requests"] == 20000
    assert counts["public.user_preferences"] == 1500
    assert counts["newsletter.subscribers"] == 6000
    assert counts["read.customer_summary"] == counts["crm.customers"]
    assert sum(counts.values()) > 100_000
    for table, rows in counts.items():
        assert _scalar(database_url, f"SELECT count(*) FROM {table}") == rows, table

    _run("main", database_url, command.upgrade, "heads")

    assert _scalar(database_url, "SELECT count(*) FROM users WHERE full_name IS NULL") == 0
    assert _scalar(database_url, FULL_NAME_IS_FIRST_LAST) == 2000
    assert _scalar(database_url, "SELECT is_nullable FROM information_schema.columns "
                                 "WHERE table_name = 'users' AND column_name = 'full_name'") == "NO"
    # Rows were written with explicit ids; the application's next INSERT still gets a fresh one.
    new_id = _scalar(database_url, "INSERT INTO users (email, first_name, last_name, full_name) "
                                   "VALUES ('new@example.com', 'New', 'User', 'New User') RETURNING id")
    assert new_id == counts["public.users"] + 1

    # At head the generator writes full_name itself, and a second fill appends: reference data is reused.
    again = demo_data.fill(database_url, seed=8)
    assert again["public.users"] == 2000 and again["crm.customers"] == 5000
    assert "public.stations" not in again and "ai.models" not in again
    assert _scalar(database_url, FULL_NAME_IS_FIRST_LAST) == 4001
    assert _scalar(database_url, "SELECT count(*) FROM stations") == 12
    assert _scalar(database_url, "SELECT count(*) FROM crm.customers") == 10000


def test_fill_is_deterministic_for_a_seed(database_url, project):
    """Same seed, same revision, empty tables: the same rows, whether given a URL or an engine."""
    demo_data = project("migrations.demo_data")
    digest = ("SELECT (SELECT md5(string_agg(concat_ws('|', id, email, first_name, last_name, phone, status, "
              "created_at), ',' ORDER BY id)) FROM crm.customers) "
              "|| (SELECT md5(string_agg(concat_ws('|', id, email, source, status, customer_id, created_at), "
              "',' ORDER BY id)) FROM crm.leads)")
    _run("main", database_url, command.upgrade, "002")
    first = demo_data.fill(database_url, seed=42)
    first_digest = _scalar(database_url, digest)
    _run("main", database_url, command.downgrade, "base")
    _run("main", database_url, command.upgrade, "002")
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        assert demo_data.fill(engine, seed=42) == first
    finally:
        engine.dispose()
    assert _scalar(database_url, digest) == first_digest
    assert first == {"crm.customers": 5000, "crm.contacts": 15000, "crm.leads": 8000,
                     "read.customer_summary": 5000}
    # The materialized view was refreshed from the new leads.
    assert _scalar(database_url, "SELECT sum(leads) FROM read.lead_funnel_daily") == 8000


def test_fill_at_an_intermediate_revision_fills_only_what_exists(database_url, tmp_path):
    """At 003s (the Stripe/social branch only) there are no users, read projections or newsletter yet."""
    _run("main", database_url, command.upgrade, "003s")
    # As a script, from another folder: `python migrations/demo_data.py URL`.
    result = subprocess.run(
        [sys.executable, str(ROOT / "migrations/demo_data.py"), _libpq(database_url), "--seed", "3"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    printed = dict(line.rsplit(None, 1) for line in result.stdout.splitlines())
    assert set(printed) == {"crm.customers", "crm.contacts", "crm.leads", "payments.stripe_customers",
                            "payments.payments", "payments.refunds", "social.social_accounts",
                            "social.social_posts", "total"}
    assert printed["crm.customers"] == "5,000"
    assert _scalar(database_url, "SELECT count(*) FROM payments.payments") == 20000
    assert _scalar(database_url, "SELECT count(DISTINCT customer_id) FROM payments.stripe_customers") == 4000


def test_fill_refuses_a_scale_below_one(project):
    demo_data = project("migrations.demo_data")
    with pytest.raises(ValueError) as err:
        demo_data.fill("postgresql://localhost/never-used", scale=0)
    assert str(err.value) == "scale must be 1 or more, got 0; it multiplies the number of rows."
