"""Plots: the same data gives the same PNG bytes; layout of the sample revision graph; what each chart keeps."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet
from dbrunbook.views import plots, revision_graph

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def main_set() -> MigrationSet:
    return MigrationSet(name="main", alembic_ini=ROOT / "migrations" / "main" / "alembic.ini")


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind, data = png[at + 4:at + 8], png[at + 8:at + 8 + length]
        assert zlib.crc32(kind + data) == struct.unpack(">I", png[at + 8 + length:at + 12 + length])[0]
        chunks.append((kind, data))
        at += 12 + length
    return chunks


COUNTS = pd.DataFrame([
    {"table": "public.users", "before": 100, "after": 100, "change": 0, "percent": 0.0, "status": "same"},
    {"table": "public.user_preferences", "before": None, "after": 1200, "change": 1200, "percent": None,
     "status": "added"},
    {"table": "public.orders", "before": 5000, "after": 4000, "change": -1000, "percent": -20.0,
     "status": "changed"},
])
STEPS = pd.DataFrame([
    {"migration_set": "main", "revision": "a1b2c3d4e5f6", "direction": "upgrade", "seconds": 0.12, "done": True},
    {"migration_set": "main", "revision": "b7e4f0c2d913", "direction": "upgrade", "seconds": 1.5, "done": True},
])


def test_same_data_gives_identical_bytes(main_set):
    drawings = [
        lambda: plots.revision_graph(main_set, current=("9fd62e8",)),
        lambda: plots.counts_chart(COUNTS),
        lambda: plots.durations_chart(STEPS, rehearsal=STEPS.assign(seconds=[0.1, 1.2])),
    ]
    for draw in drawings:
        first, second = draw(), draw()
        assert first.png == second.png
        assert first.sha256 == second.sha256


def test_png_has_no_software_or_time_metadata(main_set):
    kinds = [kind for kind, _ in _chunks(plots.revision_graph(main_set).png)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert b"tIME" not in kinds
    texts = [data for kind, data in _chunks(plots.revision_graph(main_set).png) if kind in (b"tEXt", b"iTXt")]
    assert not any(t.startswith(b"Software") for t in texts)


def test_png_size_is_the_figure_size(main_set):
    plot = plots.revision_graph(main_set)
    width, height = struct.unpack(">II", _chunks(plot.png)[0][1][:8])
    assert (width, height) == (plot.width, plot.height)
    assert plot._repr_png_() is plot.png
    assert repr(plot) == f"Plot('revision graph of main', {width}x{height} px, sha256 {plot.sha256[:12]})"


def test_png_is_a_palette_picture_that_looks_like_matplotlibs_own(main_set):
    import io

    from matplotlib.figure import Figure
    from PIL import Image, ImageChops

    from dbrunbook.views import figures

    def draw() -> Figure:
        with figures.plot_style():
            fig = figures.new_figure(6, 3)
            ax = fig.add_subplot()
            ax.barh(range(12), range(12), color="#4c72b0")
            for i in range(12):
                ax.text(i, i, f"revision {i:04d}  {i / 7:.2f} s")
            return fig

    plot = figures.render_plot(draw(), "bars")
    assert _chunks(plot.png)[0][1][9] == 3  # IHDR colour type 3: indexed, a palette of at most 256 colours
    own = io.BytesIO()
    draw().savefig(own, format="png", dpi=figures.DPI)  # matplotlib's 32-bit picture of the same figure
    ours, theirs = Image.open(io.BytesIO(plot.png)).convert("RGB"), Image.open(own).convert("RGB")
    assert ours.size == theirs.size == (plot.width, plot.height)
    assert max(high for _, high in ImageChops.difference(ours, theirs).getextrema()) <= 32
    assert len(plot.png) < own.tell() / 2


def test_current_position_changes_the_picture(main_set):
    assert plots.revision_graph(main_set, current=("004",)).png != \
        plots.revision_graph(main_set, current=("9fd62e8",)).png


def test_layers_and_columns_of_the_sample_graph(main_set):
    history = migrations.history(main_set)
    layer = revision_graph._layers(history)
    assert layer == {"001": 0, "001s": 1, "002": 1, "003s": 2, "003n": 2, "004": 3, "9fd62e8": 4,
                     "ea90695": 5, "a1b2c3d4e5f6": 6, "b7e4f0c2d913": 7}
    column = revision_graph._positions(history, layer)
    # The two branches sit side by side and keep their columns down to the merge.
    assert column["001s"] == column["003s"] != column["002"] == column["003n"]
    assert {column["001s"], column["002"]} == {-0.5, 0.5}
    assert column["001"] == column["9fd62e8"] == column["b7e4f0c2d913"] == 0.0


def test_revision_graph_takes_a_history_list(main_set):
    history = migrations.history(main_set)
    assert plots.revision_graph(history, current=("004",)).title == "revision graph"
    assert plots.revision_graph([]).png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("frame, rows", [
    (COUNTS, 2),                                                     # "same" tables are left out
    (COUNTS.to_dict("records"), 2),                                  # a list of rows works too
])
def test_counts_chart_shows_the_tables_that_changed(frame, rows):
    plot = plots.counts_chart(frame)
    assert plot.height == round(max(1.6, 0.9 + 0.42 * rows) * plots.DPI)
    assert plot.width == 800


EMPTY_NEW = pd.DataFrame([
    {"table": f"public.t{i}", "before": None, "after": 0, "change": 0, "percent": None, "status": "added"}
    for i in range(3)])


@pytest.mark.parametrize("frame", [COUNTS[COUNTS.status == "same"], EMPTY_NEW, COUNTS.iloc[:0]])
def test_counts_chart_is_one_line_when_no_count_changed(frame):
    # A deploy that only added empty tables used to draw three "+0" bars.
    note = plots.counts_chart(frame)
    assert isinstance(note, plots.Note)
    assert repr(note) == "row counts before and after: no table changed its row count"
    assert note._repr_html_() == "<p><i>row counts before and after:</i> no table changed its row count</p>"


def test_counts_chart_keeps_its_size_and_shows_the_biggest_changes_first():
    frame = pd.DataFrame([{"table": f"public.t{i:04d}", "before": 10, "after": 10 + i, "status": "changed"}
                          for i in range(1, 1001)])
    plot = plots.counts_chart(frame)
    # MAX_BARS tables and one "… N more" line, whatever the number of tables.
    assert plot.height == round((0.9 + 0.42 * (plots.MAX_BARS + 1)) * plots.DPI)
    assert plots.counts_chart(frame.iloc[:plots.MAX_BARS]).height == \
        round((0.9 + 0.42 * plots.MAX_BARS) * plots.DPI)


def test_durations_chart_keeps_its_size_with_many_revisions():
    steps = pd.DataFrame([{"revision": f"r{i:04d}", "direction": "upgrade", "seconds": i / 1000}
                          for i in range(1000)])
    assert plots.durations_chart(steps).height == round((0.9 + 0.42 * (plots.MAX_BARS + 1)) * plots.DPI)


def _chain(n: int, merges: int = 0) -> list[migrations.RevisionInfo]:
    """A synthetic history of ``n`` revisions, base first; ``merges`` short branches each closed by a merge."""
    history: list[migrations.RevisionInfo] = []

    def add(revision: str, parents: tuple[str, ...]) -> None:
        history.append(migrations.RevisionInfo(
            revision=revision, down_revisions=parents, message=f"step {revision}", branch_labels=(),
            is_head=False, is_base=not parents, is_merge=len(parents) > 1, is_branch_point=False,
            path=Path(f"{revision}.py"), create_date=None))

    every = max(1, n // (merges + 1)) if merges else 0
    last = ()
    for i in range(n):
        rev = f"{i:04d}"
        if merges and i and i % every == 0 and i // every <= merges:
            side = f"{i:04d}b"
            add(side, last)                     # a branch off the previous revision ...
            add(f"{i:04d}a", last)
            add(rev, (f"{i:04d}a", side))       # ... merged right away
        else:
            add(rev, last)
        last = (rev,)
    head = history[-1]
    history[-1] = migrations.RevisionInfo(**{**head.__dict__, "is_head": True})
    return history


@pytest.mark.parametrize("n, merges", [(10, 0), (160, 30), (1000, 0), (1000, 30)])
def test_revision_graph_size_is_bounded_and_labels_do_not_overlap(n, merges):
    history = _chain(n, merges)
    current = (history[len(history) // 3].revision,)   # far from the heads on long chains
    with plots.plot_style():
        fig = revision_graph._graph_figure(history, current)
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts = [t.get_window_extent(renderer) for t in ax.texts]
        legend = fig.legends[0].get_window_extent(renderer)
    # The legend is clear of every label (it used to sit on the "current (head)" label).
    assert not any(legend.overlaps(box) for box in texts)
    labels = [t.get_text() for t in ax.texts]
    assert any("◀ current" in text for text in labels)
    assert any("(head)" in text for text in labels)
    # A person reads at most MAX_LAYERS + context rows, whatever the length of the chain.
    assert fig.get_size_inches()[1] <= 0.9 + 0.55 * (plots.MAX_LAYERS + 2 * plots.CURRENT_CONTEXT + 3) + 0.4
    if n > plots.MAX_LAYERS:
        assert any("earlier revisions (collapsed)" in text for text in labels)
    else:
        assert not any("collapsed" in text for text in labels)
    # Labels of different revisions do not overlap each other.
    boxes = [box for box, text in zip(texts, labels, strict=False) if "collapsed" not in text]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.parametrize("steps, rehearsal, rows", [
    (STEPS, None, 2),
    ([migrations.StepResult("001", "upgrade", 0.5, None)], None, 1),
    (STEPS, STEPS.iloc[:1], 2),
    (None, STEPS, 2),
])
def test_durations_chart_has_one_row_per_timed_revision(steps, rehearsal, rows):
    plot = plots.durations_chart(steps, rehearsal)
    assert plot.height == round(max(1.6, 0.9 + 0.42 * rows) * plots.DPI)
    assert plot.title == "seconds per revision"


def test_durations_chart_of_a_dry_run_is_one_line():
    note = plots.durations_chart(STEPS.assign(seconds=[None, None], done=[False, False]))
    assert isinstance(note, plots.Note)
    assert note.text == "no step was timed (dry run, or nothing to apply)"


def test_plots_show_several_pictures_as_inline_images(main_set):
    graph, chart = plots.revision_graph(main_set), plots.counts_chart(COUNTS)
    both = plots.Plots((graph, chart))
    assert list(both) == [graph, chart] and len(both) == 2
    import base64

    from bs4 import BeautifulSoup

    images = BeautifulSoup(both._repr_html_(), "html.parser").find_all("img")
    assert [(i["alt"], int(i["width"]), base64.b64decode(i["src"].split(",", 1)[1])) for i in images] == [
        ("revision graph of main", graph.width, graph.png), ("row counts before and after", 800, chart.png)]
