"""How sealing and verifying scale with the archive: seal time and `verify` throughput at N records.

Synthetic records of one database (a 6-cell notebook, one artifact), each signed exactly as the launcher signs
them; no PostgreSQL is needed. A seal is what the launcher does per run: ``archive.previous_statement``,
``records.build_statement``, ``records.write_record``. Verify is ``archive.verify_archive`` over the whole archive
(signatures, digests, chain, chain index), what ``dbrunbook verify outputs`` runs.

    .venv/bin/python bench/archive.py                 # 100 and 3,000 records, writes RESULTS.md
    .venv/bin/python bench/archive.py 100 3000 10000  # other sizes
    PYTHONPATH=/tmp/old/lib .venv/bin/python bench/archive.py --label before --no-write  # another checkout
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import WORK, write_section  # noqa: E402

DATABASE = {"database": "app", "system_identifier": "7301234567890123456", "oid": 16384}
START = datetime(2026, 1, 1, tzinfo=UTC)


def _notebook() -> bytes:
    cells = [{"cell_type": "markdown", "id": "m0", "metadata": {}, "source": "# Status\n"}]
    for i in range(5):
        cells.append({"cell_type": "code", "id": f"c{i}", "execution_count": i + 1, "metadata": {},
                      "source": f"session.step_{i}()\n",
                      "outputs": [{"output_type": "stream", "name": "stdout", "text": f"step {i} ok\n" * 20}]})
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
          "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb, indent=1).encode()


NOTEBOOK = _notebook()


def _seal(outputs: Path, key: Path, n: int, prev: str | None, *, link: bool) -> Path:
    from dbrunbook import records
    from dbrunbook.records import archive

    moment = START + timedelta(seconds=n)
    run_id = f"{moment:%Y%m%dT%H%M%SZ}-status-local-{n:06x}"
    run_dir = records.run_dir_for(outputs, run_id)
    (run_dir / "artifacts").mkdir(parents=True)
    (run_dir / "notebook.ipynb").write_bytes(NOTEBOOK)
    (run_dir / "artifacts" / "counts.json").write_text(json.dumps({"users": n}))
    if link:  # what the launcher does: ask the archive for the link
        prev = archive.previous_statement(outputs, DATABASE)
    statement = records.build_statement(
        run_dir, runbook_name="status", runbook_sha256="0" * 64, parameters={"target": "local"},
        operator="bench@dbrunbook", host="bench", started_at=moment, finished_at=moment, outcome="succeeded",
        exit_status=0, failing_step=None, database=DATABASE, heads_before={"main": ["a"]},
        heads_after={"main": ["a"]}, migrations_sha256=None, mode="papermill", extra={}, prev=prev)
    records.write_record(run_dir, statement, key)
    return run_dir


def measure(size: int, seals: int = 20) -> dict:
    from dbrunbook import records
    from dbrunbook.records import archive, signing

    work = WORK / f"archive-{size}"
    shutil.rmtree(work, ignore_errors=True)
    outputs = work / "outputs"
    key = signing.generate_key(work / "keys" / "operator_ed25519", "bench@dbrunbook")
    trusted = work / "allowed_signers"
    signing.add_allowed_signer(trusted, "bench@dbrunbook", signing.public_key_line(key))
    prev = None
    for n in range(size):  # building the archive keeps the link in memory (the thing measured is below)
        run_dir = _seal(outputs, key, n, prev, link=False)
        prev = records.statement_sha256(run_dir)
    times = []
    for n in range(size, size + seals):
        t0 = time.perf_counter()
        _seal(outputs, key, n, None, link=True)
        times.append(time.perf_counter() - t0)
    t0, c0 = time.perf_counter(), time.process_time()
    report = archive.verify_archive(outputs, trusted)
    verify_seconds, verify_cpu = time.perf_counter() - t0, time.process_time() - c0
    total = len(report.checks)
    shutil.rmtree(work, ignore_errors=True)
    return {"size": size, "seal_ms": statistics.median(times) * 1000, "verify_s": verify_seconds,
            "per_s": total / verify_seconds,
            "per_cpu_s": total / verify_cpu, "findings": len(report.findings), "records": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[100, 3000])
    parser.add_argument("--label", default="after")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        row = measure(size)
        rows.append(row)
        print(f"{args.label}: {row['size']:>7,} records: seal {row['seal_ms']:.1f} ms (median of 20), verify "
              f"{row['records']:,} in {row['verify_s']:.2f} s = {row['per_s']:,.0f} records/s "
              f"({row['per_cpu_s']:,.0f} per CPU-second), "
              f"{row['findings']} findings", flush=True)
    if args.no_write:
        return
    table = "\n".join(f"| {r['size']:,} | {r['seal_ms']:.1f} | {r['verify_s']:.2f} | {r['per_s']:,.0f} | {r['per_cpu_s']:,.0f} |"
                      for r in rows)
    write_section("archive", f"""
## Sealing and verifying a growing archive (`bench/archive.py`)

Synthetic records of one database (6-cell notebook, one artifact), signed as the launcher signs them. Seal =
`previous_statement` + `build_statement` + `write_record` (median of 20 seals onto an archive of N records);
verify = `archive.verify_archive` of the whole archive (`dbrunbook verify outputs`), one process.

| records in the archive | seal (ms) | verify (s) | verify (records/s, target ≥ 1,000) | verify (records per CPU-second) |
|---|---|---|---|---|
{table}

{BEFORE_NOTE}
""")


BEFORE_NOTE = ("To compare with another checkout: `PYTHONPATH=<its lib> .venv/bin/python bench/archive.py "
               "--label before --no-write`. Wall-clock rates depend on the machine's load; the CPU-second rate "
               "does not.")

if __name__ == "__main__":
    main()
