"""The Jupyter kernel a run uses: this very interpreter, talked to over unix sockets."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid

from dbrunbook.errors import ConfigError

_KERNEL_NAME = "dbrunbook"

_kernel_lock = threading.Lock()


def _runs_this_interpreter(argv: list[str]) -> bool:
    if not argv:
        return False
    # jupyter_client replaces a bare 'python'/'python3'/'python3.X' by sys.executable when it starts a kernel.
    bare = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    # abspath, not resolve: every venv's python is a symlink to the same base interpreter.
    return argv[0] in bare or os.path.abspath(argv[0]) == os.path.abspath(sys.executable)


def ipc_kernel_manager():
    """A kernel manager that talks to the kernel over unix sockets in a private folder, not loopback TCP.

    No port of the host is opened for the kernel (anyone on the machine could connect to a TCP kernel of an
    unattended run), and the kernel stops printing its "running over TCP without encryption" warning into
    every run's log.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IpcKernelManager(AsyncKernelManager):
        @default("client_factory")
        def _default_client_factory(self) -> type:
            return _quick_ready_client()

        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return os.path.join(_kernel_socket_dir(), f"kernel-{uuid.uuid4().hex[:8]}")

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            # In a fleet worker, a fork of the warm template instead of a fresh interpreter (kernel_template).
            from dbrunbook.execution.kernel_template import kernel_command

            return kernel_command(super().format_kernel_cmd(extra_arguments))

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts (SIGINT) every kernel it shuts down. papermill shuts the kernel down
            # only once no cell runs, so that interrupt stops nothing and only makes an idle ipykernel log
            # "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." on the operator's terminal. A
            # kernel still busy is ended by the shutdown request and, after its grace period, by SIGKILL.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return IpcKernelManager


def _quick_ready_client() -> type:
    """jupyter_client's async client, but ready once the kernel answers and IOPub is connected.

    jupyter_client's ``wait_for_ready`` then drains IOPub until it has been silent for 0.2 s: a fixed 0.2 s on
    every kernel start (a fifth of a fleet target's kernel start). Here the drain takes what has already
    arrived; nbclient reads only the IOPub messages of the cell it runs, so nothing stale is ever shown.
    """
    import time
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient

    class QuickReadyClient(AsyncKernelClient):
        async def wait_for_ready(self, timeout: float | None = None) -> None:
            deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
            while True:
                self.kernel_info()
                try:
                    reply = await self.shell_channel.get_msg(timeout=1)
                except Empty:
                    reply = None
                if reply is not None and reply["msg_type"] == "kernel_info_reply":
                    try:  # IOPub connected? (a kernel's first messages can go before the subscription)
                        await self.iopub_channel.get_msg(timeout=0.2)
                    except Empty:
                        pass
                    else:
                        self._handle_kernel_info_reply(reply)
                        break
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")
            while True:
                try:
                    await self.iopub_channel.get_msg(timeout=0.01)
                except Empty:
                    return

    return QuickReadyClient


_socket_dir: list[str] = []


def _kernel_socket_dir() -> str:
    """One private folder per process for kernel sockets, removed when the process exits."""
    if not _socket_dir:
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="dbrunbook-kernel-")
        atexit.register(shutil.rmtree, folder, True)
        _socket_dir.append(folder)
    return _socket_dir[0]


def kernel_for_this_interpreter() -> str:
    """Return the name of a Jupyter kernel that runs this very interpreter (and so this dbrunbook).

    'python3' usually does; when a kernelspec of another environment shadows it, install one named
    'dbrunbook' into this environment's prefix once.

    Raises:
        ConfigError: a 'dbrunbook' kernelspec elsewhere shadows the one just installed.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    with _kernel_lock:
        manager = KernelSpecManager()
        for name in ("python3", _KERNEL_NAME):
            try:
                spec = manager.get_kernel_spec(name)
            except NoSuchKernel:
                continue
            if _runs_this_interpreter(spec.argv):
                return name
        from ipykernel.kernelspec import install

        path = install(kernel_name=_KERNEL_NAME, display_name=f"dbrunbook ({sys.prefix})", prefix=sys.prefix)
        print(f"dbrunbook: installed Jupyter kernel '{_KERNEL_NAME}' for {sys.executable} in {path}",
              file=sys.stderr)
        spec = KernelSpecManager().get_kernel_spec(_KERNEL_NAME)
        if not _runs_this_interpreter(spec.argv):
            raise ConfigError(
                f"The Jupyter kernel '{_KERNEL_NAME}' at {spec.resource_dir} runs {spec.argv[0]}, not "
                f"{sys.executable}. Remove it (jupyter kernelspec remove {_KERNEL_NAME}) and run again."
            )
        return _KERNEL_NAME


def exit_without_teardown() -> None:
    """At the kernel's exit, skip the interpreter's teardown (run first thing in a launched run's kernel).

    A kernel that imported pandas, SQLAlchemy, Alembic and matplotlib takes 1–1.5 s (on a loaded machine)
    to tear its modules down after its last exit handler, and the launcher waits for it before sealing.
    Registered before any runbook code runs, this handler runs after every handler the run registers
    (``atexit`` is last in, first out), such as a scratch server's stop; it skips only those IPython and
    ipykernel registered at their start, whose work (history in memory, the connection and socket files)
    the launcher does.
    """
    import atexit

    def _exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # closed by now; nothing left to say
                stream.flush()
        os._exit(0)

    atexit.register(_exit)


# What the launcher passes to its kernel (nbclient's extra_arguments): run exit_without_teardown first, and
# keep no IPython history (a record is its notebook; the shared history.sqlite only costs each kernel a thread,
# a database open and a lock that the kernels of a fleet's slots would wait on).
KERNEL_STARTUP_ARGUMENTS = [
    "--IPKernelApp.exec_lines=__import__('dbrunbook.execution.kernel').execution.kernel.exit_without_teardown()",
    "--HistoryManager.enabled=False"]
