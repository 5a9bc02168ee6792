"""Interactive runs through a real Jupyter server (REST API): the working copy saves and seals valid, an
edited cell is named, and a sealed record under outputs/ cannot be saved over."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dbrunbook import protocol, records
from dbrunbook.config import load_config
from dbrunbook.execution.runner import kernel_for_this_interpreter, prepare_runbook, seal
from tests.projects import ROOT

pytestmark = pytest.mark.integration


class Jupyter:
    """A jupyter_server on a free localhost port with a token, configured as ``dbrunbook lab`` configures it."""

    def __init__(self, root: Path, env: dict):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.token = secrets.token_hex(16)
        self.log = open(root.parent / "jupyter.log", "wb")  # noqa: SIM115 - open for the server's life; stop() closes it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--port={self.port}", "--ip=127.0.0.1", "--no-browser",
             "--allow-root",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.contents_manager_class=dbrunbook.execution.jupyter_readonly.RecordsReadOnlyContentsManager",
             "--ContentsManager.allow_hidden=True"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while True:
            try:
                self.request("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError) as err:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"jupyter server did not start: {(root.parent / 'jupyter.log').read_text()}") from err
                time.sleep(0.5)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def save(self, root: Path, path: Path, nb) -> tuple[int, dict]:
        rel = path.relative_to(root).as_posix()
        return self.request("PUT", f"/api/contents/{rel}",
                            {"type": "notebook", "format": "json", "content": json.loads(nbformat.writes(nb))})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def jupyter(project, monkeypatch):
    import os

    # The repository's jupytext.toml, so jupytext's contents manager (installed with the dev extras) applies
    # exactly the pairing the project ships.
    shutil.copy(ROOT / "jupytext.toml", project.root / "jupytext.toml")
    server = Jupyter(project.root, {**os.environ, "DBRUNBOOK_CONFIG": str(project.config_path)})
    try:
        yield server
    finally:
        server.stop()


def _execute(nb, root: Path):
    NotebookClient(nb, kernel_name=kernel_for_this_interpreter(), resources={"metadata": {"path": str(root)}}
                   ).execute()
    return nb


def test_open_execute_save_through_jupyter_then_seal_is_valid_and_the_record_is_read_only(project, jupyter):
    config = load_config(project.config_path)
    path = prepare_runbook("status", config=config)
    assert config.outputs_dir not in path.parents
    last = nbformat.read(path, as_version=4).cells[-1]
    assert last.cell_type == "markdown" and f"dbrunbook seal {path.parent}" in last.source

    nb = _execute(nbformat.read(path, as_version=4), project.root)
    status, model = jupyter.save(project.root, path, nb)
    assert status == 200, model
    # jupytext (dev extras) is active, but pairs runbooks/ only: no notebook.py beside the working copy.
    assert sorted(p.name for p in path.parent.iterdir()) == [".ipynb_checkpoints", "artifacts", "intent.json",
                                                            "notebook.ipynb"]

    result = seal(path.parent, config=config)
    check = records.verify_record(result.record_dir, config.allowed_signers)
    assert (result.outcome, check.status, check.problems) == ("succeeded", "valid", ())
    assert json.loads((result.record_dir / protocol.STATEMENT_FILE).read_bytes())["predicate"]["mode"] == \
        "interactive"

    # A reviewer opens the sealed record in JupyterLab; its autosave is refused, the record stays valid.
    record_nb = result.record_dir / protocol.NOTEBOOK_FILE
    before = record_nb.read_bytes()
    status, model = jupyter.request("GET", f"/api/contents/{record_nb.relative_to(project.root).as_posix()}")
    assert status == 200 and model["type"] == "notebook"
    opened = nbformat.reads(before.decode(), as_version=4)
    opened.metadata["language_info"] = {"name": "python", "version": "3.11"}
    status, model = jupyter.save(project.root, record_nb, opened)
    assert status == 403
    assert model["message"].startswith(f"dbrunbook: refusing to save {record_nb.relative_to(project.root)}: "
                                        f"it is under {config.outputs_dir}, the signed records")
    status, _ = jupyter.request("DELETE", f"/api/contents/{record_nb.relative_to(project.root).as_posix()}")
    assert status == 403
    assert record_nb.read_bytes() == before
    assert records.verify_record(result.record_dir, config.allowed_signers).status == "valid"


def test_an_edited_cell_is_named_and_sealed_as_interactive_edited(project, jupyter):
    config = load_config(project.config_path)
    path = prepare_runbook("status", config=config)
    nb = nbformat.read(path, as_version=4)
    index, cell = next((i, c) for i, c in enumerate(nb.cells)
                       if c.cell_type == "code" and c.source.startswith("s.history("))
    cell.source = "s.history(migration_set)\nprint('looks fine')"
    nb = _execute(nb, project.root)
    status, _model = jupyter.save(project.root, path, nb)
    assert status == 200

    result = seal(path.parent, config=config)
    predicate = json.loads((result.record_dir / protocol.STATEMENT_FILE).read_bytes())["predicate"]
    assert predicate["mode"] == "interactive-edited"
    check = records.verify_record(result.record_dir, config.allowed_signers)
    assert check.status == "valid"  # the signature is sound; what it says is that the code was edited
    assert check.problems == (f"interactive run with edited code (not evidence for a protected target): cell "
                              f"{index} (s.history(migration_set)) was edited after 'dbrunbook open'.",)
