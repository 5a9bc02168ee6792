"""Up, down and up again: one revision (``round_trip``) or the whole chain (``stairway``), schema compared.

The guide's *Test Migration Locally* as a check: each revision is upgraded, downgraded and upgraded again on
a scratch database, and the schema after the downgrade must equal the schema before the upgrade. The steps
run in one env.py run for speed; a revision that fails there is retried phase by phase in runs of its own,
as deployments run it, and only a failure that stands is a finding.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from alembic.runtime.migration import MigrationStep
from sqlalchemy.engine import Engine

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DbRunbookError, MigrationFailed
from dbrunbook.procedures.checks import CouldNotRun
from dbrunbook.procedures.revision_lint import ReviewFinding
from dbrunbook.procedures.schema_shape import compare_shapes, read_shape

log = logging.getLogger(__name__)

__all__ = ["RoundTrip", "Stairway", "StepCheck", "round_trip", "stairway"]


# --- up, down, up ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCheck:
    """One revision taken up, down and up again (the guide's Test Migration Locally), schema compared."""

    revision: str
    upgrade_ok: bool
    downgrade_ok: bool | None
    restored: bool | None
    reupgrade_ok: bool | None
    error: str = ""
    not_restored: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    #: Why the check itself could not run on this revision (not a verdict on the revision): env.py, the
    #: scratch database or the graph raised before or between the migration steps.
    could_not_run: str = ""

    @classmethod
    def failed_to_run(cls, revision: str, err: BaseException) -> StepCheck:
        reason = CouldNotRun.of("round trip", err).reason
        log.debug("round trip of %s could not run", revision, exc_info=True)
        return cls(revision, False, None, None, None, f"could not run: {reason}", could_not_run=reason)

    @property
    def ok(self) -> bool:
        return bool(self.upgrade_ok and self.downgrade_ok and self.restored and self.reupgrade_ok)

    def findings(self, prefix: str = "round-trip") -> list[ReviewFinding]:
        if self.could_not_run:
            # An error: review cannot vouch for a downgrade it could not run.
            return [ReviewFinding(f"{prefix}:could-not-run", "error", self.revision,
                                  f"could not run: {self.could_not_run}")]
        out = []
        if not self.upgrade_ok:
            out.append(ReviewFinding(f"{prefix}:upgrade-failed", "error", self.revision,
                                     f"upgrade failed: {self.error}"))
        elif self.downgrade_ok is False:
            out.append(ReviewFinding(f"{prefix}:downgrade-failed", "error", self.revision,
                                     f"downgrade failed: {self.error}"))
        if self.restored is False:
            what = "; ".join(f"{r['change']} {r['object']}"
                             + (f" ({r['after'] or r['before']})" if r["change"].startswith(("index", "constraint"))
                                else "")
                             for r in self.not_restored.to_dict("records"))
            out.append(ReviewFinding(f"{prefix}:schema-not-restored", "error", self.revision,
                                     f"the schema after downgrade differs from before upgrade: {what}"))
        if self.reupgrade_ok is False:
            out.append(ReviewFinding(f"{prefix}:reupgrade-failed", "error", self.revision,
                                     f"upgrading again after the downgrade failed: {self.error}"))
        return out

    def as_row(self) -> dict[str, Any]:
        return {"revision": self.revision, "upgrade": self.upgrade_ok, "downgrade": self.downgrade_ok,
                "schema_restored": self.restored, "upgrade_again": self.reupgrade_ok, "error": self.error or None}


def _reason(err: BaseException) -> str:
    return getattr(err, "reason", None) or (str(err).splitlines() or [""])[0]


def _walk(mset: MigrationSet, engine: Engine, order: list[str]) -> tuple[list[StepCheck], list[str]]:
    """Take each revision of ``order`` up, down and up again, in one run of env.py; stop at the first failure.

    The steps are Alembic's own, one script each, so a single revision is undone even when the database has
    other heads (a branch, the other side of a merge), where ``downgrade -1`` is ambiguous; Alembic's head
    bookkeeping deletes or unmerges the version rows. Alembic commits each step before asking for the next,
    so the schema is read between steps from another connection. Running them in one env.py run rather than
    three per revision keeps a stairway over a long chain to seconds.
    """
    results: list[StepCheck] = []
    at: dict[str, Any] = {}

    def steps(script: Any, heads: tuple, ctx: Any) -> Iterator[Any]:
        for rev in order:
            revision = script.get_revision(rev)
            at.update(rev=rev, phase="upgrade", before=read_shape(engine, mset), changes=None, not_restored=None)
            yield MigrationStep.upgrade_from_script(script.revision_map, revision)
            at.update(phase="downgrade", changes=compare_shapes(at["before"], read_shape(engine, mset)))
            yield MigrationStep.downgrade_from_script(script.revision_map, revision)
            at.update(phase="reupgrade", not_restored=compare_shapes(at["before"], read_shape(engine, mset)))
            yield MigrationStep.upgrade_from_script(script.revision_map, revision)
            restored = at["not_restored"].empty
            results.append(StepCheck(rev, True, True, restored, True, "", at["not_restored"], at["changes"]))
            at.clear()
            if not restored:
                return

    try:
        migrations.drive(mset, engine, steps, direction="upgrade")
    except Exception as err:  # any failure is a result of the walk, named by revision and phase
        if at:
            failed_at = dict(at)
            confirmed = _finish_separately(mset, engine, at)
            if confirmed is not None:
                log.info("revision %s failed its %s in the shared env.py run and passed in runs of its own: %s",
                         confirmed.revision, failed_at["phase"], _reason(err))
                results.append(confirmed)
                rest = order[order.index(confirmed.revision) + 1:]
                if not confirmed.restored:
                    return results, rest
                more, not_run = _walk(mset, engine, rest)
                return results + more, not_run
            at = failed_at
        if not at:
            # Before the first step or between two: env.py, the graph or the connection, not a revision.
            rev = next((r for r in order if r not in {c.revision for c in results}), order[0] if order else "?")
            results.append(StepCheck.failed_to_run(rev, err))
            done = {r.revision for r in results}
            return results, [r for r in order if r not in done]
        phase = at["phase"]
        reason = _reason(err) if isinstance(err, MigrationFailed) else CouldNotRun.of("round trip", err).reason
        nr = at["not_restored"] if at["not_restored"] is not None else pd.DataFrame()
        changes = at["changes"] if at["changes"] is not None else pd.DataFrame()
        if phase == "upgrade":
            results.append(StepCheck(at["rev"], False, None, None, None, reason))
        elif phase == "downgrade":
            results.append(StepCheck(at["rev"], True, False, None, None, reason, changes=changes))
        else:
            results.append(StepCheck(at["rev"], True, True, nr.empty, False, reason, nr, changes))
    done = {r.revision for r in results}
    return results, [r for r in order if r not in done]


def _one_step(mset: MigrationSet, engine: Engine, rev: str, direction: str) -> None:
    """One Alembic step of ``rev`` (up or down), in an env.py run of its own."""
    make = MigrationStep.upgrade_from_script if direction == "upgrade" else MigrationStep.downgrade_from_script
    migrations.drive(mset, engine, lambda script, heads, ctx: [make(script.revision_map, script.get_revision(rev))],
                      direction=direction)


def _finish_separately(mset: MigrationSet, engine: Engine, at: dict[str, Any]) -> StepCheck | None:
    """The phases of ``at["rev"]`` from the one that failed on, each in an env.py run of its own.

    One env.py run for the whole walk is fast, but what lives as long as a run (SQLAlchemy's note that it
    created an ENUM type, an application's cache) can fail a step that passes in the separate runs a
    deployment makes; prefect's first revision re-creates its ``state_type`` enum only in a new run.
    Returns the revision's check when every remaining phase passes this way, None when the failure stands.
    """
    rev = at["rev"]
    try:
        if at["phase"] == "upgrade":
            _one_step(mset, engine, rev, "upgrade")
            at.update(phase="downgrade", changes=compare_shapes(at["before"], read_shape(engine, mset)))
        if at["phase"] == "downgrade":
            _one_step(mset, engine, rev, "downgrade")
            at.update(phase="reupgrade", not_restored=compare_shapes(at["before"], read_shape(engine, mset)))
        _one_step(mset, engine, rev, "upgrade")
    except Exception:  # noqa: BLE001 - the failure stands; the caller reports the first one
        return None
    return StepCheck(rev, True, True, at["not_restored"].empty, True, "", at["not_restored"], at["changes"])


@dataclass(frozen=True)
class RoundTrip:
    """The reviewed revision up, down, up on a database at its parent(s)."""

    migration_set: str
    step: StepCheck
    prepared: str = ""

    @property
    def ok(self) -> bool:
        return self.step.ok

    @property
    def findings(self) -> tuple[ReviewFinding, ...]:
        return tuple(self.step.findings("round-trip"))

    def _repr_html_(self) -> str:
        verdict = "✔ schema restored, upgrade repeatable" if self.ok else "✘ " + "; ".join(
            f.message for f in self.findings)
        changes = self.step.changes.to_html(index=False) if not self.step.changes.empty else ""
        diff = (f"<p>Not restored by the downgrade:</p>{self.step.not_restored.to_html(index=False)}"
                if not self.step.not_restored.empty else "")
        return (f"<p>Round trip of <b>{html.escape(self.step.revision)}</b> ({html.escape(self.prepared)}): "
                f"{html.escape(verdict)}</p>{pd.DataFrame([self.step.as_row()]).to_html(index=False)}"
                f"<p>What the upgrade changed:</p>{changes}{diff}")


def round_trip(mset: MigrationSet, engine: Engine, revision: str = "heads") -> RoundTrip:
    """On an empty database: upgrade to the revision's parent(s), then upgrade, downgrade, upgrade it.

    The schema after the downgrade must equal the schema before the upgrade (columns, indexes, constraints,
    schemas, types), and the second upgrade must succeed. Migration failures are findings, not exceptions.
    """
    rev = migrations.resolve(mset, revision)[0] if revision else migrations.heads(mset)[0]
    info = {r.revision: r for r in migrations.history(mset)}[rev]
    prepared = ["the baseline"] if migrations.build_baseline(mset, engine) else []
    for parent in info.down_revisions:
        try:
            migrations.upgrade(mset, engine, parent)
            prepared.append(parent)
        except Exception as err:  # env.py or a parent revision: the reviewed revision never ran
            reason = _reason(err) if isinstance(err, DbRunbookError) else CouldNotRun.of("round trip", err).reason
            step = StepCheck(rev, False, None, None, None, f"could not run: preparing parent {parent}: {reason}",
                             could_not_run=f"preparing parent {parent}: {reason}")
            return RoundTrip(mset.name, step, "parents could not be applied")
    checks, _ = _walk(mset, engine, [rev])
    return RoundTrip(mset.name, checks[0], f"database prepared at {', '.join(prepared) or 'base'}")


@dataclass(frozen=True)
class Stairway:
    """Every revision of the chain, base first, up / down / up one step at a time (stops at the first failure)."""

    migration_set: str
    steps: tuple[StepCheck, ...]
    not_run: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and not self.not_run

    @property
    def findings(self) -> tuple[ReviewFinding, ...]:
        return tuple(f for s in self.steps for f in s.findings("stairway"))

    def as_frame(self) -> pd.DataFrame:
        rows = [s.as_row() for s in self.steps] + [
            {"revision": r, "upgrade": None, "downgrade": None, "schema_restored": None, "upgrade_again": None,
             "error": "not run (an earlier step failed)"} for r in self.not_run]
        return pd.DataFrame(rows, columns=["revision", "upgrade", "downgrade", "schema_restored", "upgrade_again",
                                           "error"])

    def _repr_html_(self) -> str:
        verdict = (f"✔ all {len(self.steps)} revisions go up, down and up again" if self.ok
                   else f"✘ {len(self.findings)} finding(s)")
        from dbrunbook.views.tables import frame_html

        return f"<p>Stairway of <code>{html.escape(self.migration_set)}</code>: {verdict}</p>" + \
            frame_html(self.as_frame())


def stairway(mset: MigrationSet, engine: Engine) -> Stairway:
    """The stairway test on an empty database: each revision, in dependency order, up, down and up."""
    migrations.build_baseline(mset, engine)
    checks, not_run = _walk(mset, engine, [r.revision for r in migrations.history(mset)])
    return Stairway(mset.name, tuple(checks), tuple(not_run))
