"""The benchmark's own logic: sizes, the PostgreSQL dialect of the segment SQL, and the report."""

from __future__ import annotations

import pytest

from bench.postgres import segment_sql
from bench.run import label_of, markdown, people_of
from bench.segments import NOW, segments


def test_sizes_read_as_people():
    assert [people_of(s) for s in ("10k", "100k", "1M", "2500")] == [10_000, 100_000, 1_000_000, 2500]
    assert [label_of(n) for n in (10_000, 1_000_000, 2500)] == ["10k", "1M", "2500"]
    with pytest.raises(SystemExit, match="not a size"):
        people_of("big")


def test_the_postgres_sql_counts_every_segment_in_postgres_dialect():
    sql = segment_sql(segments(), NOW.isoformat())
    assert "INTERVAL '7 days'" in sql and "INTERVAL 7 DAY" not in sql
    assert sql.count("count(*) FILTER (WHERE") >= len(segments())
    assert "eventType" not in sql and "firstName" not in sql


def test_the_report_says_which_targets_are_met_and_which_were_skipped():
    rows = [
        {"stage": "export", "baseline": "b", "ours_s": 3.0, "baseline_s": 2.0, "ratio": 1.5, "target": "≤ 1.5×",
         "peak_mb": 900, "met": True},
        {"stage": "segment job vs PostgreSQL", "baseline": "skipped", "ours_s": 1.0, "baseline_s": None,
         "ratio": None, "target": "≥ 3×", "peak_mb": 900, "met": None},
    ]  # fmt: skip
    table = markdown(100_000, rows)
    assert "| export | 3.00 | b | 2.00 | 1.50× | ≤ 1.5× | 900 MB | yes |" in table
    assert table.splitlines()[-1].endswith("| — | — | ≥ 3× | 900 MB | skipped |")
