"""Row counts and schema snapshots on a real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dbrunbook.postgres import snapshots


def _engine(url):
    return sa.create_engine(url)


def _setup(engine, n_tables=12):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA shop")
        for i in range(n_tables):
            conn.exec_driver_sql(f'CREATE TABLE shop."T{i}" (id int primary key, v text)')
            conn.exec_driver_sql(f'INSERT INTO shop."T{i}" SELECT g, g::text FROM generate_series(1, {i * 10}) g')
        conn.exec_driver_sql("CREATE TABLE public.parted (id int, k int) PARTITION BY RANGE (k)")
        conn.exec_driver_sql("CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (50)")
        conn.exec_driver_sql("CREATE TABLE public.parted_2 PARTITION OF public.parted FOR VALUES FROM (50) TO (100)")
        conn.exec_driver_sql("INSERT INTO public.parted SELECT g, g FROM generate_series(0, 99) g")
        conn.exec_driver_sql("CREATE SCHEMA dbrunbook; CREATE TABLE dbrunbook.ledger (id int)")


@pytest.mark.parametrize("parallel, batch", [(False, 1000), (True, 1000), (False, 5), (True, 2)],
                         ids=["one-connection", "parallel-workers", "lock-batches", "parallel-lock-batches"])
def test_exact_counts_match_count_star_for_every_table(database_url, monkeypatch, parallel, batch):
    engine = _engine(database_url)
    _setup(engine)
    if parallel:  # small test tables: lower the size threshold so the shared-snapshot workers run
        monkeypatch.setattr(snapshots, "PARALLEL_THRESHOLD", 0)
    # 13 tables in batches of 5 (or 2): what 10,000 tables do in batches of 1,000 (one lock per table)
    monkeypatch.setattr(snapshots, "LOCK_BATCH", batch)
    snap = snapshots.row_counts(engine, workers=3)
    assert snap.exact
    expected = {f"shop.T{i}": i * 10 for i in range(12)} | {"public.parted": 100}
    # partitions are counted once, through their parent; dbrunbook's own schema is not data
    assert snap.counts == expected
    assert snap.total_rows == sum(expected.values())
    assert list(snap.as_frame().columns) == ["table", "rows", "bytes"]


def test_estimates_are_planner_numbers(database_url):
    engine = _engine(database_url)
    _setup(engine, n_tables=2)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    snap = snapshots.row_counts(engine, exact=False)
    assert not snap.exact
    assert snap.counts["shop.T1"] == 10


def test_compare_reports_changes_added_and_dropped(database_url):
    engine = _engine(database_url)
    _setup(engine, n_tables=3)
    before = snapshots.row_counts(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql('DELETE FROM shop."T2" WHERE id <= 5')
        conn.exec_driver_sql('DROP TABLE shop."T1"')
        conn.exec_driver_sql("CREATE TABLE shop.fresh (id int)")
    after = snapshots.row_counts(engine)
    diff = snapshots.compare(before, after).set_index("table")
    assert diff.loc["shop.T2", "change"] == -5 and diff.loc["shop.T2", "status"] == "changed"
    assert diff.loc["shop.T2", "percent"] == -25.0
    assert diff.loc["shop.T1", "status"] == "dropped"
    assert diff.loc["shop.fresh", "status"] == "added"
    assert diff.loc["shop.T0", "status"] == "same"


def test_fingerprints_see_content_changes_counts_cannot(database_url):
    engine = _engine(database_url)
    _setup(engine, n_tables=3)
    before = snapshots.row_counts(engine, fingerprint=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE shop.\"T2\" SET v = 'x' WHERE id = 3")
    after = snapshots.row_counts(engine, fingerprint=True)
    diff = snapshots.compare(before, after).set_index("table")
    assert diff.loc["shop.T2", "status"] == "content changed"
    assert diff.loc["shop.T1", "status"] == "same"


def test_schema_snapshot_and_compare(database_url, tmp_path):
    engine = _engine(database_url)
    _setup(engine, n_tables=2)
    before = snapshots.schema_snapshot(engine)
    assert before.columns["shop.T1"] == [["id", "integer", False], ["v", "text", True]]
    with engine.begin() as conn:
        conn.exec_driver_sql('ALTER TABLE shop."T1" ADD COLUMN w varchar(20) NOT NULL DEFAULT \'\'')
        conn.exec_driver_sql('ALTER TABLE shop."T1" DROP COLUMN v')
        conn.exec_driver_sql('CREATE INDEX ix_t0_v ON shop."T0" (v)')
    after = snapshots.schema_snapshot(engine)
    changes = snapshots.compare_schema(before, after)
    got = set(zip(changes["object"], changes["change"], strict=False))
    assert got == {("shop.T1.v", "column dropped"), ("shop.T1.w", "column added"), ("shop.T0", "index added")}
    path = tmp_path / "s.json"
    path.write_text(snapshots.snapshot_json(snapshots.row_counts(engine), after, database="x"))
    counts, schema, meta = snapshots.load_snapshot(path)
    assert counts.counts["shop.T1"] == 10 and schema == after and meta == {"database": "x"}
    assert snapshots.compare_schema(after, schema).empty


def test_empty_database_has_no_tables(database_url):
    snap = snapshots.row_counts(_engine(database_url))
    assert snap.counts == {} and snap.total_rows == 0
