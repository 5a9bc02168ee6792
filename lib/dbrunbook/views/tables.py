"""One way to show a table in a notebook and in a record: integers as integers, "none" when empty, SQL readable.

pandas' own ``to_html`` shows a count column that has one missing value as ``20000.0`` / ``NaN``, an empty
frame as a bare header row, and a 600-character statement as one proportional line. Every result object's
``_repr_html_`` goes through :func:`frame_html` instead, and a cell whose last expression is a frame can show
:func:`display_frame` of it. A value object that is a handful of named facts shows :func:`pairs_html`, the
same escaped two-column table the HTML report uses.
"""

from __future__ import annotations

import html
import math
import numbers
from typing import Any

import pandas as pd

__all__ = ["EMPTY", "SQL_COLUMNS", "display_frame", "frame_html", "frame_text", "sql_html"]

#: Columns whose text is SQL (or a definition written in it): shown in monospace, wrapped, whitespace kept.
SQL_COLUMNS = frozenset({"sql", "statement", "statements", "query", "definition", "ddl", "command", "source_sql"})
#: What an empty table shows.
EMPTY = "none"

_TABLE_STYLE = "border-collapse: collapse;"
_CELL_STYLE = "text-align: left; vertical-align: top; padding: 2px 8px;"
_NUMBER_STYLE = "text-align: right; vertical-align: top; padding: 2px 8px; font-variant-numeric: tabular-nums;"
_SQL_STYLE = ("font-family: var(--jp-code-font-family, ui-monospace, SFMono-Regular, Menlo, Consolas, monospace); "
              "white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word;")


def _integral(series: pd.Series) -> bool:
    """A float column whose values are all whole numbers (counts that pandas widened because one was missing)."""
    if not pd.api.types.is_float_dtype(series.dtype):
        return False
    values = series.dropna()
    return len(values) > 0 and bool(((values % 1) == 0).all()) and bool((values.abs() < 2**53).all())


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose whole-number float columns are nullable integers (``Int64``): 20000, not 20000.0; <NA>."""
    out = frame.copy()
    for column in out.columns:
        if _integral(out[column]):
            out[column] = out[column].astype("Int64")
    return out


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _cell(value, *, sql: bool) -> tuple[str, bool]:
    """HTML of one cell and whether it is a number (numbers align right)."""
    if _is_missing(value):
        return "", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        number = float(value)
        return (str(int(number)) if number.is_integer() and abs(number) < 2**53 else f"{number:.6g}"), True
    text = html.escape(value if isinstance(value, str) else str(value))
    if sql:
        return f'<code class="dbrunbook-sql" style="{_SQL_STYLE}">{text}</code>', False
    return text, False


def frame_html(frame: pd.DataFrame, *, sql: tuple[str, ...] | None = None, empty: str = EMPTY,
               caption: str | None = None) -> str:
    """The frame as an HTML table (no index), or ``<p>none</p>`` when it has no rows.

    Args:
        sql: the columns that hold SQL; by default those named in :data:`SQL_COLUMNS`.
        empty: what to show for a table without rows.
        caption: a caption above the table (escaped).
    """
    if frame is None or len(frame) == 0:
        return f'<p class="dbrunbook-empty"><i>{html.escape(empty)}</i></p>'
    frame = display_frame(frame)
    sql_columns = set(SQL_COLUMNS if sql is None else sql)
    head = "".join(f'<th style="{_CELL_STYLE}">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, record, strict=False):
            text, number = _cell(value, sql=str(column).lower() in sql_columns)
            cells.append(f'<td style="{_NUMBER_STYLE if number else _CELL_STYLE}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<table class="dbrunbook-table" style="{_TABLE_STYLE}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def sql_html(text: str) -> str:
    """A block of SQL (or Python source) in monospace, wrapped, escaped.

    JupyterLab's and nbconvert's CSS give a bare ``<pre>`` of an HTML output ``font-family: inherit``, i.e. the
    proportional text font; the ``<code>`` inside it gets the code font there, and the inline style is for
    pages without that CSS.
    """
    return (f'<pre class="dbrunbook-sql" style="{_SQL_STYLE}"><code>{html.escape(text)}</code></pre>')


def frame_text(frame: pd.DataFrame, *, empty: str = EMPTY) -> str:
    """The frame as plain text (no index, integers as integers), or ``none`` when it has no rows."""
    if frame is None or len(frame) == 0:
        return empty
    return display_frame(frame).to_string(index=False, na_rep="")


def escape_html(value: Any) -> str:
    """``value`` as HTML text, quotes escaped too (attribute values); ``None`` is the empty string."""
    return html.escape("" if value is None else str(value), quote=True)


def pairs_html(rows: list[tuple[str, Any]], raw: frozenset[str] = frozenset()) -> str:
    """A two-column table of ``(name, value)`` rows, every cell escaped except the values named in ``raw``.

    What a value object's ``_repr_html_`` shows (a target, a server's status, a database's identity) and the
    fact tables of the HTML report.
    """
    cells = "".join(
        f"<tr><th>{escape_html(k)}</th><td>{v if k in raw else escape_html(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="dbr-table">{cells}</table>'


def grid_html(columns: list[str], rows: list[list[Any]]) -> str:
    """A table with a header row and one row per list of values, every cell escaped."""
    head = "".join(f"<th>{escape_html(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape_html(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="dbr-table"><tr>{head}</tr>{body}</table>'
