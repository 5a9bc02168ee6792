"""A throwaway dbrunbook project for tests: a dbrunbook.toml whose target `local` is a fresh test database.

The sample migrations and runbooks of the repository are used as they are; only records, keys and the target
URL are test-local. The URL reaches dbrunbook through an environment variable, as in production.
"""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from dbrunbook.config import Config

ROOT = Path(__file__).resolve().parent.parent
URL_ENV = "DBRUNBOOK_TEST_TARGET_URL"


@dataclass
class Project:
    root: Path
    config_path: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def engine(self) -> sa.Engine:
        if not hasattr(self, "_engine"):
            self._engine = sa.create_engine(self.url)
        return self._engine

    def fill_demo_data(self) -> dict[str, int]:
        spec = importlib.util.spec_from_file_location("demo_data", ROOT / "migrations" / "demo_data.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.fill(self.url)


OPERATOR = "tester@dbrunbook"


def trust_operator(config_path: Path, operator: str = OPERATOR) -> Path:
    """Give a project an operator key trusted as ``operator``: runs never create or trust one themselves."""
    from dbrunbook.config import load_config
    from dbrunbook.records import signing, trust

    config = load_config(config_path)
    key = trust.operator_key_path(config)
    if key.exists():  # a key shared by several test projects: trust it in this one's file too
        signing.add_allowed_signer(config.allowed_signers, trust.principal_for(operator),
                                   signing.public_key_line(key))
        return key
    key, _line = trust.create_operator_key(config.keys_dir, operator=operator,
                                           allowed_signers=config.allowed_signers)
    return key


def write_one_set_project(folder: Path, alembic_ini: Path, *, url_env: str = URL_ENV, state: Path | str = "state",
                          protected: bool = False) -> Path:
    """A dbrunbook.toml in ``folder`` driving the repository's runbooks on one Alembic project (set ``main``,
    target ``local`` read from ``url_env``); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dbrunbook.toml"
    config.write_text(f"""
[project]
outputs = "outputs"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "{state}"

[targets.local]
url_env = "{url_env}"
protected = {str(protected).lower()}

[migration_sets.main]
alembic_ini = "{alembic_ini}"
version_table = "alembic_version"
""", encoding="utf-8")
    return config


def write_project(folder: Path, url: str, *, protected: bool = False, signing_key: bool = True) -> Project:
    """Write a dbrunbook.toml in ``folder`` that drives the repository's runbooks and sample migrations."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dbrunbook.toml"
    config.write_text(
        f"""
[project]
outputs = "outputs"
runbooks = "{ROOT / 'runbooks'}"
state_dir = "state"

[targets.local]
url_env = "{URL_ENV}"
protected = {str(protected).lower()}
lock_timeout = "2s"

[migration_sets.main]
alembic_ini = "{ROOT / 'migrations/main/alembic.ini'}"
version_table = "alembic_version"
models = "{ROOT / 'migrations/main/models.py'}:Base"

[migration_sets.ai]
alembic_ini = "{ROOT / 'migrations/ai/alembic.ini'}"
version_table = "alembic_version_ai"
models = "{ROOT / 'migrations/ai/models.py'}:Base"
""",
        encoding="utf-8",
    )
    if signing_key:
        trust_operator(config)
    return Project(root=folder, config_path=config, url=url, env={URL_ENV: url})


@pytest.fixture
def project(tmp_path, database_url, monkeypatch) -> Project:
    """A test project whose target `local` is a fresh database; its env var is set for this test."""
    proj = write_project(tmp_path / "project", database_url)
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    yield proj
    proj.engine.dispose()


@contextlib.contextmanager
def throwaway_project(pg_admin_url: str, folder: Path) -> Iterator[tuple[Project, Config]]:
    """A test project on a fresh database, its environment set, for module-scoped fixtures; dropped after."""
    from dbrunbook.config import load_config
    from dbrunbook.postgres import db

    name = f"t_{uuid.uuid4().hex[:12]}"
    db.create_database(pg_admin_url, name)
    url = db.with_database(pg_admin_url, name)
    proj = write_project(folder / "project", url)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(URL_ENV, url)
            mp.setenv("DBRUNBOOK_CONFIG", str(proj.config_path))
            mp.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
            yield proj, load_config(proj.config_path)
    finally:
        proj.engine.dispose()
        db.drop_database(pg_admin_url, name)
