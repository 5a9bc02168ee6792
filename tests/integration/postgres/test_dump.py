"""The libpq client programs' plumbing: the connection handed to pg_dump and pg_restore outside argv.

No server is needed: what is checked is the environment built from a URL.
"""

from __future__ import annotations

import pytest

from dbrunbook.errors import BackupFailed
from dbrunbook.postgres import dump


def test_libpq_environment_carries_the_connection_outside_argv():
    env = dump.libpq_environment("postgresql+psycopg://app:s3cr%40t@db.example:6543/shop?sslmode=require",
                                 application_name="dbrunbook:r1", base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "PGHOST": "db.example", "PGPORT": "6543", "PGUSER": "app",
                   "PGPASSWORD": "s3cr@t", "PGDATABASE": "shop", "PGSSLMODE": "require",
                   "PGAPPNAME": "dbrunbook:r1"}
    socket = dump.libpq_environment("postgresql+psycopg://postgres@/app?host=/tmp/dbrunbook-0-abc&port=5433",
                                    base={})
    assert socket == {"PGHOST": "/tmp/dbrunbook-0-abc", "PGPORT": "5433", "PGUSER": "postgres",
                      "PGDATABASE": "app"}
    with pytest.raises(BackupFailed) as err:
        dump.libpq_environment("postgresql+psycopg://u@h/d?frobnicate=1", base={})
    assert str(err.value).startswith("The target URL has option(s) frobnicate that pg_dump cannot be given")
