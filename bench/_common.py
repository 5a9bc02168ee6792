"""Shared by the benchmarks: a PostgreSQL to measure on, medians, and RESULTS.md sections."""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
WORK = BENCH / "_work"


def admin_url(data: Path | None = None) -> str:
    """A server to measure on: $DBRUNBOOK_BENCH_DATABASE_URL, else an embedded one with its data in ``data``
    (default bench/_work/pg)."""
    from dbrunbook.config import normalize_url
    from dbrunbook.postgres.embedded import EmbeddedServer

    external = os.environ.get("DBRUNBOOK_BENCH_DATABASE_URL")
    if external:
        return normalize_url(external)
    WORK.mkdir(exist_ok=True)
    return EmbeddedServer(data or WORK / "pg").ensure_started()


def fresh_database(admin: str, name: str) -> str:
    from dbrunbook.postgres import db

    db.drop_database(admin, name)
    db.create_database(admin, name)
    return db.with_database(admin, name)


def median_seconds(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between markers <!-- name --> … <!-- /name --> of RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nMachine: 2 cores, 24 GiB.\n"
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def trust_operator_key(config_path: Path, operator: str | None = None) -> None:
    """Give a bench project a signing key trusted as this machine's operator, as a new user does once:
    ``dbrunbook keygen --trust`` (runs never create or trust a key by themselves)."""
    import subprocess
    import sys as _sys

    env = dict(os.environ, DBRUNBOOK_CONFIG=str(config_path))
    if operator:  # the principal the runs will name (DBRUNBOOK_OPERATOR), e.g. the scheduler's
        env["DBRUNBOOK_OPERATOR"] = operator
    dbrunbook = Path(_sys.executable).parent / "dbrunbook"
    subprocess.run([str(dbrunbook), "keygen", "--trust"], env=env, check=True, capture_output=True)
