"""The launcher's second process renders the preview while the kernel starts: the same SQL as the kernel's own
rendering, taken only while it still holds (same start, end and files), and a ledger row naming the same
scripts; a run whose process failed renders in the kernel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.execution import prerender
from dbrunbook.execution.runner import run_runbook
from tests.projects import URL_ENV, trust_operator, write_one_set_project

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def copied(tmp_path, database_url, monkeypatch):
    """A project of its own on a copy of the online-only fixture (two revisions there cannot render offline)."""
    shutil.copytree(FIXTURES / "online_only", tmp_path / "chain")
    config = write_one_set_project(tmp_path, tmp_path / "chain" / "alembic.ini")
    monkeypatch.setenv(URL_ENV, database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@dbrunbook")
    monkeypatch.delenv(prerender.ENV, raising=False)
    trust_operator(config)
    return load_config(config)


def _rendered(config, tmp_path, monkeypatch, end: str = "heads") -> Path:
    """What the process writes for the whole range from base, handed to this process as it is to a kernel."""
    out = tmp_path / "rendered.json"
    spec = {"config": str(config.path), "target": "local", "end": end, "out": str(out), "sets": {"main": None}}
    subprocess.run([sys.executable, "-m", "dbrunbook.execution.prerender", json.dumps(spec)], check=True,
                   cwd=config.root, timeout=120)
    monkeypatch.setenv(prerender.ENV, f"{os.getpid()}:{out}")
    return out


def test_the_rendered_steps_are_the_kernels_own_and_only_while_they_hold(copied, tmp_path, monkeypatch):
    mset = copied.migration_set("main")
    out = _rendered(copied, tmp_path, monkeypatch)
    own = migrations.offline_sql(mset, None, "heads")
    assert any(s.online_only for s in own)  # the online-only steps travel too
    assert prerender.rendered_steps(copied, "local", mset, None, "heads") == own
    assert prerender.rendered_steps(copied, "local", mset, own[0].revision, "heads") is None  # another start
    assert prerender.rendered_steps(copied, "local", mset, None, own[-2].revision) is None  # another end
    other = load_config(copied.path)
    object.__setattr__(other, "path", tmp_path / "elsewhere.toml")
    assert prerender.rendered_steps(other, "local", mset, None, "heads") is None  # another project
    assert prerender.rendered_steps(copied, "prod", mset, None, "heads") is None  # another target
    saved = json.loads(out.read_text())["sets"]["main"]
    assert [r["revision"] for r in saved["history"]] == [r.revision for r in migrations.history(mset)]

    script = next((tmp_path / "chain").rglob(f"{own[-1].revision}_*.py"))
    script.write_text(script.read_text() + "\n# edited after the rendering\n")
    assert prerender.rendered_steps(copied, "local", mset, None, "heads") is None  # a file changed since


def test_a_process_that_ended_without_a_result_is_not_waited_for(copied, tmp_path, monkeypatch):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    monkeypatch.setenv(prerender.ENV, f"{gone.stdout.strip()}:{tmp_path / 'never.json'}")
    t0 = time.monotonic()
    assert prerender.rendered_steps(copied, "local", copied.migration_set("main"), None, "heads") is None
    assert time.monotonic() - t0 < 5


@pytest.fixture
def chain(tmp_path, database_url, monkeypatch):
    """bench/'s synthetic chain of 40 revisions with 2 merges (every revision renders offline)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _chains import make_chain, write_config

    monkeypatch.setenv("BENCH_TARGET_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    monkeypatch.delenv(prerender.ENV, raising=False)
    config = load_config(write_config(tmp_path, make_chain(tmp_path / "chain", 40, merges=2), ROOT / "runbooks"))
    trust_operator(config.path, "tester@example.org")
    return config


def test_an_apply_takes_the_second_processs_sql_and_the_ledger_names_the_same_scripts(chain, database_url,
                                                                                       monkeypatch):
    engine = sa.create_engine(database_url)
    monkeypatch.setattr(prerender, "PREVIEWING", ())  # first the kernel renders, as in JupyterLab
    own = run_runbook("apply", parameters={"dry_run": "false"}, config=chain)
    with engine.begin() as conn:  # back to an empty database; the ledger keeps its row
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    monkeypatch.setattr(prerender, "PREVIEWING", ("apply",))
    result = run_runbook("apply", parameters={"dry_run": "false"}, config=chain)

    assert (result.outcome, result.exit_status) == (own.outcome, own.exit_status) == ("succeeded", 0)
    assert "main: SQL rendered offline by the launcher's second process" in \
        (result.record_dir / "notebook.ipynb").read_text()
    assert "second process" not in (own.record_dir / "notebook.ipynb").read_text()
    for name in ("preview.json", "preview-main.sql"):  # byte for byte the SQL the kernel renders itself
        assert (result.record_dir / "artifacts" / name).read_bytes() == \
            (own.record_dir / "artifacts" / name).read_bytes()
    try:
        rows = records.ledger_rows(engine)
    finally:
        engine.dispose()
    assert [r["run_id"] for r in rows] == [own.run_id, result.run_id]
    mset = chain.migration_set("main")
    assert rows[0]["migration_files"] == rows[1]["migration_files"] == {"main": {
        r.revision: records.sha256_file(Path(r.path)) for r in migrations.history(mset)}}
    assert len(rows[1]["migration_files"]["main"]) == 40
    assert not list((chain.state_dir / "prerender").glob("*"))  # nothing left behind


def test_a_failed_rendering_leaves_the_kernel_to_render(copied, tmp_path):
    mset = copied.migration_set("main")
    rendering = prerender.start(copied, "apply", "r1", {"target": "local", "migration_set": "all",
                                                        "revision": "nosuchrev"},
                                {"main": []})
    assert rendering is not None
    rendering.process.wait(timeout=120)
    assert "RevisionNotFound" in json.loads(rendering.path.read_text())["sets"]["main"]["error"]
    with prerender.for_kernel(rendering):
        assert prerender.rendered_steps(copied, "local", mset, None, "nosuchrev") is None  # the kernel says why
    assert prerender.ENV not in os.environ
    rendering.close()
    assert not rendering.path.exists()
    # A process that cannot even read the project writes why, and nothing is taken from it.
    out = tmp_path / "broken.json"
    spec = {"config": str(tmp_path / "missing.toml"), "end": "heads", "out": str(out), "sets": {"main": None}}
    subprocess.run([sys.executable, "-m", "dbrunbook.execution.prerender", json.dumps(spec)], check=True,
                   timeout=120)
    assert "error" in json.loads(out.read_text())
    assert prerender.start(copied, "verify", "r2", {}, {"main": []}) is None  # neither previews nor draws


def test_what_a_killed_launcher_left_is_removed_by_a_later_run(copied):
    folder = copied.state_dir / "prerender"
    folder.mkdir(parents=True)
    old, recent = folder / "old-run.json", folder / "recent-run.json"
    for path in (old, recent):
        path.write_text("{}")
    os.utime(old, (time.time() - 2 * prerender.STALE_SECONDS,) * 2)
    rendering = prerender.start(copied, "preview", "r3", {"migration_set": "main"}, {"main": []})
    assert rendering is not None
    rendering.close()
    assert not old.exists() and recent.exists()


def test_the_drawn_graph_is_the_kernels_own_picture_while_it_holds(copied, tmp_path, monkeypatch):
    from dbrunbook.views import plots

    mset = copied.migration_set("main")
    history = migrations.history(mset)
    current = (history[2].revision,)
    out = tmp_path / "graphs.json"
    spec = {"config": str(copied.path), "target": "local", "end": "heads", "out": str(out), "sets": {},
            "graphs": {"main": list(current)}}
    subprocess.run([sys.executable, "-m", "dbrunbook.execution.prerender", json.dumps(spec)], check=True,
                   cwd=copied.root, timeout=120)
    monkeypatch.setenv(prerender.ENV, f"{os.getpid()}:{out}")
    drawn = prerender.drawn_graph(copied, "local", mset, current)
    assert drawn is not None and drawn.png == plots.revision_graph(mset, current=current).png  # same bytes
    assert prerender.drawn_graph(copied, "local", mset, ()) is None  # another position
    assert prerender.drawn_graph(copied, "prod", mset, current) is None  # another target
    script = next((tmp_path / "chain").rglob(f"{history[-1].revision}_*.py"))
    os.utime(script, ns=(script.stat().st_atime_ns, script.stat().st_mtime_ns + 10**9))
    assert prerender.drawn_graph(copied, "local", mset, current) is None  # a file changed since


def test_a_status_run_shows_the_same_graph_as_the_kernel_draws(chain, monkeypatch):
    def graph_output(result) -> list:
        nb = json.loads((result.record_dir / "notebook.ipynb").read_text())
        [cell] = [c for c in nb["cells"] if "s.revision_graph(" in "".join(c["source"])]
        return [o["data"] for o in cell["outputs"] if "data" in o]

    monkeypatch.setattr(prerender, "GRAPHING", ())
    own = run_runbook("status", config=chain)
    monkeypatch.setattr(prerender, "GRAPHING", ("status",))
    result = run_runbook("status", config=chain)
    assert (own.exit_status, result.exit_status) == (0, 0)
    assert graph_output(result) == graph_output(own) and "image/png" in json.dumps(graph_output(own))
    assert "graph drawn by the launcher's second process" in (result.record_dir / "notebook.ipynb").read_text()
    assert "second process" not in (own.record_dir / "notebook.ipynb").read_text()
