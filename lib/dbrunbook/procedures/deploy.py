"""The steps of the guide's Production Deployment Checklist that are more than one call elsewhere."""

from __future__ import annotations

import atexit
import contextlib
import json
import shlex
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from dbrunbook.chain import migrations
from dbrunbook.errors import (
    ConfirmationRequired,
    HealthCheckFailed,
    MaintenanceFailed,
    MigrationFailed,
    RowsVanished,
)
from dbrunbook.postgres import sqlimpact, sqlparse, sqltext
from dbrunbook.postgres.db import mask_secrets


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


def rollback_plan(session, revision: str = "heads", migration_set: str = "all") -> pd.DataFrame:
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


def verify_success(session, revision: str = "heads", migration_set: str = "all", *, dry_run: bool = True
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
    bookkeeping and never count (a merge removes rows there). A table that is gone counts as all its rows lost, as in the
    verify runbook; growth never counts. The same guard stops a dry run: nothing of this run deleted the rows,
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


def activity(session) -> pd.DataFrame:
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


def require_approval(session, approve: str, *, dry_run: bool = True) -> pd.DataFrame:
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


def maintenance(session, on: bool, *, dry_run: bool = True) -> pd.DataFrame:
    """Put the application in maintenance mode or take it out (the guide's `touch .../maintenance`).

    Per target, ``maintenance_flag`` names a file to create/remove and ``maintenance_command`` a command run
    with ``{state}`` replaced by on/off (no shell). Neither configured: say so and go on.

    Turning it on opens a maintenance window that closes itself: in a notebook, a step that fails while the
    window is open turns maintenance off right after it (an IPython ``post_run_cell`` hook, so it happens
    before papermill stops the run), and so does the end of the process. The record says what happened
    either way: ``artifacts/maintenance_on.json`` when it went on, ``artifacts/maintenance_off.json`` when it
    went off (``after_failure`` and the failed step's error when the window closed itself, ``still_on`` when
    even that failed). An ``on`` without an ``off`` in a record means it may still be on.
    """
    window = not dry_run and _configured(session.target)
    if window and on:
        _Window.open(session)  # before switching: a half-done switch (flag made, command failed) is closed too
    try:
        frame = _switch(session, on, dry_run=dry_run)
    except Exception as err:
        if window and on:  # undo a half-done switch at once, whoever called
            _Window.close(session, after_failure=f"{type(err).__name__}: {err}")
        raise
    if window and not on:
        _Window.close(session, after_failure=None)
    return frame


@contextlib.contextmanager
def maintenance_window(session, *, dry_run: bool = True):
    """``with maintenance_window(s, dry_run=False): ...`` — on for the block, off after it, also after an error."""
    maintenance(session, True, dry_run=dry_run)
    try:
        yield
    except BaseException as err:
        if not dry_run and _configured(session.target):
            _Window.close(session, after_failure=f"{type(err).__name__}: {err}")
        raise
    maintenance(session, False, dry_run=dry_run)


def _configured(target) -> bool:
    return bool(target.maintenance_flag or target.maintenance_command)


class _Window:
    """The one open maintenance window of this process (a runbook deploys to one target)."""

    session = None
    hook = None

    @classmethod
    def open(cls, session) -> None:
        cls.session = session
        _save(session, "maintenance_on.json", {"state": "on", "target": session.target.name})
        if cls.hook is None:
            cls.hook = _install_hook()

    @classmethod
    def close(cls, session, *, after_failure: str | None) -> None:
        if cls.session is None:
            return
        cls.session = None
        body = {"state": "off", "target": session.target.name, "after_failure": after_failure is not None}
        if after_failure is not None:
            body["failed_step_error"] = after_failure
            try:
                _switch(session, False, dry_run=False)
                print(f"Maintenance mode turned off after the failed step ({after_failure[:200]}).")
            except Exception as err:  # noqa: BLE001 - recorded and shown; the step's own failure stays the error
                body.update(state="still on", error=f"{type(err).__name__}: {err}")
                print(f"MAINTENANCE MODE IS STILL ON for target '{session.target.name}': turning it off after the "
                      f"failed step failed too ({err}). Switch it off by hand.")
        _save(session, "maintenance_off.json", body)


def _save(session, name: str, body: dict) -> None:
    from datetime import datetime as _dt

    body = {**body, "when": _dt.now(UTC).isoformat(timespec="seconds")}
    with contextlib.suppress(FileExistsError):  # a second window in one run: the first one's files stay
        session.save_artifact(name, json.dumps(body, indent=1, sort_keys=True) + "\n")


def _install_hook():
    """Close the window after any failed cell (papermill runs no further cells after one); and at exit."""
    def after_cell(result) -> None:
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if error is not None and _Window.session is not None:
            _Window.close(_Window.session, after_failure=f"{type(error).__name__}: {error}")

    def at_exit() -> None:
        if _Window.session is not None:
            _Window.close(_Window.session, after_failure="the process ended with maintenance on")

    atexit.register(at_exit)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the kernel
        return at_exit
    shell = get_ipython()
    if shell is not None:
        shell.events.register("post_run_cell", after_cell)
    return after_cell


def _switch(session, on: bool, *, dry_run: bool = True) -> pd.DataFrame:
    """Switch maintenance as configured for the target; the table of what was done."""
    target, state = session.target, "on" if on else "off"
    rows = []
    if not target.maintenance_flag and not target.maintenance_command:
        print(f"No maintenance_flag or maintenance_command for target '{target.name}': maintenance {state} skipped.")
        return pd.DataFrame(columns=["action", "state", "done", "output"])
    if target.maintenance_flag:
        flag = Path(target.maintenance_flag).expanduser()
        if not dry_run:
            if on:
                flag.parent.mkdir(parents=True, exist_ok=True)
                flag.touch()
            else:
                flag.unlink(missing_ok=True)
        rows.append({"action": f"flag file {flag}", "state": state, "done": not dry_run,
                     "output": "exists" if flag.exists() else "absent"})
    if target.maintenance_command:
        argv = [part.replace("{state}", state) for part in shlex.split(target.maintenance_command)]
        output = "(dry run: not run)"
        if not dry_run:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_command_env(target))
            output = mask_secrets((proc.stdout + proc.stderr).strip())[-500:]
            if proc.returncode != 0:
                raise MaintenanceFailed(f"Maintenance {state} command {argv[0]} exited {proc.returncode}: {output}. "
                                        f"Fix it, or switch maintenance {state} by hand before going on.")
        rows.append({"action": f"command {' '.join(argv)}", "state": state, "done": not dry_run, "output": output})
    return pd.DataFrame(rows, columns=["action", "state", "done", "output"])


def _command_env(target) -> dict[str, str]:
    """The maintenance command's environment: ours without the target's connection URL and PGPASSWORD."""
    import os

    return {k: v for k, v in os.environ.items() if k not in {target.url_env, "PGPASSWORD"}}


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
