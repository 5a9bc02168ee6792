"""What the ``dbrunbook`` commands print: messages on stderr, text tables, a run's result, ``-p`` pairs read.

Shared by every command module, so that a table, a run's outcome and the "finish it" hint read the same
whichever command printed them, and ``run --json`` can keep stdout for its one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from dbrunbook.errors import ParameterError


def print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parameter_values(pairs: list[list[str]] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs or []:
        if name in values:
            raise ParameterError(f"Parameter '{name}' is given twice (-p {name} ...); pass it once.")
        values[name] = value
    return values


def text_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[int]:
    """Send everything written to file descriptor 1 (this process, kernels it starts) to stderr.

    Yields a duplicate of the real stdout, so ``--json`` can print exactly one object there at the end.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_result(result) -> None:
    print(f"run id:     {result.run_id}")
    print(f"outcome:    {result.outcome}")
    if result.failing_step:
        step = result.failing_step
        where = step.get("heading") or f"cell {step.get('cell')}"
        what = " ".join(str(step[k]) for k in ("ename", "evalue") if step.get(k))
        print(f"stopped at: {where}: {what}")
    print(f"record:     {result.record_dir}")
    if not getattr(result, "sealed", True):
        print(f"NOT SEALED: {result.seal_error}")
        print(f"finish it:  dbrunbook seal {result.record_dir}")
