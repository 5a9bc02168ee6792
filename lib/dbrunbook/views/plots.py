"""Pictures for runbooks and records: the revision graph, row counts before/after, step durations.

Each function returns a ``Plot``: PNG bytes with ``_repr_png_``, so the last expression of a cell shows the
picture and papermill stores it in the record, where nbconvert embeds it in the HTML archive. The revision
graph is drawn by ``revision_graph.py`` and the figure style lives in ``figures.py``; this module draws the
bar charts (counts, durations) and is where every chart is imported from.
"""

from __future__ import annotations

import logging
from typing import Any

from matplotlib.figure import Figure

from dbrunbook.views.figures import DPI, EDGE_COLOR, Note, Plot, Plots, new_figure, plot_style, render_plot, shorten
from dbrunbook.views.revision_graph import CURRENT_CONTEXT, MAX_LAYERS, revision_graph

log = logging.getLogger(__name__)

__all__ = [
    "CURRENT_CONTEXT", "DPI", "MAX_BARS", "MAX_LAYERS", "Note", "Plot", "Plots", "counts_chart", "durations_chart",
    "new_figure", "plot_style", "render_plot", "revision_graph",
]

#: The most bars a chart draws: the rest are summed up in one "… N more" line (the full data is in the table).
MAX_BARS = 25
_BEFORE, _AFTER, _REHEARSAL = "#9aa5b1", "#4c72b0", "#dd8452"


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
                fontstyle="italic", color=EDGE_COLOR)


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
        labels = [f"{shorten(r['table'], 34)} ({r.get('status', '')})" for r in rows]
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
            changed = sum(abs(_number(r.get("after")) - _number(r.get("before"))) for r in more)
            _more_label(ax, len(rows), f"{len(more):,} more tables changed by {changed:,.0f} rows in all: "
                                       f"see the table")
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
        tick_labels = [shorten(label, 40) for label in labels]
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
