"""Row-count snapshot vs the obvious alternative: one `SELECT count(*)` per table, run one by one.

Two databases: 1,000 small tables (catalog and round-trip overhead dominate) and 5,000,000 rows in five tables
(scan speed dominates). Target: the snapshot costs at most 1.2x the one-by-one sum. Also reported: planner
estimates (fast, but wrong after writes) and content fingerprints (an option, not the default).
"""

from __future__ import annotations

import sys
import time

import sqlalchemy as sa
from _common import admin_url, fresh_database, median_seconds, write_section

from dbrunbook.postgres import snapshots


def make_many_tables(url: str, n: int = 1000, rows: int = 50) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"""DO $$ BEGIN FOR i IN 1..{n} LOOP
                  EXECUTE 'CREATE TABLE t' || i || ' (id int PRIMARY KEY, v text)';
                  EXECUTE 'INSERT INTO t' || i || ' SELECT g, md5(g::text) FROM generate_series(1, {rows}) g';
                END LOOP; END $$"""
        )
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def make_big_tables(url: str, total: int = 5_000_000, tables: int = 5) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for i in range(tables):
            conn.exec_driver_sql(f"CREATE TABLE big{i} (id bigint PRIMARY KEY, amount numeric, note text)")
            conn.exec_driver_sql(
                f"INSERT INTO big{i} SELECT g, g * 1.5, 'row ' || g FROM generate_series(1, {total // tables}) g"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


def one_by_one(engine: sa.Engine) -> dict[str, int]:
    """What an operator's script does: list the tables, then count each in turn."""
    with engine.connect() as conn:
        names = conn.exec_driver_sql(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog','information_schema')"
        ).all()
        return {f"{s}.{t}": conn.exec_driver_sql(f'SELECT count(*) FROM "{s}"."{t}"').scalar_one() for s, t in names}


def measure(label: str, url: str, repeat: int) -> dict:
    engine = sa.create_engine(url, pool_size=8)
    baseline = median_seconds(lambda: one_by_one(engine), repeat)
    ours = median_seconds(lambda: snapshots.row_counts(engine), repeat)
    estimates = median_seconds(lambda: snapshots.row_counts(engine, exact=False), repeat)
    t0 = time.perf_counter()
    snapshots.row_counts(engine, fingerprint=True)
    fingerprint = time.perf_counter() - t0
    assert snapshots.row_counts(engine).counts == one_by_one(engine)  # same numbers, or the timing means nothing
    engine.dispose()
    return {"label": label, "baseline": baseline, "ours": ours, "estimates": estimates, "fingerprint": fingerprint}


def main() -> int:
    admin = admin_url()
    repeat = 5
    results = []
    print("creating 1,000 small tables ...", file=sys.stderr)
    url = fresh_database(admin, "bench_many")
    make_many_tables(url)
    results.append(measure("1,000 tables x 50 rows", url, repeat))
    print("creating 5,000,000 rows in 5 tables ...", file=sys.stderr)
    url = fresh_database(admin, "bench_big")
    make_big_tables(url)
    results.append(measure("5 tables, 5,000,000 rows", url, 3))
    lines = [
        "## Row-count snapshot (`bench/counts.py`)",
        "",
        "Median seconds; baseline = list tables, then `SELECT count(*)` per table one by one on one connection.",
        "",
        "| database | one-by-one count(*) | snapshots.row_counts (exact) | ratio (target ≤ 1.2) | estimates | with fingerprints |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["ours"] / r["baseline"]
        lines.append(f"| {r['label']} | {r['baseline']:.3f} | {r['ours']:.3f} | **{ratio:.2f}x** | "
                     f"{r['estimates']:.4f} | {r['fingerprint']:.2f} ({r['fingerprint'] / r['baseline']:.0f}x) |")
        print(f"{r['label']}: baseline {r['baseline']:.3f}s ours {r['ours']:.3f}s ratio {ratio:.2f}", file=sys.stderr)
    lines += ["", "Exact counts are `count(*)` per table sent in psycopg's pipeline mode (one round trip for all",
              "tables; a single `UNION ALL` query was measured slower than one by one: its planning dominates);",
              "databases over 512 MiB are dealt out to up to four workers sharing one snapshot",
              "(`pg_export_snapshot`). Estimates are `pg_class.reltuples`."]
    write_section("counts", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
