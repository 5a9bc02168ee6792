"""URL handling of dbrunbook.postgres.db: passwords never shown, databases swapped without touching the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy

from dbrunbook.errors import InvalidUrl
from dbrunbook.postgres import db

MASK_CASES = [
    # (url, masked)
    ("postgresql://app:pw@db.example.com:5432/crm", "postgresql://app:***@db.example.com:5432/crm"),
    ("postgresql+psycopg://app:pw@h/crm?sslmode=require",
     "postgresql+psycopg://app:***@h/crm?sslmode=require"),
    ("postgres://app:pw@h/crm", "postgres://app:***@h/crm"),
    ("postgresql://app@h/crm", "postgresql://app@h/crm"),
    ("postgresql://app:@h/crm", "postgresql://app:@h/crm"),
    ("postgresql://:pw@h/crm", "postgresql://:***@h/crm"),
    ("postgresql://app:p%40ss%2Fw@h/crm", "postgresql://app:***@h/crm"),
    # unencoded characters that would end a naive match early
    ("postgresql://app:p/w?x#y:z@h:5432/crm", "postgresql://app:***@h:5432/crm"),
    ("postgresql://app:p@ss@h/crm", "postgresql://app:***@h/crm"),
    ("postgresql://app:pw@h/crm?user=a@b", "postgresql://app:***@h/crm?user=a@b"),
    # libpq multi-host
    ("postgresql://app:pw@h1:5432,h2:5433/crm?target_session_attrs=read-write",
     "postgresql://app:***@h1:5432,h2:5433/crm?target_session_attrs=read-write"),
    # password in the query string
    ("postgresql://app@h/crm?password=pw&sslmode=require",
     "postgresql://app@h/crm?password=***&sslmode=require"),
    ("postgresql:///crm?host=/tmp&password=pw", "postgresql:///crm?host=/tmp&password=***"),
    ("postgresql://h/crm?sslmode=verify-full&sslpassword=keypw",
     "postgresql://h/crm?sslmode=verify-full&sslpassword=***"),
    ("postgresql://h/crm?PASSWORD=pw#frag", "postgresql://h/crm?PASSWORD=***#frag"),
    # unix-socket URLs as the embedded server makes them: nothing to hide
    ("postgresql+psycopg://postgres@/postgres?host=/tmp/dbrunbook-0-ab12&port=5432",
     "postgresql+psycopg://postgres@/postgres?host=/tmp/dbrunbook-0-ab12&port=5432"),
    ("postgresql+psycopg:///?service=staging", "postgresql+psycopg:///?service=staging"),
    # libpq keyword/value strings
    ("host=h user=app password=pw dbname=crm", "host=h user=app password=*** dbname=crm"),
    ("password='p w\\'x' host=h", "password=*** host=h"),
    ("host=h password = pw", "host=h password = ***"),
]


@pytest.mark.parametrize(("url", "masked"), MASK_CASES)
def test_mask_url_hides_every_password(url, masked):
    assert db.mask_url(url) == masked


def test_mask_url_accepts_a_sqlalchemy_url_object():
    url = sqlalchemy.make_url("postgresql+psycopg://app:pw@h/crm")
    assert db.mask_url(url) == "postgresql+psycopg://app:***@h/crm"


WITH_DATABASE_CASES = [
    ("postgresql://app:pw@h:5432/old?sslmode=require", "new",
     "postgresql://app:pw@h:5432/new?sslmode=require"),
    ("postgresql+psycopg://postgres@/postgres?host=/tmp/x&port=5433", "t_1",
     "postgresql+psycopg://postgres@/t_1?host=/tmp/x&port=5433"),
    ("postgresql://app@h", "new", "postgresql://app@h/new"),
    ("postgresql://app@h/", "new", "postgresql://app@h/new"),
    ("postgresql://app@h/old?dbname=x&sslmode=require", "new", "postgresql://app@h/new?sslmode=require"),
    ("postgresql://app@h/old?sslmode=require&dbname=x", "new", "postgresql://app@h/new?sslmode=require"),
    ("postgresql://app@h/?dbname=x", "new", "postgresql://app@h/new"),
    ("postgresql://app:p/w@h/old", "new", "postgresql://app:p/w@h/new"),
    ("postgresql://app@h/old", "my db/1", "postgresql://app@h/my%20db%2F1"),
    ("host=h dbname=old user=app", "new", "host=h user=app dbname='new'"),
]


@pytest.mark.parametrize(("url", "database", "expected"), WITH_DATABASE_CASES)
def test_with_database_swaps_only_the_database(url, database, expected):
    assert db.with_database(url, database) == expected


def test_with_database_round_trips_through_sqlalchemy():
    url = db.with_database("postgresql+psycopg://postgres@/postgres?host=/tmp/a%20b&port=5432", "my db")
    parsed = sqlalchemy.make_url(url)
    assert (parsed.database, parsed.query["host"], parsed.query["port"]) == ("my db", "/tmp/a b", "5432")


@pytest.mark.parametrize(("message", "url", "expected"), [
    ('invalid dsn: missing "=" after "s3cr3t" in connection info string', "postgresql://u:s3cr3t@h/d",
     'invalid dsn: missing "=" after "***" in connection info string'),
    ("bad p@ss here", "postgresql://u:p%40ss@h/d", "bad *** here"),
    ("failed for password=abc host=h", "postgresql://u@h/d", "failed for password=*** host=h"),
    ("see postgresql://u:zz@h/d", "postgresql://u@h/d", "see postgresql://u:***@h/d"),
])
def test_scrub_removes_passwords_from_driver_messages(message, url, expected):
    assert db.scrub_driver_message(message, url) == expected


def test_make_engine_hides_parameters_and_switches_to_psycopg():
    engine = db.make_engine("postgresql://app:pw@h/crm?options=-csearch_path%3Dapp", run_id="r1")
    assert engine.hide_parameters is True
    assert engine.url.drivername == "postgresql+psycopg"
    assert "options" not in engine.url.query  # moved into the startup options, merged with ours


# --- the one masker: every form a secret reaches a message, a record or a log in ----------------------------
MASK_SECRETS_CASES = [
    # (text, env, masked)
    ("connect to postgresql://u:pw@h/d failed", {}, "connect to postgresql://u:***@h/d failed"),
    ("postgresql+psycopg2://u:pw@h/d", {}, "postgresql+psycopg2://u:***@h/d"),
    ("postgresql+asyncpg://u:pw@h:5432/d?ssl=true", {}, "postgresql+asyncpg://u:***@h:5432/d?ssl=true"),
    ("postgres://u:pw@h/d", {}, "postgres://u:***@h/d"),
    ("at postgresql://u:p/w@h/d: refused", {}, "at postgresql://u:***@h/d: refused"),
    ("url 'postgresql://u:p@ss/w0rd@host/db' bad", {}, "url 'postgresql://u:***@host/db' bad"),
    ("postgresql://u:p%40ss@h/d", {}, "postgresql://u:***@h/d"),
    ("postgresql://u@h/d?sslmode=require&password=pw", {}, "postgresql://u@h/d?sslmode=require&password=***"),
    ("postgresql://h/d?sslpassword=kp", {}, "postgresql://h/d?sslpassword=***"),
    ("host=x password=y dbname=d", {}, "host=x password=*** dbname=d"),
    ("host=x password='a b' dbname=d", {}, "host=x password=*** dbname=d"),
    ("PASSWORD = y", {}, "PASSWORD = ***"),
    ("two: postgresql://a:1@h/d and postgresql://b:2@h/d", {}, "two: postgresql://a:***@h/d and postgresql://b:***@h/d"),
    ("auth failed, key hunter22", {"PGPASSWORD": "hunter22"}, "auth failed, key ***"),
    ("token=zzz-123-abc", {"API_TOKEN": "zzz-123-abc"}, "token=***"),
    ("aws says wJalrXUtnFEMI", {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}, "aws says ***"),
    ("echoed s3cr3t!", {"STAGING_DATABASE_URL": "postgresql://app:s3cr3t!@db/app"}, "echoed ***"),
    # an environment secret that is a common word is masked as a word only, never inside another one
    # (a user name equal to the password is hidden too: masking errs on the side of hiding)
    ("postgresql://postgres@h/d as postgres", {"PGPASSWORD": "postgres"}, "postgresql://***@h/d as ***"),
    # not secrets: short values, variables not named like secrets, URLs without a password
    ("retries 8", {"PGPASSWORD": "8"}, "retries 8"),
    ("in /home/app", {"HOME": "/home/app"}, "in /home/app"),
    ("postgresql+psycopg://postgres@/postgres?host=/tmp/x&port=5432", {},
     "postgresql+psycopg://postgres@/postgres?host=/tmp/x&port=5432"),
    ("already postgresql://u:***@h/d", {}, "already postgresql://u:***@h/d"),
    ("", {}, ""),
]


@pytest.mark.parametrize(("text", "env", "masked"), MASK_SECRETS_CASES, ids=[c[0][:40] for c in MASK_SECRETS_CASES])
def test_mask_secrets_hides_every_form(text, env, masked):
    assert db.mask_secrets(text, env=env) == masked
    assert db.mask_secrets(masked, env=env) == masked  # idempotent: masking a masked text changes nothing


def test_mask_secrets_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct-horse")
    assert db.mask_secrets("it was correct-horse") == "it was ***"


@pytest.mark.parametrize("url", ["postgresql://u:p@ss/w0rd@host/db", "postgresql://u/x:pw@host/db"])
def test_a_url_with_an_unencoded_at_is_refused_without_any_part_of_its_password(url):
    with pytest.raises(InvalidUrl) as err:
        db.make_engine(url)
    message = str(err.value)
    assert message.startswith("The connection URL postgresql://")
    assert "must be percent-encoded" in message and err.value.exit_status == 2
    for piece in ("p@ss", "ss/w0rd", "w0rd@", ":pw@"):
        assert piece not in message


def test_a_url_sqlalchemy_cannot_parse_is_refused_masked():
    with pytest.raises(InvalidUrl) as err:
        db.make_engine("postgresql://u:topsecret@host:notaport/db")
    assert str(err.value) == ("The connection URL postgresql+psycopg://u:***@host:notaport/db cannot be used: "
                              "SQLAlchemy cannot parse it (ValueError). Check the host, port and database parts, "
                              "and percent-encode special characters.")


def test_the_other_maskers_are_the_one():
    from dbrunbook.execution import parameters
    from dbrunbook.postgres import dump

    text = "postgresql://u:p/w@h/d?password=q host=x password=y"
    expected = "postgresql://u:***@h/d?password=*** host=x password=***"
    assert parameters.mask_secrets(text) == expected
    assert dump._scrubbed(text + " pgpw9", {"PGPASSWORD": "pgpw9"}) == expected + " ***"
    assert db.scrub_driver_message(text, "postgresql://u@h/d") == expected


def test_the_launcher_refuses_an_unparsable_url_before_anything_runs(tmp_path, monkeypatch, capfd):
    from dbrunbook import cli

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    config = tmp_path / "dbrunbook.toml"
    runbooks = Path(__file__).resolve().parents[3] / "runbooks"
    config.write_text(f'[project]\nrunbooks = "{runbooks}"\n[targets.prod]\nurl_env = "PROD_URL"\n'
                      '[migration_sets.main]\nalembic_ini = "m/alembic.ini"\n')
    monkeypatch.setenv("PROD_URL", "postgresql://u:p@ss/w0rd@host/db")
    code = cli.main(["--config", str(config), "run", "status", "-t", "prod", "--json"])
    out, err = capfd.readouterr()
    assert code == 2
    assert json.loads(out)["error_type"] == "InvalidUrl"
    assert "postgresql://u:***@host/db" in out and "w0rd" not in out + err and "p@ss" not in out + err
    assert not (tmp_path / "outputs").exists()  # no run directory, no record: nothing ran
