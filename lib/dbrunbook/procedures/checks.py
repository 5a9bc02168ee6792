"""A check that cannot run says so: "could not run: <reason>", and the checks after it still run.

Troubleshoot, review, ``alembic check`` and the deploy checklist run many independent checks over projects
dbrunbook did not write. One of them failing on a project (an env.py that needs something we do not provide,
a models module that cannot be imported, a revision that cannot render offline) must not hide what the
others find: the runbook ends with the diagnosis, and the row of the check that failed names its reason.
Guards (``GuardStop``) are not checks: they still stop the run.
"""

from __future__ import annotations

import functools
import html
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd

from dbrunbook.errors import DbRunbookError, GuardStop, MigrationFailed
from dbrunbook.postgres.db import mask_secrets

log = logging.getLogger(__name__)

__all__ = ["CouldNotRun", "attempt", "reason_of"]

T = TypeVar("T")


def reason_of(err: BaseException) -> str:
    """One line saying what went wrong: the exception's class and the first line of its message.

    dbrunbook's own errors already say what happened; third-party ones get their class name in front, so
    ``KeyError: 'MYAPP_SETTINGS'`` reads as what it is.
    """
    if isinstance(err, MigrationFailed) and err.revision is None:
        # Raised by env.py around the check, not by a revision: its own "failed at revision ?, run
        # troubleshoot" would mislead; the underlying reason is the point.
        text = err.reason
    else:
        text = (str(err).strip().splitlines() or [""])[0]
        text = text if isinstance(err, DbRunbookError) else f"{type(err).__name__}: {text}".rstrip(": ")
    # A driver's message may quote a URL or a conninfo string; never show its password.
    return mask_secrets(text)


def _where(err: BaseException) -> str:
    """The innermost frame of the traceback, ``file:line in function``: where to start looking."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


@dataclass(frozen=True)
class CouldNotRun:
    """The result of a check that raised: which check, why, and where the error came from."""

    check: str
    reason: str
    where: str = ""

    @classmethod
    def of(cls, check: str, err: BaseException) -> CouldNotRun:
        return cls(check, reason_of(err), _where(err))

    def __str__(self) -> str:
        return f"could not run: {self.reason}"

    @property
    def ok(self) -> bool:
        return False

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"check": self.check, "result": str(self), "where": self.where or None}],
                            columns=["check", "result", "where"])

    def _repr_html_(self) -> str:
        where = f"<br><small>raised at <code>{html.escape(self.where)}</code></small>" if self.where else ""
        return (f"<p>⚠ <b>{html.escape(self.check)}</b>: could not run: {html.escape(self.reason)}. "
                f"The other checks still ran.{where}</p>")


def attempt(check: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | CouldNotRun:
    """Call ``fn(*args, **kwargs)``; when it raises, return ``CouldNotRun`` instead (guards still raise).

    For a runbook step that is evidence, not a guard: ``checks.attempt("rollback plan", deploy.rollback_plan,
    s, revision)`` shows the plan, or the row saying why there is none, and the runbook goes on.
    """
    try:
        return fn(*args, **kwargs)
    except GuardStop:
        raise
    except Exception as err:  # any check on any project: the reason is the result
        log.debug("check %r could not run", check, exc_info=True)
        return CouldNotRun.of(check, err)


def guarded(check: str) -> Callable[[Callable[..., T]], Callable[..., T | CouldNotRun]]:
    """Decorator form of ``attempt``."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T | CouldNotRun]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T | CouldNotRun:
            return attempt(check, fn, *args, **kwargs)
        return inner
    return wrap
