"""Plots: the same data gives the same PNG bytes; layout of the sample revision graph; what each chart keeps."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest

from dbrunbook import migrations, plots
from dbrunbook.config import MigrationSet

ROOT = Path(__file__).resolve().parents[2]


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


def test_current_position_changes_the_picture(main_set):
    assert plots.revision_graph(main_set, current=("004",)).png != \
        plots.revision_graph(main_set, current=("9fd62e8",)).png


def test_layers_and_columns_of_the_sample_graph(main_set):
    history = migrations.history(main_set)
    layer = plots._layers(history)
    assert layer == {"001": 0, "001s": 1, "002": 1, "003s": 2, "003n": 2, "004": 3, "9fd62e8": 4,
                     "ea90695": 5, "a1b2c3d4e5f6": 6, "b7e4f0c2d913": 7}
    column = plots._positions(history, layer)
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
    (COUNTS[COUNTS.status == "same"], 0),                            # nothing changed: a short note
    (COUNTS.to_dict("records"), 2),                                  # a list of rows works too
])
def test_counts_chart_shows_the_tables_that_changed(frame, rows):
    plot = plots.counts_chart(frame)
    assert plot.height == round(max(1.6, 0.9 + 0.42 * rows) * plots.DPI)
    assert plot.width == 800


@pytest.mark.parametrize("steps, rehearsal, rows", [
    (STEPS, None, 2),
    (STEPS.assign(seconds=[None, None], done=[False, False]), None, 0),  # a dry run timed nothing
    ([migrations.StepResult("001", "upgrade", 0.5, None)], None, 1),
    (STEPS, STEPS.iloc[:1], 2),
    (None, STEPS, 2),
])
def test_durations_chart_has_one_row_per_timed_revision(steps, rehearsal, rows):
    plot = plots.durations_chart(steps, rehearsal)
    assert plot.height == round(max(1.6, 0.9 + 0.42 * rows) * plots.DPI)
    assert plot.title == "seconds per revision"


def test_plots_show_several_pictures_as_inline_images(main_set):
    graph, chart = plots.revision_graph(main_set), plots.counts_chart(COUNTS)
    both = plots.Plots((graph, chart))
    assert list(both) == [graph, chart] and len(both) == 2
    import base64
    from bs4 import BeautifulSoup

    images = BeautifulSoup(both._repr_html_(), "html.parser").find_all("img")
    assert [(i["alt"], int(i["width"]), base64.b64decode(i["src"].split(",", 1)[1])) for i in images] == [
        ("revision graph of main", graph.width, graph.png), ("row counts before and after", 800, chart.png)]
