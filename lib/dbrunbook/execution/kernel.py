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
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return os.path.join(_kernel_socket_dir(), f"kernel-{uuid.uuid4().hex[:8]}")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts (SIGINT) every kernel it shuts down. papermill shuts the kernel down
            # only once no cell runs, so that interrupt stops nothing and only makes an idle ipykernel log
            # "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." on the operator's terminal. A
            # kernel still busy is ended by the shutdown request and, after its grace period, by SIGKILL.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return IpcKernelManager


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


# What the launcher passes to its kernel (nbclient's extra_arguments): run exit_without_teardown first.
KERNEL_STARTUP_ARGUMENTS = [
    "--IPKernelApp.exec_lines=__import__('dbrunbook.execution.kernel').execution.kernel.exit_without_teardown()"]
