"""Kernels forked from a warm template (a fleet worker's): real ipykernel processes, real signals.

Each kernel must be an ordinary kernel of its own: the environment, working directory and streams of the
process that asked for it, none of an earlier kernel's state, interrupted by jupyter_client's interrupt, and
gone when the relay that stands in for it is killed. Without a template, the relay runs the usual kernel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from dbrunbook.execution import kernel_template
from dbrunbook.execution.kernel import ipc_kernel_manager, kernel_for_this_interpreter

pytestmark = pytest.mark.integration


@pytest.fixture
def template(monkeypatch):
    monkeypatch.delenv(kernel_template.TEMPLATE_ENV, raising=False)
    proc = kernel_template.start_template()
    assert os.environ.get(kernel_template.TEMPLATE_ENV), "the template did not come up"
    yield proc
    proc.kill()
    proc.wait(10)
    os.environ.pop(kernel_template.TEMPLATE_ENV, None)


async def _start(tmp_path):
    manager = ipc_kernel_manager()(kernel_name=kernel_for_this_interpreter())
    await manager.start_kernel(cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    return manager, client


async def _run(client, code: str, timeout: float = 60) -> tuple[str, dict]:
    """Execute ``code``; its printed text and the reply's content."""
    msg_id = client.execute(code)
    out = []
    while True:
        msg = await client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return "".join(out), (await client.get_shell_msg(timeout=timeout))["content"]


def _gone(pid: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":  # a zombie is gone, waiting to be reaped
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_each_kernel_is_a_fresh_fork_with_the_callers_environment(template, tmp_path, monkeypatch):
    asyncio.run(_fresh_forks(template, tmp_path, monkeypatch))


async def _fresh_forks(template, tmp_path, monkeypatch):
    monkeypatch.setenv("DBRUNBOOK_TEST_TENANT", "t1")
    first, client = await _start(tmp_path)
    try:
        text, reply = await _run(client, "import os, sys\nleft_behind = 1\n"
                                   "print(os.getppid(), 'pandas' in sys.modules, os.environ['DBRUNBOOK_TEST_TENANT'], "
                                   f"os.environ.get('{kernel_template.TEMPLATE_ENV}'), os.getcwd(), os.getpid())")
        assert reply["status"] == "ok", reply
        ppid, warm, tenant, template_env, cwd, pid1 = text.split()
        # A child of the template (not of the relay jupyter_client started), pandas imported before any cell ran.
        assert (int(ppid), warm, tenant, template_env, cwd) == (template.pid, "True", "t1", "None", str(tmp_path))
    finally:
        client.stop_channels()
        await first.shutdown_kernel(now=False)
    assert not await first.is_alive()
    monkeypatch.setenv("DBRUNBOOK_TEST_TENANT", "t2")  # the next target's environment
    second, client = await _start(tmp_path)
    try:
        text, reply = await _run(client, "import os\nimport matplotlib.pyplot as plt\n"
                                   "print(os.environ['DBRUNBOOK_TEST_TENANT'], 'left_behind' in globals(), "
                                   "os.getpid(), plt.get_backend())")
        tenant, leftover, pid2, backend = text.split()
        assert (tenant, leftover) == ("t2", "False") and pid2 != pid1
        assert backend == "module://matplotlib_inline.backend_inline"  # as in a kernel started the usual way
    finally:
        client.stop_channels()
        await second.shutdown_kernel(now=False)


def test_an_interrupt_reaches_the_forked_kernel(template, tmp_path):
    asyncio.run(_interrupted(tmp_path))


async def _interrupted(tmp_path):
    manager, client = await _start(tmp_path)
    try:
        msg_id = client.execute("import time\ntime.sleep(60)")
        await asyncio.sleep(1.0)
        await manager.interrupt_kernel()
        reply = await client.get_shell_msg(timeout=20)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert (reply["content"]["status"], reply["content"].get("ename")) == ("error", "KeyboardInterrupt")
        text, reply = await _run(client, "print('still alive')")
        assert text.strip() == "still alive"
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def test_killing_the_relay_kills_the_kernel_and_what_it_started(template, tmp_path):
    asyncio.run(_relay_killed(tmp_path))


async def _relay_killed(tmp_path):
    manager, client = await _start(tmp_path)
    try:
        text, _ = await _run(client, "import os, subprocess\nchild = subprocess.Popen(['sleep', '300'])\n"
                               "print(os.getpid(), child.pid)")
        kernel_pid, sleeper = map(int, text.split())
        relay = manager.provisioner.process.pid
        os.kill(relay, signal.SIGKILL)
        assert _gone(kernel_pid), "the kernel outlived its relay"
        assert _gone(sleeper), "a process the kernel started outlived the relay"
    finally:
        client.stop_channels()
        await manager.cleanup_resources()


def test_without_a_template_the_relay_runs_the_usual_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv(kernel_template.TEMPLATE_ENV, str(tmp_path / "gone.sock"))
    (tmp_path / "gone.sock").write_text("")  # there, but nobody listens
    asyncio.run(_no_template(tmp_path))


async def _no_template(tmp_path):
    manager, client = await _start(tmp_path)
    try:
        relay = manager.provisioner.process.pid
        # The relay exec'd the kernel: the kernel is the very process jupyter_client started.
        text, _ = await _run(client, "import os\nprint(os.getpid())")
        assert int(text) == relay
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=False)


def test_the_template_ends_with_the_process_that_started_it(tmp_path):
    code = ("from dbrunbook.execution import kernel_template\n"
            "proc = kernel_template.start_template()\nprint(proc.pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert _gone(int(out.stdout.split()[0]), within=10)
