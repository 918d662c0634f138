"""Segment job benchmark: 50 segments (25 profile rules, 25 event windows) over N people and 20 events each,
ingested through the product on Azurite (which keeps the profile store), evaluated by our segment job
(one query per shard); against the stitched floor, one hand-written fused DuckDB query over the store's own
Parquet files copied to local disk, and PostgreSQL 15 running that query over the same rows. Also: a
from-scratch rebuild (the job over it must give the same members), the last event batch into the full store
against DuckDB's read_json, a streaming tick after 10k new events, a preview and an explain. Each stage runs
in its own process (its own time and peak RSS); the member counts of every segment must match."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

import shared.app  # noqa: F401 (the service graph: ingestion keeps the profile store)
from bench.postgres import stage_postgres
from bench.stages import copy_profiles, report, run_stage, save_results, use_azurite
from bench.world import INGESTED, World, checkout
from dev.azurite import Azurite
from shared.identity import ProfileStore
from shared.ingestion import BatchIngestion
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.insight import SegmentInsight
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.sql import parquet, quote_literal
from shared.storage import StorageAccount
from shared.storage.cache import worker_cache

NOW = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)  # events span the 30 days before INGESTED


def segments() -> dict[str, tuple[str, str]]:
    """Segment id -> (PQL, the same condition by hand over the floor's columns)."""
    out: dict[str, tuple[str, str]] = {}
    for st in ["CA", "TX", "NY", "WA", "FL", "CO", "MA", "OR"]:
        out[f"state-{st}"] = (f'homeAddress.stateProvince = "{st}"', f"state = '{st}'")
    for tier in ["bronze", "silver", "gold", "platinum"]:
        out[f"tier-{tier}"] = (f'loyalty.tier = "{tier}"', f"tier = '{tier}'")
    for g in ["female", "male", "non_specific"]:
        out[f"ca-{g}"] = (
            f'person.gender = "{g}" and homeAddress.stateProvince = "CA"',
            f"gender = '{g}' AND state = 'CA'",
        )
    for y in [1950, 1960, 1970, 1980]:
        out[f"born-{y}s"] = (
            f"person.birthDate occurs between date({y}, 1, 1) and date({y + 9}, 12, 31)",
            f"birthDate >= DATE '{y}-01-01' AND birthDate <= DATE '{y + 9}-12-31'",
        )
    for x in ["A", "Jo", "K"]:
        out[f"name-{x}"] = (f'person.name.firstName.startsWith("{x}")', f"starts_with(firstName, '{x}')")
    for n in [1000, 2500, 4000]:
        out[f"points-{n}"] = (f"loyalty.points > {n}", f"points > {n}")
    kinds = [
        "web.webpagedetails.pageViews",
        "commerce.productViews",
        "commerce.productListAdds",
        "commerce.purchases",
        "message.open",
    ]
    for kind in kinds:
        for days, k in [(1, 1), (7, 1), (14, 2), (30, 3)]:
            out[f"{kind.split('.')[-1]}-{days}d-{k}"] = (
                f'xEvent[eventType = "{kind}" and timestamp occurs <= {days} days before now].count() >= {k}',
                f"count(*) FILTER (WHERE eventType = '{kind}' AND ts >= now_ - INTERVAL {days} DAY) >= {k}",
            )
    for days, amount in [(3, 50), (7, 100), (14, 200), (30, 300), (30, 1000)]:
        out[f"spend-{days}d-{amount}"] = (
            f'xEvent[eventType = "commerce.purchases" and timestamp occurs <= {days} days before now]'
            f".sum(commerce.order.priceTotal) > {amount}",
            "coalesce(sum(CAST(price AS DECIMAL(38, 9))) FILTER "
            f"(WHERE eventType = 'commerce.purchases' AND ts >= now_ - INTERVAL {days} DAY), 0)"
            f" > {amount}",
        )
    return out


def floor_sql(store: Path) -> str:
    """The stitched floor: one hand-written fused query over the profile store's own Parquet files on local
    disk (the stitching is done, as in the store): one GROUP BY over events, every segment as a column."""
    defs = segments()
    event_ids = [sid for sid, (pql, _) in defs.items() if pql.startswith("xEvent")]
    aggs = ", ".join(f"{defs[sid][1]} AS {_col(sid)}" for sid in event_ids)
    conds = ", ".join(
        f"coalesce(a.{_col(sid)}, false) AS {_col(sid)}"
        if sid in event_ids
        else f"coalesce({sql}, false) AS {_col(sid)}"
        for sid, (_, sql) in defs.items()
    )
    now = quote_literal(NOW.isoformat())
    return f"""
    WITH {stitched_sql(store)},
    ev AS (SELECT *, {now}::TIMESTAMPTZ AS now_ FROM events),
    a AS (SELECT person, {aggs} FROM ev WHERE ts <= now_ GROUP BY 1)
    SELECT person, {conds} FROM prof LEFT JOIN a USING (person)"""


def stitched_sql(store: Path) -> str:
    """`prof` and `events`: the store's merged profiles and events, with the columns the segments read."""
    return f"""prof AS (
        SELECT profileId AS person, homeAddress.stateProvince AS state, person.gender AS gender,
               person.birthDate AS birthDate, person.name.firstName AS firstName, loyalty.tier AS tier,
               loyalty.points AS points
        FROM {parquet(store / "profiles" / "*.parquet")}),
    events AS (
        SELECT profileId AS person, timestamp AS ts, eventType, commerce.order.priceTotal AS price
        FROM read_parquet({quote_literal(str(store / "events" / "*.parquet"))}, union_by_name = true)
        WHERE profileId NOT IN (SELECT profileId FROM {parquet(store / "removed" / "*.parquet")}))"""


def _col(sid: str) -> str:
    return '"' + sid + '"'


# Stages, each in its own process -------------------------------------------------------------------


def wall_estimate(seconds: float, shards: list[dict], instances: int) -> float:
    """The job's wall time on `instances` parallel instances, from one run of its shards one after another:
    what is not a shard (planning, waiting for downloads, the fan-in's publishing) plus, for each round of
    `instances` shards, the slowest of them."""
    times = [s["seconds"] for s in sorted(shards, key=lambda s: s["shard"])]
    rounds = [times[i : i + instances] for i in range(0, len(times), instances)]
    return round(seconds - sum(times) + sum(max(r) for r in rounds), 3)


def _job_result(job, seconds: float) -> dict:
    assert job.status.value == "SUCCEEDED", job.errors
    shards = job.metrics["shards"]
    return {
        "seconds": seconds,
        "wall_estimate": {
            w: wall_estimate(seconds, shards, w) for w in sorted({2, 4, 8, len(shards)}) if w <= len(shards)
        },
        "segmentation_seconds": job.metrics["segmentationSeconds"],
        "phases": {k: v for k, v in job.metrics.items() if k.endswith("Seconds") and k != "durationSeconds"},
        "shards": shards,
        "slowest_shard_seconds": max((s["seconds"] for s in shards), default=0.0),
        "shard_peak_rss_mb": max((s.get("peakRssMB") or 0 for s in shards), default=0.0),
        "counts": job.metrics["segmentedProfileCounter"],
        "profiles": job.metrics["totalProfiles"],
    }


def forget_cache() -> None:
    """Make this machine a cold worker: nothing in the worker's cache (WORKER_CACHE_MB)."""
    worker_cache(get_settings()).forget()


def stage_ours() -> dict:
    """The job on a cold worker: every store file it reads is downloaded."""
    forget_cache()
    started = time.perf_counter()
    job = SegmentJobRunner.from_settings(get_settings()).run(now=NOW)
    return _job_result(job, time.perf_counter() - started)


def stage_warm() -> dict:
    """The same job again, on the worker that ran it: the store files are in its cache (WORKER_CACHE_MB)
    and the first run's memberships are the previous ones, as for a daily job on a warm instance."""
    started = time.perf_counter()
    job = SegmentJobRunner.from_settings(get_settings()).run(now=NOW, job_id="bench-warm")
    return _job_result(job, time.perf_counter() - started)


def stage_rebuild() -> dict:
    """A from-scratch rebuild of the store from the lake, then the segment job over it: the same members."""
    started = time.perf_counter()
    ProfileStore.from_settings(get_settings()).rebuild(now=NOW)
    rebuild = time.perf_counter() - started
    started = time.perf_counter()
    # The same time as the job it is compared with; naming the segments makes it another job (another id).
    job = SegmentJobRunner.from_settings(get_settings()).run(now=NOW, segment_ids=sorted(segments()))
    return {**_job_result(job, time.perf_counter() - started), "rebuild_seconds": rebuild}


def stage_live(work: Path) -> dict:
    """Streaming and preview over the store: a streaming tick after 10k new events, a preview of a new
    definition, and an explain of one person, each through the product's own services."""
    settings = get_settings()
    runner = SegmentJobRunner.from_settings(settings)
    runner.run_streaming(now=NOW)  # the first tick has no watermark: everyone (not timed)
    events = work / "live" / "events.ndjson"
    events.parent.mkdir(parents=True, exist_ok=True)
    with open(events, "w") as out:
        for i in range(10_000):
            out.write(
                json.dumps(
                    {
                        "_id": f"live-{i}",
                        "timestamp": (NOW + dt.timedelta(seconds=30)).isoformat(),
                        "eventType": "commerce.purchases",
                        "identityMap": {"ECID": [{"id": f"live-device-{i % 2500}"}]},
                        "commerce": {"order": {"priceTotal": 10.0}},
                    }
                )
                + "\n"
            )
    ingestion = BatchIngestion.from_settings(settings)
    path = "web/live-10k.ndjson"
    etag = ingestion.landing.put(path, events.read_bytes())
    started = time.perf_counter()
    batch = ingestion.ingest(path, etag=etag, now=NOW + dt.timedelta(minutes=1))
    ingest_seconds = time.perf_counter() - started
    assert batch.status.value == "SUCCEEDED", batch.errors
    started = time.perf_counter()
    tick = runner.run_streaming(now=NOW + dt.timedelta(minutes=2))
    tick_seconds = time.perf_counter() - started
    assert tick.status.value == "SUCCEEDED", tick.errors
    insight = SegmentInsight(runner)
    at = NOW + dt.timedelta(minutes=3)
    people = runner.store.version(at).people

    def timed_preview(limit: int | None) -> tuple[dict, float]:
        """The preview with PREVIEW_SAMPLE_PROFILES at `limit` (None: as configured)."""
        tuned = settings if limit is None else settings.model_copy(update={"preview_sample_profiles": limit})
        started = time.perf_counter()
        result = SegmentInsight(SegmentJobRunner.from_settings(tuned)).preview(
            'homeAddress.stateProvince = "CA" and loyalty.points > 1500', now=at
        )
        return result, time.perf_counter() - started

    preview, preview_seconds = timed_preview(None)  # as configured: sampled past PREVIEW_SAMPLE_PROFILES
    exact, exact_seconds = timed_preview(people + 1)
    sampled, sampled_seconds = timed_preview(max(1, people // 4))  # a quarter of the store
    person = preview["samples"][0]["profileId"]
    started = time.perf_counter()
    insight.explain("state-CA", person, now=NOW + dt.timedelta(minutes=3))
    explain_seconds = time.perf_counter() - started
    return {
        "batch_seconds": ingest_seconds,
        "seconds": tick_seconds,
        "tick_profiles": tick.metrics["evaluatedProfiles"],
        "tick_shards": len(tick.metrics["shards"]),
        "tick_phases": {
            **{k: v for k, v in tick.metrics.items() if k in ("segmentationSeconds", "membershipSeconds")},
            **{k: round(sum(s[k] for s in tick.metrics["shards"]), 3) for k in ("loadSeconds", "evaluateSeconds")},
        },
        "preview_seconds": preview_seconds,
        "preview_size": preview["size"],
        "preview_sampled_by_default": bool(preview.get("sampled")),
        "preview_exact_seconds": exact_seconds,
        "preview_exact_size": exact["size"],
        "preview_sampled_seconds": sampled_seconds,
        "preview_sampled": {k: sampled.get(k) for k in ("size", "sampleProfiles", "confidence")},
        "explain_seconds": explain_seconds,
    }


def stage_floor(store: Path) -> dict:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{get_settings().duckdb_memory_limit}'")
    con.execute(f"SET threads = {get_settings().duckdb_threads}")
    started = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE result AS {floor_sql(store)}")
    ids = list(segments())
    sums = con.execute(
        "SELECT count(*), " + ", ".join(f"count_if({_col(s)})" for s in ids) + " FROM result"
    ).fetchall()[0]
    seconds = time.perf_counter() - started
    # For reference, not the floor: the same result with each segment's members written to local Parquet, as
    # the job must (without a status or a comparison with the previous members). A COPY per segment is the
    # fastest way measured (0.80 s at 1M); one COPY of every segment's union took 2.9 s, one segment at a time.
    members = store.parent / "floor-members"
    members.mkdir(exist_ok=True)
    started = time.perf_counter()
    for n, sid in enumerate(ids):
        con.execute(
            f"COPY (SELECT person AS profileId FROM result WHERE {_col(sid)}) "
            f"TO {quote_literal(str(members / f'{n:03d}.parquet'))} "
            "(FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARQUET_VERSION V2)"
        )
    return {
        "seconds": seconds,
        "members_seconds": time.perf_counter() - started,
        "profiles": sums[0],
        "counts": dict(zip(ids, sums[1:], strict=True)),
    }


def stage_read_json(file: Path, work: Path) -> dict:
    """The ingestion floor for one event file: DuckDB's read_json to local Parquet."""
    con = duckdb.connect()
    started = time.perf_counter()
    out = work / "read_json.parquet"
    con.execute(
        f"COPY (SELECT * FROM read_json({quote_literal(str(file))}, format = 'newline_delimited')) "
        f"TO {quote_literal(str(out))} (FORMAT parquet)"
    )
    return {"seconds": time.perf_counter() - started}


def _setup(work: Path, built: World) -> dict:
    """On a checked-out world (Azurite running on it): ingest the last event file (timed: a batch into a store
    that already holds everyone), save the segments, and copy the store's profile and event files to local
    disk for the floor and PostgreSQL."""
    settings = get_settings()
    account = StorageAccount.from_settings(settings)
    forget_cache()  # a cold worker: an earlier run on this world may have left its store files cached
    started = time.perf_counter()
    job = built.ingest_last(BatchIngestion.from_settings(settings, account))
    last = {
        "file": str(built.last_file),
        "events": job.metrics["rowsAccepted"],
        "seconds": time.perf_counter() - started,
        "store": job.metrics["profileStore"],
    }
    store = SegmentStore.from_settings(settings, account)
    for sid, (pql, _) in segments().items():
        store.save(SegmentDefinition(id=sid, name=sid, expression={"value": pql}), now=INGESTED)
    profiles = ProfileStore.from_settings(settings, account)
    version = profiles.version()
    # Each shard's merged profiles as one file: its compacted profiles with the updates since over them.
    copy_profiles(profiles, version, work / "store" / "profiles", work / "profile-files")
    for kind, names in (
        ("events", [e for s in version.shards for e in s.events]),
        ("removed", [s.removed for s in version.shards if s.removed]),  # people merged away, not yet compacted
    ):
        profiles.files.fetch(names, work / "store" / kind)
    duckdb.execute(
        f"COPY (SELECT NULL::VARCHAR AS profileId WHERE false) TO {quote_literal(str(work / 'store' / 'removed' / 'none.parquet'))}"
    )
    return {"last_batch": last, "store": version.summary(), "world": built.info}


def start(people: int, work: Path, *, rebuild_world: bool = False) -> tuple[Azurite, dict]:
    """Azurite on a fresh copy of the world of `people`, with the last batch ingested and the segments saved."""
    built = checkout(people, work, rebuild=rebuild_world)
    azurite = use_azurite(location=work / "azurite")
    try:
        return azurite, _setup(work, built)
    except BaseException:
        azurite.stop()
        raise


def _print_shards(shards: list[dict]) -> None:
    """Each shard's seconds and the worker's peak RSS during it, eight shards a line."""
    cells = [f"{s['shard']}: {s['seconds']:.2f} s {s.get('peakRssMB') or 0:,.0f} MB" for s in shards]
    for i in range(0, len(cells), 8):
        print(f"  {'shards' if i == 0 else '':8s}" + ", ".join(cells[i : i + 8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument(
        "--stage", choices=["ours", "warm", "floor", "postgres", "rebuild", "live", "read_json"], help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--skip-rebuild",
        action="store_true",
        help="leave out the from-scratch rebuild (at 1M it is as long as ingesting everything)",
    )
    parser.add_argument(
        "--skip-postgres", action="store_true", help="leave out PostgreSQL (at 10M, loading 50M events takes minutes)"
    )
    parser.add_argument("--rebuild-world", action="store_true", help="ingest the world again even if it is current")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stages = {
            "ours": stage_ours,
            "warm": stage_warm,
            "floor": lambda: stage_floor(args.work / "store"),
            "postgres": lambda: stage_postgres(
                stitched_sql(args.work / "store"), {sid: pql for sid, (pql, _) in segments().items()}, NOW
            ),
            "rebuild": stage_rebuild,
            "live": lambda: stage_live(args.work),
            "read_json": lambda: stage_read_json(args.file, args.work),
        }
        report(stages[args.stage]())
        return
    work = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    azurite, setup = start(args.people, work, rebuild_world=args.rebuild_world)
    try:
        read_json = run_stage("bench.segments", "read_json", "--file", setup["last_batch"]["file"], "--work", str(work))
        floor = run_stage("bench.segments", "floor", "--work", str(work))
        postgres = (
            {"skipped": "left out (--skip-postgres)"}
            if args.skip_postgres
            else run_stage("bench.segments", "postgres", "--work", str(work))
        )
        ours = run_stage("bench.segments", "ours", "--work", str(work))
        warm = run_stage("bench.segments", "warm", "--work", str(work))
        rebuilt = None if args.skip_rebuild else run_stage("bench.segments", "rebuild", "--work", str(work))
        live = run_stage("bench.segments", "live", "--work", str(work))
    finally:
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    mismatched = {
        s: (ours["counts"][s], floor["counts"][s]) for s in segments() if ours["counts"][s] != floor["counts"][s]
    }
    mismatched.update(
        {
            f"warm:{s}": (warm["counts"][s], ours["counts"][s])
            for s in segments()
            if warm["counts"][s] != ours["counts"][s]
        }
    )
    mismatched.update(
        {f"rebuild:{s}": (rebuilt["counts"][s], ours["counts"][s])
         for s in segments() if rebuilt and rebuilt["counts"][s] != ours["counts"][s]}
    )  # fmt: skip
    if "counts" in postgres:  # PostgreSQL runs the same definitions, compiled to its dialect
        mismatched.update(
            {f"postgres:{s}": (postgres["counts"][s], ours["counts"][s])
             for s in segments() if postgres["counts"][s] != ours["counts"][s]}
        )  # fmt: skip
    last = setup["last_batch"]
    events = setup["world"]["events"]  # 20 a person, 5 from 10M (`bench.world.shape`)
    print(f"{args.people:,} people, {events:,} events, 50 segments; each stage in its own process")
    print(f"{'stage':56s} {'seconds':>8s} {'ratio':>6s} {'peak RSS':>9s}")
    print(
        f"{'stitched floor: fused DuckDB query over the store, local':56s} {floor['seconds']:8.2f} {1:5.2f}x "
        f"{floor['peak_rss_mb']:6,d} MB"
    )
    with_members = floor["seconds"] + floor["members_seconds"]
    label = "  then each segment's members written (reference)"
    print(
        f"{label:56s} {with_members:8.2f} "
        f"{with_members / floor['seconds']:5.2f}x   ours is {ours['seconds'] / with_members:.2f}x of it"
    )
    print(
        f"{'ours: segment job (store on Azurite → memberships)':56s} {ours['seconds']:8.2f} "
        f"{ours['seconds'] / floor['seconds']:5.2f}x {ours['peak_rss_mb']:6,d} MB"
    )
    print(
        f"{'  again on that worker (store files cached, memberships)':56s} {warm['seconds']:8.2f} "
        f"{warm['seconds'] / floor['seconds']:5.2f}x {warm['peak_rss_mb']:6,d} MB"
    )
    print(
        f"{'  of which: the shards (evaluation, memberships)':56s} {ours['segmentation_seconds']:8.2f} "
        f"{ours['segmentation_seconds'] / floor['seconds']:5.2f}x   slowest shard {ours['slowest_shard_seconds']:.2f} s "
        f"of {len(ours['shards'])}, peak RSS {ours['shard_peak_rss_mb']:,.0f} MB"
    )
    _print_shards(ours["shards"])
    for w, estimate in ours["wall_estimate"].items():
        label = f"  estimated on {w} instances at once (cold)"
        print(f"{label:56s} {estimate:8.2f} {estimate / floor['seconds']:5.2f}x")
    print(
        f"{'ingestion: last event batch into the full store':56s} {last['seconds']:8.2f} "
        f"{last['seconds'] / read_json['seconds']:5.2f}x  vs read_json → Parquet {read_json['seconds']:.2f} s "
        f"({last['events']:,} events)"
    )
    print(f"{'streaming tick after 10k new events':56s} {live['seconds']:8.2f}        {live['peak_rss_mb']:6,d} MB "
          f"({live['tick_profiles']:,} people in {live['tick_shards']} shards)")  # fmt: skip
    how = "sampled" if live.get("preview_sampled_by_default") else "exact"
    print(f"{'preview of a new definition (as configured: ' + how + ')':56s} {live['preview_seconds']:8.2f}  "
          f"size {live['preview_size']:,}")  # fmt: skip
    print(
        f"{'  the same, exact (every shard)':56s} {live['preview_exact_seconds']:8.2f}  size {live['preview_exact_size']:,}"
    )
    quarter = live["preview_sampled"]
    interval = quarter["confidence"] or {"low": quarter["size"], "high": quarter["size"]}  # one shard: exact
    print(
        f"{'  the same, sampling a quarter of the store':56s} {live['preview_sampled_seconds']:8.2f} "
        f"{live['preview_sampled_seconds'] / live['preview_exact_seconds']:5.2f}x  size {quarter['size']:,} "
        f"(95%: {interval['low']:,}–{interval['high']:,}) vs {live['preview_exact_size']:,} exact"
    )
    print(f"{'explain of one person':56s} {live['explain_seconds']:8.2f}")
    if rebuilt:
        print(f"{'rebuild from the lake (then the job: same members)':56s} {rebuilt['rebuild_seconds']:8.2f}        "
              f"{rebuilt['peak_rss_mb']:6,d} MB")  # fmt: skip
    print(f"people: ours {ours['profiles']:,}, floor {floor['profiles']:,}")
    if "skipped" in postgres:
        print(f"PostgreSQL 15: skipped: {postgres['skipped']}")
    else:
        print(
            f"{'PostgreSQL 15: the same SQL over the same stitched rows':56s} {postgres['seconds']:8.2f} "
            f"{postgres['seconds'] / floor['seconds']:5.2f}x  (loading took {postgres['load_seconds']:.1f} s; "
            f"ours is {postgres['seconds'] / ours['seconds']:.1f}x faster)"
        )
        mismatched.update(
            {f"postgres:{s}": (postgres["counts"][s], floor["counts"][s])
             for s in segments() if postgres["counts"][s] != floor["counts"][s]}
        )  # fmt: skip
    save_results(
        "segments",
        args.people,
        {
            "people": args.people,
            "setup": setup,
            "floor": floor,
            "ours": ours,
            "warm": warm,
            "postgres": postgres,
            "rebuild": rebuilt,
            "live": live,
            "read_json": read_json,
            "mismatched": mismatched,
        },
    )
    if mismatched:
        raise SystemExit(f"member counts differ: {mismatched}")


if __name__ == "__main__":
    main()
