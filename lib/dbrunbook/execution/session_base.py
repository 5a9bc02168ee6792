"""A runbook's connection to one target and the steps that only read it: ``SessionBase``.

``Session`` (:mod:`dbrunbook.execution.session`) adds the steps that preview and change the database. The
reading part lives here: the connection and the deployer lock taken at open, the record's artifacts, status
and history, row counts, ``alembic check``, the snapshot a later ``verify`` compares against, and ``finish``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import Config, MigrationSet
from dbrunbook.errors import NoSnapshot
from dbrunbook.execution import prerender
from dbrunbook.postgres import db, snapshots
from dbrunbook.protocol import ARTIFACTS_DIR, SENTINEL
from dbrunbook.views import summaries
from dbrunbook.views.pictures import Plots
from dbrunbook.views.tables import pairs_html

if TYPE_CHECKING:
    from dbrunbook.execution.preview import Preview

log = logging.getLogger(__name__)

SNAPSHOT_ARTIFACT = "snapshot.json"


class SessionBase:
    """A runbook's connection to one target, with the steps of the guide that read it as methods."""

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
        return pairs_html(rows)

    def sets(self, migration_set: str | None = "all") -> list[MigrationSet]:
        return self.config.select_sets(migration_set)

    # --- artifacts ---------------------------------------------------------------------------------------
    def save_artifact(self, name: str, content: str | bytes) -> str:
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
        drawn = []
        for m in self.sets(migration_set):
            current = migrations.current(m, self.engine)
            plot = prerender.drawn_graph(self.config, self.target.name, m, current)
            if plot is not None:
                print(f"{m.name}: graph drawn by the launcher's second process (same position and migration files)")
            else:
                from dbrunbook.views import plots  # matplotlib: only when this kernel draws

                plot = plots.revision_graph(m, current=current)
            drawn.append(plot)
        return Plots(tuple(drawn))

    def pending(self, migration_set: str | None = "all", revision: str = "heads") -> pd.DataFrame:
        rows = [
            {"migration_set": m.name, "revision": r.revision, "description": r.message,
             "merge": r.is_merge, "file": r.path.name}
            for m in self.sets(migration_set) for r in migrations.pending(m, self.engine, revision)
        ]
        frame = pd.DataFrame(rows, columns=["migration_set", "revision", "description", "merge", "file"])
        return summaries.summarize(self, "pending", frame, summaries.Shown(totals=summaries.tally(
            frame, "pending revision(s)", "migration_set")))

    # --- counts -----------------------------------------------------------------------------------------
    def row_counts(self, *, exact: bool = True) -> snapshots.Snapshot:
        counts = snapshots.row_counts(self.engine, exact=exact)
        name, digest = summaries.save_frame(self, "counts", counts.as_frame())
        if name and digest:
            print(f"{len(counts.counts):,} tables: the full counts are artifacts/{name} (sha256 {digest[:12]}…)")
        return counts

    def compare_counts(self, before: snapshots.Snapshot) -> pd.DataFrame:
        """Counts now against ``before``: one row per table that exists in either."""
        after = snapshots.row_counts(self.engine, exact=before.exact)
        compared = summaries.counts_compared(self, "counts-compared", snapshots.compare(before, after))
        # Alembic's own bookkeeping, not data: a merge or a downgrade of a branch removes rows of a version
        # table, which the vanished-rows guard (deploy.require_no_vanished_rows) must not count as a loss.
        compared.attrs["version_tables"] = sorted(
            f"{m.version_table_schema or 'public'}.{m.version_table}" for m in self.sets("all"))
        compared.attrs["after"] = after  # the counts after the change, for save_snapshot(after=...)
        return compared

    # --- checks ----------------------------------------------------------------------------------------
    def check(self, migration_set: str | None = "all") -> pd.DataFrame:
        """alembic check: differences between the models at head and the live schema (empty = in sync)."""
        rows = []
        for m in self.sets(migration_set):
            if not m.models:
                rows.append({"migration_set": m.name, "difference": "(no models configured: skipped)"})
                continue
            rows += [{"migration_set": m.name, "difference": _describe_diff(d)}
                     for d in migrations.check(m, self.engine)]
        frame = pd.DataFrame(rows, columns=["migration_set", "difference"])
        if frame.empty:
            print("Models and database schema agree.")
        return frame

    def save_snapshot(self, after: pd.DataFrame | None = None) -> str:
        """Counts + schema + heads as an artifact: what a later `verify` compares against.

        Args:
            after: ``compare_counts``' result: its counts, taken right after the change (their ``taken_at``
                says when), are the snapshot's instead of counting every table once more. Without it, or
                when those were estimates, the tables are counted now.
        """
        counted = after.attrs.get("after") if after is not None else None
        counts = counted if isinstance(counted, snapshots.Snapshot) and counted.exact else \
            snapshots.row_counts(self.engine)
        schema = snapshots.schema_snapshot(self.engine)
        return self.save_artifact(SNAPSHOT_ARTIFACT, snapshots.snapshot_json(
            counts, schema, database=self.identity.as_dict(), heads={k: list(v) for k, v in self.current().items()}))

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
