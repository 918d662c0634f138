"""Ingestion throughput: N NDJSON experience-event rows into the lake, against the floor of DuckDB converting
the same file to Parquet on local disk (no validation, no storage). Both are measured in one run; the
figure to read is the ratio. Our path is measured twice: the service alone (read, validate, write Parquet)
and end to end through the blob-trigger function against Azurite (plus upload and job records)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from bench.stages import report, run_stage, save_results, use_azurite
from dev.host import fire_blob_trigger
from dev.sample import write_sample
from shared.engine import connect
from shared.ingestion import EVENT_SCHEMA, BatchIngestion, Dataset, DatasetStore, batch_id_for
from shared.ingestion.validation import check_file
from shared.jobs import JobType
from shared.settings import get_settings
from shared.sql import quote_literal
from shared.storage import BlobStore, StorageAccount

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def _floor(src: Path, out: Path) -> float:
    con = duckdb.connect()
    con.execute("SET threads = 2")
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json({quote_literal(str(src))}, format = 'newline_delimited')) "
        f"TO {quote_literal(str(out))} (FORMAT parquet, COMPRESSION zstd)"
    )
    return time.perf_counter() - started


def _service_only(src: Path, out: Path) -> float:
    settings = get_settings()
    con = connect(settings, spill_dir=str(out.parent))
    started = time.perf_counter()
    checked = check_file(
        con,
        src,
        file_name=src.name,
        schema=EVENT_SCHEMA,
        work=out.parent,
        batch_id="bench",
        ingested_at=NOW,
        chunk_bytes=settings.ingestion_chunk_bytes,
    )
    checked.write_accepted(out)
    elapsed = time.perf_counter() - started
    assert checked.rejected == 0, checked.first_errors()
    return elapsed


def _end_to_end(src: Path) -> tuple[float, dict]:
    settings = get_settings()
    account = StorageAccount.from_settings(settings)
    DatasetStore.from_settings(settings, account).save(
        Dataset(id="web", name="Web", schema_id=EVENT_SCHEMA.id), now=NOW
    )
    landing = BlobStore(account.container(settings.landing_container))
    etag = landing.put_file(f"web/{src.name}", src)  # streamed: the stage's peak RSS is the ingestion's own
    from functions.ingestion import ingest_landing_file

    started = time.perf_counter()
    fire_blob_trigger(ingest_landing_file, landing, f"web/{src.name}")
    elapsed = time.perf_counter() - started
    job = BatchIngestion.from_settings(settings, account).jobs.get(
        JobType.INGESTION, batch_id_for(f"web/{src.name}", etag)
    )
    return elapsed, {"status": job.status.value, **job.metrics}


STAGES = {
    "floor": "DuckDB read_json → Parquet (floor)",
    "service": "ours: read + validate + Parquet",
    "function": "ours: blob trigger → lake on Azurite",
}


def _run_stage(name: str, src: Path, work: Path) -> None:
    if name == "floor":
        result = {"seconds": _floor(src, work / "floor.parquet")}
    elif name == "service":
        result = {"seconds": _service_only(src, work / "ours.parquet")}
    else:
        # One file of the benchmark's size: raise the landing limit to it, as a user with big files would.
        os.environ["INGESTION_MAX_FILE_BYTES"] = str(max(src.stat().st_size + 1, 2 << 30))
        azurite = use_azurite(in_memory=True)
        try:
            seconds, metrics = _end_to_end(src)
        finally:
            azurite.stop()
        result = {"seconds": seconds, "metrics": metrics}
    report(result)


def _stages(work: Path, rows_wanted: int) -> tuple[dict, int, float]:
    """Write the sample to `work` and run each stage on it, in its own process: {stage: result}, rows, MB."""
    sample = write_sample(
        work / "sample", people=max(1, rows_wanted // 5), events_per_person=5, now=NOW, events_per_file=rows_wanted
    )
    src, rows = sample.events, sample.events_count
    size_mb = src.stat().st_size / 1e6
    print(f"{rows:,} NDJSON event rows, {size_mb:.0f} MB; each stage in its own process (peak RSS is its own)")
    results = {name: run_stage("bench.ingest", name, "--src", str(src), "--work", str(work)) for name in STAGES}
    return results, rows, size_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stage", choices=["floor", "service", "function"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return _run_stage(args.stage, args.src, args.work)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        results, rows, size_mb = _stages(work, args.rows)
    finally:  # the sample and the stages' files: 395 MB at 1M rows, left in /tmp by every run before
        shutil.rmtree(work, ignore_errors=True)
    floor = results["floor"]["seconds"]
    print(f"{'stage':40s} {'seconds':>8s} {'rows/s':>12s} {'ratio':>6s} {'peak RSS':>9s}")
    for name, label in STAGES.items():
        r = results[name]
        print(
            f"{label:40s} {r['seconds']:8.2f} {rows / r['seconds']:12,.0f} "
            f"{r['seconds'] / floor:5.2f}x {r['peak_rss_mb']:6,d} MB"
        )
    metrics = results["function"]["metrics"]
    assert metrics["status"] == "SUCCEEDED", metrics
    phases = ", ".join(f"{k} {v:.2f}" for k, v in metrics.get("phaseSeconds", {}).items())
    store = ", ".join(
        f"{k.removesuffix('Seconds')} {v:.2f}"
        for k, v in metrics.get("profileStore", {}).items()
        if k.endswith("Seconds")
    )
    print(f"the function's phases (s): {phases}; of the store's update: {store}")
    summary = {"rows": rows, "megabytes": round(size_mb, 1), "stages": results}
    summary["ratios"] = {name: round(r["seconds"] / floor, 2) for name, r in results.items()}
    save_results("ingest", rows, summary)
    return None


if __name__ == "__main__":
    main()
