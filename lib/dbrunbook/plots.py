"""Pictures for runbooks and records: the revision graph, row counts before/after, step durations.

Each function returns a ``Plot``: PNG bytes with ``_repr_png_``, so the last expression of a cell shows the
picture and papermill stores it in the record, where nbconvert embeds it in the HTML archive.

Records are signed and compared byte for byte, so a plot must depend on its data only: matplotlib's Agg
renderer on a bare ``Figure`` (no pyplot state, no backend of the kernel), matplotlib's default style whatever
the user's matplotlibrc says, fixed sizes and dpi, a fixed ``svg.hashsalt``, and PNG metadata without the
software version (``metadata={"Software": None}``; Agg writes no timestamp). The same data on the same
matplotlib and fonts gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import migrations
from .config import MigrationSet

log = logging.getLogger(__name__)

__all__ = ["Plot", "Plots", "counts_chart", "durations_chart", "revision_graph"]

DPI = 100
# Fixed so that nothing in the output depends on the process or the user's matplotlibrc.
_RC = {
    "svg.hashsalt": "dbrunbook",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "path.simplify": True,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}
_APPLIED, _PENDING, _CURRENT, _EDGE = "#4c72b0", "#ffffff", "#dd8452", "#555555"
_BEFORE, _AFTER, _REHEARSAL = "#9aa5b1", "#4c72b0", "#dd8452"


@dataclass(frozen=True)
class Plot:
    """A rendered picture: PNG bytes, shown by Jupyter through ``_repr_png_``."""

    title: str
    png: bytes
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        # What text/plain shows next to the image: stable, short, no bytes.
        return f"Plot({self.title!r}, {self.width}x{self.height} px, sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class Plots:
    """Several pictures as one cell output (one revision graph per migration set, say).

    Shown as HTML ``<img>`` tags with the PNGs inline: a cell has one result, and the archive's sanitizer
    keeps embedded PNG images.
    """

    plots: tuple[Plot, ...]

    def __iter__(self):
        return iter(self.plots)

    def __len__(self) -> int:
        return len(self.plots)

    def _repr_html_(self) -> str:
        import base64
        import html

        return "".join(
            f'<div><img alt="{html.escape(p.title)}" width="{p.width}" height="{p.height}" '
            f'src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}"></div>' for p in self.plots)

    def __repr__(self) -> str:
        return f"Plots({', '.join(repr(p) for p in self.plots)})"


def _figure(width: float, height: float) -> Figure:
    # A bare Figure, not pyplot: the kernel's inline backend does not show it a second time or keep it alive.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Figure, title: str) -> Plot:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Plot(title=title, png=buffer.getvalue(), width=width, height=height)


class _style:
    """matplotlib's default style plus our fixed settings, for the duration of one drawing."""

    def __enter__(self) -> None:
        self._style = matplotlib.style.context("default")
        self._style.__enter__()
        self._rc = matplotlib.rc_context(_RC)
        self._rc.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._rc.__exit__(*exc)
        self._style.__exit__(*exc)


def _short(text: str, length: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[: length - 1] + "…"


# --- revision graph -----------------------------------------------------------------------------------
def _layers(history: Sequence[migrations.RevisionInfo]) -> dict[str, int]:
    """Layer of each revision: the length of the longest path from a base, so parents sit above children."""
    by_revision = {r.revision: r for r in history}
    layer: dict[str, int] = {}
    for info in history:  # iterative DFS: a long linear history must not hit the recursion limit
        stack = [info.revision]
        while stack:
            revision = stack[-1]
            if revision in layer:
                stack.pop()
                continue
            parents = [p for p in by_revision[revision].down_revisions if p in by_revision]
            missing = [p for p in parents if p not in layer]
            if missing:
                stack.extend(missing)
                continue
            layer[revision] = 1 + max((layer[p] for p in parents), default=-1)
            stack.pop()
    return layer


def _positions(history: Sequence[migrations.RevisionInfo], layer: dict[str, int]) -> dict[str, float]:
    """Column of each revision within its layer: ordered by the mean column of its parents (barycentre).

    One top-down sweep of the classic Sugiyama heuristic is enough for migration graphs, which are mostly
    linear with short-lived branches; ties keep Alembic's history order, so the layout is deterministic.
    """
    order = {r.revision: i for i, r in enumerate(history)}
    by_layer: dict[int, list[str]] = {}
    for revision, depth in layer.items():
        by_layer.setdefault(depth, []).append(revision)
    parents = {r.revision: [p for p in r.down_revisions if p in layer] for r in history}
    column: dict[str, float] = {}
    for depth in sorted(by_layer):
        def key(revision: str) -> tuple[float, int]:
            ps = parents[revision]
            centre = sum(column[p] for p in ps) / len(ps) if ps else 0.0
            return centre, order[revision]

        members = sorted(by_layer[depth], key=key)
        offset = (len(members) - 1) / 2
        for i, revision in enumerate(members):
            column[revision] = i - offset
    return column


def _history_of(mset: MigrationSet | Iterable[migrations.RevisionInfo]) -> tuple[str, list]:
    if isinstance(mset, MigrationSet):
        return mset.name, migrations.history(mset)
    return "", list(mset)


def revision_graph(mset: MigrationSet | Iterable[migrations.RevisionInfo], current: Sequence[str] = ()
                   ) -> Plot:
    """Draw the migration set's revision graph (branches, merges), with the database's position marked.

    Bases at the top, heads at the bottom; applied revisions (the ancestry of ``current``) filled, pending
    ones hollow, the current revision(s) ringed; merges are diamonds. The layout is computed here (layers by
    longest path, columns by barycentre), so no graphviz binary is needed.

    Args:
        mset: a migration set, or its ``migrations.history(...)`` list.
        current: the database's current revision(s), as ``migrations.current`` returns them.
    """
    name, history = _history_of(mset)
    current = tuple(current or ())
    title = f"revision graph{' of ' + name if name else ''}"
    by_revision = {r.revision: r for r in history}
    applied: set[str] = set()
    stack = [c for c in current if c in by_revision]
    while stack:
        revision = stack.pop()
        if revision not in applied:
            applied.add(revision)
            stack.extend(p for p in by_revision[revision].down_revisions if p in by_revision)
    layer = _layers(history)
    column = _positions(history, layer)
    depth = max(layer.values(), default=0) + 1
    xs = list(column.values()) or [0.0]
    # One column is as wide as a label (~3 inches); the axes span from the leftmost node to the right end
    # of the rightmost node's label.
    left, right = min(xs) - 0.15, max(xs) + 1.0
    with _style():
        fig = _figure(max(6.0, 3.0 * (right - left)), max(2.0, 0.9 + 0.55 * depth))
        ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
        ax.set_axis_off()
        if not history:
            ax.text(0.5, 0.5, "no revisions", ha="center", va="center", transform=ax.transAxes)
            return _render(fig, title)
        for info in history:
            for parent in info.down_revisions:
                if parent in column:
                    ax.plot([column[parent], column[info.revision]], [-layer[parent], -layer[info.revision]],
                            color=_EDGE, linewidth=1.2, zorder=1)
        for info in history:
            x, y = column[info.revision], -layer[info.revision]
            is_current = info.revision in current
            ax.scatter([x], [y], s=140 if info.is_merge else 110, marker="D" if info.is_merge else "o",
                       facecolor=_APPLIED if info.revision in applied else _PENDING,
                       edgecolor=_CURRENT if is_current else _EDGE, linewidths=3.0 if is_current else 1.2,
                       zorder=3)
            label = f"{info.revision[:12]}  {_short(info.message, 34)}"
            if is_current:
                label += "  ◀ current"
            if info.is_head:
                label += "  (head)"
            ax.annotate(label, (x, y), xytext=(10, 0), textcoords="offset points", va="center", ha="left",
                        fontsize=8, fontweight="bold" if is_current else "normal")
        ax.set_xlim(left, right)
        ax.set_ylim(-(depth - 1) - 0.6, 0.6)
        legend = [
            Line2D([], [], marker="o", linestyle="", markerfacecolor=_APPLIED, markeredgecolor=_EDGE,
                   label="applied"),
            Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_EDGE,
                   label="pending"),
            Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_CURRENT,
                   markeredgewidth=3, label="current"),
            Line2D([], [], marker="D", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_EDGE,
                   label="merge"),
        ]
        ax.legend(handles=legend, loc="lower right", fontsize=7, frameon=False)
        return _render(fig, title)


# --- row counts -----------------------------------------------------------------------------------------
def _rows_of(frame: Any) -> list[dict]:
    if hasattr(frame, "to_dict"):
        return frame.to_dict("records")
    return [dict(row) for row in frame]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if number != number else number  # NaN (a table that did not exist) counts as 0 rows


def counts_chart(diff_frame: Any) -> Plot:
    """Bar chart of row counts before and after, for the tables that changed.

    Args:
        diff_frame: what ``snapshots.compare`` / ``Session.compare_counts`` return (columns table, before,
            after, change, status); rows with status "same" are left out.
    """
    rows = [r for r in _rows_of(diff_frame) if r.get("status", "changed") != "same"]
    rows.sort(key=lambda r: str(r["table"]))
    title = "row counts before and after"
    with _style():
        fig = _figure(8.0, max(1.6, 0.9 + 0.42 * len(rows)))
        if not rows:
            ax = fig.add_axes((0, 0, 1, 1))
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no table changed its row count", ha="center", va="center")
            return _render(fig, title)
        ax = fig.add_axes((0.3, 0.9 / (0.9 + 0.42 * len(rows)) * 0.6, 0.56, 1 - 0.9 / (0.9 + 0.42 * len(rows))))
        labels = [f"{_short(r['table'], 34)} ({r.get('status', '')})" for r in rows]
        ys = list(range(len(rows)))
        before = [_number(r.get("before")) for r in rows]
        after = [_number(r.get("after")) for r in rows]
        # The y axis is inverted below (first table on top), so "before" at y - 0.2 is drawn above "after".
        ax.barh([y - 0.2 for y in ys], before, height=0.38, color=_BEFORE, label="before")
        ax.barh([y + 0.2 for y in ys], after, height=0.38, color=_AFTER, label="after")
        for y, b, a in zip(ys, before, after):
            ax.annotate(f"{a - b:+,.0f}", (max(a, b), y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.margins(x=0.12)  # room for the change labels right of the bars
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _render(fig, title)


# --- durations ------------------------------------------------------------------------------------------
def _durations(steps: Any) -> list[tuple[str, float]]:
    """``[(label, seconds)]`` from a list of ``migrations.StepResult`` or a frame with revision/seconds."""
    if steps is None:
        return []
    items = _rows_of(steps) if hasattr(steps, "to_dict") else [
        s if isinstance(s, dict) else {"revision": s.revision, "direction": s.direction, "seconds": s.seconds}
        for s in steps
    ]
    out = []
    for item in items:
        seconds = item.get("seconds")
        if seconds is None or _number(seconds) != float(seconds):  # dry run: nothing was timed
            continue
        prefix = f"{item['migration_set']}: " if item.get("migration_set") else ""
        suffix = " (down)" if item.get("direction") == "downgrade" else ""
        out.append((f"{prefix}{item['revision']}{suffix}", float(seconds)))
    return out


def durations_chart(steps: Any, rehearsal: Any = None) -> Plot:
    """Seconds per revision of an upgrade (and of its rehearsal, side by side, when given).

    Args:
        steps: ``Session.upgrade``'s frame (migration_set, revision, direction, seconds) or a list of
            ``migrations.StepResult``; rows without seconds (a dry run) are left out.
        rehearsal: the same for a rehearsal run on a copy, to compare with.
    """
    applied, rehearsed = _durations(steps), dict(_durations(rehearsal))
    labels = list(dict.fromkeys([label for label, _ in applied] + list(rehearsed)))
    seconds = dict(applied)
    title = "seconds per revision"
    with _style():
        fig = _figure(8.0, max(1.6, 0.9 + 0.42 * len(labels)))
        if not labels:
            ax = fig.add_axes((0, 0, 1, 1))
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no step was timed (dry run, or nothing to apply)", ha="center", va="center")
            return _render(fig, title)
        margin = 0.9 / (0.9 + 0.42 * len(labels))
        ax = fig.add_axes((0.3, margin * 0.6, 0.56, 1 - margin))
        ys = list(range(len(labels)))
        both = bool(rehearsed) and bool(applied)
        height = 0.38 if both else 0.7
        if rehearsed:
            ax.barh([y - (0.2 if both else 0) for y in ys], [rehearsed.get(k, 0.0) for k in labels],
                    height=height, color=_REHEARSAL, label="rehearsal")
        if applied:
            ax.barh([y + (0.2 if both else 0) for y in ys], [seconds.get(k, 0.0) for k in labels],
                    height=height, color=_AFTER, label="apply")
        for y, label in zip(ys, labels):
            value = max(seconds.get(label, 0.0), rehearsed.get(label, 0.0))
            ax.annotate(f"{value:.2f} s", (value, y), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=7)
        ax.set_yticks(ys, [_short(label, 40) for label in labels])
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.margins(x=0.12)
        if both:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _render(fig, title)
