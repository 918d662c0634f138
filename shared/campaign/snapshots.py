"""Campaign's tables (recipients, audience lists) as versioned Parquet snapshots: a new version is written
under a new blob name, then the Table record that points at the current version is swapped, only if nobody
swapped it since it was read. Readers see the old version or the new one, never half of either, and a
million-row list loads in one download. Snapshots never change once written, so a worker keeps the ones
it has downloaded (by name) and reuses them."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.errors import Conflict, NotFound
from shared.storage import BlobStore, EntityTable

log = logging.getLogger(__name__)
_CACHE = Path(tempfile.gettempdir()) / "audience-bridge-snapshots"


class SnapshotRecord(BaseModel):
    """The current version of one Campaign table."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: str
    name: str
    count: int = 0
    version: int = 0
    snapshot: str = Field("", description="The blob in the campaign container holding this version.")
    updated: dt.datetime | None = None
    segment_id: str | None = None
    destination_id: str | None = None
    run_id: str = Field("", description="The export run whose files this list was last loaded from.")
    parts_loaded: list[int] = Field(default_factory=list)
    last_load: str = ""
    etag: str | None = Field(None, exclude=True)


class Snapshots:
    """Versioned snapshots under `{prefix}/{id}/` with their records in one partition of a table."""

    def __init__(self, blobs: BlobStore, table: EntityTable, *, partition: str, prefix: str) -> None:
        self.blobs = blobs
        self.table = table
        self.partition = partition
        self.prefix = prefix

    def find(self, record_id: str) -> SnapshotRecord | None:
        entity = self.table.find(self.partition, record_id)
        if entity is None:
            return None
        return SnapshotRecord.model_validate_json(entity["definition"]).model_copy(update={"etag": entity["etag"]})

    def get(self, record_id: str) -> SnapshotRecord:
        found = self.find(record_id)
        if found is None:
            raise NotFound(f"no {self.partition} {record_id!r} in Campaign")
        return found

    def list(self) -> list[SnapshotRecord]:
        rows = self.table.all("PartitionKey eq @pk", parameters={"pk": self.partition})
        return sorted((SnapshotRecord.model_validate_json(e["definition"]) for e in rows), key=lambda r: r.name)

    def local(self, record: SnapshotRecord) -> Path | None:
        """The record's snapshot as a local file (downloaded once per worker), or None if it has none."""
        if not record.snapshot:
            return None
        path = _CACHE / self.blobs.name / record.snapshot
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # workers may fetch it at once
            self.blobs.download(record.snapshot, partial)
            partial.replace(path)
        return path

    @staticmethod
    def forget_local() -> None:
        """Drop every snapshot this machine has kept: the next reads download again (a cold worker)."""
        shutil.rmtree(_CACHE, ignore_errors=True)

    def publish(self, record: SnapshotRecord, file: Path, *, previous: SnapshotRecord | None) -> SnapshotRecord:
        """Store `file` as the next version of `record`. `Conflict` when someone published since `previous`
        was read: nothing changes then, and the caller reads again and retries."""
        version = (previous.version if previous else 0) + 1
        name = f"{self.prefix}/{record.id}/v{version:08d}.parquet"
        record = record.model_copy(update={"version": version, "snapshot": name})
        self.blobs.put_file(name, file)
        entity = {"PartitionKey": self.partition, "RowKey": record.id, "definition": record.model_dump_json()}
        try:
            stored = (
                self.table.update(entity, etag=previous.etag)
                if previous and previous.etag
                else self.table.insert(entity)
            )
        except Conflict:
            self.blobs.delete(name)
            raise
        cached = _CACHE / self.blobs.name / name
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, cached)
        if version > 2:  # keep the version a reader may still be downloading
            try:
                self.blobs.delete(f"{self.prefix}/{record.id}/v{version - 2:08d}.parquet")
            except Exception:  # noqa: BLE001 - an old version left behind costs only space
                log.warning("could not delete version %d of %s", version - 2, record.id)
        return record.model_copy(update={"etag": stored["etag"]})
