"""A rendered chart (``Plot``), several as one cell output (``Plots``), and a one-line ``Note`` in a chart's place.

Value objects only: no matplotlib here, so a kernel that shows a picture drawn elsewhere (the launcher's second
process, ``execution.prerender``) does not import it. ``views.figures`` draws them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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
