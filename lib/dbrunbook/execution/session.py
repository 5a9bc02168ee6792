"""What runbook cells call: one ``Session`` per run, bound to a target, its engine and the run's record folder.

Each method is one step of the guide, returns something that renders as a table in the notebook, and leaves
its evidence in ``artifacts/`` of the run directory when the launcher gave one (so the signature covers it).
Guards raise ``GuardStop`` subclasses, which the launcher classifies as "stopped at a guard".
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import Config, MigrationSet, load_config
from dbrunbook.errors import ConfigError, ConfirmationRequired, NoSnapshot, NotAtExpectedRevision
from dbrunbook.execution.protocol import ARTIFACTS_DIR, SENTINEL
from dbrunbook.postgres import db, snapshots, sqltext
from dbrunbook.views import summaries

log = logging.getLogger(__name__)

SNAPSHOT_ARTIFACT = "snapshot.json"


@dataclass
class Preview:
    """The SQL of a pending range, per migration set and revision, with the digest a review approves.

    Each revision's SQL is rendered offline, or, for a revision that cannot be (online-only), captured on a
    scratch database; ``as_frame`` says which in its ``sql`` column, and the digest covers both.
    """

    steps: dict[str, list] = field(default_factory=dict)  # set name -> [SqlStep]
    files: dict[str, str] = field(default_factory=dict)  # artifact name -> sha256

    @property
    def sha256(self) -> str:
        """Digest of all rendered SQL, in set order: what `apply` recomputes to prove nothing changed."""
        h = hashlib.sha256()
        for name in sorted(self.steps):
            for step in self.steps[name]:
                h.update(f"{name}:{step.revision}\n".encode())
                if getattr(step, "online_only", False):
                    # A captured revision's SQL and an uncaptured one's empty SQL must never digest alike.
                    h.update(f"online-only:{step.source}\n".encode())
                h.update(step.sql.encode())
        return h.hexdigest()

    def file_text(self, name: str) -> str:
        """The text of artifacts/preview-NAME.sql: each revision's SQL under a header naming it."""
        return "".join(_step_text(name, s) for s in self.steps.get(name, []))

    def as_frame(self) -> pd.DataFrame:
        rows = [
            {"migration_set": name, "revision": s.revision, "description": s.message,
             "sql": getattr(s, "status", "offline"), "statements": _count_statements(s.sql),
             "notes": s.notes.strip()[:200] or None,
             "online_only": (getattr(s, "reason", "") + (f" — not captured: {s.capture_error}"
                                                          if getattr(s, "capture_error", "") else "")) or None}
            for name, steps in self.steps.items() for s in steps
        ]
        return pd.DataFrame(rows, columns=["migration_set", "revision", "description", "sql", "statements", "notes",
                                           "online_only"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {len(steps)}" for name, steps in self.steps.items())
        return f"Preview({counts or 'nothing pending'}; sha256 {self.sha256})"

    def _repr_html_(self) -> str:
        from dbrunbook.views import summaries

        if not any(self.steps.values()):
            return "<p><b>Nothing pending</b>: every migration set is at its head.</p>"
        from dbrunbook.views.tables import sql_html

        frame = self.as_frame()
        parts = [f"<p>Preview sha256 <code>{self.sha256}</code></p>",
                 summaries.frame_html(frame, summaries.Shown(by="statements", totals=(
                     f"{len(frame):,} revision(s), {int(frame['statements'].sum()):,} statement(s)")))]
        for name, steps in self.steps.items():
            # The first, last and biggest revisions in full, and those that need a reviewer most: online-only.
            shown = summaries.steps_shown(steps, key=lambda s: len(s.sql)) | set(
                [i for i, s in enumerate(steps) if getattr(s, "online_only", False)][:summaries.TOP])
            for i, s in enumerate(steps):
                if i not in shown:
                    continue
                if i - 1 not in shown and i > 0:
                    parts.append(f"<p>… {summaries.gap(shown, i):,} more revision(s): their SQL is in "
                                 f"artifacts/preview-{name}.sql</p>")
                sql = sql_html(s.sql)
                status = getattr(s, "status", "offline")
                why = (f"<p><i>{getattr(s, 'problem', '').replace('&', '&amp;').replace('<', '&lt;')}</i></p>"
                       if getattr(s, "online_only", False) else "")
                parts.append(f"<h4>{name}: {s.revision} — {s.message} ({status})</h4>{why}{sql}")
        return "\n".join(parts)


def _step_text(name: str, step) -> str:
    head = f"-- {name} {step.revision}: {step.message}\n"
    if getattr(step, "online_only", False):
        head += f"-- {step.problem}\n"
    return f"{head}{step.sql}\n"


def _count_statements(sql: str) -> int:
    return len(sqltext.split_statements(sql))


class Session:
    """A runbook's connection to one target, with the steps of the guide as methods."""

    def __init__(self, config: Config, target_name: str, *, run_id: str = "", record_dir: str = "",
                 lock: bool = False, runbook: str = ""):
        from sqlalchemy import event

        from dbrunbook.safety import locking

        self.config = config
        self.run_id = run_id or "interactive"
        self.record_dir = Path(record_dir) if record_dir else None
        self.runbook = runbook
        self.lock: locking.DeployerLock | None = None
        self.lock_attempts: list[locking.Attempt] = []  # every upgrade/downgrade/stamp attempt of this session
        self._previews: dict[tuple, Preview] = {}  # the last preview / downgrade SQL of each range, by range
        self.target, self.engine = db.connect_target(config, target_name, run_id=self.run_id)
        from dbrunbook.chain.drivers import export_environment  # before any project code is imported in this kernel

        export_environment(config, self.target, self.engine.url.render_as_string(hide_password=False))
        try:
            self.identity = db.identity(self.engine)
            if lock:
                self.lock = locking.acquire_deployer_lock(self.engine, run_id=self.run_id, runbook=runbook,
                                                          target=self.target.name)
                # finish() disposes the engine: the lock goes with it (and with the kernel, whatever happens).
                event.listen(self.engine, "engine_disposed", lambda engine, held=self.lock: held.release())
                print(f"Deployer lock of database '{self.lock.database}' taken by run {self.run_id} "
                      f"(pid {self.lock.pid}); it is held until the end of this run.")
        except BaseException:
            self.engine.dispose()
            raise

    # --- display -----------------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        ident = self.identity
        rows = [("run", self.run_id), ("target", self.target.name), ("protected", self.target.protected),
                ("database", ident.database), ("server", ident.server_version),
                ("system identifier", ident.system_identifier), ("host", ident.host),
                ("lock_timeout", self.target.lock_timeout), ("statement_timeout", self.target.statement_timeout),
                ("migration sets", ", ".join(self.config.migration_sets))]
        return "<table>" + "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                                   for k, v in rows) + "</table>"

    def sets(self, migration_set: str | None = "all") -> list[MigrationSet]:
        return self.config.select_sets(migration_set)

    # --- artifacts ---------------------------------------------------------------------------------------
    def save_artifact(self, name: str, content: str | bytes) -> str | None:
        """Write a file into the run's artifacts/ (covered by the record's signature); returns its sha256."""
        data = content.encode("utf-8") if isinstance(content, str) else content
        digest = hashlib.sha256(data).hexdigest()
        if self.record_dir is None:
            return digest
        path = self.record_dir / ARTIFACTS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise FileExistsError(f"artifact {path} exists already; artifacts are written once per run")
        path.write_bytes(data)
        return digest

    # --- status (alembic current / heads / history) -------------------------------------------------------
    def current(self, migration_set: str | None = "all") -> dict[str, tuple[str, ...]]:
        return {m.name: migrations.current(m, self.engine) for m in self.sets(migration_set)}

    def status(self, migration_set: str | None = "all") -> pd.DataFrame:
        """One row per migration set: current revision(s), head(s), pending count, up to date or not."""
        rows = []
        for m in self.sets(migration_set):
            cur, hd = migrations.current(m, self.engine), migrations.heads(m)
            pend = migrations.pending(m, self.engine)
            rows.append({"migration_set": m.name, "version_table": m.version_table,
                         "current": ", ".join(cur) or "(base)", "heads": ", ".join(hd),
                         "pending": len(pend), "up_to_date": not pend and set(cur) == set(hd)})
        return pd.DataFrame(rows, columns=["migration_set", "version_table", "current", "heads", "pending",
                                           "up_to_date"])

    def history(self, migration_set: str | None = "all") -> pd.DataFrame:
        """The guide's "Migration History" table for each set, with applied/pending status."""
        frames = []
        for m in self.sets(migration_set):
            frame = migrations.history_frame(m, current=migrations.current(m, self.engine))
            frame.insert(0, "migration_set", m.name)
            frames.append(frame)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return summaries.summarize(self, "history", frame, summaries.Shown(tail=True, totals=summaries.tally(
            frame, "revision(s)", "status")))

    def revision_graph(self, migration_set: str | None = "all"):
        """The revision graph of each set (branches, merges), the database's current position marked."""
        from dbrunbook.views import plots

        return plots.Plots(tuple(plots.revision_graph(m, current=migrations.current(m, self.engine))
                                 for m in self.sets(migration_set)))

    def pending(self, migration_set: str | None = "all", revision: str = "heads") -> pd.DataFrame:
        rows = [
            {"migration_set": m.name, "revision": r.revision, "description": r.message,
             "merge": r.is_merge, "file": r.path.name}
            for m in self.sets(migration_set) for r in migrations.pending(m, self.engine, revision)
        ]
        frame = pd.DataFrame(rows, columns=["migration_set", "revision", "description", "merge", "file"])
        return summaries.summarize(self, "pending", frame, summaries.Shown(totals=summaries.tally(
            frame, "pending revision(s)", "migration_set")))

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
                steps = migrations.offline_sql(m, start, revision)
                if capture:
                    steps = capturing.capture_steps(self, m, steps, revision, scratch=scratch)
                result.steps[m.name] = steps
                if save:
                    name = f"preview-{m.name}.sql"
                    result.files[name] = self.save_artifact(name, result.file_text(m.name))
        if save:
            self.save_artifact("preview.json", json.dumps(
                {"sha256": result.sha256, "files": result.files,
                 "revisions": {k: [s.revision for s in v] for k, v in result.steps.items()},
                 "online_only": {k: {s.revision: {"source": s.source, "reason": s.reason,
                                                  "capture_error": s.capture_error}
                                     for s in v if s.online_only}
                                 for k, v in result.steps.items() if any(s.online_only for s in v)}},
                indent=1, sort_keys=True) + "\n")
        self._previews[(revision, migration_set)] = result
        return result

    # --- counts -----------------------------------------------------------------------------------------
    def row_counts(self, *, exact: bool = True) -> snapshots.Snapshot:
        counts = snapshots.row_counts(self.engine, exact=exact)
        name, digest = summaries.save_frame(self, "counts", counts.as_frame())
        if name:
            print(f"{len(counts.counts):,} tables: the full counts are artifacts/{name} (sha256 {digest[:12]}…)")
        return counts

    def compare_counts(self, before: snapshots.Snapshot) -> pd.DataFrame:
        """Counts now against ``before``: one row per table that exists in either."""
        frame = snapshots.compare(before, snapshots.row_counts(self.engine, exact=before.exact))
        compared = summaries.counts_compared(self, "counts-compared", frame)
        # Alembic's own bookkeeping, not data: a merge or a downgrade of a branch removes rows of a version
        # table, which the vanished-rows guard (deploy.require_no_vanished_rows) must not count as a loss.
        compared.attrs["version_tables"] = sorted(
            f"{m.version_table_schema or 'public'}.{m.version_table}" for m in self.sets("all"))
        return compared

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
                done = locking.with_lock_retries(lambda conn, m=m: migrations.upgrade(m, conn, revision),
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

    # --- checks ----------------------------------------------------------------------------------------
    def check(self, migration_set: str | None = "all") -> pd.DataFrame:
        """alembic check: differences between the models at head and the live schema (empty = in sync)."""
        rows = []
        for m in self.sets(migration_set):
            if not m.models:
                rows.append({"migration_set": m.name, "difference": "(no models configured: skipped)"})
                continue
            rows += [{"migration_set": m.name, "difference": _describe_diff(d)} for d in migrations.check(m, self.engine)]
        frame = pd.DataFrame(rows, columns=["migration_set", "difference"])
        if frame.empty:
            print("Models and database schema agree.")
        return frame

    def save_snapshot(self) -> str | None:
        """Counts + schema + heads as an artifact: what a later `verify` compares against."""
        counts = snapshots.row_counts(self.engine)
        schema = snapshots.schema_snapshot(self.engine)
        body = {"counts": counts.to_dict(), "schema": schema.to_dict(), "database": self.identity.as_dict(),
                "heads": {k: list(v) for k, v in self.current().items()}}
        return self.save_artifact(SNAPSHOT_ARTIFACT, json.dumps(body, indent=1, sort_keys=True, default=str) + "\n")

    def last_snapshot(self, *, required: bool = False):
        """The newest verified record of this database holding a snapshot: (run_dir, counts, schema, meta).

        None when there is none (a first run is the baseline), or ``NoSnapshot`` when ``required``.
        """
        for run_dir in reversed(records.find_records(self.config.outputs_dir)):
            path = run_dir / ARTIFACTS_DIR / SNAPSHOT_ARTIFACT
            if not path.exists() or (self.record_dir and run_dir.resolve() == self.record_dir.resolve()):
                continue
            counts, schema, meta = snapshots.load_snapshot(path)
            then = meta.get("database", {})
            same_db = (then.get("system_identifier") == self.identity.system_identifier
                       and then.get("database") == self.identity.database
                       and then.get("oid", self.identity.oid) == self.identity.oid)
            if not same_db:
                continue
            check = records.verify_record(run_dir, self.config.allowed_signers)
            if check.status != "valid":
                log.warning("skipping snapshot in %s: record is %s", run_dir, check.status)
                continue
            return run_dir, counts, schema, meta
        if not required:
            print(f"No earlier signed snapshot of database '{self.identity.database}': this run is the baseline.")
            return None
        raise NoSnapshot(
            f"No signed snapshot of database '{self.identity.database}' on target '{self.target.name}' under "
            f"{self.config.outputs_dir}. Run 'dbrunbook run apply -t {self.target.name}' (it saves one) first."
        )

    def finish(self) -> None:
        """Last cell of every runbook: the sentinel the launcher needs to call the run complete."""
        self.engine.dispose()
        print(f"{SENTINEL} {self.run_id}")


def _describe_diff(diff) -> str:
    if isinstance(diff, list):  # modify_* diffs come grouped
        return "; ".join(_describe_diff(d) for d in diff)
    kind, *rest = diff
    parts = []
    for r in rest:
        name = getattr(r, "name", None)
        if name is not None and hasattr(r, "table") and r.table is not None:
            parts.append(f"{r.table.fullname}.{name}" if hasattr(r.table, "fullname") else str(name))
        elif hasattr(r, "fullname"):
            parts.append(r.fullname)
        elif r is not None and not isinstance(r, dict):
            parts.append(str(r))
    return f"{kind} " + " ".join(parts)


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
