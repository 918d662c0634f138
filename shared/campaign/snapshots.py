"""Campaign's tables (recipients, audience lists) as versioned Parquet snapshots: a new version is written
under a new, never reused blob name, then the Table record that points at the current version is swapped,
only if nobody swapped it since it was read. Readers see the old version or the new one, never half of
either, and a million-row list loads in one download. Snapshots never change once written, so a worker
keeps the ones it has downloaded (by name) and reuses them.

A version may also be a base snapshot plus delta files (`deltas`: rows that replace the base's rows of the
same id, the newest file winning), so that an update of a few rows writes those rows, not the table;
`CampaignTables` merges them on read and compacts them into a new base when they grow.

Writers never delete a published version: the record keeps the versions of the last
`SNAPSHOT_RETENTION_HOURS` (any of them can be restored), and the retention timer deletes the blobs that
no record keeps any more, once they are that old."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path

from pydantic import ConfigDict, Field

from shared.errors import Conflict, NotFound
from shared.models import ApiModel
from shared.storage import BlobStore, EntityTable

log = logging.getLogger(__name__)
_CACHE = Path(tempfile.gettempdir()) / "audience-bridge-snapshots"
MAX_VERSIONS = 200  # versions a record keeps at most, however many were written within the retention period
CREATED = "created"  # blob metadata: the writer's `now`


class SnapshotVersion(ApiModel):
    """One published version of a table."""

    version: int
    snapshot: str = Field(description="The blob in the campaign container holding this version.")
    deltas: list[str] = Field(default_factory=list, description="Delta blobs read over the snapshot, oldest first.")
    delta_rows: int = 0
    count: int
    created: dt.datetime
    restored_from: int | None = Field(None, description="The version this one brought back, if a restore.")


class RestoreRequest(ApiModel):
    """Which kept version to bring back."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"version": 3}]})

    version: int = Field(ge=1, le=10**9)


class SnapshotRecord(ApiModel):
    """The current version of one Campaign table."""

    id: str
    name: str
    count: int = 0
    version: int = 0
    snapshot: str = Field("", description="The blob in the campaign container holding this version.")
    deltas: list[str] = Field(default_factory=list, description="Delta blobs read over the snapshot, oldest first.")
    delta_rows: int = Field(0, description="Rows in the deltas: past a share of `count`, the next write compacts.")
    updated: dt.datetime | None = None
    segment_id: str | None = None
    destination_id: str | None = None
    run_id: str = Field("", description="The export run whose files this list was last loaded from.")
    parts_loaded: list[int] = Field(default_factory=list)
    last_load: str = ""
    last_id: int = Field(0, description="The highest row id this table ever gave: ids are never reused.")
    etag: str | None = Field(None, exclude=True)
    versions: list[SnapshotVersion] = Field(default_factory=list, exclude=True)  # stored beside the record


class Snapshots:
    """Versioned snapshots under `{prefix}/{id}/` with their records in one partition of a table."""

    def __init__(
        self, blobs: BlobStore, table: EntityTable, *, partition: str, prefix: str, retention: dt.timedelta
    ) -> None:
        self.blobs = blobs
        self.table = table
        self.partition = partition
        self.prefix = prefix
        self.retention = retention

    def find(self, record_id: str) -> SnapshotRecord | None:
        entity = self.table.find(self.partition, record_id)
        return None if entity is None else _record(entity)

    def get(self, record_id: str) -> SnapshotRecord:
        found = self.find(record_id)
        if found is None:
            raise NotFound(f"no {self.partition} {record_id!r} in Campaign")
        return found

    def list(self) -> list[SnapshotRecord]:
        rows = self.table.all("PartitionKey eq @pk", parameters={"pk": self.partition})
        return sorted((_record(e) for e in rows), key=lambda r: r.name)

    def local(self, record: SnapshotRecord) -> Path | None:
        """The record's snapshot as a local file (downloaded once per worker), or None if it has none."""
        return self._local(record.snapshot) if record.snapshot else None

    def local_deltas(self, record: SnapshotRecord) -> list[Path]:
        """The record's delta files, oldest first, as local files."""
        return [self._local(name) for name in record.deltas]

    def _local(self, name: str) -> Path:
        path = _CACHE / self.blobs.name / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # workers may fetch it at once
            self.blobs.download(name, partial)
            partial.replace(path)
        return path

    @staticmethod
    def forget_local() -> None:
        """Drop every snapshot this machine has kept: the next reads download again (a cold worker)."""
        shutil.rmtree(_CACHE, ignore_errors=True)

    def publish(
        self,
        record: SnapshotRecord,
        file: Path,
        *,
        previous: SnapshotRecord | None,
        now: dt.datetime,
        delta_rows: int | None = None,
    ) -> SnapshotRecord:
        """Store `file` as the next version of `record`: a new base, or with `delta_rows` a delta of that many
        rows over `previous`. `Conflict` when someone published since `previous` was read: nothing changes
        then, and the caller reads again and retries."""
        version = (previous.version if previous else 0) + 1
        # A name of its own: two writers racing for one version number never overwrite each other's blob,
        # and a worker's cache can never hold another table's file under this name.
        kind = "-delta" if delta_rows is not None else ""
        name = f"{self.prefix}/{record.id}/v{version:08d}-{uuid.uuid4().hex[:12]}{kind}.parquet"
        self.blobs.put_file(name, file, metadata={CREATED: now.isoformat()})
        if delta_rows is None:
            files = {"snapshot": name, "deltas": [], "delta_rows": 0}
        else:
            assert previous is not None and previous.snapshot, "a delta needs a base"
            files = {
                "snapshot": previous.snapshot,
                "deltas": [*previous.deltas, name],
                "delta_rows": previous.delta_rows + delta_rows,
            }
        try:
            stored = self._swap(record, previous, count=record.count, now=now, **files)
        except Conflict:
            self.blobs.delete(name)  # never published: nobody can hold it
            raise
        cached = _CACHE / self.blobs.name / name
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, cached)
        return stored

    def restore(self, record_id: str, version: int, *, now: dt.datetime) -> SnapshotRecord:
        """Make a kept version current again, as a new version (history only grows). `Conflict` when
        someone published meanwhile."""
        current = self.get(record_id)
        kept = {v.version: v for v in current.versions}
        if version not in kept:
            raise NotFound(
                f"{self.partition} {record_id!r} keeps no version {version}; it keeps {sorted(kept)}"
                f" (versions are kept {self.retention.total_seconds() / 3600:g} hours)"
            )
        old = kept[version]
        files = {"snapshot": old.snapshot, "deltas": old.deltas, "delta_rows": old.delta_rows}
        return self._swap(current, current, count=old.count, now=now, restored_from=version, **files)

    def _swap(
        self,
        record: SnapshotRecord,
        previous: SnapshotRecord | None,
        *,
        snapshot: str,
        deltas: list[str],
        delta_rows: int,
        count: int,
        now: dt.datetime,
        restored_from: int | None = None,
    ) -> SnapshotRecord:
        version = (previous.version if previous else 0) + 1
        files = {"snapshot": snapshot, "deltas": deltas, "delta_rows": delta_rows}
        entry = SnapshotVersion(version=version, count=count, created=now, restored_from=restored_from, **files)
        kept = [v for v in (previous.versions if previous else []) if v.created >= now - self.retention]
        record = record.model_copy(
            update={
                "version": version,
                **files,
                "count": count,
                "updated": now,
                "last_id": max(record.last_id, previous.last_id if previous else 0),
                "versions": [*kept, entry][-MAX_VERSIONS:],
            }
        )
        entity = _entity(self.partition, record)
        stored = (
            self.table.update(entity, etag=previous.etag) if previous and previous.etag else self.table.insert(entity)
        )
        return record.model_copy(update={"etag": stored["etag"]})

    def expire(self, *, now: dt.datetime) -> list[str]:
        """The retention timer's work: forget versions older than the retention period (never the current
        one), then delete the blobs that no record keeps and that are that old. Returns their names."""
        oldest = now - self.retention
        kept: set[str] = set()
        for record in self.list():
            versions = [v for v in record.versions if v.created >= oldest or v.snapshot == record.snapshot]
            if len(versions) < len(record.versions):
                try:
                    entity = _entity(self.partition, record.model_copy(update={"versions": versions}))
                    self.table.update(entity, etag=record.etag)
                except Conflict:  # a writer published meanwhile; the next run forgets them
                    versions = record.versions
            kept.update(name for v in versions for name in (v.snapshot, *v.deltas))
            kept.update((record.snapshot, *record.deltas))
        deleted = []
        for blob in self.blobs.listing(self.prefix + "/", metadata=True):
            created = (blob.metadata or {}).get(CREATED)
            if blob.name in kept or created is None or dt.datetime.fromisoformat(created) >= oldest:
                continue  # a version kept, or one a writer may be about to publish
            self.blobs.delete(blob.name)
            deleted.append(blob.name)
        return deleted


def _record(entity: dict) -> SnapshotRecord:
    record = SnapshotRecord.model_validate_json(entity["definition"])
    versions = [SnapshotVersion.model_validate(v) for v in json.loads(entity.get("versions") or "[]")]
    return record.model_copy(update={"etag": entity["etag"], "versions": versions})


def _entity(partition: str, record: SnapshotRecord) -> dict:
    versions = "[" + ",".join(v.model_dump_json(by_alias=True) for v in record.versions) + "]"
    return {
        "PartitionKey": partition,
        "RowKey": record.id,
        "definition": record.model_dump_json(),
        "versions": versions,
    }
