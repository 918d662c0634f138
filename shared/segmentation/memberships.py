"""Segment memberships: per segment and job, a Parquet snapshot of who is `realized` (entered in this job),
`existing` (still in) or `exited` (left; kept for a retention period), with `lastQualificationTime`.
A snapshot has a part per profile store shard, written by that shard's task: the fan-in only publishes. A
shard task writes one file for all its segments (a `segment` column, a row group per segment), so a job
writes and its readers fetch a file per shard, not one per shard and segment (400 requests at 50 segments
and 8 shards, each costing its ~10 ms however small). A pointer per segment names the current snapshot.
The pointers are one document, replaced in one ETag-guarded write, so a job publishes any number of
segments at once: a reader sees every segment of a job or none, and a failed job leaves the previous ones
current."""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from shared.engine import beside, scalar
from shared.errors import Conflict
from shared.models import ApiModel
from shared.settings import Settings
from shared.sql import parquet, quote_ident, quote_literal
from shared.storage import BlobStore, EntityTable, StorageAccount
from shared.storage.cache import FileCache, worker_cache

CURRENT = "current"  # the table partition where pointers lived before the pointer document (still read)
POINTERS = "_current/pointers.json"  # the pointer document in the segments container
SHARD_FILES = "_shards"  # the folder of what shard tasks write (memberships, results) in the segments container
PROFILES = "_profiles"  # the pointer to the profile store version a job evaluated (no segment id starts with "_")
WATERMARK = ("streaming", "watermark")
STATUS_COUNTS = ("realized", "existing", "exited", "exitedEarlier")  # a snapshot's counts, as job metrics name them
COLUMNS = "profileId, status, lastQualificationTime, exitedAt"  # a snapshot's rows
_EMPTY = (
    "SELECT NULL::VARCHAR AS profileId, NULL::VARCHAR AS status, NULL::TIMESTAMPTZ AS lastQualificationTime, "
    "NULL::TIMESTAMPTZ AS exitedAt WHERE false"
)


class StatusCounts(ApiModel):
    """A snapshot's rows (or a part's) by status: realized (entered in this job), existing, exited in this job,
    exited earlier."""

    realized: int = 0
    existing: int = 0
    exited: int = 0
    exited_earlier: int = 0

    def counts(self) -> dict[str, int]:
        """As job metrics name them (`STATUS_COUNTS`)."""
        return self.model_dump(include=set(StatusCounts.model_fields))


class MemberFile(NamedTuple):
    """A blob of a snapshot: its path, its ETag as published, and (in a shard file, which holds every segment
    of its job) the segment whose rows are the snapshot's; None: every row of the file is."""

    path: str
    etag: str | None
    segment: str | None = None


class SnapshotPart(StatusCounts):
    """One shard's part of a segment's snapshot, and its counts by status."""

    shard: int
    path: str = Field(description="The blob in the segments container.")
    etag: str | None = None
    segment: str | None = Field(
        None,
        description="Set when the blob is a shard file of every segment of its job (a `segment` column): the "
        "segment whose rows are this part. None: the blob holds this segment's rows only (written before).",
    )

    def carried(self) -> SnapshotPart:
        """This part in a later job that did not evaluate its shard (a streaming tick): its members are existing
        ones and its exits earlier ones."""
        return self.model_copy(
            update={
                "realized": 0,
                "existing": self.realized + self.existing,
                "exited": 0,
                "exited_earlier": self.exited + self.exited_earlier,
            }
        )


class SnapshotFiles(ApiModel):
    """Where a snapshot is: its parts, one per shard, or (as written before snapshots were sharded) one file."""

    snapshot: str = Field(
        description="The folder of the job's files in the segments container (before parts: the snapshot's file)."
    )
    etag: str | None = Field(None, description="The single file's ETag (snapshots without parts).")
    parts: list[SnapshotPart] | None = Field(None, description="One file per profile store shard.")
    shards: int | None = Field(None, description="How many shards the store had when the parts were written.")

    def files(self, shards: list[int] | None = None) -> list[MemberFile]:
        """The snapshot's blobs; with `shards`, only the parts of those shard numbers (a snapshot of one file
        has no parts: that file). Only meaningful when `split_by` today's shards: parts split by another count
        are other people."""
        if self.parts is None:
            return [MemberFile(self.snapshot, self.etag)]
        return [MemberFile(p.path, p.etag, p.segment) for p in self.parts if shards is None or p.shard in shards]

    def split_by(self, shards: int) -> bool:
        """Whether the parts are the store's shards as they are now (else a shard must filter every file)."""
        return self.parts is not None and self.shards == shards


class MembershipPointer(SnapshotFiles, StatusCounts):
    """Which snapshot is a segment's current membership (or, for `_profiles`, the profile store version a job
    evaluated): written by segment jobs, read by exports, preview and the streaming job."""

    segment_id: str
    job_id: str
    evaluated_at: dt.datetime
    size: int = 0
    store_version: str | None = Field(None, description="The profile store version the job read.")

    @classmethod
    def of_parts(
        cls, segment_id: str, job_id: str, parts: list[SnapshotPart], *, shards: int, evaluated_at: dt.datetime
    ) -> MembershipPointer:
        counts = {k: sum(getattr(p, k) for p in parts) for k in StatusCounts.model_fields}
        return cls(
            segment_id=segment_id,
            job_id=job_id,
            snapshot=f"{SHARD_FILES}/job={job_id}/",
            parts=sorted(parts, key=lambda p: p.shard),
            shards=shards,
            evaluated_at=evaluated_at,
            size=counts["realized"] + counts["existing"],
            **counts,
        )


class MembershipStore:
    def __init__(self, blobs: BlobStore, pointers: EntityTable, cache: FileCache) -> None:
        self.blobs = blobs
        self.pointers = pointers
        self.cache = cache  # snapshots this worker wrote or read, by name and ETag (WORKER_CACHE_MB)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> MembershipStore:
        return cls(
            BlobStore(account.container(settings.segments_container)),
            EntityTable(account.table(settings.table_name("memberships"))),
            worker_cache(settings),
        )

    @staticmethod
    def shard_path(job_id: str, attempt: int, shard: int) -> str:
        """The blob of one shard's memberships of every segment of a job attempt."""
        return f"{SHARD_FILES}/job={job_id}/attempt={attempt}/shard={shard:04d}.parquet"

    def current_pointers(self) -> dict[str, MembershipPointer]:
        """Every current pointer, by segment id (and `_profiles`)."""
        found = self.blobs.get_versioned(POINTERS)
        return _pointers(found[0]) if found else self._table_pointers()

    def current(self, segment_id: str) -> MembershipPointer | None:
        return self.current_pointers().get(segment_id)

    def _table_pointers(self) -> dict[str, MembershipPointer]:
        """Pointers as stores kept them before the pointer document, until the first job publishes one."""
        entities = self.pointers.all("PartitionKey eq @pk", parameters={"pk": CURRENT})
        return {e["RowKey"]: MembershipPointer.model_validate(e) for e in entities}

    def current_profiles(self) -> MembershipPointer | None:
        """The profile store version of the job that published last: what activation exports attributes from."""
        return self.current(PROFILES)

    def download(self, snapshots: dict[str, list[MemberFile]], into: Path) -> dict[str, LocalSnapshot]:
        """Fetch published snapshots in parallel: {local name: its files} -> {local name: the snapshot on local
        disk}. A file that several snapshots share (a job's shard file) is fetched once, and each file comes
        from this worker's cache when it holds that version. `into` is a scratch folder for the files."""
        distinct = sorted({(f.path, f.etag) for files in snapshots.values() for f in files}, key=str)
        local = {blob: into / f"{n:05d}.parquet" for n, blob in enumerate(distinct)}
        into.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: self._fetch(*item[0], item[1]), local.items()))
        return {
            name: LocalSnapshot([(local[f.path, f.etag], f.segment) for f in files])
            for name, files in snapshots.items()
        }

    def _fetch(self, path: str, etag: str | None, local: Path) -> Path:
        """A published snapshot file at `local`: this worker's copy of that version, or downloaded (and kept)."""
        return self.cache.fetch(self._key(path, etag), local, lambda target: self.blobs.download(path, target))

    def upload(self, path: str, file: Path) -> str:
        """Upload a snapshot file (and keep it in the worker's cache, by its ETag); returns its ETag."""
        etag = self.blobs.put_file(path, file)
        self.cache.keep(self._key(path, etag), file)
        return etag

    def _key(self, path: str, etag: str | None) -> str | None:
        """A snapshot's name in the cache: the same job may write its blob again (a retried attempt), so the
        ETag is part of it. None without an ETag (a pointer published before they were recorded)."""
        if not etag:
            return None
        version = etag.strip('"')
        return f"{self.blobs.name}/{path}@{version}"

    def watermark(self) -> dt.datetime | None:
        """Until when the streaming job has seen ingested data."""
        entity = self.pointers.find(*WATERMARK)
        return entity["ingestedUntil"] if entity else None

    def advance_watermark(self, until: dt.datetime) -> None:
        self.pointers.upsert({"PartitionKey": WATERMARK[0], "RowKey": WATERMARK[1], "ingestedUntil": until})

    def publish(self, pointers: list[MembershipPointer]) -> None:
        """Make the job's snapshots current, all at once however many: one write of the pointer document,
        only if nobody replaced it since it was read (a concurrent job's pointers are merged in, not lost)."""
        for _ in range(_ATTEMPTS):
            found = self.blobs.get_versioned(POINTERS)
            current = _pointers(found[0]) if found else self._table_pointers()
            current.update({p.segment_id: p for p in pointers})
            document = (
                "{" + ",".join(f"{json.dumps(k)}:{p.model_dump_json(by_alias=True)}" for k, p in current.items()) + "}"
            )
            try:
                self.blobs.replace(POINTERS, document.encode(), etag=found[1] if found else None)
                return
            except Conflict:
                continue
        raise Conflict("segment memberships kept being published by other jobs; the job can be run again")


@dataclass(frozen=True)
class LocalSnapshot:
    """A snapshot on local disk: its files, each with the segment whose rows are the snapshot's (a shard file)
    or None (all of them are)."""

    files: list[tuple[Path, str | None]]

    @property
    def source(self) -> str:
        """The snapshot's rows (`COLUMNS`) as a FROM source."""
        return f"(SELECT {COLUMNS} FROM ({snapshot_rows({'': self})}))"


def snapshot_rows(snapshots: dict[str, LocalSnapshot]) -> str:
    """Several segments' snapshots as one statement of `segment` and `COLUMNS`: each file read once, for the
    segments whose snapshots it is part of (a shard file may also hold a segment's older rows), and the files
    read alike read together."""
    own: dict[str, list[Path]] = {}  # a segment's own files (written before shard files)
    shared: dict[Path, list[str]] = {}  # a shard file: the segments it is part of
    for sid, snapshot in snapshots.items():
        for path, segment in snapshot.files:
            if segment is None:
                own.setdefault(sid, []).append(path)
            else:
                shared.setdefault(path, []).append(segment)
    alike: dict[tuple[str, ...], list[Path]] = {}
    for path, sids in shared.items():
        alike.setdefault(tuple(sids), []).append(path)
    reads = [f"SELECT {quote_literal(sid)} AS segment, {COLUMNS} FROM {_files(paths)}" for sid, paths in own.items()]
    reads += [
        f"SELECT segment, {COLUMNS} FROM {_files(paths)} WHERE segment IN ({', '.join(map(quote_literal, sids))})"
        for sids, paths in alike.items()
    ]
    return " UNION ALL ".join(reads) or f"SELECT NULL::VARCHAR AS segment, * FROM ({_EMPTY})"


def _files(paths: list[Path]) -> str:
    return f"read_parquet([{', '.join(quote_literal(str(p)) for p in paths)}])"


def segments_with(con: duckdb.DuckDBPyConnection, snapshots: dict[str, LocalSnapshot], people: str) -> set[str]:
    """The segments whose snapshot has a row of one of `people` (a query of profile ids)."""
    query = f"SELECT DISTINCT segment FROM ({snapshot_rows(snapshots)}) WHERE profileId IN ({people})"
    return {sid for (sid,) in con.execute(query).fetchall()}


def _pointers(document: bytes) -> dict[str, MembershipPointer]:
    return {sid: MembershipPointer.model_validate(p) for sid, p in json.loads(document).items()}


_ATTEMPTS = 8


def membership_sql(
    *,
    results: str,
    segments: list[str],
    previous: dict[str, LocalSnapshot],
    now: dt.datetime,
    retention: dt.timedelta,
    scope_sql: str | None = None,
    previous_where: str | None = None,
) -> str:
    """The new memberships of `segments` in one statement, in segment order: who qualifies now (true in the
    segment's column of the table `results`, which has a `profileId`) compared with each segment's previous
    snapshot, if it has one (its rows that match `previous_where`, if given). With `scope_sql` (the people
    evaluated), everyone else keeps their previous row unchanged. When none of `segments` has a previous
    snapshot, everyone who qualifies enters, without a comparison."""
    cur = " UNION ALL ".join(
        f"SELECT {quote_literal(sid)} AS segment, profileId FROM {results} WHERE {quote_ident(sid)}" for sid in segments
    )
    at = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    order = " ORDER BY segment" if len(segments) > 1 else ""
    if not any(sid in previous for sid in segments):
        # A segment's first job: without the join with an empty snapshot, a shard's statements take about half the
        # time (0.13 s against 0.23 s, 140k people).
        return f"""
            SELECT segment, profileId, 'realized' AS status, {at} AS lastQualificationTime,
                   NULL::TIMESTAMPTZ AS exitedAt
            FROM ({cur}){order}"""
    prev = snapshot_rows({sid: previous[sid] for sid in segments if sid in previous})
    if previous_where:
        prev = f"SELECT * FROM ({prev}) WHERE {previous_where}"
    oldest = f"{quote_literal((now - retention).isoformat())}::TIMESTAMPTZ"
    in_scope = f"profileId IN ({scope_sql})" if scope_sql else "true"
    return f"""
        WITH cur AS ({cur}),
             prev_all AS ({prev}),
             prev AS (SELECT * FROM prev_all WHERE {in_scope}),
             kept AS (SELECT * FROM prev_all WHERE NOT ({in_scope}))
        SELECT * FROM (
            SELECT segment, profileId,
                   CASE WHEN c.profileId IS NOT NULL AND p.status IN ('realized', 'existing') THEN 'existing'
                        WHEN c.profileId IS NOT NULL THEN 'realized'
                        ELSE 'exited' END AS status,
                   CASE WHEN c.profileId IS NOT NULL THEN {at} ELSE p.lastQualificationTime END
                       AS lastQualificationTime,
                   CASE WHEN c.profileId IS NOT NULL THEN NULL
                        WHEN p.status = 'exited' THEN p.exitedAt ELSE {at} END AS exitedAt
            FROM cur c FULL OUTER JOIN prev p USING (segment, profileId)
            WHERE c.profileId IS NOT NULL OR p.status IN ('realized', 'existing') OR p.exitedAt > {oldest}
            UNION ALL
            SELECT segment, profileId, status, lastQualificationTime, exitedAt FROM kept
            WHERE status <> 'exited' OR exitedAt > {oldest}){order}"""


# A shard's segments are computed in statements of one or more segments (`_CELLS`), two at a time, each in a
# connection of its own to `con`'s database, and pyarrow writes each segment's rows as a row group of its own,
# which a reader's filter on `segment` finds from the row groups' statistics. Over a large shard, a statement
# per segment: a segment's join of a few hundred thousand rows is one of DuckDB's morsels, so one statement
# keeps one core busy, and one COPY of the union of every segment took 0.70 s a shard at 1M people (cold; 1.12 s
# warm) against 0.53 s for a statement per segment. Over a small shard, a statement's fixed cost (a few ms)
# is most of its time. 50 segments with previous memberships (synthetic shards, best of three), by the
# segments per statement: 5,000 people 0.19 s (1), 0.09 (5), 0.07 (50); 20,000 people 0.22, 0.15, 0.14;
# 50,000 people 0.29, 0.23, 0.27; 100,000 people 0.41, 0.44, 0.50.
_AT_ONCE = 2
_CELLS = 150_000  # people × segments one statement covers, at least one segment
_SCHEMA = pa.schema(
    [
        ("segment", pa.string()),
        ("profileId", pa.string()),
        ("status", pa.string()),
        ("lastQualificationTime", pa.timestamp("us", tz="UTC")),
        ("exitedAt", pa.timestamp("us", tz="UTC")),
    ]
)
# Person keys are random hex, so zstd's fastest level compresses them as well as its default (232 MB against
# 246 MB for a job's 17M memberships at 1M people) and Parquet 2's pages write and read faster (4.0 s instead of
# 6.2 s, written by DuckDB). Every key is distinct, so a dictionary pays only for `segment` and `status`; a
# segment's keys come mostly in the store's order, so DELTA_BYTE_ARRAY (each key as its difference from the one
# before) stores them smaller and faster than plain strings (a shard of 140k people: 19.8 against 21.2 MB, 0.22
# against 0.24 s).
_WRITER = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": ["segment", "status"],
    "column_encoding": {"profileId": "DELTA_BYTE_ARRAY"},
    "data_page_version": "2.0",
}


def write_shard(
    con: duckdb.DuckDBPyConnection,
    segments: list[str],
    *,
    results: str,
    previous: dict[str, LocalSnapshot],
    target: Path,
    now: dt.datetime,
    retention: dt.timedelta,
    scope_sql: str | None = None,
    previous_where: str | None = None,
    cells: int = _CELLS,
) -> dict[str, dict[str, int]]:
    """Write a shard's new memberships of `segments` (`membership_sql`) to one Parquet file, a row group per
    segment, and count them by status: {segment: counts}, for the segments with rows in the shard (the file is
    not written when none has). A statement covers `cells` people × segments, at least one segment."""
    size = max(1, cells // max(scalar(con, f"SELECT count(*) FROM {results}"), 1))
    statements = [
        membership_sql(
            results=results,
            segments=segments[i : i + size],
            previous=previous,
            now=now,
            retention=retention,
            scope_sql=scope_sql,
            previous_where=previous_where,
        )
        for i in range(0, len(segments), size)
    ]

    def rows(sql: str) -> pa.Table:
        other = beside(con)
        try:
            return other.sql(sql).to_arrow_table().cast(_SCHEMA)
        finally:
            other.close()

    target.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    with ThreadPoolExecutor(max_workers=_AT_ONCE, thread_name_prefix="memberships") as pool:
        for table in pool.map(rows, statements):
            for group in _by_segment(table):
                writer = writer or pq.ParquetWriter(target, _SCHEMA, **_WRITER)
                writer.write_table(group, row_group_size=group.num_rows)
    if writer is None:
        return {}
    writer.close()
    # pyarrow's allocator (mimalloc) keeps what it freed; give it back before the shard's next work (a synthetic
    # shard's loop: 280-300 MB resident without this, 240-256 MB with it).
    pa.default_memory_pool().release_unused()
    at = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    entered = f"status = 'realized' AND lastQualificationTime = {at}"
    found = con.execute(
        f"""SELECT segment, count(*) FILTER (WHERE {entered}),
                   count(*) FILTER (WHERE status <> 'exited' AND NOT ({entered})),
                   count(*) FILTER (WHERE status = 'exited' AND exitedAt = {at}),
                   count(*) FILTER (WHERE status = 'exited' AND exitedAt < {at})
            FROM {parquet(target)} GROUP BY segment"""
    ).fetchall()
    return {segment: dict(zip(STATUS_COUNTS, counts, strict=True)) for segment, *counts in found}


def _by_segment(table: pa.Table) -> list[pa.Table]:
    """A statement's rows (in segment order) as one slice per segment."""
    if not table.num_rows:
        return []
    segment = table.column("segment")
    if segment[0] == segment[-1]:  # one segment (a large shard's statements): nothing to find
        return [table]
    runs = pc.run_end_encode(segment.combine_chunks())
    ends = runs.run_ends.to_pylist()
    return [table.slice(start, end - start) for start, end in zip([0, *ends[:-1]], ends, strict=True)]
