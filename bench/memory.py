"""Where a batch's memory and time go: one file ingested into a fresh copy of a world, the process's RSS sampled
every 50 ms and each sample charged to the product code the main thread was in. Prints the batch's time, its peak
RSS (VmHWM, reset before the batch) and phases, the places with the highest RSS seen, and those where the time
went.

    python -m bench.memory --people 10000000 last       # the world's last event file (2M events at 10M)
    python -m bench.memory --people 10000000 loyalty    # the sample's loyalty CSV of that size (5M rows at 10M)
    python -m bench.memory --people 10000000 export     # an export's people: every merged profile, a shard at a time
    python -m bench.memory --world .bench/worlds/<dir> last   # a world kept from older code (its key moved on)

DUCKDB_MEMORY_LIMIT and INGESTION_CHUNK_BYTES are read from the environment, as the product reads them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.export import DESTINATION
from bench.segments import forget_cache
from bench.stages import peak_rss_mb, reset_peak_rss, use_azurite
from bench.world import INGESTED, ROOT, World, use_shape, world
from dev.sample import write_sample
from shared.activation import Destination
from shared.activation.export import Members, build_rows, install_transforms
from shared.engine import connect
from shared.identity import ProfileStore
from shared.ingestion import BatchIngestion
from shared.segmentation.memberships import LocalSnapshot
from shared.settings import get_settings
from shared.storage import StorageAccount
from shared.timing import Every, rss_mb

_PRODUCT = f"{ROOT / 'shared'}/"


class Sampler:
    """RSS every `every` seconds (`shared.timing.Every`), the highest seen at each place: the innermost three
    product frames the main thread is in."""

    def __init__(self, every: float = 0.05) -> None:
        self.sites: dict[str, float] = {}
        self.samples: dict[str, int] = {}  # how many samples found the main thread there: its time, in `every`s
        self.every = every
        self._main = threading.main_thread().ident
        self._every = Every(every, self._sample, name="memory-sampler")

    def __enter__(self) -> Sampler:
        self._every.start()
        return self

    def __exit__(self, *exc) -> None:
        self._every.stop()

    def _sample(self) -> None:
        frame, chain = sys._current_frames().get(self._main), []
        while frame is not None and len(chain) < 3:
            if frame.f_code.co_filename.startswith(_PRODUCT):
                chain.append(f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        site, rss = " < ".join(chain) or "(outside the product)", rss_mb() or 0.0
        self.sites[site] = max(rss, self.sites.get(site, 0.0))
        self.samples[site] = self.samples.get(site, 0) + 1

    def top(self, n: int = 15) -> list[tuple[str, float]]:
        return sorted(self.sites.items(), key=lambda kv: -kv[1])[:n]

    def slowest(self, n: int = 15) -> list[tuple[str, float]]:
        """The places the main thread spent the most time in: (site, seconds, as sampled)."""
        ranked = sorted(self.samples.items(), key=lambda kv: -kv[1])[:n]
        return [(site, round(count * self.every, 2)) for site, count in ranked]


def _file(built: World, which: str, work: Path) -> tuple[str, Path]:
    """(dataset, local file) of the batch to ingest."""
    if which == "last":
        return "web", built.last_file
    sample = write_sample(work / "sample", people=built.info["people"], events_per_person=0, now=INGESTED)
    return "loyalty", sample.loyalty


def export_people(built: World, work: Path) -> dict:
    """What an export of the world's store reads of it: every person's exported values (`build_rows` for
    `bench.export`'s destination, with one segment of nobody, so that no file is written), from the store's
    profiles a shard at a time."""
    settings = get_settings()
    store = ProfileStore.from_settings(settings, StorageAccount.from_settings(settings))
    version = store.version(INGESTED + dt.timedelta(seconds=built.info["files"]))
    d = Destination.model_validate({**DESTINATION, "segments": ["nobody"]})
    profiles = store.profiles_by_shard(version, work / "profiles")
    reset_peak_rss()
    started = time.perf_counter()
    con = connect(settings, spill_dir=str(work))
    try:
        install_transforms(con, country_code=settings.export_phone_country_code)
        with Sampler() as sampler:
            build_rows(con, d, [Members("nobody", LocalSnapshot([]))], profiles, split_rows=10**9)
        people = con.execute("SELECT count(*) FROM export_people").fetchall()[0][0]
    finally:
        con.close()
    return {
        "file": f"the export's people ({people:,} in {len(profiles)} shards)",
        "status": "SUCCEEDED",
        "duckdb_memory_limit": settings.duckdb_memory_limit,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": peak_rss_mb(),
        "sites": dict(sampler.top()),
        "slowest": dict(sampler.slowest()),
    }


def measure(built: World, which: str, work: Path) -> dict:
    built.copy_to(work)
    azurite = use_azurite(location=work / "azurite")
    try:
        if which == "export":
            return export_people(built, work)
        dataset, file = _file(built, which, work)
        settings = get_settings()
        ingestion = BatchIngestion.from_settings(settings, StorageAccount.from_settings(settings))
        path = f"{dataset}/memory-{file.name}"
        etag = ingestion.landing.put_file(path, file)  # landed before the peak is reset: not the batch's memory
        forget_cache()
        reset_peak_rss()
        started = time.perf_counter()
        with Sampler() as sampler:
            # after every batch of the world (its files are ingested a second apart from INGESTED)
            job = ingestion.ingest(path, etag=etag, now=INGESTED + dt.timedelta(seconds=built.info["files"] + 1))
        return {
            "file": path,
            "status": job.status.value,
            "duckdb_memory_limit": settings.duckdb_memory_limit,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": peak_rss_mb(),
            "phase_seconds": job.metrics.get("phaseSeconds"),
            "profile_store": job.metrics.get("profileStore"),
            "sites": dict(sampler.top()),
            "slowest": dict(sampler.slowest()),
        }
    finally:
        azurite.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Peak RSS of one batch into a copy of a world, and where it is.")
    parser.add_argument("which", choices=["last", "loyalty", "export"])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--people", type=int, help="the world of this size (built first when missing)")
    group.add_argument("--world", type=Path, help="a world's folder, used as it is")
    args = parser.parse_args()
    if args.world:
        built = World(args.world, json.loads((args.world / "world.json").read_text()))
        use_shape(built.info["people"])
    else:
        built = world(args.people)
    with tempfile.TemporaryDirectory(prefix="memory-", dir=ROOT / ".bench") as work:
        result = measure(built, args.which, Path(work))
    sites, slowest = result.pop("sites"), result.pop("slowest")
    print(json.dumps(result, indent=2))
    print("the highest RSS at each place:")
    for site, rss in sites.items():
        print(f"{rss:7,.0f} MB  {site}")
    print("where the time went (sampled):")
    for site, seconds in slowest.items():
        print(f"{seconds:7.2f} s   {site}")


if __name__ == "__main__":
    main()
