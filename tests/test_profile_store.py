"""The profile store: identities stitched once as batches arrive, person-keyed shards, atomic versions."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import threading
from pathlib import Path
from unittest import mock

import duckdb
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.engine import connect
from shared.identity import DEFAULT_POLICY, ProfileStore, StoreVersion
from shared.identity import store as store_module
from shared.identity.store import (
    GRAPH_UPDATES_SHARE,
    MAX_DELTAS,
    ROWS_PER_WRITE,
    StoreFiles,
    graph_of,
    profiles_sql_of,
    replay,
    rows_sql_of,
    shard_of,
)
from shared.ingestion.batch import AcceptedBatch
from shared.ingestion.schemas import EVENT_SCHEMA, PROFILE_SCHEMA
from shared.ingestion.validation import check_file
from shared.settings import Settings, get_settings
from tests.conftest import NOW, Landing
from tests.helpers import create_dataset, event, ndjson, profile

pytestmark = []


def _key(ns: str, value: str) -> str:
    """The key a person first seen with this single identity gets."""
    return "p" + hashlib.md5(f"{ns}:{value}".encode()).hexdigest()[:23]


def _contents(store: ProfileStore, version: StoreVersion, work: Path) -> dict:
    """What a version holds, independent of its file names: graph, profiles and events by shard."""
    con = duckdb.connect()
    files = store.files
    out = {"graph": [], "shards": []}
    graph = graph_of(version.graph, version.graph_updates, lambda names: files.fetch(names, work))("")
    out["graph"] = con.execute(f"SELECT ns, id, profileId FROM {graph} ORDER BY ALL").fetchall()
    for shard in version.shards:
        entry = {}
        profiles = profiles_sql_of(shard, lambda names: files.fetch(names, work))
        if profiles:
            entry["profiles"] = con.execute(f"SELECT * FROM {profiles} ORDER BY profileId").fetchall()
        if shard.events:
            rows = rows_sql_of(shard.events, shard.removed, lambda names: files.fetch(names, work))
            entry["events"] = con.execute(f"SELECT profileId, _id FROM {rows} ORDER BY ALL").fetchall()
        out["shards"].append(entry)
    return out


@pytest.mark.parametrize("rows_per_write", [ROWS_PER_WRITE, 1])  # 1: a batch's rows into the shards one by one
def test_ingestion_keeps_the_store_and_a_rebuild_gives_the_same_store(
    settings, landing_zone, account, tmp_path, monkeypatch, rows_per_write
):
    monkeypatch.setattr(store_module, "ROWS_PER_WRITE", rows_per_write)
    create_dataset(settings, "crm")
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile("c-1", "ann@example.com", loyalty={"tier": "gold"})), now=NOW)
    landing_zone.ingest_at(
        "web/a.ndjson",
        ndjson(
            event("e-1", "2026-11-20T10:00:00Z", "commerce.purchases", ECID="d-1", CRMID="c-1"),
            event("e-2", "2026-11-20T10:00:00Z", "commerce.purchases", ECID="d-2"),
        ),
        now=NOW + dt.timedelta(minutes=1),
    )
    job = landing_zone.ingest_at(
        "crm/b.ndjson",
        ndjson(profile("c-2", ecid="d-2", loyalty={"tier": "silver"}), profile("c-3", loyalty={"tier": "bronze"})),
        now=NOW + dt.timedelta(minutes=2),
    )
    assert job.metrics["profileStore"]["newPeople"] == 1  # c-3; c-2 joins the person device d-2 already was
    store = ProfileStore.from_settings(settings, account)
    incremental = store.version()
    assert (incremental.people, incremental.identities, incremental.events) == (3, 6, 2)
    rebuilt = store.rebuild(now=NOW + dt.timedelta(hours=1))
    assert rebuilt.id != incremental.id
    assert _contents(store, rebuilt, tmp_path / "b") == _contents(store, incremental, tmp_path / "a")
    # The version before the rebuild is kept: a job as of an earlier time reads the store as it was.
    assert store.version(NOW + dt.timedelta(minutes=1, seconds=30)).people == 2
    # Exports read every merged profile: only the profile files are downloaded, not the events.
    profiles = store.profiles_by_shard(incremental, tmp_path / "exports")
    assert sum(duckdb.sql(f"SELECT count(*) FROM {p}").fetchall()[0][0] for p in profiles) == 3
    fetched = {p.name for p in (tmp_path / "exports").iterdir()}
    assert fetched and not any("events" in name for name in fetched)


def test_a_small_batch_writes_a_graph_update_and_the_graph_is_rewritten_past_its_share(
    settings, landing_zone, account, tmp_path
):
    create_dataset(settings, "crm")
    people = [profile(f"c-{i}", f"p{i}@example.com") for i in range(10)]
    landing_zone.ingest_at("crm/a.ndjson", ndjson(*people), now=NOW)
    store = ProfileStore.from_settings(settings, account)
    first = store.version()
    assert (first.identities, first.graph_updates) == (20, [])  # an empty graph is written whole
    landing_zone.ingest_at("crm/b.ndjson", ndjson(profile("c-1", "new@example.com")), now=NOW + dt.timedelta(minutes=1))
    second = store.version()
    # c-1's 3 rows are written, not the graph's 21; the graph file is the first one's.
    assert second.graph == first.graph and [u.identities for u in second.graph_updates] == [3]
    assert second.identities == 21 and second.summary()["graphUpdates"] == 1
    graph = _contents(store, second, tmp_path / "second")["graph"]
    assert len(graph) == 21 and ("Email", "new@example.com", _key("CRMID", "c-1")) in graph
    more = [profile(f"c-{i}", f"x{i}@example.com") for i in range(2, 10)]
    landing_zone.ingest_at("crm/c.ndjson", ndjson(*more), now=NOW + dt.timedelta(minutes=2))
    third = store.version()
    # Updates of 3 + 24 rows would pass GRAPH_UPDATES_SHARE of the graph's 21 identities: it is rewritten whole.
    assert third.graph != first.graph and third.graph_updates == [] and third.identities == 29
    assert len(_contents(store, third, tmp_path / "third")["graph"]) == 29


def test_a_redelivered_batch_changes_nothing(settings, landing_zone, account):
    create_dataset(settings, "crm")
    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile("c-1", "ann@example.com")), now=NOW)
    store = ProfileStore.from_settings(settings, account)
    before = store.version()
    batch = before.batches[0]
    with tempfile.TemporaryDirectory() as tmp:
        lake_file = Path(tmp) / "data.parquet"
        store.lake.blobs.download(store.lake.data_path("crm", batch.batch_id), lake_file)
        again = AcceptedBatch("crm", PROFILE_SCHEMA, lake_file, batch.batch_id, batch.ingested_at)
        assert store.apply(again, now=NOW) == batch.counts
    assert store.version().id == before.id


def test_people_merged_across_shards_move_to_the_shard_of_the_surviving_key(settings, landing_zone, account):
    shards = settings.profile_shards
    # Two CRM ids whose people start in different shards.
    a = "c-1"
    b = next(
        f"c-{i}"
        for i in range(2, 500)
        if shard_of(_key("CRMID", f"c-{i}"), shards) != shard_of(_key("CRMID", a), shards)
    )
    create_dataset(settings, "crm")
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile(a, loyalty={"tier": "gold"}), profile(b)), now=NOW)
    landing_zone.ingest_at(
        "web/a.ndjson",
        ndjson(
            event("e-a", "2026-11-20T10:00:00Z", "web.pageViews", CRMID=a),
            event("e-b", "2026-11-20T10:00:00Z", "web.pageViews", CRMID=b),
        ),
        now=NOW + dt.timedelta(minutes=1),
    )
    job = landing_zone.ingest_at(
        "web/link.ndjson",
        ndjson(
            {**event("e-ab", "2026-11-20T11:00:00Z", "web.pageViews"), "identityMap": {"CRMID": [{"id": a}, {"id": b}]}}
        ),
        now=NOW + dt.timedelta(minutes=2),
    )
    assert job.metrics["profileStore"]["merges"] == 1
    survivor, absorbed = sorted([_key("CRMID", a), _key("CRMID", b)])
    store = ProfileStore.from_settings(settings, account)
    version = store.version()
    with tempfile.TemporaryDirectory() as tmp:
        contents = _contents(store, version, Path(tmp))
    home = contents["shards"][shard_of(survivor, shards)]
    assert [row[0] for row in home["profiles"]].count(survivor) == 1
    assert sorted(e for p, e in home["events"] if p == survivor) == ["e-a", "e-ab", "e-b"]
    everywhere = [row for s in contents["shards"] for row in s.get("profiles", []) + s.get("events", [])]
    assert all(row[0] != absorbed for row in everywhere)
    (merged,) = [row for row in home["profiles"] if row[0] == survivor]
    assert {i["id"] for i in merged[1]} == {a, b}
    assert any(isinstance(v, dict) and v.get("tier") == "gold" for v in merged)  # its loyalty, merged


def test_rows_moved_from_several_shards_reach_their_target_in_one_file_a_kind(settings, landing_zone, account):
    """A file per source and target shard made every shard pass MAX_DELTAS at each batch with merges."""
    shards = settings.profile_shards
    ids = [f"c-{i}" for i in range(2000)]
    key = {i: _key("CRMID", i) for i in ids}
    shard = {i: shard_of(key[i], shards) for i in ids}
    target = shard[ids[0]]
    # Two people who survive in `target` (the smaller key survives), each absorbing someone from another shard.
    pairs: list[tuple[str, str]] = []
    for x in (i for i in ids if shard[i] == target):
        taken = {target, *(shard[y] for _, y in pairs)}
        pairs += [next((x, y) for y in ids if key[y] > key[x] and shard[y] not in taken)]
        if len(pairs) == 2:
            break
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    people = [i for pair in pairs for i in pair]
    landing_zone.ingest_at(
        "web/a.ndjson",
        ndjson(*(event(f"e-{i}", "2026-11-20T10:00:00Z", "web.pageViews", CRMID=i) for i in people)),
        now=NOW,
    )
    before = set(ProfileStore.from_settings(settings, account).version().shards[target].events)
    link = [{**event(f"e-{x}{y}", "2026-11-20T11:00:00Z", "web.pageViews"),
             "identityMap": {"CRMID": [{"id": x}, {"id": y}]}} for x, y in pairs]  # fmt: skip
    job = landing_zone.ingest_at("web/link.ndjson", ndjson(*link), now=NOW + dt.timedelta(minutes=1))
    assert job.metrics["profileStore"]["merges"] == 2
    version = ProfileStore.from_settings(settings, account).version()
    added = [n for n in version.shards[target].events if n not in before]
    assert len(added) == 2  # the batch's own rows, and the rows moved in from both shards
    with tempfile.TemporaryDirectory() as tmp:
        there = _contents(ProfileStore.from_settings(settings, account), version, Path(tmp))["shards"][target]
    for x, y in pairs:
        assert sorted(e for p, e in there["events"] if p == key[x]) == sorted([f"e-{x}", f"e-{x}{y}", f"e-{y}"])


def test_the_graph_limit_keeps_the_most_recently_seen_identities_of_the_people_a_batch_touches(
    settings, landing, account, monkeypatch
):
    monkeypatch.setenv("IDENTITY_GRAPH_LIMIT", "3")
    get_settings.cache_clear()
    landing_zone = Landing(get_settings(), landing)
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    for minute, device in enumerate(["d-1", "d-2", "d-3", "d-4"]):
        job = landing_zone.ingest_at(
            f"web/{device}.ndjson",
            ndjson(event(f"e-{device}", "2026-11-20T10:00:00Z", "web.pageViews", CRMID="c-1", ECID=device)),
            now=NOW + dt.timedelta(minutes=minute),
        )
    assert job.metrics["profileStore"]["identitiesDropped"] == 1
    store = ProfileStore.from_settings(get_settings(), account)
    assert store.version().summary()["identitiesDropped"] == 2
    with tempfile.TemporaryDirectory() as tmp:
        graph = _contents(store, store.version(), Path(tmp))["graph"]
    assert [(ns, i) for ns, i, _ in graph] == [("CRMID", "c-1"), ("ECID", "d-3"), ("ECID", "d-4")]
    # The events stay with the person they were stitched to; a dropped device is a new person next time.
    job = landing_zone.ingest_at(
        "web/again.ndjson",
        ndjson(event("e-again", "2026-11-20T12:00:00Z", "web.pageViews", ECID="d-1")),
        now=NOW + dt.timedelta(minutes=9),
    )
    assert job.metrics["profileStore"]["newPeople"] == 1
    assert store.version().events == 5


def test_two_batches_at_once_lose_no_link(settings, landing_zone, account):
    """The second batch to publish finds the store moved on, and applies itself again on the new version."""
    create_dataset(settings, "crm")
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile("c-1"), profile("c-2")), now=NOW)
    entered = threading.Barrier(2, timeout=60)
    first_two = iter(range(2))
    real_put = StoreFiles.put

    def put(self, files, **kw):  # both batches have computed their versions before either publishes
        real_put(self, files, **kw)
        if (
            self.blobs is not None
            and any(n.startswith("batches/") for n in files)
            and next(first_two, None) is not None
        ):
            entered.wait()

    StoreFiles.put = put
    try:
        results = {}
        threads = [
            threading.Thread(
                target=lambda n=n, body=body: results.setdefault(
                    n, landing_zone.ingest_at(f"web/{n}.ndjson", body, now=NOW + dt.timedelta(minutes=1))
                )
            )
            for n, body in [
                ("x", ndjson(event("e-x", "2026-11-20T10:00:00Z", "web.pageViews", CRMID="c-1", ECID="d-9"))),
                ("y", ndjson(event("e-y", "2026-11-20T10:00:00Z", "web.pageViews", CRMID="c-2", ECID="d-9"))),
            ]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        StoreFiles.put = real_put
    assert {j.status.value for j in results.values()} == {"SUCCEEDED"}
    version = ProfileStore.from_settings(settings, account).version()
    assert len(version.batches) == 3
    assert version.people == 1  # d-9 links c-1 and c-2, whichever batch published first
    assert sum(b.counts["merges"] for b in version.batches) == 1


# -- the store's semantics against an independent model, over random batches -------------------------------

PEOPLE = [f"c-{i}" for i in range(6)]
record = st.fixed_dictionaries(
    {
        "crm": st.sampled_from(PEOPLE),
        "device": st.none() | st.sampled_from([f"d-{i}" for i in range(6)]),
        "tier": st.none() | st.sampled_from(["gold", "silver", "bronze"]),
        "event": st.booleans(),
    }
)


def _batches(records: list[dict], cuts: list[int], work: Path, con) -> list[AcceptedBatch]:
    """Records cut into batches, each validated into a lake file; batch n is ingested at minute n."""
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    out = []
    for _n, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        chunk = records[lo:hi]
        for kind, schema in (("events", EVENT_SCHEMA), ("profiles", PROFILE_SCHEMA)):
            rows = [r for r in chunk if r["event"] == (kind == "events")]
            if not rows:
                continue
            lines = [
                event(
                    f"e-{lo}-{i}",
                    "2026-11-20T10:00:00Z",
                    "web.pageViews",
                    CRMID=r["crm"],
                    **({"ECID": r["device"]} if r["device"] else {}),
                )
                if kind == "events"
                else profile(r["crm"], ecid=r["device"], **({"loyalty": {"tier": r["tier"]}} if r["tier"] else {}))
                for i, r in enumerate(rows)
            ]
            source = work / f"{len(out):03d}-{kind}.ndjson"
            source.write_text(ndjson(*lines))
            at = NOW + dt.timedelta(minutes=len(out))
            parts = work / f"{len(out):03d}-{kind}"
            parts.mkdir()
            checked = check_file(
                con,
                source,
                file_name=source.name,
                schema=schema,
                work=parts,
                batch_id=f"b{len(out):03d}",
                ingested_at=at,
            )
            path = work / f"{len(out):03d}-{kind}.parquet"
            checked.write_accepted(path)
            out.append(AcceptedBatch(kind, schema, path, f"b{len(out):03d}", at))
    return out


def _model(batches_records: list[list[dict]]) -> tuple[set[frozenset[str]], dict[frozenset[str], str | None]]:
    """People as union-find over identities (no limit reached), and each one's latest non-null tier."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for rows in batches_records:
        for r in rows:
            ids = [f"CRMID:{r['crm']}"] + ([f"ECID:{r['device']}"] if r["device"] else [])
            for i in ids[1:]:
                parent[find(i)] = find(ids[0])
            find(ids[0])
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    people = {frozenset(g) for g in groups.values()}
    tiers: dict[frozenset[str], str | None] = {p: None for p in people}
    for rows in batches_records:
        for r in rows:
            if not r["event"] and r["tier"]:
                tiers[next(p for p in people if f"CRMID:{r['crm']}" in p)] = r["tier"]
    return people, tiers


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(record, min_size=1, max_size=14),
    cuts=st.lists(st.integers(0, 20), max_size=4),
    compact_after=st.sampled_from([0, 1, 2, MAX_DELTAS]),  # files per shard (graph updates) past which it compacts
    graph_share=st.sampled_from([GRAPH_UPDATES_SHARE, 100.0]),  # 100: a small graph is not compacted for its size
    rows_per_write=st.sampled_from([1, 3, ROWS_PER_WRITE]),  # a batch's rows into the shards, this many a statement
)
def test_stores_built_batch_by_batch_stitch_and_merge_like_the_whole_lake_at_once(
    records, cuts, compact_after, graph_share, rows_per_write
):
    settings = Settings(profile_shards=3)
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(store_module, "MAX_DELTAS", compact_after),
        mock.patch.object(store_module, "GRAPH_UPDATES_SHARE", graph_share),
        mock.patch.object(store_module, "ROWS_PER_WRITE", rows_per_write),
    ):
        work = Path(tmp)
        con = connect(settings, spill_dir=tmp)
        batches = _batches(records, cuts, work, con)
        store = ProfileStore(settings=settings, files=StoreFiles(folder=work / "store"))
        empty = StoreVersion.empty(shards=3, policy=DEFAULT_POLICY, graph_limit=50, now=NOW)
        version = replay(settings, batches, empty, store.files, work / "out", now=NOW)
        profiles = store.open(con, now=NOW, workdir=work / "cache", version=version)
        rows = con.execute(
            f"SELECT profileId, identities, json_extract_string(to_json(p), '$.loyalty.tier') FROM {profiles.profiles} p"
        ).fetchall()
        events = dict(con.execute(f"SELECT profileId, count(*) FROM {profiles.events} GROUP BY ALL").fetchall())
        # The graph as its compacted file and updates give it (MAX_DELTAS: updates past which it is rewritten).
        graph = graph_of(version.graph, version.graph_updates, lambda names: store.files.fetch(names, work))("")
        graph_people = con.execute(f"SELECT list(ns || ':' || id) FROM {graph} GROUP BY profileId").fetchall()
        con.close()
    # Batches in application order, with their records (the cut order: events before profiles per chunk).
    by_batch = []
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        for is_event in (True, False):
            chunk = [r for r in records[lo:hi] if r["event"] == is_event]
            if chunk:
                by_batch.append(chunk)
    people, tiers = _model(by_batch)
    stored = {frozenset(f"{i['namespace']}:{i['id']}" for i in ids): (pid, tier) for pid, ids, tier in rows}
    assert set(stored) == people
    assert {frozenset(ids) for (ids,) in graph_people} == people
    assert version.identities == sum(len(p) for p in people)
    assert {p: t for p, (_, t) in stored.items()} == tiers
    expected_events = {
        p: sum(1 for rows_ in by_batch for r in rows_ if r["event"] and f"CRMID:{r['crm']}" in p) for p in people
    }
    assert {p: events.get(pid, 0) for p, (pid, _) in stored.items()} == expected_events
    assert json.dumps(version.summary(), default=str)  # the summary serializes


def test_the_retention_timer_deletes_files_no_kept_version_names(settings, landing_zone, account, clock, monkeypatch):
    from azure.functions.timer import TimerRequest

    from functions.catalog import profile_store_retention
    from shared.segmentation.runner import SegmentJobRunner
    from tests.test_segment_jobs import put_segment

    def retention() -> None:
        profile_store_retention.build().get_user_function()(TimerRequest(past_due=False))

    monkeypatch.setattr(store_module, "MAX_DELTAS", 0)  # every batch writes the whole graph, not an update
    create_dataset(settings, "crm")
    put_segment("everyone", "true")
    store = ProfileStore.from_settings(settings, account)
    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile("c-1", "ann@example.com")), now=NOW)
    first = store.version()
    SegmentJobRunner.from_settings(settings).run(now=NOW + dt.timedelta(minutes=30))  # computed from `first`
    landing_zone.ingest_at("crm/b.ndjson", ndjson(profile("c-2", "bob@example.com")), now=NOW + dt.timedelta(hours=1))
    second = store.version()
    assert first.graph != second.graph  # the graph is rewritten: `first`'s file is named by `first` alone
    with tempfile.TemporaryDirectory() as tmp:  # a batch that failed after writing its files, before publishing
        orphan = Path(tmp) / "orphan.parquet"
        duckdb.sql(f"COPY (SELECT 1 AS x) TO '{orphan}' (FORMAT parquet)")
        store.files.put({"shards/0000/orphan.parquet": orphan}, written_at=NOW)

    retention()  # within the retention: nothing goes
    assert store.files.blobs.exists(first.graph) and store.files.blobs.exists("shards/0000/orphan.parquet")

    later = NOW + dt.timedelta(hours=settings.profile_version_retention_hours + 2)
    clock.move_to(later)
    retention()  # `first` is past the retention, but the current memberships were computed from it
    assert store.files.blobs.exists(first.graph) and store.by_id(first.id).id == first.id
    assert not store.files.blobs.exists("shards/0000/orphan.parquet")

    job = SegmentJobRunner.from_settings(settings).run(now=later)
    assert job.metrics["profileStoreVersion"] == second.id
    retention()
    assert not store.files.blobs.exists(first.graph)
    with tempfile.TemporaryDirectory() as tmp:  # the current version is whole
        con = connect(settings, spill_dir=tmp)
        profiles = store.open(con, now=later, workdir=Path(tmp))
        assert profiles.stats["people"] == 2
