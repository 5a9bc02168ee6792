"""The figures of a backfill run as one picture: rows and seconds per batch, pauses marked.

Deterministic like ``plots`` (its style, renderer and PNG settings): the x axis is the batch number, not
the wall clock, so the picture depends on the recorded figures only.
"""

from __future__ import annotations

from dbrunbook.views.figures import Note, Plot, new_figure, plot_style, render_plot

__all__ = ["batches_chart"]


def batches_chart(result, *, batch_seconds: float | None = None) -> Plot | Note:
    """Rows changed and seconds of each batch of ``result`` (a BackfillResult); a dotted line per pause."""
    title = f"Backfill {result.name}: batches"
    if not result.batches:
        return Note(title, "no batch ran in this run")
    numbers = [b.number for b in result.batches]
    with plot_style():
        fig = new_figure(8.0, 4.2)
        rows_ax, secs_ax = fig.subplots(2, 1, sharex=True)
        rows_ax.bar(numbers, [b.rows for b in result.batches], width=0.8, color="#4c72b0")
        rows_ax.set_ylabel("rows changed")
        secs_ax.plot(numbers, [b.seconds for b in result.batches], color="#dd8452", marker=".", linewidth=1)
        if batch_seconds:
            secs_ax.axhline(batch_seconds, color="#555555", linestyle="--", linewidth=0.8)
            secs_ax.annotate(f"target {batch_seconds:g} s", (numbers[0], batch_seconds), xytext=(0, 3),
                             textcoords="offset points", fontsize=7)
        secs_ax.set_ylabel("seconds")
        secs_ax.set_xlabel("batch")
        for pause in result.pauses:
            for ax in (rows_ax, secs_ax):
                ax.axvline(pause.before_batch - 0.5, color="#c44e52", linestyle=":", linewidth=1)
            rows_ax.annotate(f"pause {pause.seconds:.1f} s", (pause.before_batch - 0.5, 0), xytext=(2, 2),
                             textcoords="offset points", fontsize=7, color="#c44e52", rotation=90)
        for ax in (rows_ax, secs_ax):
            ax.spines[["top", "right"]].set_visible(False)
        total = sum(b.rows for b in result.batches)
        rows_ax.set_title(f"{total:,} rows in {len(numbers):,} batches, {len(result.pauses)} pause(s)",
                          fontsize=9)
        fig.tight_layout()
        return render_plot(fig, title)
