"""The rules behind ``safety.lint``: squawk's findings classified, dbrunbook's own SQL and revision-file checks.

Raw squawk output on a real Alembic chain is noise (1,399 findings on 123 revisions, measured in
shared/notes/lint-on-a-real-chain.md), so every finding gets a category and a level an operator can act on:

* **deploy risk** is weighed by the live table: a blocking index, rewrite or validating constraint on a table
  created in the same run, or on a small one, is harmless (info); on a table over the thresholds it is an
  outage (error). The sizes come in a ``Catalog`` so that the weighing is testable without a database.
* **destructive** (drop table/column, type narrowing) always stays visible: warning, error on a protected
  target.
* **timeouts** (``require-*-timeout``) are satisfied by construction, since dbrunbook sets lock_timeout and
  statement_timeout on every connection: dropped and counted.
* **style** (text vs varchar, bigint, identity): info.

The rules work on text (the offline SQL of each revision, the revision files) and need no database; the
facts they weigh by come in a ``Catalog`` (read live by ``catalog.read_catalog``). They live in
``findings``, ``catalog``, ``sql_reading``, ``squawk_rules``, ``sql_rules`` and ``revision_rules``; this
module is their one face.
"""

from __future__ import annotations

from dbrunbook.postgres.sqltext import split_statements
from dbrunbook.safety.catalog import BYTES_THRESHOLD, ROWS_THRESHOLD, Catalog, TableSize
from dbrunbook.safety.findings import CATEGORIES, LEVELS, Finding
from dbrunbook.safety.revision_rules import (
    REVISION_RULES,
    RevisionIssue,
    heads_finding,
    revision_file_findings,
    revision_issues,
)
from dbrunbook.safety.sql_reading import (
    IDENT,
    alter_actions,
    display_statement,
    normalize_name,
    squawk_offset,
    statement_at,
    statement_kind,
    table_of,
)
from dbrunbook.safety.sql_rules import ABSORBED, VOLATILE_DEFAULT, SqlIssue, check_sql, type_change, weigh_issue
from dbrunbook.safety.squawk_rules import (
    FAILS_ALWAYS,
    INSTEAD,
    SQUAWK_RULES,
    TIMEOUT_RULES,
    classify_squawk,
    squawk_binary,
    squawk_output,
    squawk_said,
)

__all__ = [
    "ABSORBED", "BYTES_THRESHOLD", "CATEGORIES", "FAILS_ALWAYS", "IDENT", "INSTEAD", "LEVELS", "REVISION_RULES",
    "ROWS_THRESHOLD", "SQUAWK_RULES", "TIMEOUT_RULES", "VOLATILE_DEFAULT", "Catalog", "Finding", "RevisionIssue",
    "SqlIssue", "TableSize", "alter_actions", "check_sql", "classify_squawk", "display_statement", "heads_finding",
    "normalize_name", "revision_file_findings", "revision_issues", "split_statements", "squawk_binary",
    "squawk_offset", "squawk_output", "squawk_said", "statement_at", "statement_kind", "table_of", "type_change",
    "weigh_issue",
]
