"""stamp's truth check builds its schema on a throwaway embedded server, never on the target's server.

The target here is reached as a role without CREATEDB (production's usual migration role): the check must
still run, and the target's server must never see a scratch database, not even in a dry run.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from dbrunbook import safety
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.execution.session import open_session
from tests.projects import URL_ENV

pytestmark = pytest.mark.integration


@pytest.fixture
def no_createdb_url(project, monkeypatch):
    """The project's database at heads, and a URL to it as a role that owns the schema but may not CREATEDB."""
    config = load_config(project.config_path)
    for name in ("main", "ai"):
        migrations.upgrade(config.migration_set(name), project.engine, "heads")
    role = f"migrator_{uuid.uuid4().hex[:8]}"
    with project.engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN NOCREATEDB NOSUPERUSER"))
        conn.execute(sa.text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public, ai TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA ai TO {role}"))
        conn.commit()
    url = sa.make_url(project.url).set(username=role).render_as_string(hide_password=False)
    monkeypatch.setenv(URL_ENV, url)
    yield url
    with project.engine.connect() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(sa.text(f"DROP ROLE {role}"))
        conn.commit()


def _scratch_databases(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'dbrunbook_%'"))
                    .scalars())


def test_the_stamp_check_runs_without_createdb_on_the_target(project, no_createdb_url, tmp_path):
    before = _scratch_databases(project.engine)
    s = open_session("local", run_id="stamp-scratch", record_dir=str(tmp_path / "run"),
                     config=project.config_path, lock=False, runbook="stamp")
    try:
        assert s.identity.user.startswith("migrator_")
        true = safety.stamp_check(s, "heads", "main")
        lie = safety.stamp_check(s, "a1b2c3d4e5f6", "main")
    finally:
        s.engine.dispose()
    assert (true.checked, true.truthful, true.reason) == (True, True, "")
    assert (lie.checked, lie.truthful) == (True, False)
    assert {(d["object"], d["change"]) for d in lie.differences} == {("public.users.full_name", "column added")}
    assert _scratch_databases(project.engine) == before == []
