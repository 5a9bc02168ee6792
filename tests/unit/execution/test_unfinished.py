"""The checks before a run and the register of unfinished runs, without a database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dbrunbook.config import load_config
from dbrunbook.errors import RecordNotWritable
from dbrunbook.execution import unfinished
from dbrunbook.protocol import ARTIFACTS_DIR, INTENT_FILE, SIGNATURE_FILE

MIB = 1024 * 1024


@pytest.fixture
def config(tmp_path):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (tmp_path / "runbooks" / "apply.ipynb").write_bytes(b"x" * 8192)
    (tmp_path / "dbrunbook.toml").write_text(
        '[project]\nstate_dir = "state"\n\n[migration_sets.main]\nalembic_ini = "alembic.ini"\n', encoding="utf-8")
    return load_config(tmp_path / "dbrunbook.toml")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_estimate_grows_with_the_runbook_and_its_last_record(config):
    runbook = config.runbooks_dir / "apply.ipynb"
    assert unfinished.estimate_record_size(config, runbook, "apply") == 2 * 64 * 8192 + MIB
    old = config.outputs_dir / "2026" / "12" / "01" / "20261201T100000Z-apply-local-aaaaaa"
    old.mkdir(parents=True)
    (old / "notebook.ipynb").write_bytes(b"y" * 3 * MIB)
    assert unfinished.estimate_record_size(config, runbook, "apply") == 2 * 3 * MIB + MIB
    assert unfinished.estimate_record_size(config, runbook, "stamp") == 2 * 64 * 8192 + MIB


def test_a_state_folder_blocked_by_a_file_is_refused(config):
    config.state_dir.parent.mkdir(parents=True, exist_ok=True)
    config.state_dir.write_text("in the way\n")
    with pytest.raises(RecordNotWritable) as caught:
        unfinished.check_record_can_be_written(config, config.runbooks_dir / "apply.ipynb", "apply")
    assert caught.value.exit_status == 2
    assert str(caught.value) == (
        f"Cannot finish a run's record: {config.state_dir / 'runs'} (the state folder's run register) cannot be "
        f"written: Not a directory. Nothing was run. Make it a writable folder, or point dbrunbook.toml at one.")


def test_a_registered_run_is_unfinished_only_once_its_launcher_is_gone(config):
    run_dir = config.outputs_dir / "2026" / "12" / "01" / "20261201T100000Z-apply-local-bbbbbb"
    (run_dir / ARTIFACTS_DIR).mkdir(parents=True)
    (run_dir / INTENT_FILE).write_text("{}")
    unfinished.register(config, run_id=run_dir.name, run_dir=run_dir, runbook="apply", target="local",
                        started_at="2026-12-01T10:00:00+00:00")
    assert unfinished.notices(config) == []  # this process, its launcher, is alive

    entry = config.state_dir / "runs" / f"{run_dir.name}.json"
    saved = json.loads(entry.read_text())
    saved["pid"] = _dead_pid()
    entry.write_text(json.dumps(saved))
    assert unfinished.notices(config) == [
        f"dbrunbook: run {run_dir.name} (runbook apply, target 'local', started 2026-12-01T10:00:00+00:00) has "
        f"no signed record: its launcher (pid {saved['pid']} on {saved['host']}) ended before sealing it. "
        f"Finish it with 'dbrunbook seal {run_dir}'."]

    (run_dir / SIGNATURE_FILE).write_text("sealed since")  # sealed by 'dbrunbook seal': the entry goes
    assert unfinished.notices(config) == []
    assert not entry.exists()


def test_a_run_whose_signing_failed_is_unfinished_while_its_launcher_lives(config):
    run_dir = config.outputs_dir / "2026" / "12" / "01" / "20261201T100000Z-apply-local-cccccc"
    (run_dir / ARTIFACTS_DIR).mkdir(parents=True)
    (run_dir / INTENT_FILE).write_text("{}")
    (run_dir / ARTIFACTS_DIR / unfinished.UNSEALED_ARTIFACT).write_text(json.dumps({"error": "disk full"}))
    unfinished.register(config, run_id=run_dir.name, run_dir=run_dir, runbook="apply", target="local",
                        started_at="2026-12-01T10:00:00+00:00")
    [notice] = unfinished.notices(config)
    assert "has no signed record: its record could not be signed (disk full)." in notice
    assert unfinished.launcher_alive(os.getpid(), None) and not unfinished.launcher_alive(_dead_pid(), None)
