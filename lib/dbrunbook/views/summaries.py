"""Tables sized for people: a summary and the top rows in the notebook, the whole table as an artifact.

A runbook step that returns 10 rows shows them all; one that returns 1,000 shows its totals, the rows that
matter most (the slowest revisions, the biggest count changes, the newest revisions) and "… N more", and the
full data is saved through ``Session.save_artifact`` (so the record's statement hashes it like every other
artifact) and named under the table. The notebook, the record and the report stay a size a person can read
whatever the length of the chain or the width of the database.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd

from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.views import tables

__all__ = ["LIMIT", "TOP", "Shown", "SummaryFrame", "artifact_name", "frame_html", "frame_text", "gap", "save_frame",
           "steps_shown", "summarize"]

LIMIT = 25  # a table of up to this many rows is shown whole
TOP = 10  # past it, this many rows are shown, chosen by what matters for the table


@dataclass(frozen=True)
class Shown:
    """How a long table is cut down: ``by`` the column that ranks rows (largest first unless ``ascending``),
    ``where`` a column that must be truthy for a row to be a candidate, ``tail`` to keep the last rows
    instead (the newest revisions of a history, base first), ``totals`` the sentence said before the table."""

    title: str = ""
    by: str | None = None
    ascending: bool = False
    absolute: bool = False
    tail: bool = False
    totals: str = ""
    artifact: str | None = None
    digest: str | None = None


def _top(frame: pd.DataFrame, shown: Shown, top: int) -> pd.DataFrame:
    if shown.tail:
        return frame.tail(top)
    if shown.by and shown.by in frame.columns:
        key = frame[shown.by]
        if shown.absolute:
            key = pd.to_numeric(key, errors="coerce").abs()
        order = key.sort_values(ascending=shown.ascending, na_position="last", kind="stable").index
        return frame.loc[order[:top]]
    return frame.head(top)


def frame_html(frame: pd.DataFrame, shown: Shown | None = None, *, limit: int = LIMIT, top: int = TOP) -> str:
    """HTML of ``frame``: whole when it has at most ``limit`` rows, else its top ``top`` rows and "… N more".

    The rows are drawn by ``tables.frame_html`` (integers as integers, "none" for an empty table)."""
    shown = shown or Shown()
    parts = []
    if shown.totals:
        parts.append(f"<p>{html.escape(shown.totals)}</p>")
    if len(frame) <= limit:
        parts.append(tables.frame_html(pd.DataFrame(frame)))
    else:
        rows = _top(frame, shown, top)
        parts.append(f"<p>{len(frame):,} rows; {html.escape(_which(shown, len(rows)))}:</p>")
        parts.append(tables.frame_html(pd.DataFrame(rows)))
        parts.append(f"<p>… {len(frame) - len(rows):,} more{_where(shown)}</p>")
    return "\n".join(parts)


def _which(shown: Shown, n: int) -> str:
    if shown.tail:
        return f"the last {n}"
    if shown.by:
        return f"the top {n} by {'|' if shown.absolute else ''}{shown.by}{'|' if shown.absolute else ''}" + (
            " (smallest first)" if shown.ascending else "")
    return f"the first {n}"


def _where(shown: Shown) -> str:
    if not shown.artifact:
        return ""
    digest = f" (sha256 {shown.digest[:12]}…)" if shown.digest else ""
    return f"; the full table is {ARTIFACTS_DIR}/{html.escape(shown.artifact)}{digest}"


def frame_text(frame: pd.DataFrame, shown: Shown | None = None, *, limit: int = LIMIT, top: int = TOP) -> str:
    """The plain-text counterpart of ``frame_html`` (a notebook keeps both)."""
    shown = shown or Shown()
    head = f"{shown.totals}\n" if shown.totals else ""
    if len(frame) <= limit:
        return head + tables.frame_text(pd.DataFrame(frame))
    rows = _top(frame, shown, top)
    return (head + f"{len(frame):,} rows; {_which(shown, len(rows))}:\n" + tables.frame_text(pd.DataFrame(rows))
            + f"\n… {len(frame) - len(rows):,} more{_where(shown)}")


class SummaryFrame(pd.DataFrame):
    """A DataFrame that displays as its summary; every operation on it gives a plain DataFrame back.

    Code and tests use it like the frame it is (filter it, chart it, compare it); only the notebook's
    rendering is cut down.
    """

    _metadata = ["_shown"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def _repr_html_(self) -> str:
        return frame_html(self, getattr(self, "_shown", None))

    def __repr__(self) -> str:
        return frame_text(self, getattr(self, "_shown", None))


def artifact_name(session, stem: str, suffix: str = ".csv") -> str:
    """``stem + suffix``, or ``stem-2 + suffix``…: a step shown twice in a run (status before and after)
    saves twice, and artifacts are written once."""
    record_dir = getattr(session, "record_dir", None)
    name, n = f"{stem}{suffix}", 1
    while record_dir is not None and (record_dir / ARTIFACTS_DIR / name).exists():
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


def save_frame(session, stem: str, frame: pd.DataFrame, *, limit: int = LIMIT) -> tuple[str | None, str | None]:
    """Save ``frame`` as artifacts/STEM.csv when it is longer than ``limit`` rows: (name, sha256), or Nones.

    Without a record folder (an interactive session) nothing is written and no name is given.
    """
    if len(frame) <= limit or getattr(session, "record_dir", None) is None:
        return None, None
    name = artifact_name(session, stem)
    digest = session.save_artifact(name, pd.DataFrame(frame).to_csv(index=False))
    return name, digest


def summarize(session, stem: str, frame: pd.DataFrame, shown: Shown | None = None, *,
              limit: int = LIMIT) -> SummaryFrame:
    """``frame`` as a ``SummaryFrame``: the full table saved as artifacts/STEM.csv when it is long."""
    shown = shown or Shown()
    name, digest = save_frame(session, stem, frame, limit=limit)
    out = SummaryFrame(frame)
    out.attrs.update(frame.attrs)
    object.__setattr__(out, "_shown", Shown(**{**shown.__dict__, "artifact": name, "digest": digest}))
    return out


def steps_shown(items, *, key, limit: int = LIMIT, first: int = 3, last: int = 3, biggest: int = 3) -> set[int]:
    """Indices of a long list's items to show in full: the first, the last and the biggest by ``key``.

    The preview of 1,000 revisions shows its first and last steps and the heaviest ones, not 1 MB of SQL;
    the rest is in the artifact the preview saved (and its digest still covers all of it).
    """
    n = len(items)
    if n <= limit:
        return set(range(n))
    heavy = sorted(range(n), key=lambda i: (-key(items[i]), i))[:biggest]
    return set(range(min(first, n))) | set(range(max(0, n - last), n)) | set(heavy)


def gap(shown: set[int], i: int) -> int:
    """How many items were left out just before item ``i``."""
    before = [j for j in shown if j < i]
    return i - 1 - max(before) if before else i


def tally(frame: pd.DataFrame, what: str, column: str) -> str:
    """'1,000 revision(s): 990 applied, 10 pending' — the totals said before a long table."""
    if column not in frame.columns or frame.empty:
        return f"{len(frame):,} {what}"
    counts = frame[column].value_counts()
    return f"{len(frame):,} {what}: " + ", ".join(f"{n:,} {k}" for k, n in counts.items())


def counts_compared(session, stem: str, frame: pd.DataFrame) -> SummaryFrame:
    """A counts comparison (``snapshots.compare``) shown as its totals and the biggest changes first."""
    totals = tally(frame, "table(s)", "status")
    if {"before", "after"} <= set(frame.columns) and not frame.empty:
        totals += (f"; rows {int(frame['before'].fillna(0).sum()):,} → "
                   f"{int(frame['after'].fillna(0).sum()):,}")
    return summarize(session, stem, frame, Shown(by="change", absolute=True, totals=totals))
