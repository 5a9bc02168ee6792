"""How a running backfill shows itself and how it is stopped: progress lines and bar, SIGTERM and Ctrl-C.

Progress goes to the process's real stderr (under ``dbrunbook run`` the kernel's stderr is the terminal's)
every few seconds, and, inside a Jupyter kernel, to one HTML progress bar updated in place. A stop signal
only sets a flag: the batch under way commits (or rolls back whole) and the run ends after it.
"""

from __future__ import annotations

import html
import signal
import sys
import threading
import time

__all__ = ["Progress", "StopSignals", "format_line"]

_EVERY = 2.0  # seconds between two progress lines on stderr


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_line(name: str, rows: int, batches: int, elapsed: float, todo: int | None) -> str:
    """``backfill NAME: 12,000 of ~50,000 rows (24%), 12 batches, 4,000 rows/s, ETA 0:00:09``."""
    rate = rows / elapsed if elapsed > 0 else 0.0
    if todo:
        share = f" of ~{todo:,} rows ({min(rows / todo, 1):.0%})"
        eta = f", ETA {_clock(max(todo - rows, 0) / rate)}" if rate > 0 else ""
    else:
        share, eta = " rows", ""
    return f"backfill {name}: {rows:,}{share}, {batches:,} batches, {rate:,.0f} rows/s{eta}"


class Progress:
    """Progress of one run: a stderr line every few seconds and, in a kernel, a bar updated in place."""

    def __init__(self, name: str, todo: int | None, *, stream=None, every: float = _EVERY):
        self.name, self.todo, self.every = name, todo, every
        self.stream = stream or sys.__stderr__ or sys.stderr
        self._last = 0.0
        self._handle = None
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display

            if getattr(get_ipython(), "kernel", None) is not None:
                self._handle = display(HTML(self._html(0, 0, 0.0)), display_id=True)
        except ImportError:  # pragma: no cover - IPython comes with the kernel
            pass

    def _html(self, rows: int, batches: int, elapsed: float, status: str = "") -> str:
        share = min(rows / self.todo, 1.0) if self.todo else 0.0
        line = format_line(self.name, rows, batches, elapsed, self.todo) + (f" — {status}" if status else "")
        return (f"<div><progress value='{share:.4f}' max='1' style='width:30em'></progress> "
                f"<code>{html.escape(line)}</code></div>")

    def update(self, rows: int, batches: int, elapsed: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        print(format_line(self.name, rows, batches, elapsed, self.todo), file=self.stream, flush=True)
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self._html(rows, batches, elapsed)))

    def done(self, rows: int, batches: int, elapsed: float, status: str) -> None:
        line = format_line(self.name, rows, batches, elapsed, self.todo) + f" — {status}"
        print(line, file=self.stream, flush=True)
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self._html(rows, batches, elapsed, status)))


class StopSignals:
    """While the block runs, SIGTERM and SIGINT set ``reason`` instead of ending the process.

    Only the main thread can install handlers (an ipykernel runs cells there); elsewhere nothing is caught
    and a signal acts as usual — a killed run still loses at most the uncommitted batch.
    """

    def __init__(self) -> None:
        self.reason = ""
        self._previous: dict = {}

    def _note(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name
        print(f"{self.reason} received: stopping after the current batch", file=sys.__stderr__ or sys.stderr,
              flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
