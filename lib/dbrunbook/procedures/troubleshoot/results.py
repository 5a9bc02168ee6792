"""What a troubleshoot check returns: ``Problem``, ``CheckResult``, ``Diagnosis``, and the "could not run" wrapper.

Every check returns a ``CheckResult`` (its problems, or a line saying what it looked at); ``Diagnosis``
gathers them. A check that raises on a project must not end the diagnosis: ``completes`` turns the error
into a result saying "could not run: <reason>", set by set when only some migration sets fail.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dbrunbook.errors import GuardStop
from dbrunbook.procedures.checks import CouldNotRun
from dbrunbook.protocol import SessionLike

log = logging.getLogger(__name__)

#: The guide's wording for each problem (its Troubleshooting headings, or the best-practice it breaks).
TITLES = {
    "not_up_to_date": "Target database is not up to date",
    "unknown_revision": "Can't locate revision identified by '{revision}'",
    "already_exists": "Column already exists",
    "duplicate_key": "Duplicate key value violates unique constraint",
    "blocked": "Migration takes too long",
    "multiple_heads": "Multiple head revisions are present",
    "drift": "Database schema differs from the models (alembic check)",
    "edited_migration": "Never edit applied migrations",
    "invalid_index": "Invalid index left by CREATE INDEX CONCURRENTLY",
}


# --- value objects --------------------------------------------------------------------------------------
def _frame_html(evidence: pd.DataFrame | str) -> str:
    if isinstance(evidence, pd.DataFrame):
        from dbrunbook.views.tables import frame_html

        return frame_html(evidence, empty="(no rows)")
    return f"<pre>{html.escape(str(evidence))}</pre>"


@dataclass(frozen=True)
class Problem:
    """One problem found on a target: what (the guide's title), the evidence, why, and what to run next."""

    code: str
    title: str
    migration_set: str | None
    evidence: pd.DataFrame | str = field(compare=False)
    cause: str
    next_step: str
    queries: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        evidence = (self.evidence.astype(object).where(self.evidence.notna(), None).to_dict("records")
                    if isinstance(self.evidence, pd.DataFrame) else self.evidence)
        return {"code": self.code, "title": self.title, "migration_set": self.migration_set,
                "evidence": evidence, "cause": self.cause, "next_step": self.next_step,
                "queries": list(self.queries)}

    def _repr_html_(self) -> str:
        where = f" — migration set <code>{html.escape(self.migration_set)}</code>" if self.migration_set else ""
        queries = "".join(f"<pre>{html.escape(q)}</pre>" for q in self.queries)
        return (f"<h4>⚠ {html.escape(self.title)}{where}</h4>"
                f"<p><b>Evidence</b></p>{queries}{_frame_html(self.evidence)}"
                f"<p><b>Cause</b>: {html.escape(self.cause)}</p>"
                f"<p><b>Next step</b>: <code>{html.escape(self.next_step)}</code></p>")


@dataclass(frozen=True)
class CheckResult:
    """What one check found: its problems, or what it looked at when there were none."""

    code: str
    title: str
    problems: tuple[Problem, ...]
    checked: str
    #: Why the check (or its part for some migration sets) could not run; empty when it ran.
    could_not_run: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.could_not_run

    def _repr_html_(self) -> str:
        if self.ok:
            return f"<p>✔ <b>{html.escape(self.title)}</b>: no problem. {html.escape(self.checked)}</p>"
        failed = (f"<p>⚠ <b>{html.escape(self.title)}</b>: could not run: {html.escape(self.could_not_run)}. "
                  f"The other checks still ran. {html.escape(self.checked)}</p>" if self.could_not_run else "")
        return failed + "\n".join(p._repr_html_() for p in self.problems)


@dataclass(frozen=True)
class Diagnosis:
    """Every check run on a target; ``problems`` empty means all clear."""

    target: str
    checks: tuple[CheckResult, ...]

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for c in self.checks for p in c.problems)

    @property
    def could_not_run(self) -> tuple[CheckResult, ...]:
        """The checks that raised (wholly or for some migration sets): what this diagnosis could not see."""
        return tuple(c for c in self.checks if c.could_not_run)

    @property
    def all_clear(self) -> bool:
        return not self.problems and not self.could_not_run

    def as_frame(self) -> pd.DataFrame:
        rows = [{"problem": p.title, "migration_set": p.migration_set, "next_step": p.next_step}
                for p in self.problems]
        rows += [{"problem": f"{c.title}: could not run: {c.could_not_run}", "migration_set": None,
                  "next_step": f"{_again(self.target)}  (once the cause is fixed)"} for c in self.could_not_run]
        return pd.DataFrame(rows, columns=["problem", "migration_set", "next_step"])

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "all_clear": self.all_clear,
                "could_not_run": [c.code for c in self.could_not_run],
                "checks": [{"code": c.code, "title": c.title, "checked": c.checked,
                            "could_not_run": c.could_not_run or None,
                            "problems": [p.as_dict() for p in c.problems]} for c in self.checks]}

    def _repr_html_(self) -> str:
        if self.all_clear:
            looked = "".join(f"<li>{html.escape(c.title)}: {html.escape(c.checked)}</li>" for c in self.checks)
            return (f"<p>✔ <b>All clear</b> on target <code>{html.escape(self.target)}</code>: "
                    f"{len(self.checks)} checks, no problem found.</p><ul>{looked}</ul>")
        head = (f"<p><b>{len(self.problems)} problem(s)</b> on target <code>{html.escape(self.target)}</code>, "
                f"in the order to deal with them"
                + (f"; {len(self.could_not_run)} check(s) could not run" if self.could_not_run else "")
                + ":</p>")
        return head + self.as_frame().to_html(index=False) + "\n".join(
            f"<h3>{i}. {html.escape(p.title)}</h3>{p._repr_html_()}" for i, p in enumerate(self.problems, 1)
        ) + "\n".join(c._repr_html_() for c in self.could_not_run if not c.problems)


# --- helpers --------------------------------------------------------------------------------------------
def _again(target: str) -> str:
    return f"dbrunbook run troubleshoot -t {target}"


def completes(code: str, title: str) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """A check that raises returns "could not run: <reason>" instead; the diagnosis goes on.

    When the check covers several migration sets and fails, it is run again set by set, so the sets it can
    look at are still diagnosed and the row names the set(s) it could not.
    """
    def wrap(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        @functools.wraps(fn)
        def inner(s: SessionLike, *args: Any, **kwargs: Any) -> CheckResult:
            try:
                return fn(s, *args, **kwargs)
            except GuardStop:
                raise
            except Exception as err:  # anything a project's code or SQL raises: the reason is the result
                whole = CouldNotRun.of(title, err)
                log.debug("check %s could not run", code, exc_info=True)
            if code == "blocked":
                return CheckResult(code, title, (), f"could not run: {whole.reason}", whole.reason)
            selection = args[0] if args else kwargs.get("migration_set", "all")
            try:
                sets = s.sets(selection)
            except Exception:  # noqa: BLE001 - the selection itself is what failed
                sets = []
            if len(sets) < 2:
                return CheckResult(code, title, (), f"could not run: {whole.reason}", whole.reason)
            problems: list[Problem] = []
            notes, failed = [], []
            for m in sets:
                try:
                    one = fn(s, m.name, *args[1:], **{k: v for k, v in kwargs.items() if k != "migration_set"})
                except GuardStop:
                    raise
                except Exception as err:  # noqa: BLE001 - as above, for this set only
                    reason = CouldNotRun.of(title, err).reason
                    notes.append(f"{m.name}: could not run: {reason}")
                    failed.append(f"{m.name}: {reason}")
                    continue
                problems += one.problems
                notes.append(one.checked)
            return CheckResult(code, title, tuple(problems), "; ".join(n for n in notes if n), "; ".join(failed))
        return inner
    return wrap


def run_command(s: SessionLike, runbook: str, **parameters: Any) -> str:
    """The ``dbrunbook run RUNBOOK -t TARGET -p NAME VALUE ...`` line a problem names as its next step."""
    parts = [f"dbrunbook run {runbook} -t {s.target.name}"]
    for name, value in parameters.items():
        if isinstance(value, bool):
            value = str(value).lower()
        parts.append(f"-p {name} {value}")
    return " ".join(parts)

