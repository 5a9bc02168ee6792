"""The deployment checklist's own steps on a real PostgreSQL: maintenance on/off and its self-closing window,
the health check, the explicit approval, and the rows-vanished guard of apply and deploy.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import sqlalchemy as sa

from dbrunbook.config import load_config
from dbrunbook.errors import (
    GUARD_ENAMES,
    ConfirmationRequired,
    GuardStop,
    HealthCheckFailed,
    MaintenanceFailed,
    RowsVanished,
)
from dbrunbook.execution.session import Session
from dbrunbook.procedures import deploy

pytestmark = pytest.mark.integration


def _session(proj, tmp_path, *, extra: str = "", protected: bool = False, run: str = "run") -> Session:
    text = proj.config_path.read_text()
    if protected:
        text = text.replace("protected = false", "protected = true", 1)
    if extra:
        text = text.replace('lock_timeout = "2s"', 'lock_timeout = "2s"\n' + extra, 1)
    proj.config_path.write_text(text)
    return Session(load_config(proj.config_path), "local", run_id=run, record_dir=str(tmp_path / run))


def _sql(s: Session, *statements: str) -> None:
    with s.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def _artifact(tmp_path, run: str, name: str) -> dict:
    return json.loads((tmp_path / run / "artifacts" / name).read_text())


# --- maintenance ----------------------------------------------------------------------------------------------
@pytest.fixture
def switchable(project, tmp_path):
    """A target with a maintenance flag file and a command that logs each switch."""
    flag, log = tmp_path / "app" / "maintenance", tmp_path / "switches.log"
    extra = (f'maintenance_flag = "{flag}"\n'
             f'maintenance_command = "sh -c \'echo {{state}} >> {log}\'"\n')
    s = _session(project, tmp_path, extra=extra)
    yield s, flag, log
    s.engine.dispose()


def test_maintenance_on_then_off_switches_the_flag_and_the_command_and_records_both(switchable, tmp_path):
    s, flag, log = switchable
    on = deploy.maintenance(s, True, dry_run=False)
    assert flag.exists() and log.read_text() == "on\n"
    assert on[["state", "done"]].values.tolist() == [["on", True], ["on", True]]
    off = deploy.maintenance(s, False, dry_run=False)
    assert not flag.exists() and log.read_text() == "on\noff\n"
    assert off["output"].tolist() == ["absent", ""]
    assert _artifact(tmp_path, "run", "maintenance_on.json")["state"] == "on"
    closed = _artifact(tmp_path, "run", "maintenance_off.json")
    assert (closed["state"], closed["after_failure"]) == ("off", False)


def test_a_dry_run_switches_nothing(switchable, tmp_path):
    s, flag, log = switchable
    frame = deploy.maintenance(s, True, dry_run=True)
    assert not flag.exists() and not log.exists()
    assert frame["done"].tolist() == [False, False]
    assert not (tmp_path / "run" / "artifacts" / "maintenance_on.json").exists()


def test_the_window_turns_maintenance_off_after_a_failed_step(switchable, tmp_path):
    s, flag, log = switchable
    with pytest.raises(HealthCheckFailed), deploy.maintenance_window(s, dry_run=False):
        assert flag.exists()
        raise HealthCheckFailed("Health check of http://app/health answered HTTP 503. Check the application logs.")
    assert not flag.exists() and log.read_text() == "on\noff\n"
    closed = _artifact(tmp_path, "run", "maintenance_off.json")
    assert (closed["state"], closed["after_failure"]) == ("off", True)
    assert closed["failed_step_error"].startswith("HealthCheckFailed: Health check of http://app/health answered")


def test_a_failing_maintenance_command_names_itself_and_the_fix(project, tmp_path):
    s = _session(project, tmp_path, extra="maintenance_command = \"sh -c 'echo busy >&2; exit 4'\"\n")
    try:
        with pytest.raises(MaintenanceFailed) as err:
            deploy.maintenance(s, True, dry_run=False)
    finally:
        s.engine.dispose()
    assert str(err.value) == ("Maintenance on command sh exited 4: busy. Fix it, or switch maintenance on by hand "
                              "before going on.")
    assert err.value.exit_status == 1
    # the failed switch was undone at once; the off command failed too, and the record says maintenance may be on
    closed = _artifact(tmp_path, "run", "maintenance_off.json")
    assert (closed["state"], closed["after_failure"]) == ("still on", True)
    assert closed["error"] == ("MaintenanceFailed: Maintenance off command sh exited 4: busy. Fix it, or switch "
                               "maintenance off by hand before going on.")


# --- health check ---------------------------------------------------------------------------------------------
class _App(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def app():
    server = http.server.HTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()
    server.server_close()


def test_health_check_passes_on_2xx_and_fails_with_the_status(app, monkeypatch):
    server, url = app
    assert deploy.health_check(url).values.tolist() == [[url, 200, True]]
    monkeypatch.setattr(_App, "status", 503)
    with pytest.raises(HealthCheckFailed) as err:
        deploy.health_check(url)
    assert str(err.value) == f"Health check of {url} answered HTTP 503. Check the application logs."


def test_health_check_of_an_application_that_is_down(app):
    server, url = app
    server.shutdown()
    server.server_close()
    with pytest.raises(HealthCheckFailed) as err:
        deploy.health_check(url, timeout=2)
    assert str(err.value).startswith(f"Health check of {url} failed: <urlopen error [Errno 111] Connection refused>")
    assert str(err.value).endswith("Check the application before going on.")


# --- approval ---------------------------------------------------------------------------------------------------
def test_a_protected_deploy_needs_the_live_database_name(project, tmp_path, capsys):
    s = _session(project, tmp_path, protected=True)
    try:
        database = s.identity.database
        with pytest.raises(ConfirmationRequired) as err:
            deploy.require_approval(s, "production", dry_run=False)
        assert str(err.value) == (f"Deploying to protected target 'local' needs an explicit approval: run again with "
                                  f"-p approve {database} (the live database's name; got 'production').")
        assert isinstance(err.value, GuardStop) and err.value.exit_status == 3
        dry = deploy.require_approval(s, "", dry_run=True)
        assert dry[["required", "ok"]].values.tolist() == [[True, False]]
        assert capsys.readouterr().out.startswith("dry_run: a real run would stop here: Deploying to protected")
        ok = deploy.require_approval(s, database, dry_run=False)
        assert ok[["required", "ok", "detail"]].values.tolist() == [[True, True, f"approved for {database}"]]
    finally:
        s.engine.dispose()


# --- rows vanished ----------------------------------------------------------------------------------------------
def test_rows_vanished_beyond_the_tolerance_stop_naming_the_table(project, tmp_path):
    s = _session(project, tmp_path)
    try:
        _sql(s, "CREATE TABLE orders (id int PRIMARY KEY)", "CREATE TABLE notes (id int PRIMARY KEY)",
             "INSERT INTO orders SELECT generate_series(1, 200)", "INSERT INTO notes SELECT generate_series(1, 10)")
        before = s.row_counts(exact=True)
        _sql(s, "DELETE FROM orders WHERE id <= 3",  # 1.5 %
             "INSERT INTO notes VALUES (11)")  # growth is never a loss
        diff = s.compare_counts(before)
        with pytest.raises(RowsVanished) as err:
            deploy.require_no_vanished_rows(diff, 0)
        assert str(err.value) == ("Rows vanished beyond the tolerance of 0%: public.orders 200 -> 197 rows. Check the "
                                  "data migration, restore from the backup if the rows are needed, or run again with "
                                  "-p tolerance PERCENT when the loss is intended.")
        assert err.value.losses == [{"table": "public.orders", "before": 200, "after": 197}]
        assert err.value.exit_status == 3 and "RowsVanished" in GUARD_ENAMES
        within = deploy.require_no_vanished_rows(diff, 2)
        assert within.values.tolist() == [["public.orders", 200, 197, 3, 1.5, True]]
        _sql(s, "DROP TABLE notes")
        with pytest.raises(RowsVanished) as err:
            deploy.require_no_vanished_rows(s.compare_counts(before), 2)
        assert err.value.losses == [{"table": "public.notes", "before": 10, "after": 0}]
    finally:
        s.engine.dispose()


def test_the_snapshot_keeps_the_counts_taken_right_after_the_change(project, tmp_path):
    # apply and deploy save the counts their comparison took after the upgrade (no second count of every
    # table); without them, or from estimates, the snapshot counts now.
    s = _session(project, tmp_path)
    try:
        _sql(s, "CREATE TABLE orders (id int PRIMARY KEY)", "INSERT INTO orders SELECT generate_series(1, 20)")
        before = s.row_counts(exact=True)
        _sql(s, "INSERT INTO orders SELECT generate_series(21, 25)")
        diff = s.compare_counts(before)
        _sql(s, "INSERT INTO orders SELECT generate_series(26, 30)")  # what the application writes after it
        s.save_snapshot(after=diff)
        saved = _artifact(tmp_path, "run", "snapshot.json")
        assert saved["counts"]["counts"]["public.orders"] == 25
        assert saved["counts"]["taken_at"] == diff.attrs["after"].taken_at
        assert saved["schema"]["columns"]["public.orders"]  # the schema is read now
    finally:
        s.engine.dispose()
    for run, after in (("plain", None), ("estimated", s.compare_counts(s.row_counts(exact=False)))):
        t = _session(project, tmp_path, run=run)
        try:
            t.save_snapshot(after=after)
            assert _artifact(tmp_path, run, "snapshot.json")["counts"]["counts"]["public.orders"] == 30
            assert _artifact(tmp_path, run, "snapshot.json")["counts"]["exact"] is True
        finally:
            t.engine.dispose()


def test_the_maintenance_command_gets_no_connection_url_and_its_output_is_masked(project, tmp_path):
    from tests.projects import URL_ENV

    command = f"sh -c 'echo url=${{{URL_ENV}:-unset}} postgresql://app:hunter22@db/app'"
    s = _session(project, tmp_path, extra=f'maintenance_command = "{command}"\n')
    try:
        frame = deploy.maintenance(s, True, dry_run=False)
        deploy.maintenance(s, False, dry_run=False)
    finally:
        s.engine.dispose()
    assert frame["output"].tolist() == ["url=unset postgresql://app:***@db/app"]
