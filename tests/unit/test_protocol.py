"""``artifact_json``: the layout of the JSON artifacts (a line per entry below a depth), read back as written."""

from __future__ import annotations

import datetime as dt
import json

from dbrunbook.protocol import artifact_json

BODY = {"counts": {"counts": {"public.b": 3, "public.a": 0}, "exact": True, "taken_at": dt.date(2026, 12, 2)},
        "schema": {"columns": {"public.a": [("id", "integer", False)]}, "indexes": {}},
        "heads": {"main": ["r1", "r2"]}, "empty": [], "note": "x"}


def test_every_depth_reads_back_the_same_and_full_depth_is_json_dumps_indent_1():
    expected = json.loads(json.dumps(BODY, default=str))
    for depth in range(6):
        text = artifact_json(BODY, depth=depth)
        assert text.endswith("}\n") and json.loads(text) == expected
    assert artifact_json(BODY, depth=99) == json.dumps(BODY, indent=1, sort_keys=True, default=str) + "\n"


def test_below_the_depth_each_entry_is_one_line():
    lines = artifact_json(BODY, depth=3).splitlines()
    assert '   "public.a": 0,' in lines and '   "public.b": 3' in lines  # sorted, one a line
    assert '   "public.a": [["id", "integer", false]]' in lines
    assert '  "main": ["r1", "r2"]' in artifact_json(BODY, depth=2).splitlines()
    assert artifact_json(BODY, depth=0) == json.dumps(BODY, sort_keys=True, default=str) + "\n"
