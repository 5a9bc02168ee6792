"""What the operator's terminal shows while a run goes: retry attempts as they happen, no kernel noise.

Real papermill kernels, real PostgreSQL, the repository's sample migrations; stderr is read at the file
descriptor (``capfd``), where the kernel subprocess writes too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbrunbook.cli import main
from dbrunbook.config import load_config
from dbrunbook.execution.runner import run_runbook
from tests.integration.safety.test_locking import Blocker, _at_ea90695
from tests.integration.safety.test_locking import project as project
from tests.projects import trust_operator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_a_blocked_step_reports_each_attempt_on_the_terminal_as_it_happens(project):
    proj = project(lock_timeout="100ms", retries=2)
    _at_ea90695(proj)
    blocker = Blocker(proj.url)
    lines: list[str] = []
    try:
        result = run_runbook("apply", target="local", parameters={"dry_run": "false"},
                             config=load_config(proj.config_path), progress=lines.append)
    finally:
        blocker.end()
    assert (result.outcome, result.exit_status) == ("failed", 1)
    attempts = [line.strip() for line in lines if line.strip().startswith("attempt ")]
    assert [a.split(" after ")[0] for a in attempts] == [
        "attempt 1/3 main: lock timeout", "attempt 2/3 main: lock timeout", "attempt 3/3 main: lock timeout"]
    for line in attempts:
        assert f"blocked by pid {blocker.pid} 'blocker-test' (idle in transaction" in line
    assert "; next attempt in " in attempts[0] and "; next attempt in " in attempts[1]
    assert "next attempt" not in attempts[2]  # the last one: the step fails instead
    # Under the step that waits, before its FAILED line.
    started = next(i for i, line in enumerate(lines) if "Upgrade" in line and line.endswith("..."))
    first = lines.index(next(line for line in lines if line.strip() == attempts[0]))
    failed = next(i for i, line in enumerate(lines) if i > started and "FAILED in" in line)
    assert started < first < failed


def test_a_guard_stop_prints_no_kernel_noise(tmp_path, database_url, monkeypatch, capfd):
    root = tmp_path / "project"
    shutil.copytree(FIXTURES / "notebooks", root / "runbooks")
    shutil.copytree(FIXTURES / "alembic_projects" / "connection_attr", root / "migrations" / "app")
    (root / "dbrunbook.toml").write_text(
        '[project]\ndefault_target = "t"\n[targets.t]\nurl_env = "TERMINAL_TEST_URL"\n'
        '[migration_sets.app]\nalembic_ini = "migrations/app/alembic.ini"\n', encoding="utf-8")
    monkeypatch.setenv("TERMINAL_TEST_URL", database_url)
    monkeypatch.setenv("DBRUNBOOK_OPERATOR", "tester@example.org")
    monkeypatch.delenv("DBRUNBOOK_CONFIG", raising=False)
    trust_operator(root / "dbrunbook.toml", "tester@example.org")

    assert main(["--config", str(root / "dbrunbook.toml"), "run", "stops_at_guard"]) == 3
    out, err = capfd.readouterr()
    assert "outcome:    stopped-at-guard" in out
    assert "[1/1] FAILED in " in err or "FAILED in " in err
    assert "KeyboardInterrupt" not in err and "IPKernelApp" not in err, err


def test_shutting_a_kernel_down_does_not_interrupt_it(tmp_path):
    """jupyter_client sends SIGINT before every shutdown; an idle ipykernel then logs KeyboardInterrupt noise."""
    import asyncio

    from dbrunbook.execution.kernel import ipc_kernel_manager, kernel_for_this_interpreter

    marker = tmp_path / "interrupted"
    code = ("import asyncio, signal\n"
            f"def note(*args): open({str(marker)!r}, 'w').write('SIGINT')\n"
            # after the execute request's own SIGINT handling is restored: the idle kernel's handler
            "_ = asyncio.get_event_loop().call_later(0.2, lambda: signal.signal(signal.SIGINT, note))\n")

    async def run() -> None:
        km = ipc_kernel_manager()(kernel_name=kernel_for_this_interpreter())
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            await client.execute_interactive(code, timeout=30)
            await asyncio.sleep(0.6)
        finally:
            client.stop_channels()
            await km.shutdown_kernel()

    asyncio.run(run())
    assert not marker.exists()
