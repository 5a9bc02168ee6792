"""The backup's dump: pg_dump in directory format, parallel, on one exported snapshot, and its folder's digest.

``dump`` exports and holds an MVCC snapshot (``pg_export_snapshot`` + ``--snapshot``), so the list of tables
and, for a full restore check, the source row counts are read in exactly the instant the dump holds, even
while the application writes. The digest of the folder is what the backup record signs and what the
recent-backup guard hashes again before a change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dbrunbook.errors import BackupFailed
from dbrunbook.postgres import snapshots
from dbrunbook.postgres.dump import DumpTool, dump_tool, fields_html, libpq_environment, run_tool
from dbrunbook.protocol import SessionLike

__all__ = ["DEFAULT_COMPRESSION", "DEFAULT_JOBS", "FORMAT", "DumpResult", "dump", "dump_digest"]

FORMAT = "directory"
DEFAULT_JOBS = 2
#: gzip level 1: measured in bench/backup.py (section "backup" of bench/RESULTS.md) against -Z 0 and the
#: default level; the bundled pg_dump 18 is built without lz4 and zstd.
DEFAULT_COMPRESSION = "gzip:1"
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{size} B"


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
        return fields_html([
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


def _backup_folder(session: SessionLike) -> Path:
    name = session.run_id if session.record_dir is not None else (
        f"{session.run_id}-{_now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}")
    return Path(session.config.state_dir) / "backups" / name


def dump(session: SessionLike, *, jobs: int = DEFAULT_JOBS, compression: str = DEFAULT_COMPRESSION,
         tool: DumpTool | None = None, counts: bool = False, folder: Path | None = None) -> DumpResult:
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
