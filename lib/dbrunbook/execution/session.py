"""What runbook cells call: one ``Session`` per run, bound to a target, its engine and the run's record folder.

Each method is one step of the guide, returns something that renders as a table in the notebook, and leaves
its evidence in ``artifacts/`` of the run directory when the launcher gave one (so the signature covers it).
Guards raise ``GuardStop`` subclasses, which the launcher classifies as "stopped at a guard". The steps that
only read the target are ``SessionBase``'s (:mod:`dbrunbook.execution.session_base`); those that preview and
change it are here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import ConfigError, ConfirmationRequired, NotAtExpectedRevision
from dbrunbook.execution import prerender
from dbrunbook.execution.preview import Preview
from dbrunbook.execution.session_base import SNAPSHOT_ARTIFACT, SessionBase
from dbrunbook.protocol import artifact_json
from dbrunbook.views import summaries

if TYPE_CHECKING:
    from dbrunbook.protocol import SessionLike

__all__ = ["SNAPSHOT_ARTIFACT", "Preview", "Session", "open_session"]


class Session(SessionBase):
    """A runbook's connection to one target, with the steps of the guide as methods."""

    # --- preview (alembic upgrade head --sql) ---------------------------------------------------------------
    def preview(self, revision: str = "heads", migration_set: str | None = "all", *, save: bool = True,
                capture: bool = True) -> Preview:
        """Render the SQL of the pending range per revision; save it as artifacts/preview-SET.sql.

        A revision that cannot be rendered offline is run with the range on a scratch database (the target's
        schema, restored) and the SQL it executed is captured, unless ``capture`` is false.
        """
        from dbrunbook.chain import capture as capturing

        result = Preview()
        with capturing.Scratch(self) as scratch:  # one scratch server for every set that needs one
            for m in self.sets(migration_set):
                cur = migrations.current(m, self.engine)
                if not migrations.pending(m, self.engine, revision):
                    result.steps[m.name] = []
                    continue
                start = ",".join(cur) if cur else None
                steps = prerender.rendered_steps(self.config, self.target.name, m, start, revision)
                if steps is None:
                    steps = migrations.offline_sql(m, start, revision)
                else:
                    print(f"{m.name}: SQL rendered offline by the launcher's second process while the kernel started "
                          f"(same start, end and migration files)")
                if capture:
                    steps = capturing.capture_steps(self, m, steps, revision, scratch=scratch)
                result.steps[m.name] = steps
                if save:
                    name = f"preview-{m.name}.sql"
                    result.files[name] = self.save_artifact(name, result.file_text(m.name))
        if save:
            self.save_artifact("preview.json", artifact_json(
                {"sha256": result.sha256, "files": result.files,
                 "revisions": {k: [s.revision for s in v] for k, v in result.steps.items()},
                 "online_only": {k: {s.revision: {"source": s.source, "reason": s.reason,
                                                  "capture_error": s.capture_error}
                                     for s in v if s.online_only}
                                 for k, v in result.steps.items() if any(s.online_only for s in v)}},
                depth=2))
        self._previews[(revision, migration_set)] = result
        return result

    # --- change ----------------------------------------------------------------------------------------
    def upgrade(self, revision: str = "heads", migration_set: str | None = "all", *, dry_run: bool = True,
                allow: str = "", preview: Preview | None = None) -> pd.DataFrame:
        """alembic upgrade, one migration per transaction, timed per revision. dry_run only lists the steps.

        Revisions that cannot be rendered offline run like any other; on a protected target each needs SQL
        captured in ``preview`` (default: this session's last preview of the same range, else an offline
        rendering) or an ``online-only@REVISION`` entry in ``allow`` (``capture.require_covered``).

        A revision that fails on a lock timeout is tried again with backoff (``locking.with_lock_retries``, up
        to the target's ``retries``); every attempt is printed, kept in ``lock_attempts``, saved as the
        artifact attempts.json, and attached to the result as ``frame.attrs["attempts"]``.
        """
        from dbrunbook.safety import locking

        rows = []
        if dry_run:
            for m in self.sets(migration_set):
                rows += [{"migration_set": m.name, "revision": r.revision, "direction": "upgrade",
                          "seconds": None, "done": False}
                         for r in migrations.pending(m, self.engine, revision)]
            frame = pd.DataFrame(rows, columns=["migration_set", "revision", "direction", "seconds", "done"])
            if self.target.protected:
                self._require_covered(revision, migration_set, allow, preview, dry_run=True)
            print(f"dry_run=True: nothing was changed; {len(frame)} step(s) would run.")
            return summaries.summarize(self, "steps", frame)
        self._require_lock("upgrade")
        if self.target.protected:
            self._require_covered(revision, migration_set, allow, preview, dry_run=False)
        policy, start = locking.RetryPolicy.for_target(self.target), len(self.lock_attempts)
        try:
            for m in self.sets(migration_set):
                done = locking.with_lock_retries(functools.partial(migrations.upgrade, m, revision=revision),
                                                 self.engine, policy=policy, migration_set=m.name,
                                                 attempts=self.lock_attempts)
                rows += [{"migration_set": m.name, "revision": step.revision, "direction": step.direction,
                          "seconds": round(step.seconds, 3), "done": True} for step in done]
        finally:
            locking.save_attempts(self, self.lock_attempts[start:])
        frame = pd.DataFrame(rows, columns=["migration_set", "revision", "direction", "seconds", "done"])
        frame.attrs["attempts"] = locking.attempts_frame(self.lock_attempts[start:])
        return summaries.summarize(self, "steps", frame, summaries.Shown(by="seconds", totals=(
            f"{len(frame):,} step(s) in {frame['seconds'].sum():.2f} s")))

    def downgrade(self, revision: str = "-1", migration_set: str = "main", *, dry_run: bool = True,
                  confirm: str = "") -> pd.DataFrame:
        """alembic downgrade; 'base' needs ``confirm`` equal to the database name (the guide's DESTRUCTIVE)."""
        m = self.config.migration_set(migration_set)
        if revision == "base" and confirm != self.identity.database:
            raise ConfirmationRequired(
                f"Downgrading '{m.name}' to base drops every table it created in database "
                f"'{self.identity.database}'. To confirm, run again with -p confirm {self.identity.database}."
            )
        if dry_run:
            steps = migrations.offline_sql(m, ",".join(migrations.current(m, self.engine)) or None, revision,
                                           direction="downgrade")
            print(f"dry_run=True: nothing was changed; {len(steps)} step(s) would be reverted.")
            return pd.DataFrame([{"migration_set": m.name, "revision": s.revision, "direction": "downgrade",
                                  "seconds": None, "done": False} for s in steps],
                                columns=["migration_set", "revision", "direction", "seconds", "done"])
        from dbrunbook.safety import locking

        self._require_lock("downgrade")
        start = len(self.lock_attempts)
        try:
            done = locking.with_lock_retries(lambda conn: migrations.downgrade(m, conn, revision), self.engine,
                                             policy=locking.RetryPolicy.for_target(self.target),
                                             migration_set=m.name, attempts=self.lock_attempts)
        finally:
            locking.save_attempts(self, self.lock_attempts[start:])
        frame = pd.DataFrame([{"migration_set": m.name, "revision": s.revision, "direction": s.direction,
                               "seconds": round(s.seconds, 3), "done": True} for s in done],
                             columns=["migration_set", "revision", "direction", "seconds", "done"])
        frame.attrs["attempts"] = locking.attempts_frame(self.lock_attempts[start:])
        return frame

    def downgrade_sql(self, revision: str = "-1", migration_set: str = "main", *, capture: bool = True
                      ) -> Preview:
        """The SQL a downgrade would run, per revision: rendered offline, or captured on a scratch database
        for the revisions that cannot be (the rollback plan)."""
        from dbrunbook.chain import capture as capturing

        m = self.config.migration_set(migration_set)
        cur = migrations.current(m, self.engine)
        key = ("downgrade", revision, m.name, cur, capture)
        if key in self._previews:  # the rollback runbook shows it, then counts its data loss
            return self._previews[key]
        result = Preview()
        steps = migrations.offline_sql(m, ",".join(cur) or None, revision, direction="downgrade")
        if capture:
            steps = capturing.capture_steps(self, m, steps, revision, direction="downgrade")
        result.steps[m.name] = steps
        self._previews[key] = result
        return result

    def _require_covered(self, revision: str, migration_set: str | None, allow: str, preview: Preview | None,
                         *, dry_run: bool) -> None:
        """On a protected target: the online-only revisions about to run are captured or allowed."""
        from dbrunbook.chain import capture as capturing

        preview = preview or self._previews.get((revision, migration_set)) or self.preview(
            revision, migration_set, save=False, capture=False)
        capturing.require_covered(self, preview.steps, allow, dry_run=dry_run)

    def stamp(self, revision: str, migration_set: str = "main", *, dry_run: bool = True) -> pd.DataFrame:
        """alembic stamp: move the version pointer without running migrations."""
        m = self.config.migration_set(migration_set)
        before = migrations.current(m, self.engine)
        if not dry_run:
            from dbrunbook.safety import locking

            self._require_lock("stamp")
            start = len(self.lock_attempts)
            try:
                locking.with_lock_retries(lambda conn: migrations.stamp(m, conn, revision), self.engine,
                                          policy=locking.RetryPolicy.for_target(self.target),
                                          migration_set=m.name, attempts=self.lock_attempts)
            finally:
                locking.save_attempts(self, self.lock_attempts[start:])
        after = migrations.current(m, self.engine) if not dry_run else migrations.resolve(m, revision)
        return pd.DataFrame([{"migration_set": m.name, "before": ", ".join(before) or "(base)",
                              "after": ", ".join(after) or "(base)", "dry_run": dry_run}])

    def expect_revision(self, expected: str, migration_set: str = "main") -> None:
        """Guard: stop unless the set is at ``expected`` (empty: no expectation)."""
        if not expected:
            return
        m = self.config.migration_set(migration_set)
        cur = migrations.current(m, self.engine)
        want = migrations.resolve(m, expected)
        if set(cur) != set(want):
            raise NotAtExpectedRevision(
                f"Target '{self.target.name}' is at '{', '.join(cur) or 'base'}'; this run expects "
                f"'{expected}'. Run 'dbrunbook run status -t {self.target.name}'."
            )

    def _require_lock(self, action: str) -> None:
        """Refuse to change the database unless this run holds its deployer lock (asked of the database)."""
        from dbrunbook.safety import locking

        locking.check_deployer_lock(self.engine, self.lock, action=f"Session.{action}(dry_run=False)",
                                    run_id=self.run_id, target=self.target.name)


def open_session(target: str = "", *, run_id: str = "", record_dir: str = "", config: str | Path | None = None,
                 lock: bool = False, runbook: str = "") -> Session:
    """Connect a runbook to ``target`` (default: the configured default, 'local' = the embedded server).

    Args:
        lock: take the deployer lock of the database for the whole run (every runbook that changes it does:
            ``lock=not dry_run``); a second run then stops at once, naming this one.
        runbook: this runbook's name, shown to a run that finds the lock taken.

    Raises:
        DeployerLockHeld: ``lock`` and another run holds the lock (after spinning for 5 s).

    ``upgrade``, ``downgrade`` and ``stamp`` with ``dry_run=False`` raise ``DeployerLockRequired`` unless the
    session holds the lock (``lock=True``; under ``dbrunbook run`` the launcher's lock for the run counts).
    """
    cfg = load_config(config) if config else load_config()
    if not isinstance(target, str):
        raise ConfigError(f"target must be a target name (a string), not {target!r}.")
    # A record is read, not skimmed: the command to run next or a revision's reason must not end in "...".
    pd.set_option("display.max_colwidth", None)
    return Session(cfg, target or cfg.default_target, run_id=run_id, record_dir=record_dir, lock=lock,
                   runbook=runbook)


if TYPE_CHECKING:

    def _is_session_like(session: Session) -> SessionLike:
        """Never called: mypy proves here that a ``Session`` is what guards and procedures take."""
        return session
