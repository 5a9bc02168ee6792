"""The one figure style every chart uses, and ``render_plot``: a figure to a ``Plot`` (``views.pictures``).

Records are signed and compared byte for byte, so a plot must depend on its data only: matplotlib's Agg
renderer on a bare ``Figure`` (no pyplot state, no backend of the kernel), matplotlib's default style whatever
the user's matplotlibrc says, fixed sizes and dpi, a fixed ``svg.hashsalt``, and a PNG that Pillow writes
from Agg's pixels (no timestamp or software version in it). The same data on the same matplotlib and fonts
gives the same bytes. Every chart module draws through ``new_figure``, ``plot_style``
and ``render_plot`` here.
"""

from __future__ import annotations

import io
from typing import Any, cast

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dbrunbook.views.pictures import Note, Plot, Plots

__all__ = ["DPI", "EDGE_COLOR", "Note", "PALETTE_COLOURS", "Plot", "Plots", "new_figure", "plot_style",
           "render_plot", "shorten"]

DPI = 100
#: The colours of a chart's PNG (``render_plot``).
PALETTE_COLOURS = 256
#: The colour of edges and muted labels in every chart.
EDGE_COLOR = "#555555"


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


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure, not pyplot: the kernel's inline backend does not show it a second time or keep it alive.
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def render_plot(fig: Figure, title: str) -> Plot:
    """The figure as a PNG of at most 256 colours (``PALETTE_COLOURS``).

    Agg draws the figure, as ``savefig`` would, and Pillow (matplotlib's own dependency) writes its pixels
    with a palette: a chart is a few flat colours and the anti-aliased edges of its text, so the picture looks
    the same (no channel off by more than 15 of 255) at a quarter of the bytes of matplotlib's 32-bit PNG:
    the bounded revision graph of a 1,000-revision chain 84 KB -> 20 KB, its durations chart 62 KB -> 16 KB.
    Pillow writes no timestamp or software version: the same pixels give the same bytes.
    """
    from PIL import Image

    canvas = cast(FigureCanvasAgg, fig.canvas)
    canvas.draw()
    width, height = canvas.get_width_height()
    pixels = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    pixels.convert("RGB").quantize(PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE).save(
        buffer, format="png", compress_level=9)
    return Plot(title=title, png=buffer.getvalue(), width=width, height=height)


class plot_style:
    """matplotlib's default style plus our fixed settings, for the duration of one drawing."""

    def __enter__(self) -> None:
        self._style = matplotlib.style.context("default")
        self._style.__enter__()
        self._rc = matplotlib.rc_context(cast(Any, _RC))  # matplotlib types each rc key's value separately
        self._rc.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._rc.__exit__(*exc)
        self._style.__exit__(*exc)


def shorten(text: str, length: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[: length - 1] + "…"
