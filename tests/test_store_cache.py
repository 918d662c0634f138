"""A worker's cache of profile store files: store files never change once written, so a worker keeps those it
read or wrote and downloads only what it lacks; past its budget it drops the least recently used, never a
file a reader holds."""

from __future__ import annotations

import datetime as dt
import os

from shared.activation import Activation
from shared.identity import ProfileStore
from shared.jobs import JobStatus
from shared.segmentation.runner import SegmentJobRunner
from shared.storage import BlobStore
from shared.storage.cache import FileCache
from tests import test_activation
from tests.conftest import NOW
from tests.helpers import create_dataset, ndjson, profile
from tests.test_activation import T1, T2, put_destination, segment_job
from tests.test_segment_jobs import put_segment


def test_a_worker_downloads_only_the_files_it_lacks(settings, landing_zone, account, monkeypatch):
    """Store files, and the memberships a job compares with (published snapshots, by their ETag)."""
    downloads: list[str] = []
    download = BlobStore.download

    def spy(self, name, path):
        if self.name in (settings.profiles_container, settings.segments_container):
            downloads.append(f"{self.name}/{name}")
        return download(self, name, path)

    monkeypatch.setattr(BlobStore, "download", spy)
    store = ProfileStore.from_settings(settings, account)
    store.files.cache.forget()
    create_dataset(settings, "crm")
    put_segment("gold", 'loyalty.tier = "gold"')
    runner = SegmentJobRunner.from_settings(settings)

    landing_zone.ingest_at("crm/a.ndjson", ndjson(profile("c-1", loyalty={"tier": "gold"})), now=NOW)
    landing_zone.ingest_at(
        "crm/b.ndjson",
        ndjson(profile("c-1", "ann@example.com"), profile("c-2", loyalty={"tier": "gold"})),
        now=NOW + dt.timedelta(minutes=1),
    )
    first = runner.run(now=NOW + dt.timedelta(hours=1))
    second = runner.run(now=NOW + dt.timedelta(hours=2))
    # The second batch and both jobs read only files this worker wrote: nothing was downloaded.
    assert downloads == []
    assert first.metrics["segmentedProfileCounter"] == second.metrics["segmentedProfileCounter"] == {"gold": 2}
    assert second.metrics["segmentedProfileByStatusCounter"]["gold"]["existing"] == 2  # compared with the first

    store.files.cache.forget()  # a cold worker downloads what it reads, and keeps it
    third = runner.run(now=NOW + dt.timedelta(hours=3))
    containers = {name.split("/", 1)[0] for name in downloads}
    assert containers == {settings.profiles_container, settings.segments_container}
    downloaded = list(downloads)
    fourth = runner.run(now=NOW + dt.timedelta(hours=4))
    assert downloads == downloaded
    assert third.metrics["segmentedProfileCounter"] == fourth.metrics["segmentedProfileCounter"] == {"gold": 2}


def test_past_its_budget_the_cache_drops_the_least_recently_used_and_never_a_reader_s_file(tmp_path):
    cache = FileCache(tmp_path / "cache", budget_mb=1)
    (tmp_path / "work").mkdir()
    for n in range(3):
        source = tmp_path / f"written-{n}"
        source.write_bytes(bytes([n]) * 600_000)
        cache.keep(f"s0000/f{n}.parquet", source)
        old = 1_000_000 + n  # used in this order, long ago
        os.utime(tmp_path / "cache" / f"s0000/f{n}.parquet", (old, old))
    reader = tmp_path / "work" / "f0"
    assert cache.take("s0000/f0.parquet", reader)  # used now: the last to go
    assert not cache.take("s0000/missing.parquet", tmp_path / "work" / "missing")

    assert cache.trim() == 1_200_000  # 1.8 MB held, 1 MiB allowed: f1, then f2
    assert not cache.take("s0000/f1.parquet", tmp_path / "work" / "f1")
    assert not cache.take("s0000/f2.parquet", tmp_path / "work" / "f2")
    cache.forget()
    assert reader.read_bytes() == bytes([0]) * 600_000  # the reader's link outlives the cache
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_an_unset_budget_is_half_of_the_cache_and_the_free_space(tmp_path):
    cache = FileCache(tmp_path / "cache")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert abs(cache._budget(0) - free // 2) < 64 * 2**20


crm = test_activation.crm  # people in the CRM, segments "gold" and "all"


def test_an_export_on_the_worker_that_ran_the_job_reads_the_memberships_it_wrote(settings, account, crm, monkeypatch):
    downloads: list[str] = []
    download = BlobStore.download

    def spy(self, name, path):
        if self.name == settings.segments_container:
            downloads.append(name)
        return download(self, name, path)

    monkeypatch.setattr(BlobStore, "download", spy)
    assert put_destination(exportMode="incremental").status_code == 200
    exports = Activation.from_settings(settings).exports
    segment_job(settings, T1)
    assert exports.run("gold-email", now=T1).status is JobStatus.SUCCEEDED
    assert downloads == []

    ProfileStore.from_settings(settings, account).files.cache.forget()  # a cold worker
    segment_job(settings, T2)  # downloads T1's memberships to compare with, and keeps them
    compared = list(downloads)
    assert compared
    # The export reads T2's memberships (this worker wrote them) and T1's (last exported): both cached.
    assert exports.run("gold-email", now=T2).status is JobStatus.SUCCEEDED
    assert downloads == compared


def test_a_budget_of_zero_turns_the_cache_off(tmp_path):
    cache = FileCache(tmp_path / "cache", budget_mb=0)
    source = tmp_path / "written"
    source.write_bytes(b"x")
    cache.keep("s0000/f.parquet", source)
    assert not (tmp_path / "cache").exists() and not cache.take("s0000/f.parquet", tmp_path / "copy")
    fetched = cache.fetch("s0000/f.parquet", tmp_path / "fetched", lambda target: target.write_bytes(b"y"))
    assert fetched.read_bytes() == b"y" and not (tmp_path / "cache").exists() and cache.trim() == 0


def test_a_trim_passes_over_folders_another_worker_removes_meanwhile(tmp_path):
    """Two workers on one machine share the cache: one's `forget` (or the folders it removes) must not fail
    the other's trim, which an ingestion batch runs. Raced 10 times; the trim before this fix failed in 2 of 3."""
    import threading

    cache = FileCache(tmp_path / "cache", budget_mb=1)
    for _ in range(10):
        for s in range(300):
            part = tmp_path / "cache" / f"segments/s{s}/job=j/shard=0000.parquet"
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(b"x")
        other = threading.Thread(target=cache.forget)
        other.start()
        cache.trim()
        other.join()
