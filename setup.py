"""Ship the runbooks inside the wheel as ``dbrunbook/runbooks/*.ipynb`` (metadata lives in pyproject.toml).

The top-level ``runbooks/`` folder stays where it is (operators open it, tests run it); a build copies its
notebooks into the package so that ``pip install dbrunbook`` brings them. An editable install reads the
checkout's folder instead (``dbrunbook.execution.parameters.installed_runbooks``).
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithRunbooks(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "dbrunbook" / "runbooks"
        target.mkdir(parents=True, exist_ok=True)
        for notebook in sorted((HERE / "runbooks").glob("*.ipynb")):
            shutil.copy2(notebook, target / notebook.name)


setup(cmdclass={"build_py": BuildPyWithRunbooks})
