"""Safety guards around a change: lint before apply, reviewed preview = applied change, rollback and stamp.

Each check returns a value object that renders as a table; each ``require_*`` guard takes it, saves its
evidence as an artifact of the run (so the record's signature covers it) and raises a ``GuardStop`` subclass
when the run must not go on. The rules themselves live in ``lint_rules``.

The guards live in ``lint_guard``, ``preview_guard``, ``loss_guard`` and ``stamp_guard``; this module is
their one face, and the package re-exports it (``safety.lint(s)``, ``safety.require_clean(...)``).
"""

from __future__ import annotations

from dbrunbook.safety.findings import Finding
from dbrunbook.safety.lint_guard import LintReport, lint, lint_revision_files, lint_sql, require_clean
from dbrunbook.safety.loss_guard import DataLossReport, LossItem, data_loss, require_no_data_loss
from dbrunbook.safety.preview_guard import find_run, require_approved_preview
from dbrunbook.safety.stamp_guard import StampCheck, require_truthful_stamp, schemas_built_by_chain, stamp_check

__all__ = [
    "DataLossReport", "Finding", "LintReport", "LossItem", "StampCheck", "data_loss", "find_run", "lint",
    "lint_revision_files", "lint_sql", "require_approved_preview", "require_clean", "require_no_data_loss",
    "require_truthful_stamp", "schemas_built_by_chain", "stamp_check",
]
