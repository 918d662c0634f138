"""The benchmark's world: N people and 20 events each (5 from 10M people up, which is 50M events), generated
by `dev/sample.py` and ingested through the product into Azurite once per size, then reused by every stage and
every run that needs it. Prebuild one with `python -m bench.world --people N`.

Ingesting 20M events takes most of a 1M-person run (half an hour on this machine), and the segment and
export stages used to do it once each. A world is an Azurite data folder (datasets, landing, lake, profile
store) kept under `.bench/worlds/` (or `BENCH_WORLDS`), keyed by the size and a digest of what made it: the
generator and the code that writes the lake and the store. When either changes, the key changes and the
world is built again; older worlds of the same size are removed. A stage never works in the world itself:
`checkout` copies its Azurite folder into the stage's own work folder (about 30 s at 1M).

The world holds the lake and the profile store of every landing file but the last event file, which each run
ingests itself and times (the last batch into a store that already holds everyone), so that figure is always
today's code. It keeps only what a stage reads: each landing file is deleted once ingested, and the store's
replaced versions are expired as the expiry timer would after PROFILE_VERSION_RETENTION_HOURS (at 1M they were
most of the world's 15 GB).

From 10M people up the world is shaped so that it fits this machine and a shard fits an instance (`shape`):
events come in files of 2M (25 batches instead of 125), and the store has a shard per 312,500 people generated
(32 at 10M). A shard then holds 1.6M events against 2.5M at 1M, but 542k people against 140k: the devices
never linked to a CRM id are people of their own, 17.4M in all. PROFILE_SHARDS, when set, wins."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import shared.app  # noqa: F401 (the service graph: ingestion keeps the profile store)
from bench.stages import peak_rss_mb, reset_peak_rss, use_azurite
from dev.sample import write_sample
from shared.identity.store import ProfileStore
from shared.ingestion import BatchIngestion, Dataset, DatasetStore
from shared.settings import get_settings
from shared.storage import StorageAccount

ROOT = Path(__file__).resolve().parent.parent
INGESTED = dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)
DATASETS = [("crm", "xdm-profile"), ("loyalty", "xdm-profile"), ("web", "xdm-experienceevent")]
# What a world is made by: the generator, and the code that validates into the lake and keeps the store.
SOURCES = (
    "dev/sample.py",
    "bench/world.py",
    "shared/ingestion",
    "shared/identity",
    "shared/storage",
    "shared/engine.py",
)
LAST_FILE = "last-events.ndjson"


@dataclass(frozen=True)
class Shape:
    """How the world of a size is made: events per person, events per landing file, profile store shards."""

    events_per_person: int
    events_per_file: int
    shards: int


def shape(people: int) -> Shape:
    """Up to 1M: 20 events a person in files of 400k, 8 shards. From 10M: 5 events a person in files of 2M, and
    a shard per 312,500 people. PROFILE_SHARDS, when set, gives the shards."""
    big = people >= 10_000_000
    made = Shape(5, 2_000_000, people // 312_500) if big else Shape(20, 400_000, 8)
    if os.environ.get("PROFILE_SHARDS"):
        made = Shape(made.events_per_person, made.events_per_file, int(os.environ["PROFILE_SHARDS"]))
    return made


def use_shape(people: int) -> Shape:
    """Set PROFILE_SHARDS for this process and the stages it starts, so that all read the store alike."""
    s = shape(people)
    os.environ["PROFILE_SHARDS"] = str(s.shards)
    get_settings.cache_clear()
    return s


@dataclass(frozen=True)
class World:
    """A built world: its Azurite folder, the last event file (not yet ingested) and how it was made."""

    path: Path
    info: dict

    @property
    def azurite(self) -> Path:
        return self.path / "azurite"

    @property
    def last_file(self) -> Path:
        return self.path / LAST_FILE

    def copy_to(self, work: Path) -> None:
        """Copy its Azurite folder to `work/azurite`, for a stage to start Azurite on and change at will."""
        started = time.perf_counter()
        shutil.copytree(self.azurite, work / "azurite", ignore=shutil.ignore_patterns("azurite.log"))
        print(f"copied the world's Azurite folder in {time.perf_counter() - started:.1f} s")

    def ingest_last(self, ingestion: BatchIngestion):
        """Ingest the last event file into the checked-out world (its store already holds everyone)."""
        return ingest_file(ingestion, "web", self.last_file, self.info["files"], name=self.info["last_name"])


def worlds_root() -> Path:
    return Path(os.environ.get("BENCH_WORLDS") or ROOT / ".bench" / "worlds")


def world_key(people: int) -> str:
    s = shape(people)
    digest = hashlib.sha256(f"people={people} {s}\n".encode())
    for source in SOURCES:
        base = ROOT / source
        for file in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
            digest.update(f"{file.relative_to(ROOT)}\n".encode())
            digest.update(file.read_bytes())
    return f"{people}-{digest.hexdigest()[:12]}"


def world(people: int, *, rebuild: bool = False) -> World:
    """The world of `people`, built first when it is missing (or `rebuild`); sets its shape (`use_shape`)."""
    use_shape(people)
    path = worlds_root() / world_key(people)
    if rebuild:
        shutil.rmtree(path, ignore_errors=True)
    if not (path / "world.json").exists():
        _build(people, path)
    else:
        print(f"reusing the ingested world {path} (built {json.loads((path / 'world.json').read_text())['built']})")
    return World(path, json.loads((path / "world.json").read_text()))


def checkout(people: int, work: Path, *, rebuild: bool = False) -> World:
    """Copy the world's Azurite folder to `work/azurite`, for a stage to start Azurite on and change at will."""
    built = world(people, rebuild=rebuild)
    built.copy_to(work)
    return built


def _build(people: int, path: Path) -> None:
    """Ingest the sample through the product into a new Azurite folder; rename it into place when done."""
    root = worlds_root()
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".building-{people}-", dir=root))
    print(f"building the world of {people:,} people in {building} (reused by later runs until its code changes)")
    azurite = use_azurite(location=building / "azurite")
    started = time.perf_counter()
    try:
        files, events, last_name = _ingest(people, building)
    finally:
        azurite.stop()  # SIGTERM: Azurite saves its metadata before it exits
    info = {
        "people": people,
        "events": events,
        "files": files,
        "last_name": last_name,
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ingest_seconds": round(time.perf_counter() - started, 1),
    }
    (building / "world.json").write_text(json.dumps(info, indent=2))
    for old in root.glob(f"{people}-*"):
        shutil.rmtree(old, ignore_errors=True)
    building.rename(path)
    print(
        f"built the world of {people:,} people ({events:,} events in {files + 1} files) in {info['ingest_seconds']:.0f} s"
    )


def _ingest(people: int, out: Path) -> tuple[int, int, str]:
    """Every landing file but the last event file, through the product; that one is kept as LAST_FILE."""
    settings = get_settings()
    account = StorageAccount.from_settings(settings)
    datasets = DatasetStore.from_settings(settings, account)
    for ds, schema in DATASETS:
        datasets.save(Dataset(id=ds, name=ds, schema_id=schema), now=INGESTED)
    s = shape(people)
    sample = write_sample(
        out / "sample",
        people=people,
        events_per_person=s.events_per_person,
        now=INGESTED,
        events_per_file=s.events_per_file,
    )
    ingestion = BatchIngestion.from_settings(settings, account)
    store = ProfileStore.from_settings(settings, account)
    files = [
        *(("crm", f) for f in split_ndjson(sample.profiles, 200 << 20)),
        ("loyalty", sample.loyalty),
        *(("web", f) for f in sample.event_files),
    ]
    for n, (ds, file) in enumerate(files[:-1]):
        reset_peak_rss()  # each file's own peak, as its invocation's would be
        started = time.perf_counter()
        ingest_file(ingestion, ds, file, n)
        file.unlink()
        ingestion.landing.delete(f"{ds}/{file.name}")
        # as the expiry timer would once the retention has passed: the replaced versions' files go
        store.expire(now=INGESTED + dt.timedelta(hours=settings.profile_version_retention_hours, seconds=n + 1))
        took = time.perf_counter() - started
        print(f"  {n + 1}/{len(files)} {ds}/{file.name} {took:.1f} s, peak RSS {peak_rss_mb():,} MB", flush=True)
    files[-1][1].rename(out / LAST_FILE)
    shutil.rmtree(out / "sample")
    return len(files) - 1, sample.events_count, files[-1][1].name


def ingest_file(ingestion: BatchIngestion, dataset: str, file: Path, n: int, *, name: str | None = None):
    """Land `file` in `dataset` and ingest it as the n-th file of the world (each a second after the last)."""
    path = f"{dataset}/{name or file.name}"
    etag = ingestion.landing.put_file(path, file)  # streamed: the file's bytes are not the batch's peak RSS
    job = ingestion.ingest(path, etag=etag, now=INGESTED + dt.timedelta(seconds=n))
    assert job.status.value == "SUCCEEDED", (path, job.errors)
    return job


def split_ndjson(path: Path, max_bytes: int) -> list[Path]:
    """Split an NDJSON file into parts under the ingestion file limit, as a user would before landing it."""
    if path.stat().st_size <= max_bytes:
        return [path]
    parts, out, size = [], None, 0
    with open(path, "rb") as src:
        for line in src:
            if out is None or size + len(line) > max_bytes:
                if out:
                    out.close()
                parts.append(path.with_name(f"{path.stem}-{len(parts):03d}.ndjson"))
                out, size = open(parts[-1], "wb"), 0  # noqa: SIM115 (closed when the next part starts)
            out.write(line)
            size += len(line)
    out.close()
    path.unlink()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or find) the benchmark's world of N people.")
    parser.add_argument("--people", type=int, required=True)
    parser.add_argument("--rebuild", action="store_true", help="build it again even if it is current")
    args = parser.parse_args()
    built = world(args.people, rebuild=args.rebuild)
    print(json.dumps({**built.info, "path": str(built.path), "shape": str(shape(args.people))}, indent=2))


if __name__ == "__main__":
    main()
