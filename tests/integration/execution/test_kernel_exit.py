"""A launched run's kernel skips the interpreter's teardown; every exit handler the run registered runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from dbrunbook.config import load_config
from dbrunbook.execution import runner
from tests.projects import trust_operator

pytestmark = [pytest.mark.integration]

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
URL_ENV = "DBRUNBOOK_TEST_TARGET_URL"

TOML = f"""
[project]
default_target = "t"
[targets.t]
url_env = "{URL_ENV}"

[migration_sets.app]
alembic_ini = "migrations/app/alembic.ini"
"""

REGISTERS_A_HANDLER = """import atexit
import os
import time

def _stop_scratch_server():  # what authoring.Scratch does with a throwaway server
    time.sleep(0.5)
    with open(os.environ["EXIT_PROOF"], "w") as f:
        f.write("stopped")

atexit.register(_stop_scratch_server)
"""


def test_exit_handlers_of_the_run_still_run(tmp_path, database_url, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "runbooks").mkdir()
    nb = nbformat.read(str(FIXTURES / "fault_notebooks" / "upgrades_then_lingers.ipynb"), as_version=4)
    [wait] = [c for c in nb.cells if "time.sleep" in c.source]
    wait.source = REGISTERS_A_HANDLER
    nbformat.write(nb, str(root / "runbooks" / "registers_exit_handler.ipynb"))
    (root / "dbrunbook.toml").write_text(TOML, encoding="utf-8")
    proof = tmp_path / "proof.txt"
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("EXIT_PROOF", str(proof))
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    trust_operator(root / "dbrunbook.toml", "tester@example.org")

    result = runner.run_runbook("registers_exit_handler", parameters={"dry_run": "false"},
                                config=load_config(root / "dbrunbook.toml"))

    assert (result.outcome, result.exit_status) == ("succeeded", 0)
    # run_runbook returned after the kernel ended (graceful shutdown waits for the process)
    assert proof.read_text() == "stopped"
