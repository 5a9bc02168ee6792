"""What a running step is waiting for, lifted from its notebook output to the launcher's terminal.

A step that retries a lock timeout (``locking.with_lock_retries``) prints one line per attempt into the
notebook as the attempt ends. papermill's engine receives each of those stream outputs while the cell is still
running; :class:`RetryLines` picks the attempt lines out of a cell's outputs so the launcher can print them on
stderr at once: a 30-second wait then reads "attempt 2/6 … blocked by pid 4711 …; next attempt in 1.40s", not
as a hang.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["RETRY_LINE", "RetryLines"]

#: The lines ``locking.note_attempt`` and its invalid-index notice write: "attempt 2/6 main: lock timeout after …".
RETRY_LINE = re.compile(r"^attempt \d+(/\d+)? .+$", re.MULTILINE)


class RetryLines:
    """Reports each new retry line of the running cell once, with ``progress`` (indented under its step)."""

    def __init__(self, progress: Callable[[str], None], indent: str = "        ") -> None:
        self.progress = progress
        self.indent = indent
        self.cell_index: int | None = None
        self._done = 0  # characters of the running cell's stdout already looked at

    def start(self, cell_index: int | None) -> None:
        """A new cell runs: forget the previous one."""
        self.cell_index, self._done = cell_index, 0

    def update(self, cell) -> None:
        """Look at the running cell's outputs (called on every kernel message) and report new complete lines."""
        if cell is None:
            return
        text = "".join(
            "".join(o.get("text", "")) for o in cell.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stdout")
        if len(text) < self._done:  # the cell cleared its output
            self._done = 0
        end = text.rfind("\n") + 1  # only whole lines: the rest may still be arriving
        if end <= self._done:
            return
        for match in RETRY_LINE.finditer(text[self._done:end]):
            self.progress(self.indent + match.group(0).rstrip())
        self._done = end
