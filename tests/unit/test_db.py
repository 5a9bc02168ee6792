"""URL handling of dbrunbook.db: passwords never shown, databases swapped without touching the rest."""

from __future__ import annotations

import pytest
import sqlalchemy

from dbrunbook import db

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
    assert db._scrub(message, url) == expected


def test_make_engine_hides_parameters_and_switches_to_psycopg():
    engine = db.make_engine("postgresql://app:pw@h/crm?options=-csearch_path%3Dapp", run_id="r1")
    assert engine.hide_parameters is True
    assert engine.url.drivername == "postgresql+psycopg"
    assert "options" not in engine.url.query  # moved into the startup options, merged with ours
