"""Every runbook executes top to bottom with its defaults (nbval), as an operator opening it would.

The runbooks run in a child pytest (`--nbval-lax`) whose kernels read a dbrunbook.toml pointing target
`local` at a throwaway database that was brought to an older revision and filled with sample data, so each
step has something real to show: pending migrations, SQL to preview, rows to count, a revision to roll back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from dbrunbook.chain import migrations
from dbrunbook.config import load_config

from ..conftest import ROOT


def test_every_runbook_runs_with_its_defaults(project, database_url):
    config = load_config(project.config_path)
    engine = project.engine
    migrations.upgrade(config.migration_set("main"), engine, "ea90695")
    migrations.upgrade(config.migration_set("ai"), engine, "56d701cf2472")
    project.fill_demo_data()
    env = dict(os.environ, DBRUNBOOK_CONFIG=str(project.config_path), **project.env)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "--no-header",
         "-o", "addopts=", "--rootdir", str(ROOT / "runbooks"), str(ROOT / "runbooks")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    code_cells = sum(1 for p in (ROOT / "runbooks").glob("*.ipynb")
                     for _ in re.finditer('"cell_type": "code"', p.read_text()))
    assert passed == code_cells
    # defaults are safe: nothing was applied by the dry runs
    assert migrations.current(config.migration_set("main"), engine) == ("ea90695",)
