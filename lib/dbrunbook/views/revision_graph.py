"""The revision graph of a migration set: applied, pending and current revisions, merges, long chains cut.

One layer per generation from base to the heads, branches side by side; past ``MAX_LAYERS`` layers only the
newest ones and the neighbourhood of the current revision(s) are drawn, each collapsed run shown as one
"… N revisions" row, so a chain of 1,000 revisions stays a picture a person can read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.views.figures import (
    EDGE_COLOR,
    Plot,
    new_figure,
    plot_style,
    render_plot,
    shorten,
)

#: The most layers of a revision graph drawn in full: the oldest ones are collapsed into one "… N earlier" row.
MAX_LAYERS = 24
_APPLIED, _PENDING, _CURRENT = "#4c72b0", "#ffffff", "#dd8452"


#: Layers kept in full around each current revision that lies in the collapsed part.
CURRENT_CONTEXT = 2


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
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_APPLIED, markeredgecolor=EDGE_COLOR, label="applied"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=EDGE_COLOR, label="pending"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor=_PENDING, markeredgecolor=_CURRENT,
               markeredgewidth=3, label="current"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor=_PENDING, markeredgecolor=EDGE_COLOR, label="merge"),
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
    ax.add_collection(LineCollection(edges, colors=EDGE_COLOR, linewidths=1.2, zorder=1))
    ax.add_collection(LineCollection(cut, colors=EDGE_COLOR, linewidths=1.0, linestyles=[(0, (2, 2))], zorder=1))
    for row, hidden in gaps:
        ax.annotate(f"⋮  {hidden:,} earlier revision{'s' if hidden != 1 else ''} (collapsed)",
                    (min(xs), -row), xytext=(10, 0), textcoords="offset points", va="center", ha="left",
                    fontsize=8, fontstyle="italic", color=EDGE_COLOR)
    kinds: dict[tuple, list[tuple[float, float]]] = {}
    for info in shown:
        is_current = info.revision in current
        kind = (info.is_merge, info.revision in applied, is_current)
        kinds.setdefault(kind, []).append((column[info.revision], y_of(info.revision)))
    for (is_merge, is_applied, is_current), points in sorted(kinds.items()):
        ax.scatter([x for x, _ in points], [y for _, y in points], s=140 if is_merge else 110,
                   marker="D" if is_merge else "o", facecolor=_APPLIED if is_applied else _PENDING,
                   edgecolor=_CURRENT if is_current else EDGE_COLOR, linewidths=3.0 if is_current else 1.2, zorder=3)
    for info in shown:
        x, y = column[info.revision], y_of(info.revision)
        is_current = info.revision in current
        label = f"{info.revision[:12]}  {shorten(info.message, 34)}"
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
