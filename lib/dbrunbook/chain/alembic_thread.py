"""Run a project's env.py where it expects to run: a thread with no event loop, inside AnyIO's worker context.

A Jupyter kernel runs an asyncio event loop in its main thread, and so does any async application that
calls dbrunbook. Alembic's own ``async`` template ends its env.py with ``asyncio.run(...)``, which refuses
to start inside a running loop; other projects' env.py files call ``anyio.from_thread.run(...)``, which
only works inside a worker thread that AnyIO started. Plain ``alembic`` satisfies the first (a CLI has no
loop) but not always the second; dbrunbook satisfies both, wherever it is called from:

* a helper thread runs its own AnyIO event loop (``anyio.run``), and
* that loop hands the call to ``anyio.to_thread.run_sync``: a worker thread with no running loop, from
  which ``anyio.from_thread.run`` reaches the helper's loop.

The caller's thread waits for the result; the function's exception is raised in the caller's thread,
unchanged. Process-wide state (cwd, environment, ``sys.path``, logging) is the caller's to manage: the
caller is blocked while the function runs, so nothing else in this process runs migrations meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_worker_context", "run_in_worker"]

T = TypeVar("T")

_local = threading.local()


def in_worker_context() -> bool:
    """True in a thread that ``run_in_worker`` runs a function in (no loop, AnyIO's worker context)."""
    return getattr(_local, "active", False)


def run_in_worker(fn: Callable[..., T], *args: Any, on_interrupt: Callable[[], Any] | None = None,
                  **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in an AnyIO worker thread with no running event loop; return its result.

    Works from a thread with a running event loop (a notebook kernel's cell, an async application), from
    plain threads, and re-entrantly from inside such a worker (then ``fn`` is simply called).

    A KeyboardInterrupt (the kernel's interrupt button) reaches the waiting caller, not the worker: then
    ``on_interrupt`` is called (e.g. to cancel the running statement) and the worker is still waited for, so
    that nothing restores the working folder or rolls back a connection under a migration that is running.

    Raises:
        Whatever ``fn`` raises, in the caller's thread; KeyboardInterrupt after the worker ended, if one came.
    """
    if in_worker_context():
        return fn(*args, **kwargs)
    import anyio
    import anyio.to_thread

    call = functools.partial(fn, *args, **kwargs)

    def worker() -> T:
        _local.active = True
        try:
            return call()
        finally:
            _local.active = False

    async def main() -> T:
        # One token: this loop only ever runs this one call.
        return await anyio.to_thread.run_sync(worker, abandon_on_cancel=False)

    outcome: dict[str, Any] = {}

    done = threading.Event()  # not Thread.join/is_alive: an interrupted join can report a live thread dead

    def helper() -> None:
        try:
            outcome["value"] = anyio.run(main)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=helper, name="dbrunbook-alembic", daemon=True)
    thread.start()
    interrupted = None
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt as err:
            if interrupted is None and on_interrupt is not None:
                with contextlib.suppress(Exception):
                    on_interrupt()
            interrupted = err
    if interrupted is not None and "error" not in outcome:
        raise interrupted
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error  # no reference cycle through the traceback
    return outcome["value"]
