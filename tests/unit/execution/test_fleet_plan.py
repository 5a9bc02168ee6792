"""Fleets without a database: groups in dbrunbook.toml (what loads, each mistake's error), waves, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrunbook.config import load_config
from dbrunbook.errors import ConfigError, ParameterError, TargetNotFound
from dbrunbook.execution.fleet import parse_max_failures, plan_waves
from dbrunbook.execution.fleet_groups import GroupNotFound, group_members
from dbrunbook.postgres.db import resolve_url

BASE = ('[targets.home]\nurl_env = "HOME_URL"\n\n[migration_sets.main]\nalembic_ini = "m/alembic.ini"\n'
        'version_table_schema = "{tenant}"\n\n')


def write(tmp_path: Path, groups: str) -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    path = tmp_path / "dbrunbook.toml"
    path.write_text(BASE + groups)
    return path


@pytest.mark.parametrize(("spec", "sizes"), [
    ("1,rest", [1, 19]),
    ("1,10%,rest", [1, 2, 17]),
    ("1,10%", [1, 2, 17]),          # rest is implied
    ("2,5,5,5,5", [2, 5, 5, 5, 3]),  # the last wave takes what is left
    ("50%,50%,rest", [10, 10]),
    ("rest", [20]),
])
def test_plan_waves(spec, sizes):
    waves = plan_waves(list(range(20)), spec)
    assert [len(w) for w in waves] == sizes
    assert [m for w in waves for m in w] == list(range(20))


@pytest.mark.parametrize("spec", ["0,rest", "one", "1,150%", "1,-2"])
def test_plan_waves_refuses_nonsense(spec):
    with pytest.raises(ParameterError, match=r"^--waves .*is not a count \(5\), a percentage \(10%\) or 'rest'"):
        plan_waves([1, 2, 3], spec)


@pytest.mark.parametrize(("text", "size", "allowed"), [("0", 10, 0), ("2", 10, 2), ("10%", 25, 2),
                                                        ("50%", 5, 2), ("100%", 3, 3)])
def test_max_failures(text, size, allowed):
    assert parse_max_failures(text)(size) == allowed


def test_max_failures_refuses_nonsense():
    with pytest.raises(ParameterError, match=r"^--max-failures two: write a count \(2\) or a percentage"):
        parse_max_failures("two")


def test_groups_load_and_members_resolve(tmp_path, monkeypatch):
    config = load_config(write(tmp_path, (
        '[groups.all]\ntargets = ["home", "local"]\n\n'
        '[groups.tenants]\nurl_env = "SERVER_URL"\ndatabases = ["t2", "t1"]\nlock_timeout = "1s"\n\n'
        '[groups.shops]\ntarget = "home"\nschemas = ["a", "b"]\n')))
    assert [m.target for m in group_members(config, "all")] == ["home", "local"]
    assert [m.target for m in group_members(config, "tenants")] == ["tenants:t2", "tenants:t1"]
    assert [(m.target, dict(m.env)) for m in group_members(config, "shops")] == [
        ("shops:a", {"DBRUNBOOK_X": "tenant=a"}), ("shops:b", {"DBRUNBOOK_X": "tenant=b"})]
    member = config.target("tenants:t1")
    assert (member.url_env, member.tenant_database, member.lock_timeout) == ("SERVER_URL", "t1", "1s")
    monkeypatch.setenv("SERVER_URL", "postgresql://u:pw@db.example:5432/postgres?sslmode=require")
    assert resolve_url(member, config) == "postgresql+psycopg://u:pw@db.example:5432/t1?sslmode=require"
    assert config.target("shops:a").url_env == "HOME_URL"
    with pytest.raises(TargetNotFound):
        config.target("nogroup:t1")
    with pytest.raises(GroupNotFound, match=r"^Unknown group 'x' in .*; known groups: all, shops, tenants\. "):
        group_members(config, "x")


def test_a_tenant_placeholder_takes_the_fleet_x_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_X", "tenant=shop_a")
    assert load_config(write(tmp_path, "")).migration_set("main").version_table_schema == "shop_a"
    monkeypatch.delenv("DBRUNBOOK_X")
    # Outside a fleet there is no tenant: the file still loads (the fleet itself reads it), as written.
    assert load_config(write(tmp_path, "")).migration_set("main").version_table_schema == "{tenant}"


@pytest.mark.parametrize(("body", "message"), [
    ('[groups.g]\ntargets = ["home"]\nurl = "x"\n', r"\[groups.g\] has 'url'; connection strings never go"),
    ('[groups.g]\ntargets = ["home"]\nwaves = 3\n', r"\[groups.g\] waves: unknown key"),
    ('[groups.g]\ntargets = ["nope"]\n', r"\[groups.g\] lists unknown target\(s\) nope; known: home, local"),
    ('[groups.g]\ndescription = "x"\n', r"needs exactly one of targets = \[...\], databases = \[...\]"),
    ('[groups.g]\ndatabases = ["a"]\n', r"database per tenant: it needs exactly one of url_env"),
    ('[groups.g]\nschemas = ["a"]\n', r"schema per tenant: set target = 'NAME'"),
    ('[groups.g]\ntargets = "home"\n', r"targets must be a list of names"),
    ('[groups.g]\nembedded = true\ndatabases_query = "DROP TABLE x"\n', r"databases_query must be a query"),
])
def test_group_mistakes_are_refused_when_the_file_loads(tmp_path, monkeypatch, body, message):
    monkeypatch.setenv("DBRUNBOOK_X", "tenant=a")
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, body))


def test_cli_fleet_usage_errors_exit_2_with_the_message(tmp_path, capsys):
    from dbrunbook.cli import main

    path = write(tmp_path, '[groups.all]\ntargets = ["home"]\n')
    assert main(["--config", str(path), "fleet", "apply", "-g", "nope"]) == 2
    assert "Unknown group 'nope' in " in capsys.readouterr().err
    assert main(["--config", str(path), "fleet", "apply", "-g", "all", "--max-failures", "many"]) == 2
    assert "--max-failures many: write a count (2) or a percentage of the wave (10%)." in capsys.readouterr().err
    assert main(["--config", str(path), "fleet", "apply", "-g", "all", "-p", "target", "x"]) == 2
    assert "The fleet sets each run's target: drop -p target" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_fleet_page_lists_failures_first_and_links_each_record():
    from dbrunbook.execution.fleet_rollup import RollupCheck
    from dbrunbook.views.fleet_report import render_fleet_page

    targets = [{"target": "g:a", "wave": 1, "outcome": "succeeded", "run_id": "r-a", "seconds": 2.0},
               {"target": "g:b", "wave": 2, "outcome": "succeeded", "run_id": "r-b", "seconds": 1.0},
               {"target": "g:c", "wave": 2, "outcome": "failed", "run_id": "r-c", "seconds": 3.0},
               {"target": "g:d", "wave": 2, "outcome": "not-started"}]
    page = render_fleet_page(RollupCheck(Path("fleets/f1"), "valid", predicate={"targets": targets}))
    links = [page.index(f'href="../records/{run}.html"') for run in ("r-a", "r-c", "r-b")]
    assert links == sorted(links)  # wave 1, then wave 2 with its failure first
    assert 'href="../records/None.html"' not in page and page.count("data:image/png;base64,") == 1
