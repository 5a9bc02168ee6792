"""A warm kernel template for a fleet's worker: each target's kernel is a fork of it, its imports already done.

A runbook's kernel spends most of its start importing pandas, SQLAlchemy, Alembic, matplotlib, IPython and
dbrunbook (seconds per target, paid again by every target of a fleet). A fleet worker starts one template
process per slot that imports them once and then waits. The kernel command of each run in that worker becomes
``python kernel_relay.py SOCKET <the usual ipykernel command>``: the relay hands the template its standard
streams, working directory and environment; the template forks; the child becomes an ordinary ipykernel with
that environment. Each target still gets a kernel process of its own, started empty of any earlier target's
state (a fork of a process that ran no runbook code), so its record means exactly what a ``dbrunbook run``
record means. The relay stands in for the kernel towards jupyter_client: signals sent to it reach the
kernel's process group, it exits with the kernel's exit status, and when it dies (even by SIGKILL) the
kernel is killed. Without a template (it died, or never started) the relay runs the usual kernel command.

The warm modules were imported with the worker's environment, before any target's: none of them reads a
target's variables (its URL variable, ``-x`` arguments) at import, and the two settings they do read at import
(ipykernel's parent process, matplotlib's backend) are set again in each fork from the kernel's environment.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["TEMPLATE_ENV", "kernel_command", "start_template"]

#: Set in a fleet worker's environment: the template's socket; kernels started there are forked from it.
TEMPLATE_ENV = "DBRUNBOOK_KERNEL_TEMPLATE"
RELAY = Path(__file__).with_name("kernel_relay.py")
_READY = b"ready\n"
# What a runbook's kernel imports anyway: imported once in the template, inherited by every fork.
# (Found with py-spy over a fleet: what a forked kernel still imported.)
_WARM_MODULES = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython.core.interactiveshell", "IPython.core.oinspect", "tornado.platform.asyncio", "anyio._backends._asyncio",
    "psutil", "pandas", "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.dialects.postgresql", "alembic.command",
    "alembic.autogenerate", "alembic.op", "psycopg", "matplotlib.figure", "matplotlib.backends.backend_agg",
    "matplotlib_inline.backend_inline",
    "dbrunbook.execution.session", "dbrunbook.safety", "dbrunbook.safety.locking", "dbrunbook.safety.preflight",
    "dbrunbook.views.plots", "dbrunbook.procedures.deploy", "dbrunbook.procedures.checks",
    "dbrunbook.procedures.backup", "dbrunbook.procedures.backfill_guard", "dbrunbook.chain.capture",
)


def kernel_command(cmd: list[str]) -> list[str]:
    """The kernel command to use in this process: through the relay when a template serves it, else ``cmd``."""
    path = os.environ.get(TEMPLATE_ENV)
    if not path or not os.path.exists(path) or cmd[1:3] != ["-m", "ipykernel_launcher"]:
        return cmd
    return [sys.executable, str(RELAY), path, *cmd]


def start_template(timeout: float = 120.0) -> subprocess.Popen:
    """Start a template beside this process, set ``TEMPLATE_ENV`` here, and return it once it serves.

    The template ends when this process does (it watches its parent). A template that does not come up in
    ``timeout`` is stopped and kernels start the usual way.
    """
    folder = tempfile.mkdtemp(prefix="dbrunbook-template-")
    path = os.path.join(folder, "template.sock")
    env = {k: v for k, v in os.environ.items() if k != TEMPLATE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "dbrunbook.execution.kernel_template", path, str(os.getpid())],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if ready and proc.stdout.readline() == _READY:
        os.environ[TEMPLATE_ENV] = path
    else:
        proc.kill()
    proc.stdout.close()
    return proc


# --- the template process ---------------------------------------------------------------------------------
def _serve(path: str, parent: int) -> None:
    import importlib

    for name in _WARM_MODULES:
        with contextlib.suppress(ImportError):  # an optional part missing only costs its import in the kernel
            importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(8)
    sys.stdout.buffer.write(_READY)
    sys.stdout.flush()
    children: dict[int, socket.socket] = {}
    # A kernel's end wakes the loop at once (its relay, and jupyter_client behind it, wait for the news).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _wakeup[:] = [wake_r, wake_w]
    while os.getppid() == parent:
        ready, _, _ = select.select([listener.fileno(), wake_r], [], [], 0.5)
        if wake_r in ready:
            os.read(wake_r, 512)
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            pid = _fork_kernel(listener, conn, children)
            if pid:
                children[pid] = conn
        _reap(children)
    for pid in list(children):  # the worker is gone: so are its kernels
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.unlink(path)


_wakeup: list[int] = []  # the template's self-pipe, closed in each fork


def _reap(children: dict[int, socket.socket]) -> None:
    """Tell each relay whose kernel ended how it ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            conn.close()


def _fork_kernel(listener: socket.socket, conn: socket.socket, children: dict[int, socket.socket]) -> int | None:
    """Read one relay's request, fork, and in the child become its kernel; returns the child's pid."""
    try:
        message, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(message)
    except (OSError, ValueError):
        conn.close()
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1  # the child: never returns
    try:
        listener.close()
        for other in children.values():  # the other kernels' relays are theirs alone
            other.close()
        _become_kernel(request, fds, conn)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    try:  # what a kernel process runs at its exit (the run's own handlers, exit_without_teardown's last)
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _become_kernel(request: dict, fds: list[int], conn: socket.socket) -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in _wakeup:
        os.close(fd)
    os.setpgid(0, 0)  # its own process group: a signal to the kernel reaches what it started too
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    # JPY_PARENT_PID stays: ipykernel's poller sees the template, not that pid, as the kernel's parent, and so
    # only ends the kernel if the template dies.
    os.environ.update({k: v for k, v in request["env"].items() if k != TEMPLATE_ENV})
    import random

    random.seed()  # a fork shares its parent's random state: reseed from the OS
    # Two settings the warm modules read from the environment when the template imported them, read again
    # from this kernel's: ipykernel's parent (JPY_PARENT_PID: without it ipykernel prints its "ipython kernel"
    # banner) and matplotlib's backend (ipykernel's inline one unless MPLBACKEND says otherwise).
    argv = list(request["argv"])
    if os.environ.get("JPY_PARENT_PID"):
        argv.append(f"--IPKernelApp.parent_handle={int(os.environ['JPY_PARENT_PID'])}")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].rcParams["backend"] = os.environ["MPLBACKEND"]
    threading.Thread(target=_watch_relay, args=(conn,), daemon=True, name="relay-watch").start()
    sys.argv = ["ipykernel_launcher", *argv]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


def _watch_relay(conn: socket.socket) -> None:
    """Pass on the signals the relay received; when the relay is gone, end the kernel and what it started."""
    group = os.getpgid(0)
    buffer = b""
    while True:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            os.killpg(group, signal.SIGKILL)
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.startswith(b"sig "):
                with contextlib.suppress(OSError, ValueError):
                    os.killpg(group, int(line[4:]))


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
