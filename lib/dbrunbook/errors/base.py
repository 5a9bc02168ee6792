"""The three bases of dbrunbook's errors and their exit statuses: any error 1, usage or configuration 2, guard 3.

Every other error derives from one of these, so the CLI maps an error to its exit status from the class
alone, and the launcher recognises a guard by its class tree (``GUARD_ENAMES``).
"""

from __future__ import annotations

from typing import Any


class DbRunbookError(Exception):
    """Base of every error dbrunbook raises on purpose.

    An error's data (the lock's holder, the lint's findings, the check behind a guard) is declared on its class
    and given to ``__init__`` by keyword, as Alembic's errors take theirs: ``DeployerLockHeld(message,
    holder=holder)``. A keyword the class does not declare is a programming error (TypeError).
    """

    exit_status = 1

    def __init__(self, *args: Any, **data: Any) -> None:
        super().__init__(*args)
        declared = {name for cls in type(self).__mro__ for name in vars(cls).get("__annotations__", {})}
        unknown = sorted(set(data) - declared)
        if unknown:
            raise TypeError(f"{type(self).__name__} declares no {', '.join(unknown)}")
        for name, value in data.items():
            setattr(self, name, value)


class ConfigError(DbRunbookError):
    """dbrunbook.toml is missing, malformed or refers to something that does not exist."""

    exit_status = 2


class GuardStop(DbRunbookError):
    """A guard in a runbook refused to go on; the launcher classifies the run as stopped at a guard."""

    exit_status = 3
