"""Campaign benchmark: an audience-sync load of an N-row export file and a profile-sync load of a
min(N, 100k)-row file into N recipients, each through the real blob-trigger path (manifest, checksum,
parsing, reconciliation, list or recipients snapshot, job record), against the ceiling: Azurite's raw
throughput for the same blob transfers (download the export file and the recipients snapshot, upload the
bytes of the snapshot the load wrote) with no processing at all. Each stage runs in its own process with
a cold snapshot cache; the ratio is throughput, ceiling time / our time (1.0 = as fast as Azurite moves
the bytes)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from bench.stages import report, run_stage, save_results, use_azurite
from shared.activation.destinations import CsvOptions
from shared.activation.manifest import ExportManifest, ManifestFile, ManifestSegment
from shared.campaign.recipients import RECIPIENTS_ID
from shared.campaign.service import Campaign
from shared.campaign.snapshots import Snapshots
from shared.settings import get_settings
from shared.sql import quote_literal
from shared.storage import BlobStore, StorageAccount

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
PROFILE_ROWS = 100_000
COLUMNS = {
    "audience": ["email_lc_sha256", "segmentMembershipStatus", "firstName", "loyaltyTier"],
    "profile": ["email_lc_sha256", "segmentMembershipStatus", "firstName", "lastName", "city", "loyaltyTier"],
}


def _campaign() -> Campaign:
    Snapshots.forget_local()  # a cold worker: nothing downloaded yet
    return Campaign.from_settings(get_settings())


def manifest_name(kind: str) -> str:
    return f"Bench_{kind.title()}_manifest_20261120120000.json"


def stage_ours(kind: str) -> dict:
    campaign = _campaign()
    started = time.perf_counter()
    [job] = campaign.loads.on_blob(manifest_name(kind), now=NOW)
    seconds = time.perf_counter() - started
    assert job.status.value == "SUCCEEDED", job.errors
    return {"seconds": seconds, "metrics": job.metrics}


def stage_ceiling(kind: str, work: Path) -> dict:
    """The same transfers, raw: the export file and the recipients snapshot down, the written snapshot up."""
    campaign = _campaign()
    manifest = json.loads(campaign.tables.dlz.get(manifest_name(kind)))
    written = (
        campaign.tables.lists.get("bench") if kind == "audience" else campaign.tables.recipients.get(RECIPIENTS_ID)
    )
    read_recipients = campaign.tables.recipients.get(RECIPIENTS_ID)
    if kind == "profile":  # the load read the version before the one it wrote
        [before] = [v for v in read_recipients.versions if v.version == read_recipients.version - 1]
        read_recipients = read_recipients.model_copy(update={"snapshot": before.snapshot})
    # What the load wrote: the list, the recipients table, or only the updated recipients (a delta).
    wrote = written.deltas[-1] if written.deltas else written.snapshot
    local = campaign.tables.blobs.download(wrote, work / f"{kind}-written.parquet")
    started = time.perf_counter()
    campaign.tables.dlz.download(manifest["files"][0]["name"], work / f"{kind}-file")
    campaign.tables.blobs.download(read_recipients.snapshot, work / f"{kind}-recipients.parquet")
    campaign.tables.blobs.put_file(f"ceiling/{kind}.parquet", local)
    seconds = time.perf_counter() - started
    moved = sum(
        (work / f).stat().st_size for f in (f"{kind}-file", f"{kind}-recipients.parquet", f"{kind}-written.parquet")
    )
    return {"seconds": seconds, "bytes": moved}


def _setup(people: int, work: Path) -> None:
    settings = get_settings()
    account = StorageAccount.from_settings(settings)
    con = duckdb.connect()
    email = "'person' || i || '@example.com'"
    seed = work / "recipients.csv"
    con.execute(
        f"""COPY (SELECT {email} AS email, 'First' || (i % 997) AS firstName, 'Last' || (i % 991) AS lastName,
                    i % 50 = 0 AS optOut FROM range({people}) t(i))
            TO {quote_literal(str(seed))} (FORMAT csv, HEADER)"""
    )
    Campaign.from_settings(settings, account).admin.seed_recipients(seed, now=NOW)
    dlz = BlobStore(account.container(settings.dlz_container))
    for kind, rows in (("audience", people), ("profile", min(people, PROFILE_ROWS))):
        path = work / f"{kind}.csv"
        extra = ", 'City' || (i % 97) AS city" if kind == "profile" else ""
        names = ", 'Newlast' || (i % 89) AS lastName" if kind == "profile" else ""
        # Every 10th row has exited; every 1000th is someone Campaign does not know (rejected).
        con.execute(
            f"""COPY (SELECT sha256(CASE WHEN i % 1000 = 999 THEN 'stranger' || i ELSE {email} END) AS email_lc_sha256,
                        CASE WHEN i % 10 = 0 THEN 'exited' ELSE 'realized' END AS segmentMembershipStatus,
                        'Name' || (i % 983) AS firstName{names}{extra},
                        ['bronze', 'silver', 'gold'][1 + i % 3] AS loyaltyTier
                     FROM range({rows}) t(i))
                TO {quote_literal(str(path))} (FORMAT csv, HEADER)"""
        )
        data = path.read_bytes()
        name = f"Bench_{kind.title()}_segmentbench_20261120120000.csv"
        dlz.put(name, data)
        manifest = ExportManifest(
            run_id=f"bench-{kind}",
            destination_id=f"bench-{kind}",
            destination_name=f"Bench_{kind.title()}",
            campaign_instance="campaign",
            target_mapping="mapRecipient",
            sync_type=kind,
            export_mode="incremental",
            format="csv",
            csv=CsvOptions(),
            identity="email_lc_sha256",
            status_column="segmentMembershipStatus",
            columns=COLUMNS[kind],
            created_at=NOW,
            files=[
                ManifestFile(
                    name=name,
                    segment_id="bench",
                    part=1,
                    rows=rows,
                    bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            ],
            segments={"bench": ManifestSegment(name="Bench", parts=1)},
        )
        dlz.put(manifest_name(kind), manifest.to_bytes())
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--people", type=int, default=100_000, help="recipients and audience-file rows")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        kind, _, which = args.stage.partition("-")
        report(stage_ours(kind) if which == "ours" else stage_ceiling(kind, args.work))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    azurite = use_azurite(location=work / "azurite")
    results = {}
    try:
        _setup(args.people, work)
        for kind in ("audience", "profile"):
            results[kind] = {
                "ours": run_stage("bench.campaign", f"{kind}-ours", "--work", str(work)),
                "ceiling": run_stage("bench.campaign", f"{kind}-ceiling", "--work", str(work)),
            }
    finally:
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"Campaign loads, {args.people:,} recipients; each stage in its own process, cold snapshot cache")
    print(f"{'load':34s} {'rows':>10s} {'ours s':>8s} {'ceiling s':>10s} {'ratio':>6s} {'peak RSS':>9s}")
    for kind, r in results.items():
        ours, ceiling = r["ours"], r["ceiling"]
        r["ratio"] = round(ceiling["seconds"] / ours["seconds"], 3)
        label = {"audience": "audience sync (list snapshot)", "profile": "profile sync (update only)"}[kind]
        print(
            f"{label:34s} {ours['metrics']['rowsRead']:10,d} {ours['seconds']:8.2f} {ceiling['seconds']:10.2f} "
            f"{r['ratio']:5.2f}x {ours['peak_rss_mb']:6,d} MB"
        )
        print(f"  metrics: { {k: v for k, v in ours['metrics'].items() if k not in ('attributes',)} }")
    print("ratio = Azurite's raw time for the same transfers / ours (target ≥ 0.8)")
    save_results("campaign", args.people, {"people": args.people, **results})


if __name__ == "__main__":
    main()
