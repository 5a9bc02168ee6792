"""The three bases of dbrunbook's errors and their exit statuses: any error 1, usage or configuration 2, guard 3.

Every other error derives from one of these, so the CLI maps an error to its exit status from the class
alone, and the launcher recognises a guard by its class tree (``GUARD_ENAMES``).
"""

from __future__ import annotations


class DbRunbookError(Exception):
    """Base of every error dbrunbook raises on purpose."""

    exit_status = 1


class ConfigError(DbRunbookError):
    """dbrunbook.toml is missing, malformed or refers to something that does not exist."""

    exit_status = 2


class GuardStop(DbRunbookError):
    """A guard in a runbook refused to go on; the launcher classifies the run as stopped at a guard."""

    exit_status = 3
