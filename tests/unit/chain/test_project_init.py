"""`dbrunbook init`: a dbrunbook.toml written from a project's own Alembic files, that `load_config` reads back."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from dbrunbook import cli
from dbrunbook.chain.project_init import read_env_py, write_config
from dbrunbook.config import load_config
from dbrunbook.errors import ConfigError, ConfigExists

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "alembic_projects"
SECRET = "hunter2-Pw"

INI = """\
[{section}]
script_location = %(here)s/{folder}
sqlalchemy.url = postgresql://app:{secret}@db.internal/app

[loggers]
keys = root
"""


def env_py(folder: Path, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "env.py").write_text(textwrap.dedent(body))


@pytest.fixture
def app(tmp_path) -> Path:
    """An application with two Alembic environments in one ini ([alembic] and [audit]) and a plugin's own ini."""
    root = tmp_path / "shop"
    root.mkdir()
    (root / "alembic.ini").write_text(INI.format(section="alembic", folder="migrations", secret=SECRET)
                                      + "\n" + INI.format(section="audit", folder="audit_migrations", secret=SECRET)
                                      .replace("[loggers]\nkeys = root\n", ""))
    env_py(root / "migrations", """
        import os
        from alembic import context
        VERSION_TABLE = "shop_version"
        url = os.environ["SHOP_DATABASE_URL"]
        debug = os.getenv("SHOP_DEBUG")
        def run():
            connection = context.config.attributes.get("connection")
            context.configure(connection=connection, version_table=VERSION_TABLE, version_table_schema="meta")
    """)
    env_py(root / "audit_migrations", """
        import os
        from alembic import context
        table = "audit_" + os.environ.get("AUDIT_SUFFIX", "version")
        context.configure(url=os.getenv("AUDIT_DSN"), version_table=table)
    """)
    plugin = root / "plugins" / "billing"
    plugin.mkdir(parents=True)
    (plugin / "alembic.ini").write_text(INI.format(section="alembic", folder="alembic", secret=SECRET))
    env_py(plugin / "alembic", """
        from os import environ
        from alembic import context
        context.configure(url=environ.get("SHOP_DATABASE_URL"), version_table="billing_version")
    """)
    return root


def test_init_writes_every_environment_and_load_config_reads_it(app):
    path = write_config([app / "alembic.ini", app / "plugins" / "billing" / "alembic.ini"], app / "dbrunbook.toml")

    text = path.read_text()
    assert SECRET not in text and "db.internal" not in text  # never the ini's URL
    config = load_config(path)
    sets = config.migration_sets
    assert sorted(sets) == ["audit", "billing", "shop"]
    assert (sets["shop"].section, sets["shop"].version_table, sets["shop"].version_table_schema,
            sets["shop"].url_env) == ("alembic", "shop_version", "meta", "SHOP_DATABASE_URL")
    assert (sets["audit"].section, sets["audit"].version_table, sets["audit"].url_env) == (
        "audit", "alembic_version", "AUDIT_DSN")  # computed at run time: the default, with a note
    assert (sets["billing"].alembic_ini, sets["billing"].version_table, sets["billing"].url_env) == (
        app / "plugins" / "billing" / "alembic.ini", "billing_version", "SHOP_DATABASE_URL")
    # One target per URL variable, each naming its variable; the embedded one to try things on.
    targets = {name: t.url_env for name, t in config.targets.items() if not t.embedded}
    assert targets == {"shop": "SHOP_DATABASE_URL", "audit": "AUDIT_DSN"}
    assert config.targets["local"].embedded and config.default_target == "local"
    assert "env.py computes version_table at run time: check it and set it here" in text
    assert "# env.py also reads SHOP_DEBUG: export it, or set env" in text


def test_init_on_the_scenario_fixtures(tmp_path):
    path = write_config([FIXTURES / "custom_section_and_version_table" / "alembic.ini",
                         FIXTURES / "own_env_var" / "alembic.ini", FIXTURES / "pyproject_config" / "pyproject.toml"],
                        tmp_path / "dbrunbook.toml")
    sets = load_config(path).migration_sets
    assert {n: (m.section, m.version_table, m.url_env) for n, m in sets.items()} == {
        "myapp_db": ("myapp_db", "myapp_schema_version", None),
        "own_env_var": ("alembic", "alembic_version", "MYAPP_DATABASE_URL"),
        "pyproject_config": ("alembic", "alembic_version", None),
    }


def test_read_env_py_spellings(tmp_path):
    env_py(tmp_path, """
        import os
        a = os.environ["FIRST_URL"]
        b = os.environ.get("SECOND")
        c = os.getenv("THIRD")
        d = os.environ[name]  # not a literal: not reported
    """)
    facts = read_env_py(tmp_path / "env.py")
    assert (facts.url_env, facts.other_env, facts.version_table, facts.takes_connection) == (
        "FIRST_URL", ("SECOND", "THIRD"), None, False)


def test_init_refuses_to_overwrite(app, capsys):
    existing = app / "dbrunbook.toml"
    existing.write_text("# mine\n")
    with pytest.raises(ConfigExists) as err:
        write_config([app / "alembic.ini"], existing)
    assert str(err.value) == (f"{existing} already exists; dbrunbook init never overwrites it. Edit it, or move "
                              f"it aside and run 'dbrunbook init' again.")
    assert cli.main(["init", str(app / "alembic.ini"), "-o", str(existing)]) == 2
    assert "already exists; dbrunbook init never overwrites it" in capsys.readouterr().err
    assert existing.read_text() == "# mine\n"


def test_cli_init_reads_the_alembic_ini_of_the_current_folder(app, monkeypatch, capsys):
    monkeypatch.chdir(app)
    assert cli.main(["init"]) == 0
    assert capsys.readouterr().out == (f"Wrote {app / 'dbrunbook.toml'}. Check it, then: dbrunbook list; "
                                       "dbrunbook run status\n")
    assert sorted(load_config(app / "dbrunbook.toml").migration_sets) == ["audit", "shop"]


def test_init_without_an_alembic_project_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        write_config()
    assert str(err.value) == (f"{tmp_path / 'alembic.ini'} does not exist. Pass the path of your alembic.ini "
                              f"(dbrunbook init path/to/alembic.ini ...).")
    assert not (tmp_path / "dbrunbook.toml").exists()


def test_list_finds_the_installed_runbooks_without_a_runbooks_folder(app):
    path = write_config([app / "alembic.ini"], app / "dbrunbook.toml")
    code = cli.main(["--config", str(path), "list"])
    assert code == 0
    from dbrunbook.execution.parameters import list_runbooks
    names = [r.name for r in list_runbooks(load_config(path))]
    assert names == sorted(p.stem for p in (ROOT / "runbooks").glob("*.ipynb"))
    # [project] runbooks overrides: a folder of one's own.
    mine = app / "my_runbooks"
    mine.mkdir()
    shutil.copy(ROOT / "runbooks" / "status.ipynb", mine / "status.ipynb")
    path.write_text(path.read_text().replace('# runbooks = "runbooks"', 'runbooks = "my_runbooks"'))
    assert [r.path for r in list_runbooks(load_config(path))] == [mine / "status.ipynb"]
