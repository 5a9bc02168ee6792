"""The steps of the guide's Production Deployment Checklist that are more than one call elsewhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.errors import (
    ConfirmationRequired,
    HealthCheckFailed,
    MigrationFailed,
    RowsVanished,
)
from dbrunbook.postgres import sqlimpact, sqlparse, sqltext
from dbrunbook.postgres.db import mask_secrets
from dbrunbook.procedures.maintenance import maintenance, maintenance_window
from dbrunbook.protocol import SessionLike

__all__ = [
    "activity", "breaking_changes", "changelog_entry", "health_check", "maintenance", "maintenance_window",
    "rehearsal_estimate", "require_approval", "require_no_vanished_rows", "rollback_plan", "verify_success",
]


def breaking_changes(preview) -> pd.DataFrame:
    """Statements of the pending SQL that break code still running against the old schema.

    The guide's "Check for breaking changes", read by PostgreSQL's parser (``sqlimpact.breaking``): a
    ``COMMENT ... IS 'we DROP TABLE later'`` is a comment, ``RENAME COLUMN "old name"`` a rename. A statement
    the parser rejects is listed as "could not parse", to be read by a person.
    """
    rows = []
    for set_name, steps in preview.steps.items():
        for step in steps:
            for statement in _statements(step.sql):
                if not sqlparse.describe(statement).parsed:
                    found = [("could not parse", "PostgreSQL's parser rejects it: read it yourself")]
                else:
                    found = sqlimpact.breaking(statement)
                for what, why in found:
                    rows.append({"migration_set": set_name, "revision": step.revision, "change": what,
                                 "why it matters": why, "statement": statement.strip()[:160]})
    frame = pd.DataFrame(rows, columns=["migration_set", "revision", "change", "why it matters", "statement"])
    if frame.empty:
        print("No breaking change found in the pending SQL.")
    return frame


def _statements(sql: str) -> list[str]:
    return [statement.flat for statement in sqltext.split_statements(sql)]


def rollback_plan(session: SessionLike, revision: str = "heads", migration_set: str = "all") -> pd.DataFrame:
    """For each set with pending steps: the downgrade command and whether every pending step can be undone.

    A downgrade that cannot be rendered offline (online-only) is not judged a no-op: it is listed with its
    reason under "online-only downgrades", and whether it undoes anything is for its review to say.
    """
    rows = []
    for m in session.sets(migration_set):
        pending = migrations.pending(m, session.engine, revision)
        if not pending:
            continue
        cur = migrations.current(m, session.engine)
        back_to = ",".join(cur) if cur else "base"
        steps = migrations.offline_sql(m, ",".join(migrations.resolve(m, revision)), back_to,
                                       direction="downgrade")
        empty = [s.revision for s in steps
                 if not getattr(s, "online_only", False) and not _statements(_strip_version_updates(s.sql))]
        online = [s for s in steps if getattr(s, "online_only", False)]
        rows.append({"migration_set": m.name, "steps": len(pending), "rollback to": back_to,
                     "command": f"dbrunbook run rollback -t {session.target.name} -p migration_set {m.name} "
                                f"-p revision {back_to} -p dry_run false",
                     "reversible": not empty, "no-op downgrades": ", ".join(empty) or None,
                     "online-only downgrades": "; ".join(f"{s.revision}: {s.reason}" for s in online) or None})
    frame = pd.DataFrame(rows, columns=["migration_set", "steps", "rollback to", "command", "reversible",
                                        "no-op downgrades", "online-only downgrades"])
    if frame.empty:
        print("Nothing pending: no rollback plan needed.")
    return frame


def _strip_version_updates(sql: str) -> str:
    """The SQL without Alembic's own statements (version table, transaction): what the downgrade changes."""
    kept = []
    for statement in sqltext.split_statements(sql):
        d = sqlparse.describe(statement.flat)
        if d.kind == "TRANSACTION" or (d.table or "").split(".")[-1] == "alembic_version" or (
                not d.parsed and "alembic_version" in statement.flat):
            continue
        kept.append(statement.code + ";")
    return "\n".join(kept)


def verify_success(session: SessionLike, revision: str = "heads", migration_set: str = "all", *, dry_run: bool = True
                   ) -> pd.DataFrame:
    """The guide's "alembic current  # Check version": each set is at the revision it was deployed to."""
    rows = []
    for m in session.sets(migration_set):
        cur = migrations.current(m, session.engine)
        want = migrations.resolve(m, revision)
        rows.append({"migration_set": m.name, "current": ", ".join(cur) or "(base)",
                     "expected": ", ".join(want), "ok": set(cur) == set(want)})
    frame = pd.DataFrame(rows, columns=["migration_set", "current", "expected", "ok"])
    if not dry_run and not frame["ok"].all():
        bad = frame[~frame["ok"]].iloc[0]
        raise MigrationFailed(bad["migration_set"], bad["expected"], tuple(bad["current"].split(", ")),
                              "the database is not at the expected revision after the upgrade")
    return frame


def require_no_vanished_rows(diff: pd.DataFrame, tolerance: float = 0.0) -> pd.DataFrame:
    """Guard of apply and deploy: no table lost more than ``tolerance`` percent of its rows during the run.

    ``diff`` is ``Session.compare_counts(before)``; the migration sets' version tables it names are Alembic's
    bookkeeping and never count (a merge removes rows there). A table that is gone counts as all its rows lost, as
    in the verify runbook; growth never counts. The same guard stops a dry run: nothing of this run deleted the rows,
    so something else did, and that is worth stopping for too.

    Returns:
        The tables that lost rows (within the tolerance), with their counts.

    Raises:
        RowsVanished: the tables beyond the tolerance, named with their counts (``losses``).
    """
    columns = ["table", "before", "after", "lost", "percent", "within tolerance"]
    bookkeeping = set(diff.attrs.get("version_tables", ()))  # set by Session.compare_counts
    rows = []
    for r in diff.to_dict("records"):
        if r.get("table") in bookkeeping:
            continue
        before, after = r.get("before"), r.get("after")
        if before is None or pd.isna(before) or not before:
            continue
        after = 0 if after is None or pd.isna(after) else int(after)
        if after >= before:
            continue
        percent = 100.0 * (before - after) / before
        rows.append({"table": r["table"], "before": int(before), "after": after, "lost": int(before) - after,
                     "percent": round(percent, 2), "within tolerance": percent <= tolerance})
    frame = pd.DataFrame(rows, columns=columns)
    beyond = frame[~frame["within tolerance"]] if not frame.empty else frame
    if not beyond.empty:
        raise RowsVanished(beyond[["table", "before", "after"]].to_dict("records"), tolerance)
    print("No table lost rows." if frame.empty else
          f"{len(frame)} table(s) lost rows within the tolerance of {tolerance:g}%.")
    return frame


def health_check(url: str | None, *, timeout: float = 10.0) -> pd.DataFrame:
    """GET the application's health URL (the guide's `curl .../health`); no URL configured: say so."""
    if not url:
        print("No health_url configured for this target: skipped (set health_url in dbrunbook.toml).")
        return pd.DataFrame(columns=["url", "status", "ok"])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        raise HealthCheckFailed(mask_secrets(f"Health check of {url} failed: {err}. Check the application before "
                                             f"going on.")) from err
    if not 200 <= status < 300:
        raise HealthCheckFailed(mask_secrets(f"Health check of {url} answered HTTP {status}. Check the application "
                                             f"logs."))
    return pd.DataFrame([{"url": mask_secrets(url), "status": status, "ok": True}])


def activity(session: SessionLike) -> pd.DataFrame:
    """The guide's `SELECT * FROM pg_stat_activity WHERE state = 'active'`, without the query texts' secrets."""
    sql = sa.text(
        """SELECT pid, usename AS user, application_name, state, wait_event_type, wait_event,
                  date_trunc('second', now() - xact_start) AS transaction_age, left(query, 80) AS query
           FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
           ORDER BY xact_start NULLS LAST"""
    )
    with session.engine.connect() as conn:
        return pd.DataFrame(conn.execute(sql).mappings().all())


def require_approval(session: SessionLike, approve: str, *, dry_run: bool = True) -> pd.DataFrame:
    """Guard: a protected target's deploy needs ``approve`` equal to the live database's name.

    The approval is a parameter because ``input()`` cannot work under papermill; naming the database (read
    live, not from the config) makes the operator say which database they mean to change.
    """
    database = session.identity.database
    if not session.target.protected:
        return pd.DataFrame([{"check": "approval", "required": False, "ok": True,
                              "detail": f"target '{session.target.name}' is not protected"}])
    if approve != database:
        message = (f"Deploying to protected target '{session.target.name}' needs an explicit approval: run again "
                   f"with -p approve {database} (the live database's name; got {approve!r}).")
        if dry_run:
            print(f"dry_run: a real run would stop here: {message}")
            return pd.DataFrame([{"check": "approval", "required": True, "ok": False, "detail": message}])
        raise ConfirmationRequired(message)
    return pd.DataFrame([{"check": "approval", "required": True, "ok": True, "detail": f"approved for {database}"}])


def rehearsal_estimate(rehearsal: dict | None) -> pd.DataFrame:
    """The guide's "Estimate downtime": per revision seconds measured by the latest rehearsal on restored data."""
    if not rehearsal:
        print("No rehearsal record of this database: run 'dbrunbook run rehearse' to measure the migrations on a "
              "restored copy before deploying.")
        return pd.DataFrame(columns=["migration_set", "revision", "seconds up", "seconds down", "locks"])
    rows = [{"migration_set": step.get("migration_set"), "revision": step.get("revision"),
             "seconds up": step.get("seconds_up"), "seconds down": step.get("seconds_down"),
             "locks": ", ".join(sorted({f"{lk.get('mode')} {lk.get('relation')}" for lk in step.get("locks", [])
                                        if isinstance(lk, dict)}))[:200] or None}
            for step in rehearsal.get("steps", [])]
    print(f"Rehearsal {rehearsal.get('run_id')} ({rehearsal.get('record_status')}): "
          f"{sum(r['seconds up'] or 0 for r in rows):.2f}s to upgrade on restored data.")
    return pd.DataFrame(rows, columns=["migration_set", "revision", "seconds up", "seconds down", "locks"])


def changelog_entry(session, *, dry_run: bool = True, backup=None, approved_preview: str = "",
                    rehearsal: dict | None = None) -> dict:
    """The guide's "Record migration in changelog": an entry saved as an artifact, linking the child records.

    The backup, preview and rehearsal are runbooks of their own with their own signed records; the deploy
    record names them here so a reviewer can follow the chain.
    """
    links = {"preview": approved_preview or None, "rehearsal": (rehearsal or {}).get("run_id"), "backup": None}
    if isinstance(backup, pd.DataFrame) and "check" in backup and (backup["check"] == "record").any():
        links["backup"] = str(backup.loc[backup["check"] == "record", "detail"].iloc[0])
    entry = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": session.run_id,
        "target": session.target.name,
        "database": session.identity.database,
        "dry_run": dry_run,
        "heads": {k: list(v) for k, v in session.current().items()},
        "records": links,
    }
    session.save_artifact("changelog.json", json.dumps(entry, indent=1, sort_keys=True) + "\n")
    return entry
