"""The table helper every result object renders frames with."""

from __future__ import annotations

import pandas as pd
import pytest

from dbrunbook.postgres import snapshots
from dbrunbook.views import tables


def test_counts_widened_to_float_show_as_integers():
    frame = pd.DataFrame({"table": ["public.a", "public.b"], "before": [20000.0, None], "percent": [12.5, None]})
    shown = tables.display_frame(frame)
    assert str(shown["before"].dtype) == "Int64" and shown["before"].tolist()[0] == 20000
    assert shown["percent"].dtype == float  # a real ratio stays a float
    html = tables.frame_html(frame)
    assert ">20000<" in html and "20000.0" not in html and "NaN" not in html and "nan" not in html
    assert ">12.5<" in html
    assert tables.frame_text(frame).splitlines()[1].split() == ["public.a", "20000", "12.5"]


@pytest.mark.parametrize("frame", [pd.DataFrame(columns=["table", "before"]), pd.DataFrame(), None])
def test_an_empty_table_says_none(frame):
    assert tables.frame_html(frame) == '<p class="dbrunbook-empty"><i>none</i></p>'
    assert tables.frame_html(frame, empty="no blockers") == '<p class="dbrunbook-empty"><i>no blockers</i></p>'
    assert tables.frame_text(frame) == "none"


def test_sql_is_monospace_wrapped_and_escaped():
    statement = "ALTER TABLE users ADD COLUMN note text CHECK (length(note) < 10) -- " + "x" * 300
    html = tables.frame_html(pd.DataFrame({"rule": ["R1"], "statement": [statement]}))
    assert '<code class="dbrunbook-sql" style="font-family: var(--jp-code-font-family' in html
    assert "white-space: pre-wrap" in html and "overflow-wrap: anywhere" in html
    assert "length(note) &lt; 10" in html and "< 10" not in html
    assert "<td" in html and html.count("<code") == 1  # the rule column is prose


def test_snapshot_compare_gives_integer_counts_for_added_and_dropped_tables():
    before = snapshots.Snapshot(counts={"public.a": 20000, "public.old": 5}, exact=True, taken_at="t0")
    after = snapshots.Snapshot(counts={"public.a": 20001, "public.new": 0}, exact=True, taken_at="t1")
    diff = snapshots.compare(before, after)
    assert [str(diff[c].dtype) for c in ("before", "after", "change")] == ["Int64"] * 3
    rows = {r["table"]: r for r in diff.to_dict("records")}
    assert (rows["public.a"]["before"], rows["public.a"]["after"], rows["public.a"]["change"]) == (20000, 20001, 1)
    assert pd.isna(rows["public.new"]["before"]) and rows["public.new"]["status"] == "added"
    assert pd.isna(rows["public.old"]["after"]) and rows["public.old"]["change"] == -5
    assert "20000.0" not in tables.frame_html(diff) and "NaN" not in tables.frame_html(diff)


def test_a_block_of_sql_is_code_inside_pre_escaped():
    assert tables.sql_html("SELECT 1 < 2;\n") == (
        f'<pre class="dbrunbook-sql" style="{tables._SQL_STYLE}"><code>SELECT 1 &lt; 2;\n</code></pre>')
