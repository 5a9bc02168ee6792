"""What dbrunbook costs as the chain gets long and the database wide, against the tools it wraps.

Synthetic Alembic projects (bench/_chains.py) of 10, 100 and 1,000 trivial revisions, linear, and 1,000 with
30 merge points, generated under bench/_work/scale/. For each: bare `alembic history`, `alembic upgrade heads
--sql` and `alembic upgrade heads` (fresh database) against `dbrunbook run status`, `run preview` and `run
apply -p dry_run false` (fresh database), and the size of the apply record. Then a database of 10,000 tables:
one-by-one `count(*)` against `dbrunbook run verify`.

Targets: at 1,000 revisions, apply <= 1.5 x bare upgrade + the fixed per-run cost (dbrunbook apply at 10
revisions minus bare upgrade at 10), status and preview likewise; the apply record <= 1 MB.

The embedded server of this bench keeps its data in memory (/dev/shm) when it can: on this VM's disk the
same bare `alembic upgrade` of 1,000 revisions (1,000 tables created, 1,000 commits) took 2.3 to 8.7 s in
rounds a minute apart, which swamps what is measured here; both sides send the same statements to the same
server either way. BENCH_SCALE_ON_DISK=1 puts it under bench/_work/pg; $DBRUNBOOK_BENCH_DATABASE_URL
measures on that server. Each round runs bare Alembic then dbrunbook on the same case, so each target is
also given as the median of the rounds' own ratios (the two sides of one round share the machine's state).

    BENCH_SIZES=10,100 .venv/bin/python bench/scale.py     # a quick run; default 10,100,1000 and 1000m30
    BENCH_REUSE_CHAINS=1 .venv/bin/python bench/scale.py   # only the 10,000 tables; chains from chains.jsonl
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _chains import make_chain, write_config
from _common import ROOT, WORK, admin_url, fresh_database, write_section

BIN = Path(sys.executable).parent
CASES = os.environ.get("BENCH_SIZES", "10,100,1000,1000m30").split(",")
TABLES = os.environ.get("BENCH_TABLES", "5000,10000")
#: Rounds per case, bare Alembic and dbrunbook alternating; the medians are reported. One commit per revision
#: on this disk varies by seconds between two runs of the same upgrade (RESULTS.md, 2026-12-02).
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
_SHM = Path("/dev/shm")
#: Where the bench's own embedded server keeps its data (see the docstring); removed at the end when in memory.
IN_MEMORY = not os.environ.get("BENCH_SCALE_ON_DISK") and _SHM.is_dir() and os.access(_SHM, os.W_OK)
SERVER_DATA = _SHM / "dbrunbook-bench-scale" if IN_MEMORY else WORK / "pg"


def _timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    return elapsed


def _newest_record(outputs: Path) -> Path:
    return max(outputs.rglob("notebook.ipynb"), key=lambda p: p.stat().st_mtime).parent


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _alembic_ini(folder: Path, ini: Path, url: str) -> Path:
    """The chain's ini with a real URL for bare Alembic (dbrunbook reads its target from dbrunbook.toml)."""
    text = ini.read_text().replace("sqlalchemy.url = postgresql+psycopg://localhost/x",
                                   f"sqlalchemy.url = {url.replace('%', '%%')}")
    path = folder / "bare.ini"
    path.write_text(text)
    return path


def run_case(admin: str, case: str) -> dict:
    n, _, merges = case.partition("m")
    n, merges = int(n), int(merges or 0)
    folder = WORK / "scale" / case
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ini = make_chain(folder / "chain", n, merges=merges)
    config = write_config(folder, ini, ROOT / "runbooks")
    dbname = f"bench_scale_{case}"
    out: dict = {"case": case, "revisions": n, "merges": merges}

    rounds: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        url = fresh_database(admin, dbname)
        bare = _alembic_ini(folder, ini, url)
        alembic = [str(BIN / "alembic"), "-c", str(bare)]
        rounds.setdefault("alembic history", []).append(_timed(alembic + ["history"]))
        rounds.setdefault("alembic upgrade --sql", []).append(_timed(alembic + ["upgrade", "heads", "--sql"]))
        rounds.setdefault("alembic upgrade", []).append(_timed(alembic + ["upgrade", "heads"]))

        url = fresh_database(admin, dbname)
        env = dict(os.environ, DBRUNBOOK_CONFIG=str(config), BENCH_TARGET_URL=url)
        run = [str(BIN / "dbrunbook"), "run"]
        rounds.setdefault("dbrunbook status", []).append(_timed(run + ["status", "-t", "bench"], env))
        rounds.setdefault("dbrunbook preview", []).append(_timed(run + ["preview", "-t", "bench"], env))
        rounds.setdefault("dbrunbook apply", []).append(
            _timed(run + ["apply", "-t", "bench", "-p", "dry_run", "false"], env))
    out |= {k: statistics.median(v) for k, v in rounds.items()}
    out["rounds"] = rounds
    record = _newest_record(folder / "outputs")
    out["notebook bytes"] = (record / "notebook.ipynb").stat().st_size
    out["record bytes"] = _size(record)
    print(json.dumps(out), file=sys.stderr)
    return out


def _attempt(cmd: list[str], env: dict, outputs: Path) -> tuple[float | None, str]:
    """Seconds, or None and the failing step from the record (a 10,000-table run may fail: say where, why)."""
    try:
        return _timed(cmd, env), ""
    except SystemExit:
        statement = json.loads((_newest_record(outputs) / "statement.json").read_text())
        step = (statement.get("predicate") or statement).get("failing_step") or {}
        return None, f"{step.get('heading', '?')}: {step.get('ename', '?')}: " + \
            str(step.get("evalue", "")).splitlines()[0][:120]


def run_wide(admin: str, tables: int) -> dict:
    """Tables of a few rows each: one-by-one count(*) against `dbrunbook run verify` (after an apply)."""
    import sqlalchemy as sa

    folder = WORK / "scale" / f"wide{tables}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ini = make_chain(folder / "chain", 10)
    config = write_config(folder, ini, ROOT / "runbooks")
    url = fresh_database(admin, f"bench_scale_wide{tables}")
    engine = sa.create_engine(url)
    for first in range(1, tables + 1, 500):  # one transaction per 500 tables (max_locks_per_transaction)
        with engine.begin() as conn:
            conn.execute(sa.text(f"""
                DO $$ BEGIN FOR i IN {first}..{min(first + 499, tables)} LOOP
                  EXECUTE format('CREATE TABLE w%s (id int PRIMARY KEY)', i);
                  EXECUTE format('INSERT INTO w%s SELECT generate_series(1, %s)', i, i % 7);
                END LOOP; END $$"""))
    t0 = time.perf_counter()
    # Each count in its own transaction: one transaction cannot hold 10,000 tables' locks on a default
    # server (max_locks_per_transaction 64 x max_connections: "out of shared memory").
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        names = conn.execute(sa.text(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")).scalars().all()
        for name in names:
            conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar()
    one_by_one = time.perf_counter() - t0
    engine.dispose()
    env = dict(os.environ, DBRUNBOOK_CONFIG=str(config), BENCH_TARGET_URL=url)
    run = [str(BIN / "dbrunbook"), "run"]
    apply, apply_error = _attempt(run + ["apply", "-t", "bench", "-p", "dry_run", "false"], env,
                                  folder / "outputs")
    apply_record = _newest_record(folder / "outputs")
    verify, verify_error = _attempt(run + ["verify", "-t", "bench"], env, folder / "outputs")
    record = _newest_record(folder / "outputs")
    out = {"tables": len(names), "count(*) one by one": one_by_one, "dbrunbook apply": apply,
           "apply error": apply_error, "apply notebook bytes": (apply_record / "notebook.ipynb").stat().st_size,
           "dbrunbook verify": verify, "verify error": verify_error,
           "verify notebook bytes": (record / "notebook.ipynb").stat().st_size,
           "verify record bytes": _size(record)}
    print(json.dumps(out), file=sys.stderr)
    return out


NOTES = """
What changed for these numbers (issue 15): the ScriptDirectory of a set is loaded once per version of its files
(it was loaded, importing every revision file, at each of the several questions a status or preview step
asks: 12.9 s → 1.3 s for 3 x heads + history + history_frame on the 1,000-revision chain with merges,
in-process); long tables show their totals and top rows with the full data in an artifact (steps.csv,
history.csv, counts.csv, counts-compared.csv, verify-counts.csv; the preview's SQL stays in
preview-SET.sql); row counts take at most 1,000 tables' locks per transaction; lint and the live preflight ask the database
once for all the tables a preview names (they asked once a table: 0.75 s -> 0.06 s for the preflight of 1,000
revisions, in-process), and lint no longer parses Alembic's version-row statements; the launcher's digest of
the migration files walks the script folders without loading the revisions (0.25 s -> 0.04 s), then on
directory entries and strings rather than a stat and a Path per file (0.04 s -> 0.016 s, same digest); Alembic's
walk of a loaded ScriptDirectory, each revision's info and the upgrade plan from a database position are
computed once per version of the files (a status asked for the plan twice: its status table and its pending
table); lint starts squawk first and reads it last (it runs on the other core), folds statements without
literals or comments with str.split rather than PostgreSQL's scanner (tested to give the same text), and
reads Alembic's version-row statements off their code; while the kernel starts, a second process of the
launcher (execution/prerender, on the other core) renders the preview's offline SQL from the heads read
before the run (`run apply`'s preview step 0.37 s -> 0.06 s at 1,000 revisions) and, for `run status`, draws
the revision graph (the kernel then imports no matplotlib), and its history names the applied scripts in the
ledger row (the launcher loaded every revision again at the seal: ~0.2 s at 1,000). What dbrunbook still
adds to bare Alembic between 10 and 1,000 revisions, per step of the runbooks (medians of three `run apply`
on an in-memory server): lint (~0.3 s: every statement parsed by PostgreSQL's parser, squawk, each revision
file's syntax tree); the row counts of 1,000 tables after the upgrade and their schema (~0.15 s; the snapshot keeps
the comparison's counts rather than counting again, which was ~0.25 s more); the revision graph's 24 drawn layers against 10 (~0.06 s: matplotlib renders each
label's glyphs, ~3 ms a label); the durations chart's 25 bars against 10 (~0.07 s); the freshness check of the loaded scripts (~3.5 ms a question). The preflight reads Alembic's version-row
UPDATEs without the parser (1,000 of them, ~0.04 s). The upgrade itself runs Alembic's statements
and nothing else (in-process, medians of six on the same server: 2.1 s, as `alembic.command.upgrade`).
The apply record's notebook.ipynb is ~135 KB at 1,000 revisions (12.4 MB in issue 15, before the plots
were bounded and before these changes; the preview's 1.0 MB and the lint table's 0.7 MB were the part
summarized here; 290 KB before the charts became 256-colour palette PNGs, a quarter of matplotlib's 32-bit
bytes for the same look). The whole record folder is ~940 KB (1.73 MB before: lint.json said each rule's two
sentences with each of its 2,000 findings, 790 KB -> 200 KB with each rule's text once and a line per
statement; the JSON artifacts put each number on a line of its own, snapshot.json 270 KB -> 200 KB with a
line per table); what is left is mostly evidence: Alembic's preview SQL (300 KB), lint.json, snapshot.json.
Noise: on the VM's disk the same bare `alembic upgrade` of 1,000 revisions took 2.3 to 8.7 s in rounds a
minute apart (and 3.8 to 4.5 s in four in-process runs on a quieter day); hence the in-memory server, rounds,
and medians. The load average printed above says how busy the 2 cores were (an earlier run on a shared
machine, load ~13, had bare `alembic history` at 6.5 s for 10 revisions against 1.3 s quiet). Bytecode
is written and reused (an installed package's is; `PYTHONDONTWRITEBYTECODE` is cleared for the run).
Before the batching fix, `run apply` and `run verify` on 10,000 tables failed at their row counts with
`OutOfMemory: out of shared memory` (one REPEATABLE READ transaction locking every table).
"""


def _secs(value: float | None, error: str) -> str:
    return f"{value:.1f} s" if value is not None else f"**failed** ({error})"


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KB"


def _paired(r: dict, bare: str, ours: str, fixed: float) -> float:
    """The median over rounds of each round's dbrunbook time against its own budget."""
    rounds = r.get("rounds") or {}
    if not rounds.get(bare):
        return r[ours] / (1.5 * r[bare] + fixed)
    return statistics.median(d / (1.5 * b + fixed) for b, d in zip(rounds[bare], rounds[ours], strict=True))


def main() -> int:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed package: bytecode written and reused
    try:
        return _measure(admin_url(SERVER_DATA))
    finally:
        if IN_MEMORY and not os.environ.get("DBRUNBOOK_BENCH_DATABASE_URL"):
            from dbrunbook.postgres.embedded import EmbeddedServer

            EmbeddedServer(SERVER_DATA).stop()
            shutil.rmtree(SERVER_DATA, ignore_errors=True)  # memory back


def _measure(admin: str) -> int:
    saved = WORK / "scale" / "chains.jsonl"  # one line per case, so the 10,000-table part can run alone
    if os.environ.get("BENCH_REUSE_CHAINS") and saved.exists():
        results = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
    else:
        results = []
        for case in CASES:
            results.append(run_case(admin, case))
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text("".join(json.dumps(r) + "\n" for r in results))
    wide = [run_wide(admin, int(n)) for n in TABLES.split(",") if n.strip() and int(n)]
    rows = []
    for r in results:
        label = f"{r['revisions']:,}" + (f" ({r['merges']} merges)" if r["merges"] else "")
        rows.append(f"| {label} "
                    f"| {r['alembic history']:.1f} / {r['dbrunbook status']:.1f} "
                    f"| {r['alembic upgrade --sql']:.1f} / {r['dbrunbook preview']:.1f} "
                    f"| {r['alembic upgrade']:.1f} / {r['dbrunbook apply']:.1f} "
                    f"| {_kb(r['notebook bytes'])} / {_kb(r['record bytes'])} |")
    where = ("its data in memory (/dev/shm)" if IN_MEMORY else "its data on disk") \
        if not os.environ.get("DBRUNBOOK_BENCH_DATABASE_URL") else "an external server"
    body = ["## Long chains and wide databases (`bench/scale.py`)", "",
            f"Medians of {ROUNDS} rounds per case (bare Alembic then dbrunbook, each on a fresh database), load "
            f"average {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores at the end; the embedded server with "
            f"{where}. Seconds, bare Alembic / dbrunbook; record = the apply record's notebook.ipynb / whole "
            "folder.", "",
            "| revisions | `history` / `run status` | `upgrade --sql` / `run preview` | `upgrade` / `run apply` "
            "| apply record |", "|---|---|---|---|---|", *rows]
    by = {r["case"]: r for r in results}
    if "10" in by:
        small = by["10"]
        fixed = {k: small[f"dbrunbook {k}"] - small[bare] for k, bare in
                 (("status", "alembic history"), ("preview", "alembic upgrade --sql"),
                  ("apply", "alembic upgrade"))}
        body += ["", f"Fixed per-run cost (dbrunbook at 10 revisions minus bare Alembic): status "
                 f"{fixed['status']:.1f} s, preview {fixed['preview']:.1f} s, apply {fixed['apply']:.1f} s."]
        for case in [c for c in by if c.startswith("1000")]:
            r = by[case]
            parts = []
            for k, bare in (("status", "alembic history"), ("preview", "alembic upgrade --sql"),
                            ("apply", "alembic upgrade")):
                budget = 1.5 * r[bare] + fixed[k]
                parts.append(f"{k} {r[f'dbrunbook {k}']:.1f} s vs budget {budget:.1f} s "
                             f"(**{r[f'dbrunbook {k}'] / budget:.2f}x** of it; rounds' own "
                             f"{_paired(r, bare, f'dbrunbook {k}', fixed[k]):.2f}x)")
            body.append(f"- {case}: " + "; ".join(parts) + f"; notebook {_kb(r['notebook bytes'])} "
                        f"(target ≤ 1,024 KB).")
            if r.get("rounds"):
                body.append("  Rounds, bare `alembic upgrade` / `run apply`: " + ", ".join(
                    f"{a:.1f} / {b:.1f}" for a, b in zip(r["rounds"]["alembic upgrade"],
                                                       r["rounds"]["dbrunbook apply"], strict=True)) + " s.")
    for w in wide:
        body += ["", f"{w['tables']:,} tables: one-by-one `count(*)` {w['count(*) one by one']:.1f} s; "
                 f"`run apply` {_secs(w['dbrunbook apply'], w['apply error'])} (notebook "
                 f"{_kb(w['apply notebook bytes'])}); `run verify` {_secs(w['dbrunbook verify'], w['verify error'])} "
                 f"(notebook {_kb(w['verify notebook bytes'])}, record {_kb(w['verify record bytes'])})."]
    body += ["", NOTES.strip()]
    write_section("scale", "\n".join(body))
    (WORK / "scale" / "results.json").write_text(json.dumps({"chains": results, "wide": wide}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
