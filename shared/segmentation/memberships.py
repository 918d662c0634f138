"""Segment memberships: per segment and job, a Parquet snapshot of who is `realized` (entered in this job),
`existing` (still in) or `exited` (left; kept for a retention period), with `lastQualificationTime`.
A pointer per segment names the current snapshot. The pointers are one document, replaced in one
ETag-guarded write, so a job publishes any number of segments at once: a reader sees every segment of a
job or none, and a failed job leaves the previous ones current."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
_EMPTY = (
    "SELECT NULL::VARCHAR AS profileId, NULL::VARCHAR AS status, NULL::TIMESTAMPTZ AS lastQualificationTime, "
    "NULL::TIMESTAMPTZ AS exitedAt WHERE false"
)


class MembershipPointer(ApiModel):
    """Which snapshot is a segment's current membership (or, for `_profiles`, the profile store version a job
    evaluated): written by segment jobs, read by exports, preview and the streaming job."""

    segment_id: str
    job_id: str
    snapshot: str = Field(description="The blob in the segments container.")
    evaluated_at: dt.datetime
    size: int = 0
    realized: int = 0
    existing: int = 0
    exited: int = 0
    exited_earlier: int = 0
    store_version: str | None = Field(None, description="The profile store version the job read.")
    etag: str | None = Field(
        None, description="The snapshot's ETag as published: a worker's cached copy is used only if it is this one."
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
    def snapshot_path(segment_id: str, job_id: str) -> str:
        return f"{segment_id}/job={job_id}/memberships.parquet"

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

    def download(self, snapshots: dict[str, tuple[str, str | None]], into: Path) -> dict[str, Path]:
        """Fetch published snapshots in parallel: {local file name: (blob path, ETag as published)} -> {local file
        name: local path}; from this worker's cache when it holds that version."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            paths = pool.map(lambda name: self._fetch(*snapshots[name], into / f"{name}.parquet"), snapshots)
            return dict(zip(snapshots, paths, strict=True))

    def download_all_current(self, segment_ids: list[str], into: Path) -> dict[str, Path | None]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return {sid: f.result() for sid, f in self.fetch_current(segment_ids, into, pool).items()}

    def fetch_current(self, segment_ids: list[str], into: Path, pool: Executor) -> dict[str, Future[Path | None]]:
        """Start downloading each segment's current snapshot on `pool`: its local path when done (None: the
        segment has none yet), so a caller can use each as soon as it is there."""
        current = self.current_pointers()

        def one(sid: str) -> Path | None:
            pointer = current.get(sid)
            return self._fetch(pointer.snapshot, pointer.etag, into / f"{sid}-previous.parquet") if pointer else None

        return {sid: pool.submit(one, sid) for sid in segment_ids}

    def _fetch(self, path: str, etag: str | None, local: Path) -> Path:
        """A published snapshot at `local`: this worker's copy of that version, or downloaded (and kept)."""
        return self.cache.fetch(self._key(path, etag), local, lambda target: self.blobs.download(path, target))

    def upload(self, job_id: str, segment_id: str, file: Path) -> tuple[str, str]:
        """Upload a segment's snapshot of this job (and keep it in the worker's cache, by its ETag); returns its
        blob path and ETag."""
        path = self.snapshot_path(segment_id, job_id)
        etag = self.blobs.put_file(path, file)
        self.cache.keep(self._key(path, etag), file)
        return path, etag

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
) -> str:
    """The segment's new memberships: who qualifies now compared with the previous snapshot. With
    `scope_sql` (the people evaluated), everyone else keeps their previous row unchanged."""
    prev = f"SELECT * FROM {parquet(previous)}" if previous else _EMPTY
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
) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Write every segment's memberships (a Parquet file per segment, straight from its statement, which `parts`
    gives when it is the segment's turn) and count them by status; `written` hears of each file as soon as it is
    there (to upload it while the next is written). One statement per segment, two at a time (`_AT_ONCE`), each
    in a connection of its own to `con`'s database, so the statements read its tables, not temp tables: a single
    statement over all segments would hold every segment's join at once, and writing one table partitioned by
    segment took longer than the joins themselves."""
    out.mkdir(parents=True, exist_ok=True)
    at = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    entered = f"status = 'realized' AND lastQualificationTime = {at}"

    def one(n: int, sid: str, sql: Callable[[], str]) -> tuple[Path, dict[str, int]]:
        target = out / f"{n:05d}.parquet"
        other = beside(con)
        try:
            other.execute(
                f"""COPY (SELECT profileId, status, lastQualificationTime, exitedAt FROM ({sql()}))
                    TO {quote_literal(str(target))} ({SNAPSHOT_FORMAT})"""
            )
            written(sid, target)
            realized, existing, exited, earlier = other.execute(
                f"""SELECT count(*) FILTER (WHERE {entered}),
                           count(*) FILTER (WHERE status <> 'exited' AND NOT ({entered})),
                           count(*) FILTER (WHERE status = 'exited' AND exitedAt = {at}),
                           count(*) FILTER (WHERE status = 'exited' AND exitedAt < {at})
                    FROM {parquet(target)}"""
            ).fetchall()[0]
        finally:
            other.close()
        return target, {"realized": realized, "existing": existing, "exited": exited, "exitedEarlier": earlier}

    with ThreadPoolExecutor(max_workers=_AT_ONCE, thread_name_prefix="memberships") as pool:
        done = {sid: pool.submit(one, n, sid, sql) for n, (sid, sql) in enumerate(parts.items())}
        results = {sid: future.result() for sid, future in done.items()}
    return {sid: r[0] for sid, r in results.items()}, {sid: r[1] for sid, r in results.items()}
