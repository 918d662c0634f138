"""Segment memberships: per segment and job, a Parquet snapshot of who is `realized` (entered in this job),
`existing` (still in) or `exited` (left; kept for a retention period), with `lastQualificationTime`.
A snapshot is one file per profile store shard (its `parts`), written by that shard's task: the fan-in only
publishes. A pointer per segment names the current snapshot. The pointers are one document, replaced in one
ETag-guarded write, so a job publishes any number of segments at once: a reader sees every segment of a
job or none, and a failed job leaves the previous ones current."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
from pydantic import Field

from shared.engine import beside
from shared.errors import Conflict
from shared.models import ApiModel
from shared.settings import Settings
from shared.sql import parquet, quote_literal
from shared.storage import BlobStore, EntityTable, StorageAccount
from shared.storage.cache import FileCache, worker_cache

CURRENT = "current"  # the table partition where pointers lived before the pointer document (still read)
POINTERS = "_current/pointers.json"  # the pointer document in the segments container
PROFILES = "_profiles"  # the pointer to the profile store version a job evaluated (no segment id starts with "_")
WATERMARK = ("streaming", "watermark")
STATUS_COUNTS = ("realized", "existing", "exited", "exitedEarlier")  # a snapshot's counts, as job metrics name them
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


class SnapshotPart(StatusCounts):
    """One shard's file of a segment's snapshot, and its counts by status."""

    shard: int
    path: str = Field(description="The blob in the segments container.")
    etag: str | None = None

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

    snapshot: str = Field(description="The snapshot's folder in the segments container (before parts: its file).")
    etag: str | None = Field(None, description="The single file's ETag (snapshots without parts).")
    parts: list[SnapshotPart] | None = Field(None, description="One file per profile store shard.")
    shards: int | None = Field(None, description="How many shards the store had when the parts were written.")

    def files(self, shards: list[int] | None = None) -> list[tuple[str, str | None]]:
        """The snapshot's blobs and their ETags; with `shards`, only those shards' parts (all files when the
        snapshot is not split that way)."""
        if self.parts is None:
            return [(self.snapshot, self.etag)]
        return [(p.path, p.etag) for p in self.parts if shards is None or p.shard in shards]

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
            snapshot=f"{segment_id}/job={job_id}/",
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
    def snapshot_path(segment_id: str, job_id: str, attempt: int, shard: int) -> str:
        return f"{segment_id}/job={job_id}/attempt={attempt}/shard={shard:04d}.parquet"

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

    def download(self, snapshots: dict[str, list[tuple[str, str | None]]], into: Path) -> dict[str, Path]:
        """Fetch published snapshots in parallel: {local name: its files (blob path, ETag as published)} ->
        {local name: a local folder of its files, which `parquet()` reads as one}; each file from this worker's
        cache when it holds that version. `into` must be a folder of their own: a local name is a folder in it,
        whatever it is called, and any other Parquet file there would be read as members."""
        wanted = [
            (blob, etag, into / name / f"{n:05d}.parquet")
            for name, files in snapshots.items()
            for n, (blob, etag) in enumerate(files)
        ]
        for name, files in snapshots.items():
            (into / name).mkdir(parents=True, exist_ok=True)
            if not files:  # a snapshot without rows has no parts
                empty = quote_literal(str(into / name / "empty.parquet"))
                with duckdb.connect() as con:
                    con.execute(f"COPY ({_EMPTY}) TO {empty} (FORMAT parquet)")
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda w: self._fetch(*w), wanted))
        return {name: into / name for name in snapshots}

    def download_all_current(
        self, segment_ids: list[str], into: Path, *, shards: list[int] | None = None
    ) -> dict[str, Path | None]:
        """Each segment's current snapshot in a local folder (None: it has none yet); with `shards`, only
        those shards' parts when the snapshot is split by shard."""
        current = self.current_pointers()
        found = {sid: current[sid].files(shards) for sid in segment_ids if sid in current}
        local = self.download(found, into)
        return {sid: local.get(sid) for sid in segment_ids}

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


def _pointers(document: bytes) -> dict[str, MembershipPointer]:
    return {sid: MembershipPointer.model_validate(p) for sid, p in json.loads(document).items()}


_ATTEMPTS = 8


def membership_sql(
    *,
    segment_id: str,
    qualified_sql: str,
    previous: Path | None,
    now: dt.datetime,
    retention: dt.timedelta,
    scope_sql: str | None = None,
    previous_where: str | None = None,
) -> str:
    """The segment's new memberships: who qualifies now compared with the previous snapshot (its rows that
    match `previous_where`, if given). With `scope_sql` (the people evaluated), everyone else keeps their
    previous row unchanged."""
    prev = f"SELECT * FROM {parquet(previous)}" if previous else _EMPTY
    if previous and previous_where:
        prev += f" WHERE {previous_where}"
    at = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    oldest = f"{quote_literal((now - retention).isoformat())}::TIMESTAMPTZ"
    in_scope = f"profileId IN ({scope_sql})" if scope_sql else "true"
    return f"""
        WITH cur AS ({qualified_sql}), prev_all AS ({prev}),
             prev AS (SELECT * FROM prev_all WHERE {in_scope}),
             kept AS (SELECT * FROM prev_all WHERE NOT ({in_scope}))
        SELECT {quote_literal(segment_id)} AS segment, profileId,
               CASE WHEN c.profileId IS NOT NULL AND p.status IN ('realized', 'existing') THEN 'existing'
                    WHEN c.profileId IS NOT NULL THEN 'realized'
                    ELSE 'exited' END AS status,
               CASE WHEN c.profileId IS NOT NULL THEN {at} ELSE p.lastQualificationTime END AS lastQualificationTime,
               CASE WHEN c.profileId IS NOT NULL THEN NULL
                    WHEN p.status = 'exited' THEN p.exitedAt ELSE {at} END AS exitedAt
        FROM cur c FULL OUTER JOIN prev p USING (profileId)
        WHERE c.profileId IS NOT NULL OR p.status IN ('realized', 'existing') OR p.exitedAt > {oldest}
        UNION ALL
        SELECT {quote_literal(segment_id)}, profileId, status, lastQualificationTime, exitedAt FROM kept
        WHERE status <> 'exited' OR exitedAt > {oldest}"""


# Person keys are random hex, so zstd's fastest level compresses them as well as its default (232 MB against
# 246 MB for a job's 17M memberships at 1M people) and Parquet 2's encodings write and read faster: writing
# them took 4.0 s instead of 6.2 s. Every reader is DuckDB or pyarrow, which read both.
#
# Every key in a snapshot is distinct, so the writer's try at a dictionary for each row group is wasted: with a
# dictionary of one entry, 50 snapshots of 350k rows took 1.44-1.52 s to write instead of 1.51-1.80 s (five
# alternating rounds), the same 215 MB.
SNAPSHOT_FORMAT = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARQUET_VERSION V2, DICTIONARY_SIZE_LIMIT 1"


# Two segments are written at once, each in its own connection: a segment's statement is a join and a Parquet
# write of a few hundred thousand rows, which leaves a core idle much of the time. At 1M people (17M rows, with
# the previous memberships) the 50 segments took 2.3 s instead of 3.0 s from local files, and a job's
# memberships 4.14 s instead of 4.56 s (four alternating pairs, uploads to Azurite alongside).
_AT_ONCE = 2


def write_snapshots(
    con: duckdb.DuckDBPyConnection,
    parts: dict[str, Callable[[], str]],
    *,
    out: Path,
    now: dt.datetime,
    written: Callable[[str, Path], None] = lambda sid, path: None,
) -> tuple[dict[str, Path | None], dict[str, dict[str, int]]]:
    """Write every segment's memberships (a Parquet file per segment, straight from its statement, which `parts`
    gives when it is the segment's turn; None when it has no rows) and count them by status; `written` hears of
    each file as soon as it is there (to upload it while the next is written). One statement per segment, two
    at a time (`_AT_ONCE`), each in a connection of its own to `con`'s database, so the statements read its
    tables, not temp tables: a single statement over all segments would hold every segment's join at once, and
    writing one table partitioned by segment took 3-4 times as long as the joins themselves."""
    out.mkdir(parents=True, exist_ok=True)
    at = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    entered = f"status = 'realized' AND lastQualificationTime = {at}"

    def one(n: int, sid: str, sql: Callable[[], str]) -> Path | None:
        target = out / f"{n:05d}.parquet"
        other = beside(con)
        try:
            [(rows,)] = other.execute(
                f"""COPY (SELECT profileId, status, lastQualificationTime, exitedAt FROM ({sql()}))
                    TO {quote_literal(str(target))} ({SNAPSHOT_FORMAT})"""
            ).fetchall()
        finally:
            other.close()
        if not rows:
            return None
        written(sid, target)
        return target

    with ThreadPoolExecutor(max_workers=_AT_ONCE, thread_name_prefix="memberships") as pool:
        done = {sid: pool.submit(one, n, sid, sql) for n, (sid, sql) in enumerate(parts.items())}
        files = {sid: future.result() for sid, future in done.items()}
    # Counted in one statement over every file written, not one per segment.
    counts = {sid: dict.fromkeys(STATUS_COUNTS, 0) for sid in files}
    by_name = {str(path): sid for sid, path in files.items() if path is not None}
    if by_name:
        names = ", ".join(quote_literal(name) for name in by_name)
        for name, *found in con.execute(
            f"""SELECT filename, count(*) FILTER (WHERE {entered}),
                       count(*) FILTER (WHERE status <> 'exited' AND NOT ({entered})),
                       count(*) FILTER (WHERE status = 'exited' AND exitedAt = {at}),
                       count(*) FILTER (WHERE status = 'exited' AND exitedAt < {at})
                FROM read_parquet([{names}], filename = true) GROUP BY filename"""
        ).fetchall():
            counts[by_name[name]] = dict(zip(STATUS_COUNTS, found, strict=True))
    return files, counts
