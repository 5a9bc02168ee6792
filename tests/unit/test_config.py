"""dbrunbook.toml: what loads, and the error (class and message) for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrunbook.config import load_config, normalize_url, parse_duration, resolve_url
from dbrunbook.errors import ConfigError, MigrationSetNotFound, MissingSecret, TargetNotFound

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    path = tmp_path / "dbrunbook.toml"
    path.write_text(body)
    return path


MINIMAL = '[migration_sets.main]\nalembic_ini = "m/alembic.ini"\n'


def test_the_repository_config_loads():
    config = load_config(ROOT / "dbrunbook.toml")
    assert set(config.targets) >= {"local", "demo", "staging", "production"}
    assert config.target().name == "local" and config.target().embedded
    assert config.target("production").protected and config.target("production").url_env == "PRODUCTION_DATABASE_URL"
    assert [m.name for m in config.select_sets("all")] == ["main", "ai"]
    assert config.migration_set("ai").version_table == "alembic_version_ai"
    assert config.outputs_dir == ROOT / "outputs"


def test_minimal_config_gets_an_embedded_local_target_and_absolute_paths(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.target("local").embedded and config.target("local").database == "app"
    assert config.migration_set("main").alembic_ini == (tmp_path / "m" / "alembic.ini").resolve()
    assert config.state_dir == (tmp_path / ".dbrunbook").resolve()
    assert config.allowed_signers == (tmp_path / "allowed_signers").resolve()  # the project's, not the key's


def test_select_sets_reads_lists(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + '[migration_sets.other]\nalembic_ini = "m/alembic.ini"\n'))
    assert [m.name for m in config.select_sets("other, main")] == ["other", "main"]
    assert [m.name for m in config.select_sets("")] == ["main", "other"]
    with pytest.raises(MigrationSetNotFound) as err:
        config.select_sets("main,nope")
    assert "Unknown migration set 'nope'" in str(err.value) and "known sets: main, other" in str(err.value)


def test_unknown_target_names_the_file_and_the_known_ones(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(TargetNotFound) as err:
        load_config(path).target("prod")
    assert str(err.value) == (
        f"Unknown target 'prod' in {path.resolve()}; known targets: local. "
        "Add a [targets.prod] table or pass one of the known names with -t."
    )
    assert err.value.exit_status == 2


def test_missing_environment_variable_says_which_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("PROD_URL", raising=False)
    config = load_config(write(tmp_path, '[targets.prod]\nurl_env = "PROD_URL"\n' + MINIMAL))
    with pytest.raises(MissingSecret) as err:
        resolve_url(config.target("prod"), config)
    message = str(err.value)
    assert "environment variable PROD_URL, which is not set" in message
    assert "[targets.prod] url_env" in message and "export PROD_URL=" in message


def test_url_from_environment_and_service_use_psycopg(tmp_path, monkeypatch):
    monkeypatch.setenv("PROD_URL", "postgres://app@db.example:5432/shop")
    config = load_config(write(tmp_path, '[targets.prod]\nurl_env = "PROD_URL"\n'
                                         '[targets.svc]\nservice = "shop"\n' + MINIMAL))
    assert resolve_url(config.target("prod"), config) == "postgresql+psycopg://app@db.example:5432/shop"
    assert resolve_url(config.target("svc"), config) == "postgresql+psycopg:///?service=shop"


@pytest.mark.parametrize(
    "body, message",
    [
        ("[targets.x\n", "is not valid TOML"),
        ('[targets.prod]\nurl = "postgresql://u:pw@h/db"\n' + MINIMAL,
         "[targets.prod] has 'url'; connection strings never go in this file"),
        ('[targets.prod]\npassword = "pw"\nurl_env = "X"\n' + MINIMAL, "[targets.prod] has 'password'"),
        ('[targets.prod]\nprotected = true\n' + MINIMAL,
         "[targets.prod] needs exactly one of url_env, service or embedded = true (found none)"),
        ('[targets.prod]\nurl_env = "A"\nservice = "b"\n' + MINIMAL, "(found url_env, service)"),
        ('[targets.prod]\nurl_env = "A"\nlock_timout = "1s"\n' + MINIMAL,
         "unknown key(s) lock_timout in [targets.prod]"),
        ("", "defines no [migration_sets.NAME]"),
        ('[migration_sets.main]\nversion_table = "v"\n', "[migration_sets.main] needs alembic_ini"),
        ('[migration_sets.main]\nalembic_ini = "nowhere/alembic.ini"\n', "does not exist. Fix the path."),
        ('[project]\ndefault_target = "prod"\n' + MINIMAL, "Unknown target 'prod'"),
        ('targets = 3\n' + MINIMAL, "'targets' must be a table"),
    ],
    ids=["toml", "url", "password", "no-source", "two-sources", "typo", "no-sets", "no-ini", "bad-ini",
         "bad-default", "not-a-table"],
)
def test_malformed_config_errors_name_the_file_the_key_and_the_fix(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path.resolve()) in str(err.value)
    assert err.value.exit_status == 2


def test_missing_file_and_no_file_found(tmp_path, monkeypatch):
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config()
    assert "No dbrunbook.toml in" in str(err.value) and "DBRUNBOOK_CONFIG" in str(err.value)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as err:
        load_config()
    assert "does not name a file" in str(err.value)


def test_normalize_url_refuses_other_databases():
    assert normalize_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg://u@h/d"
    with pytest.raises(ConfigError) as err:
        normalize_url("mysql://u@h/d")
    assert "must start with postgresql://" in str(err.value)


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60), ("5min", 300), ("1h", 3600), ("100ms", 0.1), ("2d", 172800), ("90", 90), (30, 30), ("0s", 0),
    ("24h", 86400), ("30min", 1800), ("1h30min", 5400), ("7d", 604800), ("2 days", 172800),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_refuses_what_is_not_a_duration():
    with pytest.raises(ConfigError) as caught:
        parse_duration("soon", key="backup_max_age")
    assert str(caught.value) == ("'soon' is not a duration; write it like 60s, 5min, 24h, 7d or 1h30min "
                                 "(backup_max_age of the target in dbrunbook.toml).")


def test_a_policy_duration_that_is_not_one_fails_when_the_file_loads(tmp_path):
    path = write(tmp_path, '[targets.prod]\nurl_env = "X"\nbackup_max_age = "a day"\n' + MINIMAL)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path.resolve()}: [targets.prod] 'a day' is not a duration")
