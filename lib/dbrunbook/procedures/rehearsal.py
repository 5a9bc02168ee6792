"""Rehearsals: a migration round trip on a restored copy of the target's data, timed, with its locks.

``rehearse`` restores a verified backup into a scratch server, runs the pending migrations there with the
target's timeouts, timing each revision and listing the locks it held at commit, rolls them back, and
checks that the schema is what it was: the guide's "estimate downtime" and "test in staging", done on the
real data. Its artifact ``rehearsal.json`` is what the deploy runbook reads back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dbrunbook.chain import isolation, migrations
from dbrunbook.errors import MigrationFailed, RehearsalFailed
from dbrunbook.postgres import db, snapshots
from dbrunbook.postgres.dump import fields_html, restore_into
from dbrunbook.postgres.scratch import scratch_server
from dbrunbook.procedures.backup_dump import DEFAULT_JOBS
from dbrunbook.procedures.lock_recorder import lock_strength, steps_with_locks, summarize_locks
from dbrunbook.protocol import SessionLike

__all__ = ["REHEARSAL_ARTIFACT", "BackupSource", "Rehearsal", "rehearse", "save_rehearsal"]

REHEARSAL_ARTIFACT = "rehearsal.json"


@dataclass(frozen=True)
class BackupSource:
    """The dump a rehearsal restores: from a backup record, or taken by the rehearsal itself."""

    path: Path
    sha256: str
    started_at: str
    run_id: str  # the backup run, or this run when taken now
    taken_now: bool
    jobs: int = DEFAULT_JOBS

    def _repr_html_(self) -> str:
        origin = "taken now by this run" if self.taken_now else f"backup run {self.run_id}"
        return fields_html([("dump", self.path), ("sha256", self.sha256), ("of the data at", self.started_at),
                            ("from", origin)])


_CATALOG_SQL = {
    "relations": "SELECT n.nspname || '.' || c.relname || ' (' || c.relkind::text || ')' FROM pg_class c "
                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','f') "
                 "AND n.nspname NOT IN ('pg_catalog','information_schema','pg_toast') "
                 "AND n.nspname NOT LIKE 'pg_temp%'",
    "constraints": "SELECT n.nspname || '.' || t.relname || ' ' || k.conname || ': ' || pg_get_constraintdef(k.oid) "
                   "FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid "
                   "JOIN pg_namespace n ON n.oid = t.relnamespace "
                   "WHERE n.nspname NOT IN ('pg_catalog','information_schema','pg_toast')",
    "types": "SELECT n.nspname || '.' || t.typname || ' (' || t.typtype::text || ')' || coalesce(': ' || "
             "(SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e "
             "WHERE e.enumtypid = t.oid), '') FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
             "WHERE t.typtype IN ('e','d') AND n.nspname NOT IN ('pg_catalog','information_schema')",
    "schemas": "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema',"
               "'pg_toast') AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%'",
}


def _catalog(engine: Engine) -> dict[str, list[str]]:
    """What ``snapshots.schema_snapshot`` leaves out: relations with their kind, constraints, enum and
    domain types, schemas; a downgrade that forgets a DROP TYPE shows here."""
    with engine.connect() as conn:
        return {key: sorted(conn.execute(sa.text(sql)).scalars()) for key, sql in _CATALOG_SQL.items()}


def _catalog_diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[dict]:
    rows = []
    for key, items in before.items():
        b, a = set(items), set(after.get(key, []))
        rows += [{"object": x, "change": f"{key[:-1]} gone", "before": x, "after": None} for x in sorted(b - a)]
        rows += [{"object": x, "change": f"{key[:-1]} added", "before": None, "after": x} for x in sorted(a - b)]
    return rows


@dataclass(frozen=True, eq=False)
class Rehearsal:
    """A migration round trip on a restored copy: per revision the seconds up and down and the locks."""

    source: BackupSource
    database: str
    server_version: str
    restore_seconds: float
    start: dict[str, list[str]]
    end: dict[str, list[str]]
    revisions: tuple[dict, ...]
    schema_differences: tuple[dict, ...]
    after_downgrade: dict[str, list[str]]
    error: str = ""

    @property
    def schema_equal(self) -> bool:
        return not self.schema_differences

    @property
    def ok(self) -> bool:
        return not self.error and self.schema_equal and self.after_downgrade == self.start

    def timings(self) -> pd.DataFrame:
        """Seconds per revision, up and down: the guide's downtime estimate on real data."""
        return pd.DataFrame([{k: r[k] for k in ("migration_set", "revision", "description", "seconds_up",
                                                 "seconds_down", "strongest_lock")} for r in self.revisions],
                            columns=["migration_set", "revision", "description", "seconds_up", "seconds_down",
                                     "strongest_lock"])

    def locks(self) -> pd.DataFrame:
        """Relations and lock modes each revision held at its commit, going up."""
        rows = [{"migration_set": r["migration_set"], "revision": r["revision"], **lock,
                 "modes": ", ".join(lock["modes"])}
                for r in self.revisions for lock in r["locks_up"]]
        return pd.DataFrame(rows, columns=["migration_set", "revision", "relation", "kind", "modes", "strongest",
                                           "blocks"])

    def schema_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.schema_differences), columns=["object", "change", "before", "after"])
        if frame.empty:
            print("Schema after the round trip equals the schema before it.")
        return frame

    def as_dict(self) -> dict:
        return {"source": {**asdict(self.source), "path": str(self.source.path)}, "database": self.database,
                "server_version": self.server_version, "restore_seconds": round(self.restore_seconds, 3),
                "start": self.start, "end": self.end, "after_downgrade": self.after_downgrade,
                "revisions": list(self.revisions), "schema_equal": self.schema_equal,
                "schema_differences": list(self.schema_differences), "error": self.error, "ok": self.ok,
                "lock_method": "pg_locks of the migrating backend, read inside each revision's transaction "
                               "just before its COMMIT: every relation lock the revision took, held until then",
                "seconds_up_total": round(sum(r["seconds_up"] or 0 for r in self.revisions), 3),
                "seconds_down_total": round(sum(r["seconds_down"] or 0 for r in self.revisions), 3)}

    def _repr_html_(self) -> str:
        body = self.as_dict()
        rows = [("restored from", self.source.path), ("restore seconds", f"{self.restore_seconds:.2f}"),
                ("start", self.start), ("end", self.end), ("after downgrade", self.after_downgrade),
                ("seconds up (total)", body["seconds_up_total"]),
                ("seconds down (total)", body["seconds_down_total"]),
                ("schema equal after round trip", self.schema_equal), ("ok", self.ok)]
        if self.error:
            rows.append(("error", self.error))
        return fields_html(rows)


def _plan(session: SessionLike, migration_set: str, revision: str, engine: Engine) -> list[tuple]:
    return [(m, migrations.current(m, engine), migrations.pending(m, engine, revision))
            for m in session.sets(migration_set)]


def rehearse(session: SessionLike, source: BackupSource, *, revision: str = "heads",
             migration_set: str = "all") -> Rehearsal:
    """Restore ``source`` into a scratch server, upgrade to ``revision``, downgrade back, compare schemas.

    The migrations run with the target's lock_timeout and statement_timeout, so a statement that would
    exceed them on the target fails here first. The scratch server is stopped and removed whatever happens.
    A failing migration is reported in ``error`` (and ``ok`` is false), not raised: ``save_rehearsal``
    saves the evidence, then stops the run.
    """
    name = session.identity.database
    with scratch_server(session.config, f"rehearse-{session.run_id}") as server:
        url, restore_seconds = restore_into(server, source.path, name, jobs=source.jobs, run_id=session.run_id)
        engine = db.make_engine(url, run_id=session.run_id, lock_timeout=session.target.lock_timeout,
                                statement_timeout=session.target.statement_timeout)
        try:
            return _round_trip(session, engine, source, restore_seconds, revision, migration_set)
        finally:
            engine.dispose()


def _round_trip(session: SessionLike, engine: Engine, source: BackupSource, restore_seconds: float, revision: str,
                migration_set: str) -> Rehearsal:
    plan = _plan(session, migration_set, revision, engine)
    start = {m.name: list(cur) for m, cur, _ in plan}
    schema_before, catalog_before = snapshots.schema_snapshot(engine), _catalog(engine)
    info = {(m.name, r.revision): r for m, _, pend in plan for r in pend}
    rows: dict[tuple[str, str], dict] = {}
    end: dict[str, list[str]] = {}
    error = ""
    options = {"run_id": session.run_id, "lock_timeout": session.target.lock_timeout,
               "statement_timeout": session.target.statement_timeout}
    try:
        for m, _, pend in plan:
            if pend:
                for step, locks in isolation.call(steps_with_locks, m, engine, "upgrade", revision,
                                                  engine_options=options):
                    rows[(m.name, step.revision)] = _row(m.name, step.revision, info, locks, step.seconds)
        end = {m.name: list(migrations.current(m, engine)) for m, _, _ in plan}
        for m, cur, pend in reversed(plan):
            if not pend:
                continue
            # Back to each starting head in turn: downgrading to one head of a branched set leaves the
            # other branches alone.
            for target in cur or ("base",):
                for step, locks in isolation.call(steps_with_locks, m, engine, "downgrade", target,
                                                  engine_options=options):
                    row = rows.setdefault((m.name, step.revision), _row(m.name, step.revision, info, [], None))
                    row["seconds_down"] = round(step.seconds, 4)
                    row["locks_down"] = summarize_locks(locks)
    except MigrationFailed as err:
        error = str(err)
    after = {m.name: list(migrations.current(m, engine)) for m, _, _ in plan}
    differences = snapshots.compare_schema(schema_before, snapshots.schema_snapshot(engine)).to_dict("records")
    differences += _catalog_diff(catalog_before, _catalog(engine))
    return Rehearsal(source=source, database=session.identity.database,
                     server_version=_server_version(engine), restore_seconds=restore_seconds, start=start,
                     end=end, revisions=tuple(rows.values()), schema_differences=tuple(differences),
                     after_downgrade=after, error=error)


def _server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW server_version").scalar_one())


def _row(set_name: str, revision: str, info: dict, locks: list[dict], seconds: float | None) -> dict:
    summary = summarize_locks(locks)
    strongest = max((lock["strongest"] for lock in summary if lock["kind"] != "index"),
                    key=lock_strength, default=None)
    return {"migration_set": set_name, "revision": revision,
            "description": getattr(info.get((set_name, revision)), "message", ""),
            "seconds_up": round(seconds, 4) if seconds is not None else None, "seconds_down": None,
            "strongest_lock": strongest, "locks_up": summary, "locks_down": []}


def save_rehearsal(session: SessionLike, rehearsal: Rehearsal) -> str | None:
    """Write ``rehearsal.json`` into the record (what the deploy record links), then stop if it failed.

    Raises:
        RehearsalFailed: a migration failed on the copy, the downgrade did not return to the starting
            revisions, or the schema after the round trip differs.
    """
    digest = session.save_artifact(REHEARSAL_ARTIFACT,
                                   json.dumps(rehearsal.as_dict(), indent=1, sort_keys=True, default=str) + "\n")
    if not rehearsal.ok:
        reasons = []
        if rehearsal.error:
            reasons.append(f"a migration failed on the restored copy: {rehearsal.error}")
        if rehearsal.after_downgrade != rehearsal.start:
            reasons.append(f"the downgrade ended at {rehearsal.after_downgrade}, not at {rehearsal.start}")
        if not rehearsal.schema_equal:
            objects = ", ".join(str(d["object"]) for d in rehearsal.schema_differences[:8])
            reasons.append(f"{len(rehearsal.schema_differences)} schema difference(s) after the round trip: {objects}")
        raise RehearsalFailed(f"Rehearsal on database '{rehearsal.database}' failed: {'; '.join(reasons)}. Fix "
                              f"the migrations (their downgrade), then run 'dbrunbook run rehearse -t "
                              f"{session.target.name}' again.")
    return digest
