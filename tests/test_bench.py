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


def test_the_postgres_sql_is_compiled_from_the_segments_pql():
    sql = segment_sql({sid: pql for sid, (pql, _) in segments().items()}, NOW)
    assert sql.count('count(*) FILTER (WHERE r."s') == len(segments())
    assert "INTERVAL '604800 SECOND'" in sql and "$" not in sql  # a 7-day window; values inlined for psql
    assert '"eventtype"' in sql and "eventType" not in sql and '"firstname"' in sql  # the flat tables' columns


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


def test_the_bench_world_is_keyed_by_size_and_by_the_code_that_makes_it(tmp_path, monkeypatch):
    from bench import world

    assert world.world_key(1000) == world.world_key(1000)
    assert world.world_key(1000) != world.world_key(2000)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sample.py").write_text("v1")
    monkeypatch.setattr(world, "ROOT", tmp_path)
    monkeypatch.setattr(world, "SOURCES", ("dev",))
    before = world.world_key(1000)
    (tmp_path / "dev" / "sample.py").write_text("v2")
    assert world.world_key(1000) != before


def test_from_10m_people_the_world_has_fewer_events_a_person_and_more_shards(monkeypatch):
    from bench import run, world

    monkeypatch.delenv("PROFILE_SHARDS", raising=False)
    assert world.shape(1_000_000) == world.Shape(events_per_person=20, events_per_file=400_000, shards=8)
    assert world.shape(10_000_000) == world.Shape(events_per_person=5, events_per_file=2_000_000, shards=32)
    eight = world.world_key(10_000_000)
    monkeypatch.setenv("PROFILE_SHARDS", "8")  # the setting wins, and makes another world
    assert world.shape(10_000_000).shards == 8 and world.world_key(10_000_000) != eight
    assert run.default_stages(1_000_000) == run.STAGES
    assert run.default_stages(10_000_000) == ("ingest", "segments")
    assert run.ingest_rows(10_000_000) == 1_000_000 and run.ingest_rows(100_000) == 100_000


def test_the_memory_sampler_charges_rss_and_time_to_the_product_code_that_is_running():
    import duckdb

    from bench.memory import Sampler
    from shared.engine import scalar

    def sites() -> list[str]:
        return [site for site in sampler.sites if site.startswith("engine.scalar:")]

    with Sampler(every=0.01) as sampler:
        for _ in range(20):  # each query takes a few tenths of a second: a sample lands in the first nearly always
            scalar(duckdb.connect(), "SELECT sum(i) FROM range(400000000) t(i)")
            if sites():
                break
    assert sites() and sampler.sites[sites()[0]] > 0
    slowest = dict(sampler.slowest())
    assert slowest[sites()[0]] >= sampler.every  # each sample there counts one interval of its time
