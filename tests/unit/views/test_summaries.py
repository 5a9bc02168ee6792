"""Long tables shown as a summary and their top rows; the whole table saved as an artifact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from dbrunbook.protocol import ARTIFACTS_DIR
from dbrunbook.views import summaries
from dbrunbook.views.summaries import Shown


class _Session:
    """What summaries needs of a Session: a record folder and save_artifact (the real one's contract)."""

    def __init__(self, record_dir: Path | None):
        self.record_dir = record_dir

    def save_artifact(self, name: str, content: str) -> str:
        data = content.encode()
        if self.record_dir is not None:
            path = self.record_dir / ARTIFACTS_DIR / name
            path.parent.mkdir(parents=True, exist_ok=True)
            assert not path.exists()
            path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()


def _steps(n: int) -> pd.DataFrame:
    return pd.DataFrame({"revision": [f"r{i:04d}" for i in range(n)], "seconds": [i % 97 / 10 for i in range(n)]})


@pytest.mark.parametrize("n, shown_rows", [(10, 10), (25, 25), (26, summaries.TOP), (1000, summaries.TOP)])
def test_a_table_is_whole_up_to_the_limit_and_its_top_rows_past_it(n, shown_rows):
    html = summaries.frame_html(_steps(n), Shown(by="seconds"))
    assert html.count("</tr>") - 1 == shown_rows  # one header row
    assert (f"… {n - shown_rows:,} more" in html) == (n > summaries.LIMIT)


def test_the_top_rows_are_the_largest_by_the_column_that_matters():
    frame = _steps(1000)
    top = summaries._top(frame, Shown(by="seconds"), 3)
    assert top["seconds"].tolist() == [9.6, 9.6, 9.6]
    assert top["revision"].tolist() == ["r0096", "r0193", "r0290"]  # ties keep the table's order


def test_absolute_ranks_falls_and_rises_alike():
    frame = pd.DataFrame({"table": ["a", "b", "c", "d"], "change": [5, -900, 0, 40]})
    assert summaries._top(frame, Shown(by="change", absolute=True), 2)["table"].tolist() == ["b", "d"]


def test_tail_keeps_the_newest_rows_of_a_history():
    frame = _steps(100)
    assert summaries._top(frame, Shown(tail=True), 2)["revision"].tolist() == ["r0098", "r0099"]


def test_summarize_saves_a_long_table_and_names_it_with_its_digest(tmp_path):
    session = _Session(tmp_path)
    frame = _steps(1000)
    out = summaries.summarize(session, "steps", frame, Shown(by="seconds", totals="1,000 step(s)"))
    saved = tmp_path / ARTIFACTS_DIR / "steps.csv"
    assert pd.read_csv(saved).equals(frame)
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    html = out._repr_html_()
    assert "1,000 step(s)" in html and f"{ARTIFACTS_DIR}/steps.csv (sha256 {digest[:12]}…)" in html
    assert len(html) < 3000
    assert f"artifacts/steps.csv (sha256 {digest[:12]}" in repr(out)
    # Still the frame it was: code filters it, and what it derives is a plain DataFrame.
    assert len(out) == 1000 and out["seconds"].max() == 9.6
    assert type(out[out["seconds"] > 9]) is pd.DataFrame


def test_a_second_save_of_the_same_step_gets_its_own_name(tmp_path):
    session = _Session(tmp_path)
    summaries.summarize(session, "status", _steps(30))
    second = summaries.summarize(session, "status", _steps(40))
    assert second._shown.artifact == "status-2.csv"
    assert len(pd.read_csv(tmp_path / ARTIFACTS_DIR / "status-2.csv")) == 40


def test_short_tables_and_interactive_sessions_save_nothing(tmp_path):
    summaries.summarize(_Session(tmp_path), "pending", _steps(5))
    assert not (tmp_path / ARTIFACTS_DIR).exists()
    out = summaries.summarize(_Session(None), "pending", _steps(500))
    assert out._shown.artifact is None and "… 490 more" in out._repr_html_()


def test_attrs_survive_the_summary():
    frame = _steps(3)
    frame.attrs["attempts"] = "kept"
    assert summaries.summarize(_Session(None), "steps", frame).attrs["attempts"] == "kept"


@pytest.mark.parametrize("n, expected", [
    (5, {0, 1, 2, 3, 4}),
    (100, {0, 1, 2, 97, 98, 99, 50, 60, 70}),
])
def test_steps_shown_are_the_first_the_last_and_the_biggest(n, expected):
    sizes = [1] * n
    for i in (50, 60, 70):
        if i < n:
            sizes[i] = 1000 + i
    assert summaries.steps_shown(sizes, key=lambda s: s) == expected


def test_gap_counts_what_was_left_out_before_an_item():
    assert summaries.gap({0, 1, 2, 50, 99}, 50) == 47
    assert summaries.gap({0, 1, 2, 50, 99}, 99) == 48


def _sql_steps(n: int) -> list:
    from dbrunbook.chain.migrations import SqlStep

    return [SqlStep(revision=f"r{i:04d}", down_revision=(f"r{i - 1:04d}",) if i else (), message=f"step {i}",
                    sql=f"CREATE TABLE t{i:04d} (id integer);\n" + ("-- padding\n" * 400 if i == 500 else ""),
                    online_only=i == 700, reason="reads op.get_bind()" if i == 700 else "",
                    source="none" if i == 700 else "offline")
            for i in range(n)]


def test_a_preview_of_1000_revisions_shows_some_in_full_and_digests_all():
    from dbrunbook import safety
    from dbrunbook.execution.session import Preview

    steps = _sql_steps(1000)
    preview = Preview({"main": steps})
    html = preview._repr_html_()
    shown = [i for i in range(1000) if f"CREATE TABLE t{i:04d} (id integer)" in html]
    assert shown == [0, 1, 2, 500, 700, 997, 998, 999]  # first, biggest, online-only, last
    assert "main: r0700 — step 700 (online-only, not captured)" in html
    assert "… 497 more revision(s): their SQL is in artifacts/preview-main.sql" in html
    assert "… 199 more revision(s)" in html and "… 296 more revision(s)" in html
    assert len(html) < 20_000 and len(repr(preview)) < 200
    # The digests a review approves still cover every revision's SQL, not what is displayed.
    full = preview.file_text("main")
    assert all(f"CREATE TABLE t{i:04d} (id integer)" in full for i in range(1000))
    digest = hashlib.sha256(full.encode()).hexdigest()
    assert safety.preview_guard._preview_files(preview) == {"preview-main.sql": digest}
    assert Preview({"main": steps[:999]}).sha256 != preview.sha256
