"""Ingestion throughput: N NDJSON experience-event rows into the lake, against the floor of DuckDB converting
the same file to Parquet on local disk (no validation, no storage). Both are measured in one run; the
figure to read is the ratio. Our path is measured twice: the service alone (read, validate, write Parquet)
and end to end through the blob-trigger function against Azurite (plus upload and job records)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import duckdb

from dev.azurite import start_azurite
from dev.host import fire_blob_trigger
from dev.sample import write_sample
from shared.engine import connect
from shared.ingestion import EVENT_SCHEMA, BatchIngestion, Dataset, DatasetStore, batch_id_for
from shared.ingestion.paths import quote_literal
from shared.ingestion.records import read_records
from shared.ingestion.validation import validate
from shared.jobs import JobType
from shared.settings import get_settings
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
    data = src.read_bytes()
    records = read_records(data, file_name=src.name, schema=EVENT_SCHEMA, con=con)
    checked = validate(con, records, EVENT_SCHEMA)
    checked.write_accepted(out, batch_id="bench", ingested_at=NOW)
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
    etag = landing.put(f"web/{src.name}", src.read_bytes())
    from functions.ingestion import ingest_landing_file

    started = time.perf_counter()
    fire_blob_trigger(ingest_landing_file, landing, f"web/{src.name}")
    elapsed = time.perf_counter() - started
    job = BatchIngestion.from_settings(settings, account).jobs.get(
        JobType.INGESTION, batch_id_for(f"web/{src.name}", etag)
    )
    return elapsed, {"status": job.status.value, **job.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    people = max(1, args.rows // 5)
    sample = write_sample(work / "sample", people=people, events_per_person=5, now=NOW)
    src = sample.events
    rows = sample.events_count
    size_mb = src.stat().st_size / 1e6
    print(f"{rows:,} NDJSON event rows, {size_mb:.0f} MB: {src}")

    floor = _floor(src, work / "floor.parquet")
    print(f"DuckDB read_json → Parquet (floor):    {floor:6.2f} s  {rows / floor:>12,.0f} rows/s")
    ours = _service_only(src, work / "ours.parquet")
    print(
        f"ours, read + validate + Parquet:        {ours:6.2f} s  {rows / ours:>12,.0f} rows/s  ratio {ours / floor:.2f}x"
    )

    azurite = start_azurite(in_memory=True)
    os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 (the Functions name)
    get_settings.cache_clear()
    try:
        e2e, metrics = _end_to_end(src)
    finally:
        azurite.stop()
    print(
        f"ours, blob trigger → lake on Azurite:   {e2e:6.2f} s  {rows / e2e:>12,.0f} rows/s  ratio {e2e / floor:.2f}x"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:,.0f} MB; batch: {metrics['status']}, {metrics['rowsAccepted']:,} rows")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{dt.date.today().isoformat()}-ingest-{rows}.json"
    out.write_text(
        json.dumps(
            {
                "rows": rows,
                "megabytes": round(size_mb, 1),
                "floor_seconds": round(floor, 3),
                "service_seconds": round(ours, 3),
                "end_to_end_seconds": round(e2e, 3),
                "service_ratio": round(ours / floor, 2),
                "end_to_end_ratio": round(e2e / floor, 2),
                "peak_rss_mb": round(peak),
            },
            indent=2,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
