"""Backfills without a database: the declaration in dbrunbook.toml, SQL names, SET columns, batch sizing,
progress lines, WAL positions, the SET NOT NULL finder, the per-batch chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrunbook.config import Backfill, load_config
from dbrunbook.errors import ConfigError
from dbrunbook.procedures import backfill
from dbrunbook.procedures.backfill import BackfillResult, Batch, Pause, _next_size, quote_name, set_columns
from dbrunbook.procedures.backfill_guard import not_null_columns
from dbrunbook.procedures.backfill_health import checkpoint_distance, wal_segment_number
from dbrunbook.procedures.backfill_progress import format_line
from dbrunbook.views.backfill_plots import batches_chart

MINIMAL = '[migration_sets.main]\nalembic_ini = "m/alembic.ini"\n'


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    path = tmp_path / "dbrunbook.toml"
    path.write_text(MINIMAL + body)
    return path


def test_a_declared_backfill_loads_with_its_key_as_a_tuple(tmp_path):
    config = load_config(write(tmp_path, '[backfills.s]\ntable = "app.users"\nkey = ["tenant", "id"]\n'
                                         'set = "score = 0"\nwhere = "score IS NULL"\nrevision = "0012"\n'))
    assert config.backfills["s"] == Backfill(name="s", table="app.users", key=("tenant", "id"), set="score = 0",
                                             where="score IS NULL", revision="0012")
    assert load_config(write(tmp_path, "")).backfills == {}


@pytest.mark.parametrize(("body", "message"), [
    ('table = "t"\nkey = "id"\nset = "a = 1"\nwhere = "a IS NULL"\nbatch = 5\n',
     "[backfills.b] batch: unknown key; Known keys: description, key, migration_set, revision, set, table, where."),
    ('table = "t"\nset = "a = 1"\n',
     "[backfills.b] needs key, where (e.g. table = 'users', key = 'id', set = 'score = 0', where = 'score IS NULL')."),
    ('table = "t"\nkey = 5\nset = "a = 1"\nwhere = "a IS NULL"\n',
     "[backfills.b] key must be a column name or a list of them."),
    ('table = "t"\nkey = "id"\nset = "a = 1"\nwhere = "a IS NULL"\nurl = "x"\n',
     "[backfills.b] has 'url'; connection strings never go in this file."),
])
def test_a_malformed_backfill_is_refused_naming_the_key(tmp_path, body, message):
    path = write(tmp_path, "[backfills.b]\n" + body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_the_target_limits_have_defaults_and_are_checked(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert (config.target().backfill_max_lag, config.target().backfill_max_wal_backlog) == ("10s", 64)
    with pytest.raises(ConfigError,
                       match=r'\[targets.t\] backfill_max_lag: backfill_max_lag = "soon" is not a duration'):
        load_config(write(tmp_path, '[targets.t]\nurl_env = "X"\nbackfill_max_lag = "soon"\n'))
    assert config.target().backfill_flush_after == 32
    with pytest.raises(ConfigError, match=r"backfill_flush_after = 300 is over PostgreSQL's limit .* 0 to 256"):
        load_config(write(tmp_path, '[targets.t]\nurl_env = "X"\nbackfill_flush_after = 300\n'))
    with pytest.raises(ConfigError, match=r'backfill_flush_after = "2MB" must be a whole number'):
        load_config(write(tmp_path, '[targets.t]\nurl_env = "X"\nbackfill_flush_after = "2MB"\n'))
    assert config.target().backfill_checkpoint_percent == 80
    with pytest.raises(ConfigError, match=r"backfill_checkpoint_percent = 120 is not a percentage: give 0 \(off\)"):
        load_config(write(tmp_path, '[targets.t]\nurl_env = "X"\nbackfill_checkpoint_percent = 120\n'))


def test_the_checkpoint_distance_is_the_servers_own_trigger():
    # xlog.c: CheckPointSegments = max_wal_size / (1 + checkpoint_completion_target): 539 MiB for 1GB and 0.9
    # (the server log's checkpoints at 1GB came 516-528 MiB apart, just short of it).
    assert checkpoint_distance(1024 ** 3, 0.9) == pytest.approx(565_127_000, rel=1e-3)
    assert checkpoint_distance(16 * 1024 ** 3, 0.5) == pytest.approx(16 * 1024 ** 3 / 1.5)


def test_the_next_batch_is_expected_to_write_what_the_last_full_one_wrote():
    full = Batch(1, "2026-12-01T00:00:00", 1000, 1000, 1000, 0.4, 0, ("1000",), 2_000_000)
    short = Batch(2, "2026-12-01T00:00:01", 2000, 700, 700, 0.3, 0, ("1700",), 1_400_000)
    assert backfill._next_wal([]) == 0  # nothing known before the first batch
    assert backfill._next_wal([full]) == 2_000_000
    assert backfill._next_wal([full, short]) == 0  # the table's end: the next one is the empty sweep


@pytest.mark.parametrize(("name", "sql"), [
    ("users", '"users"'), ("App.Users", '"app"."users"'), ('"Odd Name"', '"Odd Name"'),
    ('public."MixedCase"', '"public"."MixedCase"'),
])
def test_quote_name(name, sql):
    assert quote_name(name) == sql


@pytest.mark.parametrize(("set_sql", "columns"), [
    ("score = 0", ["score"]), ("score = coalesce(a, b), counter = counter + 1", ["score", "counter"]),
    ('"Score" = f(x, y)', ["Score"]), ("a = (1, 2)", ["a"]),
])
def test_set_columns(set_sql, columns):
    assert set_columns(set_sql) == columns


@pytest.mark.parametrize(("size", "seconds", "target", "expected"), [
    (1000, 0.25, 0.5, 1850),   # faster than the target: grows toward 92.5% of it
    (1000, 0.01, 0.5, 2000),   # at most doubles
    (1000, 5.0, 0.5, 500),     # at most halves
    (1000, 0.46, 0.5, 1000),   # within 90-95%: kept
    (1, 10.0, 0.5, 1),         # never below one row
    (150_000, 0.01, 0.5, 200_000),  # never above MAX_BATCH
])
def test_batch_size_adapts_toward_batch_seconds(size, seconds, target, expected):
    assert _next_size(size, seconds, target) == expected


def test_progress_line_has_rows_batches_rate_and_eta():
    assert format_line("s", 12_000, 12, 3.0, 50_000) == \
        "backfill s: 12,000 of ~50,000 rows (24%), 12 batches, 4,000 rows/s, ETA 0:00:10"
    assert format_line("s", 0, 0, 0.0, None) == "backfill s: 0 rows, 0 batches, 0 rows/s"


def test_wal_segment_numbers_count_across_log_files():
    size = 16 * 1024 * 1024
    assert wal_segment_number("0000000100000000000000FF", size) == 255
    assert wal_segment_number("000000010000000100000000", size) - wal_segment_number(
        "0000000100000000000000FE", size) == 2


def test_not_null_columns_finds_set_not_null_in_alter_table():
    sql = ('ALTER TABLE public.users ALTER COLUMN score SET NOT NULL, ALTER COLUMN "x" DROP DEFAULT;\n'
           "ALTER TABLE orders ALTER total SET NOT NULL;\nUPDATE users SET a = 1;\n"
           "ALTER TABLE users ALTER COLUMN name DROP NOT NULL;")
    assert not_null_columns(sql) == [("users", "score"), ("orders", "total")]


def test_recommended_sql_is_the_safe_three_steps():
    spec = Backfill(name="s", table="users", key=("id",), set="score = 0", where="score IS NULL")
    assert backfill.recommended_sql(spec).splitlines() == [
        'ALTER TABLE "users" ADD CONSTRAINT "users_score_not_null" CHECK ("score" IS NOT NULL) NOT VALID;  -- instant',
        'ALTER TABLE "users" VALIDATE CONSTRAINT "users_score_not_null";  -- scans, but lets reads and writes go on',
        'ALTER TABLE "users" ALTER COLUMN "score" SET NOT NULL;  -- no scan: the valid CHECK proves it',
        'ALTER TABLE "users" DROP CONSTRAINT "users_score_not_null";',
    ]


def _result() -> BackfillResult:
    r = BackfillResult("s", "users", "run-1", False, "complete")
    r.batches = [Batch(i, "2026-12-01T00:00:00", 100 * i, 100 * i, 90 * i, 0.1 * i, 0, (str(i),)) for i in range(1, 6)]
    r.pauses = [Pause(3, "2026-12-01T00:00:01", 1.5, ("lock waiters: 1 session(s)",))]
    return r


def test_the_batches_chart_is_deterministic():
    first, second = batches_chart(_result(), batch_seconds=0.5), batches_chart(_result(), batch_seconds=0.5)
    assert first.png == second.png and first.png.startswith(b"\x89PNG")
    assert batches_chart(BackfillResult("s", "users", "run-1", True, "dry run")).text == "no batch ran in this run"


def test_declared_takes_the_declaration_or_parameters_but_not_both(tmp_path, capsys):
    from types import SimpleNamespace

    from dbrunbook.errors import BackfillNotFound

    path = write(tmp_path, '[backfills.s]\ntable = "users"\nkey = "id"\nset = "score = 0"\nwhere = "score IS NULL"\n')
    session = SimpleNamespace(config=load_config(path))  # declared() reads only the session's config
    assert backfill.declared(session, "s").table == "users"
    assert backfill.declared(session, "adhoc", table="t", key="a, b", set="x = 1", where="x IS NULL") == \
        Backfill(name="adhoc", table="t", key=("a", "b"), set="x = 1", where="x IS NULL",
                 description="given as parameters")
    assert backfill.declared(session, "") is None
    assert f"No backfill chosen (-p name NAME). Declared in {path}: s." in capsys.readouterr().out
    with pytest.raises(ConfigError) as err:
        backfill.declared(session, "s", where="1 = 1")
    assert str(err.value) == (f"Backfill 's' is declared in {path}; do not also pass where. "
                              f"Change the declaration instead.")
    with pytest.raises(BackfillNotFound) as missing:
        backfill.declared(session, "other", table="t")
    assert str(missing.value).startswith(f"Unknown backfill 'other' in {path}; declared backfills: s. ")
