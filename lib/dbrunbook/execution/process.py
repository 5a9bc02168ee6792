"""The launcher's process around a papermill run: the environment the kernel inherits, and the signals.

The kernel is a child process: it finds the launcher's dbrunbook.toml and the deployer lock it borrows through
environment variables set for the time of the run. SIGTERM and SIGINT must not cut a run short of its record:
while papermill runs SIGTERM becomes ``SystemExit`` (the run is then sealed as interrupted), and while the
record is sealed both wait until it is signed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from dbrunbook.config import ENV_CONFIG, Config
from dbrunbook.protocol import environment_variable
from dbrunbook.safety import locking


def config_for_kernel(config: Config) -> contextlib.AbstractContextManager[None]:
    """Point the kernel's ``load_config()`` at the launcher's dbrunbook.toml (the kernel inherits the env)."""
    return environment_variable(ENV_CONFIG, str(config.path))


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while papermill runs, so the run is sealed before the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lock_for_kernel(lock: locking.DeployerLock | None) -> contextlib.AbstractContextManager[None]:
    """Tell the kernel (through its environment) which session holds this run's lock, so it borrows it."""
    if lock is None:
        return contextlib.nullcontext()
    return environment_variable(locking.LAUNCHER_LOCK_ENV, locking.launcher_lock_env(lock))


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGTERM and SIGINT until the block ends; yields the signals received meanwhile."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
