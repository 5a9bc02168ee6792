"""The restore check of a dump: its archive read back, and on request restored on a scratch server.

A dump that ``pg_restore`` cannot read, or that lacks a table's data, must never pass for a backup. The check
reads the table of contents (``pg_restore --list``), finds every data file it names and the database it came
from; a full restore into a throwaway server compares the row counts with those read in the dump's snapshot.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy.pool import NullPool

from dbrunbook.errors import BackupFailed
from dbrunbook.postgres import db, snapshots
from dbrunbook.postgres.dump import DumpTool, fields_html, restore_into, run_tool
from dbrunbook.postgres.scratch import scratch_server
from dbrunbook.procedures.backup_dump import DumpResult
from dbrunbook.protocol import SessionLike

__all__ = ["RestoreCheck", "restore_check"]

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
        out = fields_html(rows) + (f"<p><b>Problems</b></p><ul>{problems}</ul>" if problems else "")
        if self.full_restore:
            from dbrunbook.views.tables import frame_html

            out += frame_html(self.counts_frame())
        return out


def _read_toc(tool: DumpTool, result: DumpResult) -> tuple[str, list[str]]:
    env = dict(os.environ)  # --list reads the folder only; it never connects
    out = run_tool([str(tool.pg_restore), "--list", str(result.path)], env, f"pg_restore --list {result.path}")
    return out, out.splitlines()


def restore_check(session: SessionLike, result: DumpResult, *, full_restore: bool = False) -> RestoreCheck:
    """Read the archive back; with ``full_restore``, restore it into a scratch server and compare counts.

    ``pg_restore --list`` must read the table of contents; every TABLE DATA entry must have its data file;
    every table the dump's snapshot held must have a TABLE DATA entry; the archive must name the source
    database and server version. The full restore (``result.source_counts`` needed: ``dump(counts=True)``)
    runs on a throwaway embedded server under ``<state_dir>/scratch``, stopped and removed afterwards.
    """
    try:
        _, lines = _read_toc(result.tool, result)
    except BackupFailed as err:
        return RestoreCheck(False, 0, 0, "", "", (str(err),))
    check = _listing_check(result, lines)
    if not full_restore:
        return check
    if result.source_counts is None:
        raise BackupFailed("A full restore check compares row counts taken in the dump's snapshot: call "
                           "dump(..., counts=True) before restore_check(..., full_restore=True).")
    seconds, rows = _restored_counts(session, result, result.source_counts)
    problems = list(check.problems)
    differ = [str(r["table"]) for r in rows if r["status"] != "same"]
    if differ:
        problems.append(f"row counts of {len(differ)} table(s) differ after the restore: {', '.join(differ[:10])}")
    return dataclasses.replace(check, problems=tuple(problems), full_restore=True, restore_seconds=seconds,
                               counts=rows)


def _listing_check(result: DumpResult, lines: list[str]) -> RestoreCheck:
    """What the table of contents says: data files present, every table's data there, the right source."""
    problems: list[str] = []
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
    return RestoreCheck(True, len(entries), len(data), dumped_from, dbname, tuple(problems))


def _restored_counts(session: SessionLike, result: DumpResult,
                     source_counts: snapshots.Snapshot) -> tuple[float, tuple[dict, ...]]:
    """Restore the dump on a scratch server; the seconds it took and its row counts against the source's."""
    with scratch_server(session.config, f"restore-{session.run_id}") as server:
        url, seconds = restore_into(server, result.path, result.database["database"], jobs=result.jobs,
                                    run_id=session.run_id)
        engine = db.make_engine(url, run_id=session.run_id, poolclass=NullPool)
        try:
            restored = snapshots.row_counts(engine)
        finally:
            engine.dispose()
    frame = snapshots.compare(source_counts, restored)
    rows = tuple({k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records"))
    return seconds, rows
