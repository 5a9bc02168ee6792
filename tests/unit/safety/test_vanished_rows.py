"""The vanished-rows guard: data tables that lost rows stop a run; Alembic's version tables never do."""

from __future__ import annotations

import pandas as pd
import pytest

from dbrunbook.errors import RowsVanished
from dbrunbook.procedures.deploy import require_no_vanished_rows


def _diff(rows: list[tuple[str, int | None, int | None]], version_tables: tuple[str, ...] = ()) -> pd.DataFrame:
    frame = pd.DataFrame([{"table": t, "before": b, "after": a} for t, b, a in rows])
    frame.attrs["version_tables"] = list(version_tables)
    return frame


def test_a_merge_that_removes_version_rows_is_not_a_loss():
    # Two current revisions (two rows) become one merge revision: bookkeeping, not data.
    frame = require_no_vanished_rows(_diff([("public.alembic_version", 2, 1), ("public.users", 10, 10)],
                                           ("public.alembic_version",)))
    assert frame.empty


def test_the_same_loss_in_a_data_table_stops_the_run():
    with pytest.raises(RowsVanished) as stop:
        require_no_vanished_rows(_diff([("public.alembic_version", 2, 1), ("public.users", 10, 4)],
                                       ("public.alembic_version",)))
    assert stop.value.losses == [{"table": "public.users", "before": 10, "after": 4}]
    assert str(stop.value).startswith("Rows vanished beyond the tolerance of 0%: public.users 10 -> 4 rows.")


def test_without_the_session_s_list_a_version_table_is_a_table_like_any_other():
    with pytest.raises(RowsVanished):
        require_no_vanished_rows(_diff([("public.alembic_version", 2, 1)]))
