"""The postmaster of a data directory seen from outside: its pid file, whether it lives, whether it answers.

A dbrunbook server outlives the command that started it, so a later command must find it again: by the
``postmaster.pid`` it left, by a process check that is not fooled by a reused pid (after a reboot), and by a
real connection, the only proof of health. These helpers hold no state; ``EmbeddedServer`` combines them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from dbrunbook.errors import EmbeddedServerError
from dbrunbook.postgres.bundle import DATABASE_USER, bin_dir

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 3  # seconds; libpq's minimum is 2


def socket_url(socket_dir: Path, port: int, database: str) -> str:
    from urllib.parse import quote

    return (f"postgresql+psycopg://{DATABASE_USER}@/{quote(database, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={port}")


def _connect(socket_dir: Path, port: int):
    import psycopg

    return psycopg.connect(host=str(socket_dir), port=port, user=DATABASE_USER, dbname="postgres",
                           connect_timeout=_CONNECT_TIMEOUT, application_name="dbrunbook:health")


def server_version(socket_dir: Path, port: int, data_dir: Path) -> str | None:
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


def lock_file_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def read_pid_file(data_dir: Path) -> dict[str, Any] | None:
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


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_postmaster_of(pid: int, data_dir: Path) -> bool:
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


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def ensure_private_dir(path: Path, uid: int, gid: int) -> None:
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
def bundled_major() -> str | None:
    try:
        out = subprocess.run([str(bin_dir() / "pg_config"), "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "PostgreSQL 18.1" -> "18"
    return out.split()[-1].split(".")[0] if out.strip() else None
