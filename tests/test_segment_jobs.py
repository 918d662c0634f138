"""Segment jobs end to end: definitions over HTTP, the timer and on-demand jobs, memberships across jobs."""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
from pathlib import Path

import azure.functions as func
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from azure.functions.timer import TimerRequest

from dev.host import deliver_queue_messages
from functions.monitoring import monitor
from functions.segmentation import (
    segment_explain,
    segment_job_daily,
    segment_job_queued,
    segment_jobs,
    segment_preview,
    segment_shard_queued,
    segments,
)
from shared.engine import connect
from shared.identity import ProfileStore
from shared.identity.store import shard_of
from shared.jobs import Job, JobStatus
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.memberships import LocalSnapshot, MembershipStore, write_shard
from shared.segmentation.runner import SegmentJobRunner
from tests.conftest import NOW
from tests.helpers import create_dataset, event, ndjson, profile
from tests.test_http import body, call

DAY1 = NOW + dt.timedelta(hours=1)
DAY2 = DAY1 + dt.timedelta(days=1)


@pytest.fixture
def crm(settings, landing_zone):
    create_dataset(settings, "crm")
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    landing_zone.ingest_at(
        "crm/1.ndjson",
        ndjson(
            profile("ann", homeAddress={"stateProvince": "CA"}, loyalty={"tier": "gold"}),
            profile("bob", homeAddress={"stateProvince": "CA"}, loyalty={"tier": "silver"}),
            profile("cy", homeAddress={"stateProvince": "NY"}, loyalty={"tier": "gold"}),
        ),
        now=NOW,
    )
    landing_zone.ingest_at(
        "web/1.ndjson",
        ndjson(
            event("e1", "2026-11-20T10:00:00Z", "commerce.purchases", CRMID="bob"),
            event("e2", "2026-11-20T11:00:00Z", "commerce.purchases", CRMID="bob"),
        ),
        now=NOW,
    )
    return landing_zone


def put_segment(segment_id: str, pql: str) -> func.HttpResponse:
    return call(
        segments,
        "PUT",
        f"segments/{segment_id}",
        {"id": segment_id},
        {"name": segment_id, "expression": {"value": pql}},
    )


def snapshot_rows(store: MembershipStore, pointer) -> pa.Table:
    """A snapshot's rows, read from its blobs (a shard file: only its segment's)."""
    tables = []
    for path, _, segment in pointer.files():
        table = pq.read_table(io.BytesIO(store.blobs.get(path)))
        if segment is not None:
            table = table.filter(pc.equal(table["segment"], segment)).drop_columns(["segment"])
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


def members(settings, account, segment_id: str) -> dict[str, str]:
    """The current membership of a segment: profile id -> status."""
    store = MembershipStore.from_settings(settings, account)
    rows = snapshot_rows(store, store.current(segment_id)).to_pylist()
    return {row["profileId"]: row["status"] for row in rows}


def test_definitions_are_validated_on_save_with_a_clear_400(settings, crm):
    assert put_segment("ca", 'homeAddress.stateProvince = "CA"').status_code == 200
    bad = put_segment("bad", 'homeAddress.stateProvince = "CA" and')
    assert bad.status_code == 400 and "line 1, column 37" in body(bad)["detail"]
    unknown = put_segment("shoe", "person.shoeSize > 3")
    assert unknown.status_code == 400 and "unknown field 'person.shoeSize'" in body(unknown)["detail"]
    missing = put_segment("dep", 'inSegment("nope")')
    assert missing.status_code == 400 and 'inSegment("nope"): no such segment' in body(missing)["detail"]
    assert put_segment("gold-ca", 'inSegment("ca") and loyalty.tier = "gold"').status_code == 200
    cycle = put_segment("ca", 'inSegment("gold-ca")')
    assert cycle.status_code == 400 and "inSegment cycle: ca → gold-ca → ca" in body(cycle)["detail"]
    in_use = call(segments, "DELETE", "segments/ca", {"id": "ca"})
    assert in_use.status_code == 409 and "used by segments ['gold-ca']" in body(in_use)["detail"]
    assert [d["id"] for d in body(call(segments, "GET", "segments"))] == ["ca", "gold-ca"]


ONE_IN_ONE_OUT = {"realized": 1, "existing": 0, "exited": 1, "exitedEarlier": 0}


def ann_drops_to_silver_and_cy_moves_to_ca(crm) -> None:
    """Day 2 of the crm fixture: Ann leaves "CA and gold", Cy joins it."""
    crm.ingest_at(
        "crm/2.ndjson",
        ndjson(profile("ann", loyalty={"tier": "silver"}), profile("cy", homeAddress={"stateProvince": "CA"})),
        now=DAY1 + dt.timedelta(hours=2),
    )


def test_memberships_are_realized_then_existing_or_exited_across_two_jobs(settings, account, crm):
    put_segment("ca-gold", 'homeAddress.stateProvince = "CA" and loyalty.tier = "gold"')
    put_segment("buyers", 'xEvent[eventType = "commerce.purchases"].count() >= 2')
    runner = SegmentJobRunner.from_settings(settings)
    first = runner.run(now=DAY1)
    assert first.status is JobStatus.SUCCEEDED
    assert first.metrics["segmentedProfileCounter"] == {"buyers": 1, "ca-gold": 1}
    assert first.metrics["totalProfiles"] == 3
    day1 = members(settings, account, "ca-gold")
    assert list(day1.values()) == ["realized"]
    ann = next(iter(day1))
    ann_drops_to_silver_and_cy_moves_to_ca(crm)
    second = runner.run(now=DAY2)
    assert second.metrics["segmentedProfileByStatusCounter"]["ca-gold"] == ONE_IN_ONE_OUT
    assert second.metrics["segmentedProfileByStatusCounter"]["buyers"]["existing"] == 1
    day2 = members(settings, account, "ca-gold")
    assert day2[ann] == "exited"
    assert sorted(day2.values()) == ["exited", "realized"]


def test_each_shard_writes_its_part_of_every_snapshot_and_a_snapshot_from_before_parts_is_compared_per_shard(
    settings, account, crm
):
    put_segment("ca-gold", 'homeAddress.stateProvince = "CA" and loyalty.tier = "gold"')
    runner = SegmentJobRunner.from_settings(settings)
    runner.run(now=DAY1)
    store = runner.memberships
    first = store.current("ca-gold")
    assert (len(first.parts), first.shards) == (1, settings.profile_shards)  # a shard without members has no part
    assert first.parts[0].path.startswith(f"_shards/job={first.job_id}/") and first.parts[0].realized == 1
    assert first.parts[0].segment == "ca-gold"  # its rows of the shard's file of every segment
    # The snapshot as written before snapshots had parts: one file, every shard's people in it.
    day1 = members(settings, account, "ca-gold")
    sink = io.BytesIO()
    pq.write_table(snapshot_rows(store, first), sink)
    etag = store.blobs.put("ca-gold/job=before/memberships.parquet", sink.getvalue())
    legacy = first.model_copy(update={"snapshot": "ca-gold/job=before/memberships.parquet", "etag": etag})
    store.publish([legacy.model_copy(update={"parts": None, "shards": None})])
    assert store.current("ca-gold").files() == [("ca-gold/job=before/memberships.parquet", etag, None)]
    ann_drops_to_silver_and_cy_moves_to_ca(crm)  # each shard compares with its own people of the single file
    second = runner.run(now=DAY2)
    assert second.metrics["segmentedProfileByStatusCounter"]["ca-gold"] == ONE_IN_ONE_OUT
    day2 = members(settings, account, "ca-gold")
    assert [day2[pid] for pid in day1] == ["exited"] and sorted(day2.values()) == ["exited", "realized"]
    assert store.current("ca-gold").parts is not None


def test_a_streaming_tick_rewrites_only_the_touched_shards_parts_and_keeps_the_others(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    runner = SegmentJobRunner.from_settings(settings)
    runner.run(now=DAY1)  # every shard's part
    runner.run_streaming(now=DAY1 + dt.timedelta(minutes=1))  # the first tick: everyone so far
    before = {p.shard: p for p in runner.memberships.current("ca").parts}
    later = DAY1 + dt.timedelta(minutes=3)
    crm.ingest_at("crm/move.ndjson", ndjson(profile("cy", homeAddress={"stateProvince": "CA"})), now=later)
    tick = runner.run_streaming(now=later + dt.timedelta(minutes=2))
    [touched] = [s["shard"] for s in tick.metrics["shards"]]
    after = {p.shard: p for p in runner.memberships.current("ca").parts}
    assert set(after) == set(before) | {touched}
    assert after[touched].path.startswith(f"_shards/job={tick.id}/") and after[touched].realized == 1
    for shard in set(before) - {touched}:  # the same files, their members now existing ones
        assert (after[shard].path, after[shard].etag) == (before[shard].path, before[shard].etag)
        assert (after[shard].realized, after[shard].existing) == (0, before[shard].realized + before[shard].existing)
    assert tick.metrics["segmentedProfileByStatusCounter"]["ca"] == {
        "realized": 1,
        "existing": 2,
        "exited": 0,
        "exitedEarlier": 0,
    }


def as_written_before_shard_files(store: MembershipStore, segment_id: str) -> None:
    """Make a segment's current parts what jobs wrote before shard files: a file per shard and segment."""
    pointer = store.current(segment_id)
    parts = []
    for part in pointer.parts:
        sink = io.BytesIO()
        pq.write_table(snapshot_rows(store, pointer.model_copy(update={"parts": [part]})), sink)
        path = f"{segment_id}/job={pointer.job_id}/attempt=1/shard={part.shard:04d}.parquet"
        parts.append(
            part.model_copy(update={"path": path, "etag": store.blobs.put(path, sink.getvalue()), "segment": None})
        )
    store.publish([pointer.model_copy(update={"parts": parts})])


def test_a_snapshot_may_mix_shard_files_with_parts_written_per_segment_before_them(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    put_segment("ca-gold", 'homeAddress.stateProvince = "CA" and loyalty.tier = "gold"')
    runner = SegmentJobRunner.from_settings(settings)
    runner.run(now=DAY1)
    store, job_id = runner.memberships, runner.memberships.current("ca").job_id
    for sid in ("ca", "ca-gold"):  # both segments' parts of a shard are the shard's one file
        assert all(p.path == store.shard_path(job_id, 1, p.shard) for p in store.current(sid).parts)
    runner.run_streaming(now=DAY1 + dt.timedelta(minutes=1))
    for sid in ("ca", "ca-gold"):
        as_written_before_shard_files(runner.memberships, sid)
    later = DAY1 + dt.timedelta(minutes=3)
    crm.ingest_at("crm/move.ndjson", ndjson(profile("cy", homeAddress={"stateProvince": "CA"})), now=later)
    runner.run_streaming(now=later + dt.timedelta(minutes=2))  # the touched shard's part: a shard file
    mixed = runner.memberships.current("ca")
    assert {p.segment for p in mixed.parts} == {None, "ca"}
    with tempfile.TemporaryDirectory() as tmp, connect(settings) as con:
        pointers = runner.memberships.current_pointers()
        local = runner.memberships.download({sid: pointers[sid].files() for sid in ("ca", "ca-gold")}, Path(tmp))
        read = {
            sid: dict(con.execute(f"SELECT profileId, status FROM {s.source}").fetchall()) for sid, s in local.items()
        }
    assert read == {sid: members(settings, account, sid) for sid in ("ca", "ca-gold")}
    assert sorted(read["ca"].values()) == ["existing", "existing", "realized"]
    again = runner.run(now=DAY2)  # compared with the mixed snapshots: nobody enters or leaves
    assert again.metrics["segmentedProfileByStatusCounter"]["ca"] == {
        "realized": 0,
        "existing": 3,
        "exited": 0,
        "exitedEarlier": 0,
    }


def test_a_shards_memberships_are_the_same_written_a_statement_per_segment_or_all_in_one(settings, tmp_path):
    # Small shards write all their segments in one statement, large ones a statement per segment.
    results = "SELECT * FROM (VALUES ('p1', true, false, true), ('p2', true, true, false), ('p3', false, true, false)"
    results += ', (\'p4\', false, false, false)) t(profileId, "ca", "ca-gold", "buy.ers")'
    chosen, now = ["buy.ers", "ca", "ca-gold"], DAY2
    with connect(settings) as con:
        con.execute(f"CREATE TABLE before AS {results.replace('true, true', 'false, false')}")
        con.execute(f"CREATE TABLE shard_results AS {results}")
        kw = {"now": now, "retention": dt.timedelta(days=30)}
        write_shard(
            con, chosen, results="before", previous={}, target=tmp_path / "day1.parquet", **(kw | {"now": DAY1})
        )
        previous = {sid: LocalSnapshot([(tmp_path / "day1.parquet", sid)]) for sid in chosen}
        con.execute("CREATE TABLE touched AS SELECT * FROM shard_results WHERE profileId = 'p2'")
        # A streaming tick's: only the touched people evaluated, and a snapshot not split by today's shards.
        for table, scope, where in [("shard_results", None, None), ("touched", "SELECT 'p2'", "profileId <> 'p3'")]:
            kw |= {"previous": previous, "scope_sql": scope, "previous_where": where}
            written = {
                cells: write_shard(con, chosen, results=table, target=tmp_path / f"{cells}.parquet", cells=cells, **kw)
                for cells in (1, 1000)
            }
            assert written[1] == written[1000] and written[1]["ca"]["realized"] == 1
            rows = {cells: pq.read_table(tmp_path / f"{cells}.parquet").to_pylist() for cells in written}
            assert sorted(rows[1], key=str) == sorted(rows[1000], key=str) and rows[1]
            for cells in written:  # a row group per segment, in the segments' order
                meta = pq.ParquetFile(tmp_path / f"{cells}.parquet").metadata
                groups = [meta.row_group(i).column(0).statistics for i in range(meta.num_row_groups)]
                assert [(g.min, g.max) for g in groups] == [(sid, sid) for sid in chosen]


def test_a_streaming_tick_keeps_a_part_where_nobody_it_evaluated_qualifies_or_was_a_member(
    settings, account, landing_zone, monkeypatch
):
    from shared.settings import get_settings

    monkeypatch.setenv("PROFILE_SHARDS", "1")  # everyone in one shard: the tick evaluates it
    get_settings.cache_clear()
    landing_zone.settings = get_settings()
    create_dataset(settings, "crm")
    landing_zone.ingest_at(
        "crm/1.ndjson",
        ndjson(profile("ann", loyalty={"tier": "gold"}), profile("bob", loyalty={"tier": "silver"})),
        now=NOW,
    )
    put_segment("gold", 'loyalty.tier = "gold"')
    put_segment("silver", 'loyalty.tier = "silver"')
    runner = SegmentJobRunner.from_settings(get_settings())
    runner.run(now=DAY1)
    runner.run_streaming(now=DAY1 + dt.timedelta(minutes=1))
    [gold], [silver] = (runner.memberships.current(sid).parts for sid in ("gold", "silver"))
    # Cy arrives, gold: the gold part is written again; nobody the tick evaluated is or was silver.
    later = DAY1 + dt.timedelta(minutes=3)
    landing_zone.ingest_at("crm/2.ndjson", ndjson(profile("cy", loyalty={"tier": "gold"})), now=later)
    tick = runner.run_streaming(now=later + dt.timedelta(minutes=2))
    assert tick.metrics["evaluatedProfiles"] == 1
    [gold_after], [silver_after] = (runner.memberships.current(sid).parts for sid in ("gold", "silver"))
    assert gold_after.path != gold.path and (gold_after.realized, gold_after.existing) == (1, 1)
    assert (silver_after.path, silver_after.etag) == (silver.path, silver.etag)
    assert (silver_after.realized, silver_after.existing) == (0, 1)
    assert list(members(get_settings(), account, "silver").values()) == ["existing"]  # Bob's row, as it was


def test_a_job_as_of_the_same_time_runs_once_and_gives_the_same_memberships(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    runner = SegmentJobRunner.from_settings(settings)
    first = runner.run(now=DAY1)
    again = runner.run(now=DAY1)  # a timer firing twice
    assert again.id == first.id and again.metrics == first.metrics
    assert len(members(settings, account, "ca")) == 2


def test_the_timer_function_runs_the_daily_job(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    segment_job_daily.build().get_user_function()(TimerRequest(past_due=False))
    listed = body(call(segment_jobs, "GET", "segment-jobs"))
    assert listed[0]["status"] == "SUCCEEDED" and listed[0]["metrics"]["segmentedProfileCounter"] == {"ca": 2}


def test_an_on_demand_job_is_queued_over_http_and_run_by_the_queue_trigger_once(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    put_segment("ny", 'homeAddress.stateProvince = "NY"')
    response = call(segment_jobs, "POST", "segment-jobs", body={"segments": ["ny"]})
    assert response.status_code == 202
    job = body(response)
    assert job["status"] == "QUEUED" and response.headers["Location"] == f"/api/segment-jobs/{job['id']}"
    queue = account.queue(settings.segment_jobs_queue)
    assert deliver_queue_messages(segment_job_queued, queue) == 1
    # The job fans out: one task per shard of the profile store; the last to finish publishes.
    planned = body(call(segment_jobs, "GET", f"segment-jobs/{job['id']}", {"id": job["id"]}))
    assert planned["status"] == "PROCESSING" and planned["metrics"]["shardsPlanned"] == settings.profile_shards
    shards = account.queue(settings.segment_shards_queue)
    task = shards.peek_messages()[0].content
    assert deliver_queue_messages(segment_shard_queued, shards) == settings.profile_shards
    done = body(call(segment_jobs, "GET", f"segment-jobs/{job['id']}", {"id": job["id"]}))
    assert done["status"] == "SUCCEEDED" and done["metrics"]["segmentedProfileCounter"] == {"ny": 1}
    assert [s["shard"] for s in done["metrics"]["shards"]] == list(range(settings.profile_shards))
    assert {"profiles", "evaluated", "seconds", "duckdbMemoryMB", "peakRssMB"} <= set(done["metrics"]["shards"][0])
    assert done["metrics"]["shards"][0]["peakRssMB"] > 0
    # Redelivered messages find the job and the shard done, and run nothing.
    runner = SegmentJobRunner.from_settings(settings)
    assert runner.run_shard(json.loads(task)) is None
    message = {"jobId": job["id"], "now": job["created"], "segments": ["ny"]}
    again = runner.run_queued(message)
    assert again.status is JobStatus.SUCCEEDED and again.metrics == runner.jobs.get(again.type, again.id).metrics
    unknown = call(segment_jobs, "POST", "segment-jobs", body={"segments": ["nope"]})
    assert unknown.status_code == 404


def test_a_failed_job_leaves_the_previous_memberships_current(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    runner = SegmentJobRunner.from_settings(settings)
    runner.run(now=DAY1)
    before = MembershipStore.from_settings(settings, account).current("ca").job_id
    # Its definition can no longer compile (stored past validation, as after a schema change): with no
    # segment left to evaluate, the job fails and publishes nothing.
    store = SegmentStore.from_settings(settings, account)
    store.records.put("ca", SegmentDefinition(id="ca", name="ca", expression={"value": "gone.field = 1"}))
    failed = runner.run(now=DAY2)
    assert failed.status is JobStatus.FAILED and "unknown field 'gone.field'" in failed.errors[0].message
    assert MembershipStore.from_settings(settings, account).current("ca").job_id == before


@pytest.mark.parametrize("segment_id", ["ca", "store"])  # `store`: the name of the preview's folder of store files
def test_preview_gives_the_size_now_and_who_would_enter_and_exit(settings, crm, segment_id):
    put_segment(segment_id, 'homeAddress.stateProvince = "CA"')
    SegmentJobRunner.from_settings(settings).run(now=DAY1)
    response = call(
        segment_preview,
        "POST",
        "segments-preview",
        body={"expression": {"value": 'loyalty.tier = "gold"'}, "segmentId": segment_id},
    )
    assert response.status_code == 200
    preview = body(response)
    # Gold: Ann (CA) and Cy (NY). Against CA (Ann, Bob): Cy would enter, Bob would exit.
    assert (preview["size"], preview["entering"], preview["exiting"]) == (2, 1, 1)
    assert len(preview["samples"]) == 2 and preview["samples"][0]["identities"]
    bad = call(segment_preview, "POST", "segments-preview", body={"expression": {"value": "loyalty.tier ="}})
    assert bad.status_code == 400 and "line 1" in body(bad)["detail"]


def test_a_preview_over_a_large_store_samples_shards_and_says_so_with_its_confidence(
    settings, landing_zone, monkeypatch
):
    from shared.settings import get_settings

    monkeypatch.setenv("PROFILE_SHARDS", "4")
    monkeypatch.setenv("PREVIEW_SAMPLE_PROFILES", "60")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    people = [profile(f"c{i:03d}", loyalty={"tier": "gold" if i % 2 else "silver"}) for i in range(200)]
    landing_zone.ingest_at("crm/1.ndjson", ndjson(*people), now=NOW)
    preview = body(
        call(segment_preview, "POST", "segments-preview", body={"expression": {"value": 'loyalty.tier = "gold"'}})
    )
    assert preview["sampled"] is True and preview["totalProfiles"] == 200
    assert 60 <= preview["sampleProfiles"] < 200  # two of the four shards
    low, high = preview["confidence"]["low"], preview["confidence"]["high"]
    assert preview["confidence"]["level"] == 0.95 and low <= preview["size"] <= high and low <= 100 <= high
    monkeypatch.setenv("PREVIEW_SAMPLE_PROFILES", "200")  # everyone fits: exact
    get_settings.cache_clear()
    exact = body(
        call(segment_preview, "POST", "segments-preview", body={"expression": {"value": 'loyalty.tier = "gold"'}})
    )
    assert (exact["size"], exact["sampled"]) == (100, False) and "confidence" not in exact


def test_a_preview_over_every_shard_adds_up_each_shards_counts_and_samples(
    settings, account, landing_zone, monkeypatch
):
    """A preview evaluates one shard after another (one shard in memory at any size): its size, who would enter
    and exit, and its samples (the lowest profile ids of all shards) are those of the whole store."""
    from shared.settings import get_settings

    monkeypatch.setenv("PROFILE_SHARDS", "4")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    tiers = ["gold", "silver", "bronze"]
    people = [profile(f"c{i:03d}", loyalty={"tier": tiers[i % 3]}) for i in range(120)]
    landing_zone.ingest_at("crm/1.ndjson", ndjson(*people), now=NOW)
    put_segment("gold", 'loyalty.tier = "gold"')
    put_segment("silver", 'loyalty.tier = "silver"')
    SegmentJobRunner.from_settings(get_settings()).run(now=NOW)
    gold, silver = members(settings, account, "gold"), members(settings, account, "silver")
    assert len({shard_of(p, 4) for p in gold}) == 4  # the preview has every shard to add up
    gold_against_silver = {"expression": {"value": 'loyalty.tier = "gold"'}, "segmentId": "silver"}
    preview = body(call(segment_preview, "POST", "segments-preview", body=gold_against_silver))
    assert (preview["size"], preview["sampled"], preview["totalProfiles"]) == (40, False, 120)
    assert (preview["entering"], preview["exiting"]) == (40, 40)  # gold enters, silver exits
    assert [s["profileId"] for s in preview["samples"]] == sorted(gold)[:5] and not set(gold) & set(silver)
    # Rebuilt into two shards, the memberships (in four parts) are read whole and filtered by today's shards.
    monkeypatch.setenv("PROFILE_SHARDS", "2")
    get_settings.cache_clear()
    assert len(ProfileStore.from_settings(get_settings(), account).rebuild(now=NOW).shards) == 2
    again = body(call(segment_preview, "POST", "segments-preview", body=gold_against_silver))
    assert (again["size"], again["entering"], again["exiting"]) == (40, 40, 40)


def test_explain_shows_each_condition_with_its_values_and_events(settings, crm):
    put_segment(
        "ca-buyers", 'homeAddress.stateProvince = "CA" and xEvent[eventType = "commerce.purchases"].count() >= 3'
    )
    SegmentJobRunner.from_settings(settings).run(now=DAY1)
    bob = _profile_id_of(settings, "bob")
    response = call(segment_explain, "GET", "segments/ca-buyers/explain", {"id": "ca-buyers"})
    assert response.status_code == 400  # the person must be named
    explained = body(call(segment_explain, "GET", f"segments/ca-buyers/explain?profile={bob}", {"id": "ca-buyers"}))
    assert explained["qualifies"] is False
    whole, state, purchases = explained["conditions"]
    assert whole["held"] is False
    assert state == {
        "condition": 'homeAddress.stateProvince = "CA"',
        "held": True,
        "value of homeAddress.stateProvince": "CA",
    }
    assert purchases["held"] is False and purchases["value"] == 2
    assert [e["_id"] for e in purchases["events"]] == ["e1", "e2"]


def test_explain_answers_for_the_rest_of_the_language(settings, crm):
    purchases = '(count X over X from xEvent where X.eventType = "commerce.purchases")'
    put_segment("twice", f'{purchases} * 2 >= 4 and exists E from xEvent : (E.eventType = "commerce.purchases")')
    bob = _profile_id_of(settings, "bob")
    explained = body(call(segment_explain, "GET", f"segments/twice/explain?profile={bob}", {"id": "twice"}))
    whole, doubled, exists = explained["conditions"]
    assert explained["qualifies"] is True and whole["held"] is True
    assert doubled["held"] is True and doubled["value"] == 4  # bob's two purchases, doubled
    assert exists["held"] is True and [e["_id"] for e in exists["events"]] == ["e1", "e2"]


def _profile_id_of(settings, crm_id: str) -> str:
    """The profile id of the person with this CRM id, from the profile store."""
    with tempfile.TemporaryDirectory() as tmp:
        con = connect(settings, spill_dir=tmp)
        ProfileStore.from_settings(settings).open(con, now=DAY2, workdir=Path(tmp))
        rows = con.execute(
            "SELECT profileId FROM unified_profiles WHERE list_contains(identities, {'namespace': 'CRMID', 'id': $id})",
            {"id": crm_id},
        ).fetchall()
    return rows[0][0]


def test_streaming_reevaluates_eligible_segments_only_for_people_touched_since_the_watermark(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    put_segment(
        "recent-buyers",
        'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 24 hours before now].count() > 0',
    )
    put_segment("buyers", 'xEvent[eventType = "commerce.purchases"].count() >= 2')  # all time: batch only
    runner = SegmentJobRunner.from_settings(settings)
    first = runner.run_streaming(now=DAY1)
    assert set(first.metrics["segmentedProfileCounter"]) == {"ca", "recent-buyers"}
    assert first.metrics["evaluatedProfiles"] == 3  # no watermark yet: everyone
    # ... evaluated as the daily job does, every shard, without reading who each batch touched (at 10M people
    # that list is every batch's people); a tick over the touched people's shards would evaluate 3 shards at most.
    assert len(first.metrics["shards"]) == settings.profile_shards
    assert first.metrics["segmentedProfileCounter"]["ca"] == 2
    # Cy moves to California; nobody else changes.
    later = DAY1 + dt.timedelta(minutes=3)
    crm.ingest_at("crm/move.ndjson", ndjson(profile("cy", homeAddress={"stateProvince": "CA"})), now=later)
    second = runner.run_streaming(now=later + dt.timedelta(minutes=2))
    assert second.metrics["evaluatedProfiles"] == 1
    assert second.metrics["segmentedProfileByStatusCounter"]["ca"] == {
        "realized": 1,
        "existing": 2,
        "exited": 0,
        "exitedEarlier": 0,
    }
    assert sorted(members(settings, account, "ca").values()) == ["realized", "realized", "realized"]
    quiet = runner.run_streaming(now=later + dt.timedelta(minutes=7))
    assert quiet.metrics["evaluatedProfiles"] == 0
    assert quiet.metrics["segmentedProfileCounter"]["ca"] == 3


def test_streaming_eligibility_follows_adobes_rule():
    from shared.segmentation.pql import parse
    from shared.segmentation.streaming import streaming_eligible

    definitions = {"ca": parse('homeAddress.stateProvince = "CA"'), "buy": parse('xEvent[eventType = "x"].count() > 0')}
    assert streaming_eligible(parse('loyalty.tier = "gold" and inSegment("ca")'), definitions)
    assert streaming_eligible(parse("xEvent[timestamp occurs <= 24 hours before now].count() > 0"), definitions)
    assert not streaming_eligible(parse("xEvent[timestamp occurs <= 2 days before now].count() > 0"), definitions)
    assert not streaming_eligible(parse('inSegment("buy")'), definitions)
    two = 'xEvent[timestamp occurs < 1 hours before now].count() > 0 and xEvent[eventType = "y"].count() > 0'
    assert not streaming_eligible(parse(two), definitions)


def test_a_queued_job_can_be_cancelled_and_then_never_runs(settings, account, crm):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    job = body(call(segment_jobs, "POST", "segment-jobs", body={}))
    cancelled = call(segment_jobs, "DELETE", f"segment-jobs/{job['id']}", {"id": job["id"]})
    assert cancelled.status_code == 202 and body(cancelled)["status"] == "CANCELLED"
    assert deliver_queue_messages(segment_job_queued, account.queue(settings.segment_jobs_queue)) == 1
    assert body(call(segment_jobs, "GET", f"segment-jobs/{job['id']}", {"id": job["id"]}))["status"] == "CANCELLED"
    assert MembershipStore.from_settings(settings, account).current("ca") is None
    again = call(segment_jobs, "DELETE", f"segment-jobs/{job['id']}", {"id": job["id"]})
    assert again.status_code == 409 and "already CANCELLED" in body(again)["detail"]


def test_a_running_job_that_is_cancelled_publishes_nothing(settings, account, crm, monkeypatch):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    runner = SegmentJobRunner.from_settings(settings)
    job = runner.enqueue(now=DAY1)
    real_upload = runner.memberships.upload

    def cancel_while_running(path, file):
        etag = real_upload(path, file)  # a shard's memberships
        SegmentJobRunner.from_settings(settings).cancel(job.id)  # arrives while the job is PROCESSING
        return etag

    monkeypatch.setattr(runner.memberships, "upload", cancel_while_running)
    assert (
        runner.run_queued({"jobId": job.id, "now": DAY1.isoformat(), "segments": None}).status is JobStatus.PROCESSING
    )
    ends = [
        runner.run_shard(json.loads(m.content)) for m in account.queue(settings.segment_shards_queue).receive_messages()
    ]
    [done] = [j for j in ends if j is not None]  # the shard that finished last
    assert done.status is JobStatus.CANCELLED
    assert MembershipStore.from_settings(settings, account).current("ca") is None


def test_a_malformed_queue_message_is_refused_naming_its_fields(settings):
    from shared.activation import Activation
    from shared.errors import ValidationError

    with pytest.raises(ValidationError, match="not a SegmentJobMessage: jobId: Field required"):
        SegmentJobRunner.from_settings(settings).run_queued({"now": NOW.isoformat()})
    with pytest.raises(ValidationError, match="not a ExportRunMessage: now: Input should be a valid datetime"):
        Activation.from_settings(settings).exports.run_queued({"jobId": "x", "destination": "d", "now": "soon"})


def test_any_number_of_segments_is_published_at_once_or_not_at_all(settings, account):
    from shared.segmentation.memberships import POINTERS, MembershipPointer
    from shared.storage import StorageAccount
    from tests.faults import Fault, injected

    store = MembershipStore.from_settings(settings, account)

    def job(job_id: str, count: int) -> list[MembershipPointer]:
        return [
            MembershipPointer(
                segment_id=f"s{i:03d}", job_id=job_id, snapshot=f"s{i:03d}/job={job_id}", evaluated_at=NOW
            )
            for i in range(count)
        ]

    store.publish(job("first", 250))  # more than a Table transaction's 100
    assert {p.job_id for p in store.current_pointers().values()} == {"first"} and len(store.current_pointers()) == 250
    pointers_put = lambda method, url: method == "PUT" and POINTERS in url  # noqa: E731
    with injected(Fault(pointers_put)), pytest.raises(Exception, match="injected"):
        MembershipStore.from_settings(settings, StorageAccount.from_settings(settings)).publish(job("second", 250))
    assert {p.job_id for p in store.current_pointers().values()} == {"first"}  # nothing of the failed one
    store.publish(job("third", 10))
    current = store.current_pointers()
    assert len(current) == 250 and current["s005"].job_id == "third" and current["s200"].job_id == "first"


def test_a_shard_that_keeps_failing_fails_the_job_and_the_previous_memberships_stay(settings, account, crm, clock):
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    runner = SegmentJobRunner.from_settings(settings)
    before = runner.run(now=DAY1)
    # One shard's merged profiles vanish from storage (and this worker's cache: a cold worker): its task fails
    # on every delivery (the host retries it, then moves it to the poison queue), so the job's shards never
    # all finish.
    store = ProfileStore.from_settings(settings, account)
    broken = next(s for s in store.version().shards if s.profiles)
    store.files.blobs.delete(broken.profiles)
    store.files.cache.forget()
    job = runner.enqueue(now=DAY2)
    runner.run_queued({"jobId": job.id, "now": DAY2.isoformat(), "segments": None})
    for message in account.queue(settings.segment_shards_queue).receive_messages():
        try:
            runner.run_shard(json.loads(message.content))
        except Exception:  # noqa: BLE001 - the host would retry it, and then poison it
            continue
    assert runner.jobs.get(job.type, job.id).status is JobStatus.PROCESSING
    # Past the shard timeout (and one lease), the monitor fails the job as stuck.
    stuck = dt.timedelta(seconds=settings.segment_shard_timeout_seconds + 2 * settings.job_lease_seconds)
    clock.move_to(dt.datetime.now(dt.UTC) + stuck)
    monitor.build().get_user_function()(TimerRequest(past_due=False))
    failed = runner.jobs.get(job.type, job.id)
    assert failed.status is JobStatus.FAILED and failed.errors[0].code == "abandoned"
    assert MembershipStore.from_settings(settings, account).current("ca").job_id == before.id


def _fanned_out_with_a_dead_fan_in(settings, account, runner: SegmentJobRunner) -> tuple[Job, list[dict]]:
    """A queued job whose shards all finish after a worker won the fan-in and died before publishing."""
    put_segment("ca", 'homeAddress.stateProvince = "CA"')
    job = runner.enqueue(now=DAY2)
    runner.run_queued({"jobId": job.id, "now": DAY2.isoformat(), "segments": None})
    plan = runner.shard_records.plan_of(job.id, 1)
    assert runner.shard_records.claim_fan_in(plan, now=runner.jobs.clock(), lease=runner.jobs.lease)
    tasks = [json.loads(m.content) for m in account.queue(settings.segment_shards_queue).receive_messages()]
    assert [runner.run_shard(task) for task in tasks] == [None] * len(tasks)  # all done; nobody may publish
    assert runner.jobs.get(job.type, job.id).status is JobStatus.PROCESSING
    return job, tasks


def test_a_fan_in_whose_worker_died_is_taken_over_by_a_redelivered_shard_task(settings, account, crm, clock):
    runner = SegmentJobRunner.from_settings(settings)
    job, tasks = _fanned_out_with_a_dead_fan_in(settings, account, runner)
    assert runner.run_shard(tasks[0]) is None  # redelivered within the fan-in's lease: still held
    clock.move_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.job_lease_seconds + 1))
    done = runner.run_shard(tasks[0])  # the dead worker's own task, redelivered once the lease has ended
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert MembershipStore.from_settings(settings, account).current("ca").job_id == job.id
    assert runner.run_shard(tasks[-1]) is None  # and only once


def test_the_monitor_publishes_a_job_whose_fan_in_worker_died_instead_of_failing_it(settings, account, crm, clock):
    runner = SegmentJobRunner.from_settings(settings)
    job, _ = _fanned_out_with_a_dead_fan_in(settings, account, runner)
    stuck = dt.timedelta(seconds=settings.segment_shard_timeout_seconds + 2 * settings.job_lease_seconds)
    clock.move_to(dt.datetime.now(dt.UTC) + stuck)
    monitor.build().get_user_function()(TimerRequest(past_due=False))
    done = runner.jobs.get(job.type, job.id)
    assert done.status is JobStatus.SUCCEEDED, done.errors
    assert MembershipStore.from_settings(settings, account).current("ca").job_id == job.id
