"""bench/real_chains.py without its venvs: the project it writes, the error it quotes, the table it renders."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import real_chains


def test_write_project_points_alembic_ini_and_toml_into_the_installed_package(tmp_path, monkeypatch):
    monkeypatch.setattr(real_chains, "CHAINS_DIR", tmp_path / "chains")
    venv = tmp_path / "venv"
    project = real_chains.write_project(real_chains.CHAINS["prefect"], venv, Path("/src/dbrunbook"))

    ini = (project / "alembic.ini").read_text().splitlines()
    migrations = real_chains.site_packages(venv) / "prefect/server/database/_migrations"
    assert ini == ["[alembic]", f"script_location = {migrations}",
                   f"version_locations = {migrations / 'versions/postgresql'}"]
    toml = tomllib.loads((project / "dbrunbook.toml").read_text())
    assert toml["project"]["runbooks"] == "/src/dbrunbook/runbooks"
    assert toml["targets"]["local"] == {"embedded": True, "database": "app"}
    assert toml["migration_sets"]["prefect"] == {"alembic_ini": "alembic.ini", "version_table": "alembic_version",
                                                 "url_env": "PREFECT_API_DATABASE_CONNECTION_URL",
                                                 "driver": "asyncpg"}


@pytest.mark.parametrize(("text", "expected"), [
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\nsqlalchemy.exc.ProgrammingError: (x) relation "
     "\"metrics\" does not exist\n[SQL: ALTER TABLE metrics]\n",
     "sqlalchemy.exc.ProgrammingError: (x) relation \"metrics\" does not exist"),
    ("boom\nAttributeError: 'NoneType' object has no attribute 'scalar'\n",
     "AttributeError: 'NoneType' object has no attribute 'scalar'"),
    ("only a line\n\n", "only a line"),
    ("", ""),
])
def test_last_error_line_quotes_the_exception(text, expected):
    assert real_chains.last_error_line(text) == expected


def test_run_reports_a_timeout_instead_of_raising(tmp_path):
    proc = real_chains.run([sys.executable, "-c", "import time; time.sleep(5)"], cwd=tmp_path, env={}, timeout=0.5)
    assert proc.status is None
    assert "[timed out after 0s]" in proc.stderr or "[timed out after 1s]" in proc.stderr


def test_render_gives_a_row_per_procedure_with_state_repair_and_plain_time():
    result = {"chain": "mlflow", "version": "mlflow 3.17.2", "driver": "psycopg2", "notes": "n", "when": "w",
              "graph": {"revisions": 67, "merges": 0, "heads": ["dc11"]},
              "rows": [{"chain": "mlflow", "procedure": "apply", "exit": 1, "seconds": 80.1, "verified": "yes",
                        "state": "version= (want dc11)", "state_ok": False, "repaired": "plain alembic upgrade dc11",
                        "plain_seconds": 45.3, "plain_exit": 0, "plain_error": "", "error": "AttributeError: a|b"}]}
    lines = real_chains.render([result]).splitlines()
    assert "**mlflow** mlflow 3.17.2: 67 revisions, 0 merge points, heads dc11; driver psycopg2; n. Run w." in lines
    assert ("| mlflow | apply | 1 | 80.1 | yes | version= (want dc11) ✗ (then plain alembic upgrade dc11) | "
            "45.3 (0) | AttributeError: a\\|b |") in lines
