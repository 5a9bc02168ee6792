"""Authoring rules without a database: migration messages, the Python lint, and the SQL reading troubleshoot uses."""

from __future__ import annotations

import pytest

from dbrunbook.errors import ParameterError
from dbrunbook.procedures import authoring, diagnose
from dbrunbook.safety import lint_rules

# --- messages: one row per rule ------------------------------------------------------------------------
GOOD = ["Add user preferences table", "Add indexes to bookings table", "Change booking status enum values",
        "Add custom indexes", "Merge migrations", "Fix column type in user preferences",
        "Backfill users full_name", "Update indexes and constraints"]


@pytest.mark.parametrize("message", GOOD)
def test_the_guides_good_messages_pass(message):
    assert authoring.check_message(f"  {message} ") == message


@pytest.mark.parametrize("message, rule, reason", [
    ("", "empty", "it is empty"),
    ("Changes", "too-short", "it is shorter than two words or 10 characters"),
    ("Add x", "too-short", "it is shorter than two words or 10 characters"),
    ("Update database", "no-object", "it has generic words only (update, database): say what changes on which "
                                     "table or column"),
    ("Fix stuff", "no-object", "it has generic words only (fix, stuff)"),
    ("Add " + "very " * 20 + "long table", "too-long", "it is longer than 72 characters"),
    ("Add preferences, fix indexes, update enums, add constraints", "too-many-changes",
     "it names 4 changes (add, fix, update, add): one migration per logical change"),
])
def test_vague_messages_are_refused_with_the_reason(message, rule, reason):
    with pytest.raises(ParameterError) as err:
        authoring.check_message(message)
    assert err.value.rule == rule
    assert str(err.value).startswith(f"Migration message {message!r} is too vague: {reason}")
    assert str(err.value).endswith('e.g. "Add user preferences table" or "Add indexes to bookings table".')


# --- Python lint: one row per rule ---------------------------------------------------------------------
def revision(upgrade: str, downgrade: str = "op.drop_table('t')", down_revision: str = "'abc'") -> str:
    def body(code: str) -> str:
        return "\n".join("    " + line for line in code.splitlines())

    return (f"from alembic import op\nimport sqlalchemy as sa\nrevision = 'r1'\ndown_revision = {down_revision}\n\n\n"
            f"def upgrade():\n{body(upgrade)}\n\n\ndef downgrade():\n{body(downgrade)}\n")


@pytest.mark.parametrize("rule, level, source", [
    ("empty-downgrade", "error", revision("op.create_table('t', sa.Column('id', sa.Integer))", "pass")),
    ("empty-downgrade", "error", revision("op.create_table('t')", '"""Downgrade schema."""\n...')),
    ("irreversible-downgrade", "error", revision("op.create_table('t')", "raise NotImplementedError('one way')")),
    # A warning, not an error: such a revision's SQL is captured on a scratch database instead.
    ("online-only-call", "warning", revision("conn = op.get_bind()\nconn.execute(sa.text('SELECT 1'))")),
    # The rollback preview renders downgrade() offline too.
    ("online-only-call", "warning", revision("op.create_table('t')", "op.get_bind()\nop.drop_table('t')")),
    ("autocommit-block", "warning", revision("with op.get_context().autocommit_block():\n    op.create_index('ix', "
                                             "'t', ['a'], postgresql_concurrently=True)")),
    ("rename-as-drop-add", "warning", revision("op.drop_column('users', 'name')\nop.add_column('users', "
                                               "sa.Column('full_name', sa.String(100)))")),
    ("rename-as-drop-add", "warning", revision("op.drop_table('customer')\nop.create_table('client', "
                                               "sa.Column('id', sa.Integer))")),
    ("server-default-change", "warning", revision("op.alter_column('users', 'theme', server_default='dark')")),
    ("check-constraint", "info", revision("op.create_check_constraint('ck_amount', 'payments', 'amount > 0')")),
    ("insert-without-on-conflict", "warning",
     revision("op.execute(\"INSERT INTO settings (key, value) VALUES ('a', 'b')\")")),
    ("insert-without-on-conflict", "warning", revision("op.bulk_insert(settings, [{'key': 'a'}])")),
    ("not-null-without-default", "warning", revision("op.add_column('users', sa.Column('score', sa.Integer(), "
                                                     "nullable=False))")),
])
def test_python_lint_rule(rule, level, source):
    found = authoring.lint_python(source, "r1").findings
    assert [f.rule for f in found] == [rule]
    assert found[0].level == level and found[0].revision == "r1"
    assert found[0].line is not None


def test_review_shares_the_deploy_lints_revision_rules_at_its_own_levels():
    # The same walk as the deploy lint (lint_rules.revision_issues): its why and instead, review's level.
    source = revision("op.create_table('t')", "pass")
    (found,) = authoring.lint_python(source, "r1").findings
    assert (found.rule, found.level, found.line) == ("empty-downgrade", "error", 11)
    assert found.message == ("downgrade() does nothing: 'alembic downgrade' would move the version pointer back "
                             "and leave the schema as it is, so the database then lies about its revision; write "
                             "downgrade() so that it reverts upgrade(), or raise NotImplementedError to say it "
                             "cannot")
    (deploy,) = lint_rules.revision_issues(source)
    assert (deploy.rule, deploy.level, deploy.line) == ("empty-downgrade", "warning", 11)


@pytest.mark.parametrize("source", [
    revision("op.create_table('t', sa.Column('id', sa.Integer))"),
    revision("pass", "pass", down_revision="('a', 'b')"),  # a merge revision is empty on purpose
    revision("op.execute(\"INSERT INTO s (k) VALUES ('a') ON CONFLICT (k) DO NOTHING\")"),
    revision("if not op.get_context().as_sql:\n    op.get_bind()  # is_offline_mode checked"),
    revision("op.add_column('users', sa.Column('score', sa.Integer(), nullable=False, server_default='0'))"),
])
def test_python_lint_clean(source):
    assert authoring.lint_python(source, "r1").findings == ()


# --- SQL reading (troubleshoot's "already exists" and "duplicate key" checks) ---------------------------
SQL = """BEGIN;
-- Running upgrade a -> b; a comment with ; inside
CREATE TABLE crm.leads (id SERIAL NOT NULL, note TEXT DEFAULT 'a;b', CONSTRAINT pk_leads PRIMARY KEY (id));
CREATE UNIQUE INDEX ix_leads_note ON crm.leads (note);
CREATE SCHEMA IF NOT EXISTS crm;
ALTER TABLE users ADD COLUMN full_name VARCHAR(255), ADD CONSTRAINT uq_users_full_name UNIQUE (full_name);
CREATE MATERIALIZED VIEW read.funnel AS SELECT 1;
CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;
INSERT INTO settings (key, "Value") VALUES ('theme', 'a;b'), ('x', '10:30');
INSERT INTO settings (key) VALUES ('y') ON CONFLICT (key) DO NOTHING;
UPDATE alembic_version SET version_num='b' WHERE alembic_version.version_num = 'a';
COMMIT;
"""


def test_split_statements_respects_quotes_dollar_quotes_and_comments():
    statements = diagnose.split_statements(SQL)
    assert len(statements) == 11
    assert statements[6] == "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql"


def test_created_objects():
    found = [(o["kind"], o["name"], o["table"]) for o in diagnose.created_objects(SQL)]
    assert found == [("table", "crm.leads", ""), ("index", "crm.ix_leads_note", "crm.leads"),
                     ("column", "full_name", "users"), ("constraint", "uq_users_full_name", "users"),
                     ("view", "read.funnel", "")]


def test_parse_inserts():
    found = diagnose.parse_inserts(SQL)
    assert [(i["table"], i["columns"], i["values"], i["on_conflict"]) for i in found] == [
        ("settings", ["key", "Value"], "('theme', 'a;b'), ('x', '10:30')", False),
        ("settings", ["key"], "('y')", True),
    ]
