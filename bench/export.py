"""Export benchmark: a full export of the 50 benchmark segments over N people to CSV in the DLZ on Azurite
(our export run: snapshots from storage, mapping, hashing, exclusions, files, upload, manifest, records),
against the floor: one hand-written DuckDB query writing the same rows from the same snapshots, already
local, to local CSV files (each person hashed once, as ours does). Each runs in its own process (its own
time and peak RSS); row counts must match."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from bench.segments import NOW, forget_cache, segments, start
from bench.stages import copy_profiles, report, run_stage, save_results
from shared.activation import Activation, Destination
from shared.identity import ProfileStore
from shared.segmentation.memberships import MembershipStore
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.sql import parquet, quote_literal
from shared.storage import StorageAccount

DESTINATION = {
    "id": "bench-campaign",
    "name": "Bench_Campaign",
    "identity": {"source": "identityMap.Email", "target": "email_lc_sha256"},
    "mapping": [
        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
        {"source": "person.name.firstName", "target": "firstName"},
        {"source": "person.name.lastName", "target": "lastName"},
        {"source": "homeAddress.city", "target": "city"},
        {"source": "loyalty.tier", "target": "loyaltyTier"},
    ],
}


def stage_ours() -> dict:
    """The export on a cold worker: the memberships and the store's profiles are downloaded (a worker that ran
    the segment job would have them in its cache, WORKER_CACHE_MB)."""
    settings = get_settings()
    forget_cache()
    started = time.perf_counter()
    job = Activation.from_settings(settings).exports.run(DESTINATION["id"], now=NOW)
    seconds = time.perf_counter() - started
    assert job.status.value == "SUCCEEDED", job.errors
    return {
        "seconds": seconds,
        "rows": job.metrics["identitiesActivated"],
        "files": job.metrics["files"],
        "bytes": job.metrics["bytes"],
        "excluded": job.metrics["excluded"],
        "phases": job.metrics["phaseSeconds"],
    }


def stage_floor(snapshots: Path, out: Path) -> dict:
    settings = get_settings()
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{settings.duckdb_memory_limit}'")
    con.execute(f"SET threads = {settings.duckdb_threads}")
    # One partitioned COPY of 12.8M rows (at 1M people) holds each thread's rows until 524,288 by default, and
    # spills under the memory limit: flushing every 250,000 takes 13.0 s against 14.6 s (three alternating pairs,
    # 2026-12-04). Lower thresholds ran out of memory under 1 GB (100,000 and 120,000 did).
    con.execute("SET partitioned_write_flush_threshold = 250000")
    started = time.perf_counter()
    # The job's shard files hold every segment's memberships (a `segment` column): each is read once.
    members = (
        f"SELECT segment AS seg, profileId, status FROM {parquet(snapshots / 'members')} "
        "WHERE status IN ('realized', 'existing')"
    )
    email = "list_filter(p.identities, lambda x: x.namespace = 'Email')[1].id"
    # The best hand-written way: each person's values (the hashed email, the attributes) once, then joined to
    # every segment they are in, written by one partitioned COPY.
    con.execute(
        f"""COPY (
            WITH p AS (
                SELECT profileId, sha256(lower(trim({email}))) AS email_lc_sha256,
                       p.person.name.firstName AS firstName, p.person.name.lastName AS lastName,
                       p.homeAddress.city AS city, p.loyalty.tier AS loyaltyTier
                FROM {parquet(snapshots / "profiles" / "*.parquet")} p WHERE {email} IS NOT NULL
            )
            SELECT m.seg, p.email_lc_sha256, m.status AS segmentMembershipStatus,
                   p.firstName, p.lastName, p.city, p.loyaltyTier
            FROM ({members}) m JOIN p USING (profileId))
        TO {quote_literal(str(out))} (FORMAT csv, HEADER true, PARTITION_BY (seg), OVERWRITE_OR_IGNORE)"""
    )
    seconds = time.perf_counter() - started
    rows = con.execute(f"SELECT count(*) FROM read_csv({quote_literal(str(out / '**' / '*.csv'))})").fetchall()[0][0]
    size = sum(f.stat().st_size for f in out.rglob("*.csv"))
    return {"seconds": seconds, "rows": rows, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--stage", choices=["ours", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--rebuild-world", action="store_true", help="ingest the world again even if it is current")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stages = {"ours": stage_ours, "floor": lambda: stage_floor(args.work / "snapshots", args.work / "floor-csv")}
        report(stages[args.stage]())
        return
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    azurite, _ = start(args.people, work, rebuild_world=args.rebuild_world)
    try:
        settings = get_settings()
        seg = SegmentJobRunner.from_settings(settings).run(now=NOW)
        assert seg.status.value == "SUCCEEDED", seg.errors
        activation = Activation.from_settings(settings)
        activation.destinations.save(Destination.model_validate({**DESTINATION, "segments": list(segments())}), now=NOW)
        # The floor starts from the same snapshots, already on local disk: the job's shard files.
        store = MembershipStore.from_settings(settings, StorageAccount.from_settings(settings))
        current = store.current_pointers()
        local = store.download({sid: current[sid].files() for sid in segments()}, work / "snapshots" / "members")
        assert all(segment is not None for snapshot in local.values() for _, segment in snapshot.files)
        profiles = ProfileStore.from_settings(settings)
        version = profiles.by_id(store.current_profiles().store_version)
        copy_profiles(profiles, version, work / "snapshots" / "profiles", work / "profile-files")
        floor = run_stage("bench.export", "floor", "--work", str(work))
        ours = run_stage("bench.export", "ours", "--work", str(work))
    finally:
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.people:,} people, 50 segments, full export to CSV; each stage in its own process")
    print(f"{'stage':58s} {'seconds':>8s} {'ratio':>6s} {'rows':>12s} {'peak RSS':>9s}")
    print(
        f"{'floor: DuckDB, local snapshots → local CSV':58s} {floor['seconds']:8.2f} {1:5.2f}x "
        f"{floor['rows']:12,d} {floor['peak_rss_mb']:6,d} MB"
    )
    print(
        f"{'ours: export run (Azurite → DLZ on Azurite, manifest)':58s} {ours['seconds']:8.2f} "
        f"{ours['seconds'] / floor['seconds']:5.2f}x {ours['rows']:12,d} {ours['peak_rss_mb']:6,d} MB"
    )
    print("  phases of ours: " + ", ".join(f"{k} {v:.2f} s" for k, v in ours["phases"].items()))
    print(
        f"bytes: ours {ours['bytes']:,} in {ours['files']} files, floor {floor['bytes']:,}; excluded {ours['excluded']}"
    )
    save_results("export", args.people, {"people": args.people, "floor": floor, "ours": ours})
    if ours["rows"] != floor["rows"]:
        raise SystemExit(f"rows differ: ours {ours['rows']:,}, floor {floor['rows']:,}")


if __name__ == "__main__":
    main()
