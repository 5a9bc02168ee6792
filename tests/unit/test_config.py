"""dbrunbook.toml: what loads, and the error (class and message) for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbrunbook.config import load_config, normalize_url, parse_duration
from dbrunbook.errors import ConfigError, InvalidSetting, MigrationSetNotFound, MissingSecret, TargetNotFound
from dbrunbook.postgres.db import resolve_url

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
         "[targets.prod] lock_timout: unknown key; did you mean 'lock_timeout'?"),
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
    assert str(err.value).startswith(f'{path.resolve()}: [targets.prod] backup_max_age: backup_max_age = "a day" '
                                     f'is not a duration')


# --- every key's type and value, checked when the file loads (exit 2 naming file, table and key) ----------
TARGET = '[targets.prod]\nurl_env = "PROD_URL"\n'
SETTING_CASES = [
    # (lines added to [targets.prod], table, key, exact problem)
    ("lock_timeout = 2", "targets.prod", "lock_timeout",
     'lock_timeout = 2 is ambiguous: PostgreSQL reads a bare number as milliseconds, a person as seconds. '
     'Write the unit, e.g. lock_timeout = "2s" (or "2ms").'),
    ('lock_timeout = "2 parsecs"', "targets.prod", "lock_timeout",
     'lock_timeout = "2 parsecs" is not a duration PostgreSQL accepts: write a number and one of the units '
     'us, ms, s, min, h, d, e.g. lock_timeout = "2s" or "15min".'),
    ('statement_timeout = "5m"', "targets.prod", "statement_timeout",
     'statement_timeout = "5m" is not a duration PostgreSQL accepts: write a number and one of the units '
     'us, ms, s, min, h, d, e.g. statement_timeout = "2s" or "15min".'),
    ('retries = "eight"', "targets.prod", "retries",
     'retries = "eight" must be a whole number, e.g. retries = 8 (no quotes).'),
    ("retries = -1", "targets.prod", "retries", "retries = -1 must be 0 or more."),
    ("retries = 2.5", "targets.prod", "retries", "retries = 2.5 must be a whole number, e.g. retries = 8 (no quotes)."),
    ('protected = "yes"', "targets.prod", "protected", 'protected = "yes" must be true or false (no quotes).'),
    ("backup_max_age = 24", "targets.prod", "backup_max_age",
     'backup_max_age = 24 is ambiguous: PostgreSQL reads a bare number as milliseconds, a person as seconds. '
     'Write the unit, e.g. backup_max_age = "24s" (or "24ms").'),
    ('blocker_max_age = "60"', "targets.prod", "blocker_max_age",
     'blocker_max_age = "60" is ambiguous without a unit; write e.g. blocker_max_age = "60s".'),
    ("description = 3", "targets.prod", "description", "description = 3 must be a string in quotes."),
    ('health_url = "localhost:8000/health"', "targets.prod", "health_url",
     'health_url = "localhost:8000/health" must be an http:// or https:// URL.'),
    ('retrys = 3', "targets.prod", "retrys", "unknown key; did you mean 'retries'? Known keys: "),
]


@pytest.mark.parametrize(("line", "table", "key", "problem"), SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_each_target_setting_is_checked_when_the_file_loads(tmp_path, line, table, key, problem):
    path = write(tmp_path, TARGET + line + "\n" + MINIMAL)
    with pytest.raises(InvalidSetting) as err:
        load_config(path)
    assert (err.value.path, err.value.table, err.value.key) == (str(path.resolve()), table, key)
    assert err.value.problem.startswith(problem)
    assert str(err.value).startswith(f"{path.resolve()}: [{table}] {key}: {problem}")
    assert err.value.exit_status == 2


@pytest.mark.parametrize("line", ['lock_timeout = "1s"', 'lock_timeout = "1.5 s"', 'lock_timeout = "0"',
                                  "lock_timeout = 0", 'statement_timeout = "30min"', 'statement_timeout = "250ms"',
                                  'backup_max_age = "1h30min"', "retries = 0", "protected = true",
                                  'health_url = "https://app.example/health"'])
def test_good_settings_load(tmp_path, line):
    load_config(write(tmp_path, TARGET + line + "\n" + MINIMAL))


@pytest.mark.parametrize(("body", "table", "key", "problem"), [
    ('[project]\noutput = "out"\n', "project", "output", "unknown key; did you mean 'outputs'?"),
    ('[project]\noutputs = 3\n', "project", "outputs", "outputs = 3 must be a string in quotes."),
    ('[records]\nkey_dir = "k"\n', "records", "key_dir", "unknown key; did you mean 'keys_dir'?"),
    ('[target.prod]\nurl_env = "X"\n', "", "target", "unknown key; did you mean 'targets'?"),
    ('[migration_sets.main]\nalembic_ini = "m/alembic.ini"\nversion_table = 1\n', "migration_sets.main",
     "version_table", "version_table = 1 must be a string in quotes."),
    ('[migration_sets.main]\nalembic_ini = "m/alembic.ini"\nenv = { A = 1 }\n', "migration_sets.main",
     "env", "env must be a table of strings"),
], ids=["project-typo", "project-type", "records-typo", "top-level-typo", "set-type", "set-env"])
def test_project_records_and_sets_are_checked_too(tmp_path, body, table, key, problem):
    path = write(tmp_path, body if "migration_sets" in body else body + MINIMAL)
    with pytest.raises(InvalidSetting) as err:
        load_config(path)
    assert (err.value.table, err.value.key) == (table, key)
    assert err.value.problem.startswith(problem)


def test_a_url_pasted_into_url_env_is_refused_without_its_password(tmp_path):
    path = write(tmp_path, '[targets.prod]\nurl_env = "postgresql://u:p@ss/w0rd@host/db"\n' + MINIMAL)
    with pytest.raises(InvalidSetting) as err:
        load_config(path)
    assert str(err.value) == (f'{path.resolve()}: [targets.prod] url_env: url_env = "postgresql://u:***@host/db" '
                              f'must name an environment variable (e.g. "STAGING_DATABASE_URL"), not hold the '
                              f'connection itself.')
    assert "ss/w0rd" not in str(err.value) and "p@" not in str(err.value)


@pytest.mark.parametrize("key, table", [("outputs", "project"), ("state_dir", "project"), ("keys_dir", "records")])
def test_a_folder_blocked_by_a_file_is_a_clear_error(tmp_path, key, table):
    (tmp_path / "blocked").write_text("x")
    path = write(tmp_path, f'[{table}]\n{key} = "blocked/sub"\n' + MINIMAL)
    with pytest.raises(InvalidSetting) as err:
        load_config(path)
    assert (err.value.table, err.value.key) == (table, key)
    assert err.value.problem == (f"{tmp_path / 'blocked' / 'sub'} cannot be created: {tmp_path / 'blocked'} is a "
                                 f"file, not a folder. Move the file away or set {key} to another folder.")


@pytest.mark.parametrize(("line", "key"), [("lock_timeout = 2", "lock_timeout"),
                                           ('lock_timeout = "2 parsecs"', "lock_timeout"),
                                           ('retries = "eight"', "retries")])
def test_a_bad_setting_exits_2_naming_file_and_key_before_anything_runs(tmp_path, capfd, line, key):
    from dbrunbook import cli

    path = write(tmp_path, TARGET + line + "\n" + MINIMAL)
    code = cli.main(["--config", str(path), "run", "apply", "-t", "prod", "-p", "dry_run", "false"])
    out, err = capfd.readouterr()
    assert code == 2
    assert f"{path.resolve()}: [targets.prod] {key}: {line.split(' = ')[0]} = " in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".dbrunbook").exists()  # nothing ran


def test_a_migration_set_names_its_baseline_and_the_key_is_a_string(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + 'baseline = "myapp.initial_models:Base"\n'))
    assert config.migration_set("main").baseline == "myapp.initial_models:Base"
    assert load_config(write(tmp_path, MINIMAL)).migration_set("main").baseline is None
    with pytest.raises(InvalidSetting) as err:
        load_config(write(tmp_path, MINIMAL + "baseline = 3\n"))
    assert "baseline" in str(err.value) and "migration_sets.main" in str(err.value)
