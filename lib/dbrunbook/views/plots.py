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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet

log = logging.getLogger(__name__)

__all__ = ["Note", "Plot", "Plots", "counts_chart", "durations_chart", "revision_graph"]

DPI = 100
#: The most bars a chart draws: the rest are summed up in one "… N more" line (the full data is in the table).
MAX_BARS = 25
#: The most layers of a revision graph drawn in full: the oldest ones are collapsed into one "… N earlier" row.
MAX_LAYERS = 24
#: Layers kept in full around each current revision that lies in the collapsed part.
CURRENT_CONTEXT = 2
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
class Note:
    """One line instead of a picture, when a chart would show nothing (no count changed, nothing timed)."""

    title: str
    text: str

    def _repr_html_(self) -> str:
        import html

        return f"<p><i>{html.escape(self.title)}:</i> {html.escape(self.text)}</p>"

    def __repr__(self) -> str:
        return f"{self.title}: {self.text}"


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


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure, not pyplot: the kernel's inline backend does not show it a second time or keep it alive.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def render_plot(fig: Figure, title: str) -> Plot:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Plot(title=title, png=buffer.getvalue(), width=width, height=height)


class plot_style:
    """matplotlib's default style plus our fixed settings, for the duration of one drawing."""

    def __enter__(self) -> None:
        self._style = matplotlib.style.context("default")
        self._style.__enter__()
        self._rc = matplotlib.rc_context(_RC)
        self._rc.__enter__()

    def __exit__(self, *exc: object) -> None:
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


def _visible_rows(layer: dict[str, int], current: Sequence[str]) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """Which layers are drawn, on which row, and the collapsed gaps as ``[(row, layers hidden)]``.

    A person cannot read hundreds of labels: the last ``MAX_LAYERS`` layers (the heads and what is about to be
    applied) are drawn in full, and so are a few layers around each current revision; each run of other layers
    becomes one row saying how many revisions it hides.
    """
    depth = max(layer.values(), default=-1) + 1
    if depth <= MAX_LAYERS:
        return {d: d for d in range(depth)}, []
    keep = set(range(depth - MAX_LAYERS, depth))
    for revision in current:
        if revision in layer:
            keep.update(range(max(0, layer[revision] - CURRENT_CONTEXT),
                              min(depth, layer[revision] + CURRENT_CONTEXT + 1)))
    per_layer: dict[int, int] = {}
    for depth_of in layer.values():
        per_layer[depth_of] = per_layer.get(depth_of, 0) + 1
    rows: dict[int, int] = {}
    gaps: list[tuple[int, int]] = []
    row, hidden = 0, 0
    for d in range(depth):
        if d in keep:
            if hidden:
                gaps.append((row, hidden))
                row, hidden = row + 1, 0
            rows[d] = row
            row += 1
        else:
            hidden += per_layer.get(d, 0)
    if hidden:
        gaps.append((row, hidden))
    return rows, gaps


def _legend_handles() -> list[Line2D]:
    return [
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_APPLIED, markeredgecolor=_EDGE, label="applied"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_EDGE, label="pending"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_CURRENT,
               markeredgewidth=3, label="current"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_EDGE, label="merge"),
    ]


def revision_graph(mset: MigrationSet | Iterable[migrations.RevisionInfo], current: Sequence[str] = ()
                   ) -> Plot:
    """Draw the migration set's revision graph (branches, merges), with the database's position marked.

    Bases at the top, heads at the bottom; applied revisions (the ancestry of ``current``) filled, pending
    ones hollow, the current revision(s) ringed; merges are diamonds. The layout is computed here (layers by
    longest path, columns by barycentre), so no graphviz binary is needed. Long chains keep their size: only
    the newest ``MAX_LAYERS`` layers and the neighbourhood of the current revision(s) are drawn, each run of
    older revisions is one "… N earlier revisions" row. The legend sits above the graph, clear of any label.

    Args:
        mset: a migration set, or its ``migrations.history(...)`` list.
        current: the database's current revision(s), as ``migrations.current`` returns them.
    """
    name, history = _history_of(mset)
    title = f"revision graph{' of ' + name if name else ''}"
    with plot_style():
        return render_plot(_graph_figure(history, tuple(current or ())), title)


def _graph_figure(history: list[migrations.RevisionInfo], current: tuple[str, ...]) -> Figure:
    """The revision graph's figure (drawn inside ``plot_style()``); kept apart so tests can measure its layout."""
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
    rows, gaps = _visible_rows(layer, current)
    shown = [info for info in history if layer[info.revision] in rows]
    n_rows = max([*rows.values(), *(g[0] for g in gaps)], default=0) + 1
    xs = [column[info.revision] for info in shown] or [0.0]
    # One column is as wide as a label (~3 inches); the axes span from the leftmost node to the right end
    # of the rightmost node's label.
    left, right = min(xs) - 0.15, max(xs) + 1.0
    legend_inches = 0.35
    height = max(2.0, 0.9 + 0.55 * n_rows) + legend_inches
    fig = new_figure(max(6.0, 3.0 * (right - left)), height)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - legend_inches / height))
    ax.set_axis_off()
    if not history:
        ax.text(0.5, 0.5, "no revisions", ha="center", va="center", transform=ax.transAxes)
        return fig

    def y_of(revision: str) -> float:
        return -rows[layer[revision]]

    gap_rows = [row for row, _ in gaps]
    edges, cut = [], []
    for info in shown:
        for parent in info.down_revisions:
            if parent not in column:
                continue
            if layer[parent] in rows:
                edges.append([(column[parent], y_of(parent)), (column[info.revision], y_of(info.revision))])
            else:  # the parent is collapsed: a dashed edge up to the gap row just above
                above = max((g for g in gap_rows if g < rows[layer[info.revision]]), default=0)
                cut.append([(column[info.revision], -above), (column[info.revision], y_of(info.revision))])
    # One collection per kind of line and one scatter per kind of node: drawing stays fast on long chains.
    ax.add_collection(LineCollection(edges, colors=_EDGE, linewidths=1.2, zorder=1))
    ax.add_collection(LineCollection(cut, colors=_EDGE, linewidths=1.0, linestyles=[(0, (2, 2))], zorder=1))
    for row, hidden in gaps:
        ax.annotate(f"⋮  {hidden:,} earlier revision{'s' if hidden != 1 else ''} (collapsed)",
                    (min(xs), -row), xytext=(10, 0), textcoords="offset points", va="center", ha="left",
                    fontsize=8, fontstyle="italic", color=_EDGE)
    kinds: dict[tuple, list[tuple[float, float]]] = {}
    for info in shown:
        is_current = info.revision in current
        kind = (info.is_merge, info.revision in applied, is_current)
        kinds.setdefault(kind, []).append((column[info.revision], y_of(info.revision)))
    for (is_merge, is_applied, is_current), points in sorted(kinds.items()):
        ax.scatter([x for x, _ in points], [y for _, y in points], s=140 if is_merge else 110,
                   marker="D" if is_merge else "o", facecolor=_APPLIED if is_applied else _PENDING,
                   edgecolor=_CURRENT if is_current else _EDGE, linewidths=3.0 if is_current else 1.2, zorder=3)
    for info in shown:
        x, y = column[info.revision], y_of(info.revision)
        is_current = info.revision in current
        label = f"{info.revision[:12]}  {_short(info.message, 34)}"
        if is_current:
            label += "  ◀ current"
        if info.is_head:
            label += "  (head)"
        ax.annotate(label, (x, y), xytext=(10, 0), textcoords="offset points", va="center", ha="left",
                    fontsize=8, fontweight="bold" if is_current else "normal")
    ax.set_xlim(left, right)
    ax.set_ylim(-(n_rows - 1) - 0.6, 0.6)
    fig.legend(handles=_legend_handles(), loc="upper left", ncol=4, fontsize=7, frameon=False,
               bbox_to_anchor=(0.01, 1.0))
    return fig


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


def _bar_axes(fig: Figure, n_rows: int):
    margin = 0.9 / (0.9 + 0.42 * n_rows)
    return fig.add_axes((0.3, margin * 0.6, 0.56, 1 - margin))


def _more_label(ax: Any, y: int, text: str) -> None:
    ax.annotate(text, (0, y), xytext=(0, 0), textcoords="offset points", va="center", ha="left", fontsize=7,
                fontstyle="italic", color=_EDGE)


def counts_chart(diff_frame: Any) -> Plot | Note:
    """Bar chart of row counts before and after, for the tables whose count changed.

    Tables whose count did not change (status "same", or a new table still empty) are left out; when none is
    left the result is a one-line ``Note``. At most ``MAX_BARS`` tables are drawn, the biggest changes first,
    and one line says how many more changed (every table is in the comparison table itself).

    Args:
        diff_frame: what ``snapshots.compare`` / ``Session.compare_counts`` return (columns table, before,
            after, change, status).
    """
    rows = [r for r in _rows_of(diff_frame)
            if r.get("status", "changed") != "same" and _number(r.get("before")) != _number(r.get("after"))]
    title = "row counts before and after"
    if not rows:
        return Note(title, "no table changed its row count")
    rows.sort(key=lambda r: (-abs(_number(r.get("after")) - _number(r.get("before"))), str(r["table"])))
    more = rows[MAX_BARS:]
    rows = rows[:MAX_BARS]
    n_rows = len(rows) + (1 if more else 0)
    with plot_style():
        fig = new_figure(8.0, max(1.6, 0.9 + 0.42 * n_rows))
        ax = _bar_axes(fig, n_rows)
        labels = [f"{_short(r['table'], 34)} ({r.get('status', '')})" for r in rows]
        ys = list(range(len(rows)))
        before = [_number(r.get("before")) for r in rows]
        after = [_number(r.get("after")) for r in rows]
        # The y axis is inverted below (first table on top), so "before" at y - 0.2 is drawn above "after".
        ax.barh([y - 0.2 for y in ys], before, height=0.38, color=_BEFORE, label="before")
        ax.barh([y + 0.2 for y in ys], after, height=0.38, color=_AFTER, label="after")
        for y, b, a in zip(ys, before, after, strict=False):
            ax.annotate(f"{a - b:+,.0f}", (max(a, b), y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
        if more:
            labels.append(f"… {len(more):,} more tables")
            ys.append(len(rows))
            _more_label(ax, len(rows), f"{len(more):,} more tables changed by "
                                       f"{sum(abs(_number(r.get('after')) - _number(r.get('before'))) for r in more):,.0f}"
                                       f" rows in all: see the table")
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.margins(x=0.12)  # room for the change labels right of the bars
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return render_plot(fig, title)


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


def durations_chart(steps: Any, rehearsal: Any = None) -> Plot | Note:
    """Seconds per revision of an upgrade (and of its rehearsal, side by side, when given).

    When nothing was timed the result is a one-line ``Note``. At most ``MAX_BARS`` revisions are drawn: with
    more, the slowest ones (what a person looks for), then one line with the count and seconds of the rest.

    Args:
        steps: ``Session.upgrade``'s frame (migration_set, revision, direction, seconds) or a list of
            ``migrations.StepResult``; rows without seconds (a dry run) are left out.
        rehearsal: the same for a rehearsal run on a copy, to compare with.
    """
    applied, rehearsed = _durations(steps), dict(_durations(rehearsal))
    labels = list(dict.fromkeys([label for label, _ in applied] + list(rehearsed)))
    seconds = dict(applied)
    title = "seconds per revision"
    if not labels:
        return Note(title, "no step was timed (dry run, or nothing to apply)")

    def slowest(label: str) -> float:
        return max(seconds.get(label, 0.0), rehearsed.get(label, 0.0))

    more: list[str] = []
    if len(labels) > MAX_BARS:
        ranked = sorted(labels, key=lambda label: -slowest(label))
        keep, more = set(ranked[:MAX_BARS]), ranked[MAX_BARS:]
        labels = [label for label in labels if label in keep]
    n_rows = len(labels) + (1 if more else 0)
    with plot_style():
        fig = new_figure(8.0, max(1.6, 0.9 + 0.42 * n_rows))
        ax = _bar_axes(fig, n_rows)
        ys = list(range(len(labels)))
        both = bool(rehearsed) and bool(applied)
        height = 0.38 if both else 0.7
        if rehearsed:
            ax.barh([y - (0.2 if both else 0) for y in ys], [rehearsed.get(k, 0.0) for k in labels],
                    height=height, color=_REHEARSAL, label="rehearsal")
        if applied:
            ax.barh([y + (0.2 if both else 0) for y in ys], [seconds.get(k, 0.0) for k in labels],
                    height=height, color=_AFTER, label="apply")
        for y, label in zip(ys, labels, strict=False):
            value = slowest(label)
            ax.annotate(f"{value:.2f} s", (value, y), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize=7)
        tick_labels = [_short(label, 40) for label in labels]
        if more:
            ys.append(len(labels))
            tick_labels.append(f"… {len(more):,} more revisions")
            _more_label(ax, len(labels), f"{len(more):,} faster revisions, "
                                         f"{sum(slowest(label) for label in more):.2f} s in all")
        ax.set_yticks(ys, tick_labels)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.margins(x=0.12)
        if both:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return render_plot(fig, title)
