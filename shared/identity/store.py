"""The profile store: identities stitched once, as batches arrive, into person-keyed shards that segment jobs,
preview, explain and exports read without touching the identity graph.

A store version is a manifest (`StoreVersion`) naming immutable Parquet files: the identity graph (a compacted
file and the updates of the batches since, each the whole rows of the people it touched), and per shard the
person-keyed fragments (profile records), events and merged profiles. A person's rows all live in
the shard of their key (`shard_of`). Applying a batch writes new files and then replaces the pointer document
(`current.json`) only if nobody replaced it since it was read (ETag), retrying on a new read otherwise: two
batches at once never lose a link, a failed batch leaves the store as it was, and a batch already applied
is a no-op. Earlier versions stay listed for PROFILE_VERSION_RETENTION_HOURS, so a job as of an earlier
`now` reads the store as it was then. A rebuild replays the lake's batches, in the order the store applied
them, through the same code, so it gives exactly the store incremental updates give."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
from pydantic import Field

from shared.engine import connect, scalar
from shared.errors import Conflict, NotFound, ValidationError
from shared.identity.graph import GRAPH_COLUMNS, GraphRows, Stitched, stitch
from shared.identity.policies import MergePolicy, MergePolicyStore
from shared.identity.profiles import (
    EMPTY_EVENTS,
    EVENTS,
    FRAGMENT_KEYS,
    PROFILES,
    UnifiedProfiles,
    complete_fragments,
    fragment_sql,
    identities_sql,
    merge_sql,
    profile_leaves,
)
from shared.ingestion.batch import AcceptedBatch
from shared.ingestion.datasets import DatasetStore
from shared.ingestion.lake import LakeStore
from shared.ingestion.schemas import SchemaClass
from shared.models import ApiModel, Metrics
from shared.settings import Settings
from shared.sql import parquet, quote_ident, quote_literal
from shared.storage import BlobStore, StorageAccount
from shared.storage.cache import ROOT, FileCache, worker_cache
from shared.timing import Laps

log = logging.getLogger(__name__)

POINTER = "current.json"
# A shard's delta files of one kind past this are compacted into one by the next batch, and so are the identity
# graph's updates past this (into a new `graph`).
MAX_DELTAS = 24
# The graph's updates hold at most this share of its identities (else the next batch compacts it): a reader of the
# graph reads each update beside the compacted file, and a large batch's update is a large part of the graph (the
# 1M bench's last batch of 400k events touches a quarter of the identities).
GRAPH_UPDATES_SHARE = 0.5
# A batch's rows go into the shards a statement per this many rows (by `_row`, the lake file's order), each writing a
# file a shard. One statement over a 7.4M-row batch of events held the join of every row with its person and the
# eight shards' buffers beyond the 600MB DUCKDB_MEMORY_LIMIT, and spilled: 28-33 s of the batch's update (9.9 s
# alone with 3GB of memory), against 15.1-17.5 s in statements of 1M rows (20.7-20.9 s of 2M), the same rows. A
# batch of up to 1M rows is one statement, as before.
ROWS_PER_WRITE = 1_000_000
_ATTEMPTS = 8


class ShardFiles(ApiModel):
    fragments: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)
    profiles: str | None = Field(None, description="Merged profiles, as of the shard's last compaction.")
    profile_updates: str | None = Field(
        None, description="Profiles merged since `profiles` was written: they replace its rows until compaction."
    )
    removed: str | None = Field(None, description="People merged away since the shard was last compacted.")

    def profile_files(self) -> list[str]:
        """The files its merged profiles are read from (`profiles_sql_of`)."""
        return [f for f in (self.profiles, self.profile_updates, self.removed) if f]

    def row_files(self) -> list[str]:
        """The files its person-keyed rows are read from (`rows_sql_of`): fragments, events, people removed."""
        return [*self.fragments, *self.events, *([self.removed] if self.removed else [])]

    def files(self) -> list[str]:
        """Every file of the shard."""
        return [*self.fragments, *self.events, *self.profile_files()]


class GraphUpdate(ApiModel):
    """A batch's change to the identity graph: the whole new rows of the people it touched, which replace the rows
    those people have in the graph and in earlier updates (a person merged away has none)."""

    rows: str = Field(description="The touched people's rows (ns, id, profileId, lastSeen).")
    people: str = Field(description="The people whose rows they replace: the batch's touched people.")
    identities: int = Field(0, description="How many rows `rows` holds.")


class AppliedBatch(ApiModel):
    batch_id: str
    dataset_id: str
    ingested_at: dt.datetime
    touched: str = Field(description="The people the batch touched (a Parquet file of profile ids).")
    counts: dict[str, float] = Field(
        default_factory=dict, description="What the batch changed, and its phases in seconds."
    )


class StoreVersion(ApiModel):
    """One immutable version of the store: every file it is made of, and what it holds."""

    id: str
    created: dt.datetime
    as_of: dt.datetime | None = Field(None, description="When the newest batch it holds was ingested.")
    policy: MergePolicy
    graph_limit: int
    graph: str | None = Field(None, description="The identity graph, as of its last compaction.")
    graph_updates: list[GraphUpdate] = Field(
        default_factory=list, description="The graph's changes since `graph` was written, oldest first."
    )
    shards: list[ShardFiles]
    leaves: dict[str, str] = Field(default_factory=dict, description="The union profile schema.")
    batches: list[AppliedBatch] = Field(default_factory=list, description="In the order they were applied.")
    people: int = 0
    identities: int = 0
    fragments: int = 0
    events: int = 0

    @classmethod
    def empty(cls, *, shards: int, policy: MergePolicy, graph_limit: int, now: dt.datetime) -> StoreVersion:
        return cls(
            id=_version_id(now),
            created=now,
            policy=policy,
            graph_limit=graph_limit,
            shards=[ShardFiles() for _ in range(shards)],
        )

    def check_policy(self, policy: MergePolicy) -> None:
        """Refuse a store merged by another policy than `policy` (the default now): it must be rebuilt."""
        if policy != self.policy and self.batches:
            raise ValidationError(
                f"the profile store was merged with merge policy {self.policy.id!r}, not {policy.id!r}: "
                "rebuild it (POST /api/profiles/rebuild or python -m shared.cli profiles rebuild)"
            )

    def applied(self, batch_id: str) -> bool:
        return any(b.batch_id == batch_id for b in self.batches)

    def summary(self) -> dict[str, Any]:
        """What the store holds (`GET /api/profiles`, and a rebuild's metrics), as a `StoreSummary`."""
        last = self.batches[-1] if self.batches else None
        return StoreSummary(
            version=self.id,
            as_of=self.as_of,
            people=self.people,
            identities=self.identities,
            fragments=self.fragments,
            events=self.events,
            shards=len(self.shards),
            batches=len(self.batches),
            merges=sum(b.counts.get("merges", 0) for b in self.batches),
            identities_dropped=sum(b.counts.get("identitiesDropped", 0) for b in self.batches),
            graph_updates=len(self.graph_updates),
            last_batch=last.model_dump(by_alias=True, exclude={"touched"}) if last else None,
            merge_policy=self.policy.id,
        ).model_dump(exclude={"duration_seconds"})


class StoreSummary(Metrics):
    """What the profile store holds: its version, people, identities, rows, shards and batches."""

    version: str = ""
    as_of: dt.datetime | None = None
    people: int = 0
    identities: int = 0
    fragments: int = 0
    events: int = 0
    shards: int = 0
    batches: int = 0
    merges: int = Field(0, description="People merged when a batch linked them.")
    identities_dropped: int = Field(0, description="Graph identities dropped over IDENTITY_GRAPH_LIMIT.")
    graph_updates: int = Field(
        0, description="Batches whose change to the identity graph is kept as an update since it was last compacted."
    )
    last_batch: dict[str, Any] | None = None
    merge_policy: str = ""
    duration_seconds: float | None = None  # when it is a rebuild's metrics


class VersionRef(ApiModel):
    id: str
    as_of: dt.datetime | None
    created: dt.datetime


class StorePointer(ApiModel):
    current: StoreVersion
    history: list[VersionRef] = Field(default_factory=list, description="Earlier versions, newest first.")


def shard_sql(column: str, shards: int) -> str:
    """The shard of a person key, in SQL: the key's first 32 bits (hex digits of a digest) modulo the shards."""
    return f"(('0x' || substr({column}, 2, 8))::BIGINT % {int(shards)})"


def shard_of(profile_id: str, shards: int) -> int:
    return int(profile_id[1:9], 16) % shards


class StoreFiles:
    """Where a store's files live: a blob container, or (for the CLI and a rebuild's staging) a folder. Store
    files never change once written (every name holds a writer's random id), so a worker keeps the ones it
    fetched or wrote in a local cache (`cache`, WORKER_CACHE_MB) and fetches only what it lacks."""

    def __init__(
        self, *, blobs: BlobStore | None = None, folder: Path | None = None, cache: FileCache | None = None
    ) -> None:
        self.blobs, self.folder = blobs, folder
        self.cache = cache or FileCache(ROOT, budget_mb=0)

    def fetch(self, names: Iterable[str], into: Path) -> list[Path]:
        names = list(dict.fromkeys(names))
        if self.blobs is None:
            return [self.folder / n for n in names]
        into.mkdir(parents=True, exist_ok=True)

        def one(name: str) -> Path:
            local = into / name.replace("/", "__")
            if local.exists():
                return local
            return self.cache.fetch(self._key(name), local, lambda path: self.blobs.download(name, path))

        with ThreadPoolExecutor(max_workers=8) as pool:
            fetched = list(pool.map(one, names))
        self.cache.trim()
        return fetched

    def put(self, files: dict[str, Path], *, written_at: dt.datetime | None = None) -> None:
        if self.blobs is None:  # a folder: the new files are moved in (they are the caller's temporary files)
            for name, path in files.items():
                target = self.folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if path != target:
                    shutil.move(path, target)
            return
        metadata = _written(written_at)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: self.blobs.put_file(n, files[n], overwrite=False, metadata=metadata), files))
        for name, path in files.items():  # the next batch or job on this worker reads them from here
            self.cache.keep(self._key(name), path)
        self.cache.trim()

    def _key(self, name: str) -> str:
        return f"{self.blobs.name}/{name}"

    def pointer(self) -> tuple[bytes, str | None] | None:
        if self.blobs is None:
            path = self.folder / POINTER
            return (path.read_bytes(), None) if path.exists() else None
        return self.blobs.get_versioned(POINTER)

    def replace_pointer(self, data: bytes, etag: str | None) -> None:
        if self.blobs is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / POINTER).write_bytes(data)
            return
        self.blobs.replace(POINTER, data, etag=etag)

    def put_bytes(self, name: str, data: bytes, *, written_at: dt.datetime | None = None) -> None:
        if self.blobs is None:
            (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(data)
        else:
            self.blobs.put(name, data, metadata=_written(written_at))

    def delete_unnamed(self, named: set[str], *, written_before: dt.datetime) -> list[str]:
        """Delete the files not in `named` that were written before `written_before` (by the time the writer
        recorded, else the blob's last modification); a folder's files are its only reader's and stay."""
        if self.blobs is None:
            return []
        deleted = []
        for blob in self.blobs.listing(metadata=True):
            recorded = (blob.metadata or {}).get("writtenAt")
            written = dt.datetime.fromisoformat(recorded) if recorded else blob.last_modified
            if blob.name not in named and written < written_before:
                self.blobs.delete(blob.name)
                deleted.append(blob.name)
        return deleted

    def get_bytes(self, name: str) -> bytes:
        return (self.folder / name).read_bytes() if self.blobs is None else self.blobs.get(name)


class ProfileStore:
    def __init__(
        self,
        *,
        settings: Settings,
        files: StoreFiles,
        policies: MergePolicyStore | None = None,
        datasets: DatasetStore | None = None,
        lake: LakeStore | None = None,
    ) -> None:
        self.settings = settings
        self.files = files
        self.policies = policies
        self.datasets = datasets
        self.lake = lake

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> ProfileStore:
        account = account or StorageAccount.from_settings(settings)
        return cls(
            settings=settings,
            files=StoreFiles(
                blobs=BlobStore(account.container(settings.profiles_container)),
                cache=worker_cache(settings),
            ),
            policies=MergePolicyStore.from_settings(settings, account),
            datasets=DatasetStore.from_settings(settings, account),
            lake=LakeStore.from_settings(settings, account),
        )

    # -- reading ------------------------------------------------------------------------------------------

    def _pointer(self) -> tuple[StorePointer | None, str | None]:
        found = self.files.pointer()
        return (StorePointer.model_validate_json(found[0]), found[1]) if found else (None, None)

    def _empty(self, now: dt.datetime, policy: MergePolicy | None = None) -> StoreVersion:
        return StoreVersion.empty(
            shards=self.settings.profile_shards,
            policy=policy or (self.policies.default() if self.policies else MergePolicy(id="default", name="Default")),
            graph_limit=self.settings.identity_graph_limit,
            now=now,
        )

    def version(self, now: dt.datetime | None = None) -> StoreVersion:
        """The store as of `now`: the newest version whose batches were all ingested by then (the current
        one without `now`); an empty store if there is none."""
        pointer, _ = self._pointer()
        if pointer is None:
            return self._empty(now or dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
        current = pointer.current
        if now is None or current.as_of is None or current.as_of <= now:
            return current
        for ref in pointer.history:
            if ref.as_of is not None and ref.as_of <= now:
                return StoreVersion.model_validate_json(self.files.get_bytes(_version_path(ref.id)))
        return self._empty(now, current.policy).model_copy(update={"shards": [ShardFiles() for _ in current.shards]})

    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        now: dt.datetime,
        workdir: Path,
        shards: Iterable[int] | None = None,
        version: StoreVersion | None = None,
        policy: MergePolicy | None = None,
    ) -> UnifiedProfiles:
        """Make `unified_profiles` and `profile_events` the store's (of the given shards; all by default) as of
        `now`. With `policy`, refuse a store merged by another one: it must be rebuilt first."""
        version = version or self.version(now)
        if policy is not None:
            version.check_policy(policy)
        indices = list(range(len(version.shards)) if shards is None else shards)
        fetched = self.fetch(version, indices, workdir)
        chosen = [version.shards[s] for s in indices]

        def local(names: list[str]) -> list[Path]:
            return [fetched[n] for n in names]

        profiles = [p for s in chosen if (p := profiles_sql_of(s, local))]
        events = [rows_sql_of(s.events, s.removed, local) for s in chosen if s.events]
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {PROFILES} AS "
            + (_union(profiles) if profiles else _empty_profiles(version.leaves, version.policy))
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW {EVENTS} AS " + (_union(events) if events else EMPTY_EVENTS))
        stats = {"profiles": scalar(con, f"SELECT count(*) FROM {PROFILES}"), **version.summary()}
        stats.pop("lastBatch")
        return UnifiedProfiles(con=con, policy=version.policy, now=now, stats=stats, leaves=dict(version.leaves))

    def fetch(self, version: StoreVersion, shards: Iterable[int], workdir: Path) -> dict[str, Path]:
        """Copy every file `open` reads for these shards to `workdir`, at once (in parallel); their local paths
        by name. A file already there is not fetched again, so a caller may fetch the next shard's files while
        it reads this one's."""
        return self._fetched(
            [n for s in shards for n in [*version.shards[s].events, *version.shards[s].profile_files()]], workdir
        )

    def _fetched(self, names: list[str], workdir: Path) -> dict[str, Path]:
        """Store files copied to `workdir`: their local paths by name."""
        names = list(dict.fromkeys(names))
        return dict(zip(names, self.files.fetch(names, workdir), strict=True))

    def by_id(self, version_id: str) -> StoreVersion:
        """A version by its id: the current one, or one kept since it was replaced."""
        pointer, _ = self._pointer()
        if pointer is not None and pointer.current.id == version_id:
            return pointer.current
        return StoreVersion.model_validate_json(self.files.get_bytes(_version_path(version_id)))

    def profiles_by_shard(self, version: StoreVersion, workdir: Path) -> list[str]:
        """Relations (SQL) of the merged profiles of `version`, one per shard that has any (one empty relation
        when none has), their files copied to `workdir`. Read them one at a time: at 10M people one statement
        over all 32 shards ran out of DUCKDB_MEMORY_LIMIT=600MB, where a statement a shard peaks at 774 MB of RSS."""
        fetched = self._fetched([n for s in version.shards for n in s.profile_files()], workdir)  # not the events
        profiles = [p for s in version.shards if (p := profiles_sql_of(s, lambda names: [fetched[n] for n in names]))]
        return [f"({p})" for p in profiles] or [f"({_empty_profiles(version.leaves, version.policy)})"]

    def touched_since(self, version: StoreVersion, since: dt.datetime, workdir: Path) -> str | None:
        """SQL of the people (`profileId`) touched by the batches ingested after `since`, their files fetched
        to `workdir`: the people merged away too, who must leave every segment. None when that is every batch
        in the store (a first streaming tick): everyone was touched, and the list (at 10M people, every batch's
        people, 50M rows) is not read."""
        if all(b.ingested_at > since for b in version.batches):
            return None
        files = self.files.fetch([b.touched for b in version.batches if b.ingested_at > since], workdir)
        if not files:
            return "SELECT NULL::VARCHAR AS profileId WHERE false"
        return f"SELECT DISTINCT profileId FROM ({_read(files)})"

    # -- writing ------------------------------------------------------------------------------------------

    def apply(self, batch: AcceptedBatch, *, now: dt.datetime) -> dict[str, float]:
        """Apply a validated batch; returns what it changed (new people, merges, dropped identities). A batch
        already applied changes nothing. Concurrent batches each retry on the version the other published."""
        for _ in range(_ATTEMPTS):
            pointer, etag = self._pointer()
            version = pointer.current if pointer else self._empty(now)
            if version.applied(batch.batch_id):
                return next(b.counts for b in version.batches if b.batch_id == batch.batch_id)
            with tempfile.TemporaryDirectory(prefix="profile-store-") as tmp:
                con = connect(self.settings, spill_dir=tmp)
                try:
                    new, written = apply_batch(con, version, batch, self.files, Path(tmp), now=now)
                finally:
                    con.close()
                uploaded = time.monotonic()
                self.files.put(written, written_at=now)
            try:
                self._publish(new, pointer, etag, now)
            except Conflict:
                log.info("profile store moved on while batch %s was applied; applying it again", batch.batch_id)
                continue
            return {**new.batches[-1].counts, "uploadSeconds": round(time.monotonic() - uploaded, 3)}
        raise Conflict(f"the profile store kept changing while batch {batch.batch_id} was applied; retry the batch")

    def _publish(self, new: StoreVersion, pointer: StorePointer | None, etag: str | None, now: dt.datetime) -> None:
        history = []
        if pointer is not None:
            self.files.put_bytes(
                _version_path(pointer.current.id),
                pointer.current.model_dump_json(by_alias=True).encode(),
                written_at=now,
            )
            oldest = now - dt.timedelta(hours=self.settings.profile_version_retention_hours)
            earlier = [VersionRef(id=pointer.current.id, as_of=pointer.current.as_of, created=pointer.current.created)]
            history = [r for r in earlier + pointer.history if r.created >= oldest]
        document = StorePointer(current=new, history=history).model_dump_json(by_alias=True)
        self.files.replace_pointer(document.encode(), etag)

    def lake_batches(self, workdir: Path) -> Iterable[AcceptedBatch]:
        """Every batch in the lake, downloaded, with its dataset's schema."""
        for dataset, schema in self.datasets.with_schemas():
            for name, path in zip(
                self.lake.batch_files(dataset.id),
                self.lake.download_dataset(dataset.id, workdir / dataset.id),
                strict=True,
            ):
                batch_id = name.split("/batch=", 1)[1].split("/", 1)[0]
                with duckdb.connect() as con:
                    ingested = con.execute(f"SELECT min(_ingestedAt) FROM {parquet(path)}").fetchall()[0][0]
                yield AcceptedBatch(dataset.id, schema, path, batch_id, ingested)

    def rebuild(self, *, now: dt.datetime, policy: MergePolicy | None = None) -> StoreVersion:
        """Replay every lake batch into a new store (the order the store applied them, then any it has not seen
        by ingestion time), under `policy` (the default merge policy if none), and make it current."""
        policy = policy or self.policies.default()
        with tempfile.TemporaryDirectory(prefix="profile-rebuild-") as tmp:
            work = Path(tmp)
            staging = StoreFiles(folder=work / "store")
            pointer, etag = self._pointer()
            order = {b.batch_id: i for i, b in enumerate(pointer.current.batches)} if pointer else {}
            batches = sorted(
                self.lake_batches(work / "lake"),
                key=lambda b: (order.get(b.batch_id, len(order)), b.ingested_at, b.batch_id),
            )
            version = replay(self.settings, batches, self._empty(now, policy), staging, work / "out", now=now)
            self.files.put({name: staging.folder / name for name in _files_of(version)}, written_at=now)
            self._publish(version, pointer, etag, now)
        return version

    def expire(self, *, now: dt.datetime, keep: Iterable[str] = ()) -> list[str]:
        """Delete the store's files that no kept version names, once they are older than
        PROFILE_VERSION_RETENTION_HOURS: the files of versions replaced longer ago, and those of applies that
        failed before publishing. Kept: the current version, those it replaced within the retention, and
        `keep` (versions still read, such as the one the current memberships were computed from)."""
        pointer, _ = self._pointer()
        if pointer is None:
            return []
        retention = dt.timedelta(hours=self.settings.profile_version_retention_hours)
        listed = [r.id for r in pointer.history if r.created >= now - retention]  # as `_publish` lists them
        versions = [pointer.current]
        for version_id in dict.fromkeys([*listed, *keep]):
            try:
                versions.append(self.by_id(version_id))
            except (NotFound, FileNotFoundError):
                log.info("profile store version %s is gone; nothing of it to keep", version_id)
        named = {POINTER, *(_version_path(v.id) for v in versions)}
        named.update(name for v in versions for name in _files_of(v))
        return self.files.delete_unnamed(named, written_before=now - retention)


def replay(
    settings: Settings,
    batches: Iterable[AcceptedBatch],
    version: StoreVersion,
    files: StoreFiles,
    out: Path,
    *,
    now: dt.datetime,
) -> StoreVersion:
    """Apply batches one after another to `version`, its files kept in `files` (a folder): a rebuild's
    staging, or the CLI's small store."""
    with tempfile.TemporaryDirectory(prefix="profile-replay-") as tmp:
        con = connect(settings, spill_dir=tmp)
        try:
            for n, batch in enumerate(batches):
                before = set(_files_of(version))
                version, written = apply_batch(con, version, batch, files, out / f"{n:06d}", now=now)
                files.put(written)
                # Nobody else reads a replay's folder: what the new version no longer names can go at once.
                for name in before - set(_files_of(version)):
                    (files.folder / name).unlink(missing_ok=True)
                shutil.rmtree(out / f"{n:06d}", ignore_errors=True)
        finally:
            con.close()
    return version.model_copy(update={"id": _version_id(now), "created": now})


def graph_of(graph: str | None, updates: list[GraphUpdate], local) -> GraphRows:
    """The identity graph from its compacted file and the updates since (their files fetched with `local` now),
    as `GraphRows`: a person's rows are those of the last file that names them (the clause filters each file's
    rows before that)."""
    names = [n for u in updates for n in (u.rows, u.people)]
    paths = local([graph, *names] if graph else names)
    files = ([(0, paths.pop(0))] if graph else []) + list(enumerate(paths[0::2], 1))  # (version, rows file)
    people = " UNION ALL ".join(
        f"SELECT profileId, {v} AS _v FROM ({_read([p])})" for v, p in enumerate(paths[1::2], 1)
    )

    def rows(clause: str) -> str:
        if not files:
            return f"(SELECT g.* FROM {_EMPTY_GRAPH} g {clause})"
        read = " UNION ALL ".join(
            f"SELECT g.ns, g.id, g.profileId, g.lastSeen, {v} AS _v FROM ({_read([path])}) g {clause}"
            for v, path in files
        )
        if not people:
            return f"(SELECT * EXCLUDE (_v) FROM ({read}))"
        return f"""(SELECT r.ns, r.id, r.profileId, r.lastSeen FROM ({read}) r
            LEFT JOIN (SELECT profileId, max(_v) AS _v FROM ({people}) GROUP BY profileId) p USING (profileId)
            WHERE p._v IS NULL OR r._v >= p._v)"""

    return rows


def rows_sql_of(names: list[str], removed: str | None, local) -> str:
    """SQL of the rows of a shard's files (fetched with `local`), skipping the people listed as removed."""
    return _without_removed(f"({_read(local(names))})", removed, local)


def _without_removed(rows: str, removed: str | None, local) -> str:
    """SQL of `rows`, skipping the people listed in the file `removed` (fetched with `local`)."""
    if removed is None:
        return rows
    return f"(SELECT * FROM {rows} WHERE profileId NOT IN (SELECT profileId FROM ({_read(local([removed]))})))"


def profiles_sql_of(shard: ShardFiles, local) -> str | None:
    """SQL of a shard's merged profiles (its files fetched with `local`): the compacted ones, those merged since
    in place of theirs, less the people merged away; None if the shard has none."""
    if not shard.profiles and not shard.profile_updates:
        return None
    updates = f"({_read(local([shard.profile_updates]))})" if shard.profile_updates else None
    parts = []
    if shard.profiles:
        replaced = f" WHERE profileId NOT IN (SELECT profileId FROM {updates})" if updates else ""
        parts.append(f"({_read(local([shard.profiles]))}{replaced})")
    if updates:
        parts.append(updates)
    return _without_removed(f"({_union(parts)})", shard.removed, local)


def _union(relations: list[str]) -> str:
    return " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in relations)


def _written(at: dt.datetime | None) -> dict[str, str] | None:
    return {"writtenAt": at.astimezone(dt.UTC).isoformat()} if at else None


def _version_path(version_id: str) -> str:
    return f"versions/{version_id}.json"


def _version_id(now: dt.datetime) -> str:
    return f"v{now.astimezone(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def _files_of(version: StoreVersion) -> list[str]:
    names = [version.graph] if version.graph else []
    names += [n for u in version.graph_updates for n in (u.rows, u.people)]
    names += [b.touched for b in version.batches]
    for s in version.shards:
        names += s.files()
    return names


def _read(paths: list[Path]) -> str:
    return (
        "SELECT * FROM read_parquet(["
        + ", ".join(quote_literal(str(p)) for p in paths)
        + "], union_by_name = true, hive_partitioning = false)"
    )


def _empty_fragments(leaves: dict[str, str]) -> str:
    return (
        "(SELECT "
        + ", ".join(f"NULL::{t} AS {quote_ident(k)}" for k, t in {**FRAGMENT_KEYS, **leaves}.items())
        + " WHERE false)"
    )


_EMPTY_GRAPH = (
    "(SELECT "
    + ", ".join(f"NULL::{t} AS {c}" for c, t in (x.split() for x in GRAPH_COLUMNS.split(", ")))
    + " WHERE false)"
)
_EMPTY_IDENTITIES = "(SELECT NULL::VARCHAR AS profileId, NULL::VARCHAR AS ns, NULL::VARCHAR AS id WHERE false)"


def _empty_profiles(leaves: dict[str, str], policy: MergePolicy) -> str:
    return merge_sql(
        fragments=_empty_fragments(leaves),
        identities=_EMPTY_IDENTITIES,
        people=_EMPTY_IDENTITIES,
        policy=policy,
        leaves=leaves,
    )


def apply_batch(
    con: duckdb.DuckDBPyConnection,
    version: StoreVersion,
    batch: AcceptedBatch,
    files: StoreFiles,
    out: Path,
    *,
    now: dt.datetime,
) -> tuple[StoreVersion, dict[str, Path]]:
    """The next version: `version` with `batch` applied. Returns it and the new files it names (to upload)."""
    step = BatchStep(con, version, batch, files, out)
    stitched = step.stitch()
    step.write_touched(stitched)
    identities = step.write_graph(stitched)
    aliases = step.move_merged(stitched)
    added_rows = step.add_rows(stitched)
    step.compact()
    leaves = step.remerge(stitched, aliases)
    return step.next_version(stitched, leaves, added_rows, identities, now=now), step.written


class BatchStep:
    """One batch applied to one store version, step by step: stitch its identities, write the new graph, move
    the rows of merged people, add the batch's rows, compact shards past MAX_DELTAS, merge the changed
    people's profiles again. Files are written under `out` and named in `written` (all new, none replaced)."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, version: StoreVersion, batch: AcceptedBatch, files: StoreFiles, out: Path
    ) -> None:
        self.con, self.version, self.batch, self.files, self.out = con, version, batch, files, out
        self.uid = secrets.token_hex(6)
        self.laps = Laps()
        self.n = len(version.shards)
        self.shards = [s.model_copy(deep=True) for s in version.shards]
        self.written: dict[str, Path] = {}
        self.rows_written = 0
        self.is_profile = batch.schema.schema_class is SchemaClass.PROFILE
        out.mkdir(parents=True, exist_ok=True)
        con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS SELECT * FROM {parquet(batch.file)}")
        self.graph = graph_of(version.graph, version.graph_updates, self.local)
        self.graph_file, self.graph_updates = version.graph, list(version.graph_updates)
        self.touched_name = f"batches/{batch.batch_id}-{self.uid}.parquet"

    def local(self, names: Iterable[str]) -> list[Path]:
        """Local copies of store files: this batch's own new ones, or fetched."""
        names = list(names)
        fetched = iter(self.files.fetch([n for n in names if n not in self.written], self.out / "cache"))
        return [self.written[n] if n in self.written else next(fetched) for n in names]

    def shard_rows(self, s: int, kind: str) -> str:
        """A shard's rows of one kind (as they are now in this batch's work), without the removed people."""
        return rows_sql_of(getattr(self.shards[s], kind), self.shards[s].removed, self.local)

    def write_by_shard(self, sql: str, kind: str, tag: str) -> dict[int, list[str]]:
        """Write rows (with `profileId`) into one file per shard they fall in; returns the names by shard and
        keeps how many rows it wrote (`rows_written`). They are not sorted by person (only a compaction's are,
        `_write_sorted`): sorting a 7.4M-row batch took 9 of its 30 s, and a batch's files are small beside its
        shard's compacted one."""
        folder = self.out / f"{kind}-{tag}-{self.uid}"
        self.rows_written = self.con.execute(
            f"""COPY (SELECT *, {shard_sql("profileId", self.n)} AS _shard FROM ({sql}))
                TO {quote_literal(str(folder))} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (_shard))"""
        ).fetchall()[0][0]
        names: dict[int, list[str]] = {}
        for part in sorted(folder.glob("_shard=*/*.parquet")):
            shard = int(part.parent.name.split("=", 1)[1])
            name = f"s{shard:04d}/{kind}-{self.uid}-{tag}-{part.stem}.parquet"
            self.written[name] = part
            names.setdefault(shard, []).append(name)
        return names

    def stitch(self) -> Stitched:
        """The batch's identities stitched into the graph: who each record is, who merged, who changed."""
        at = f"{quote_literal(self.batch.ingested_at.isoformat())}::TIMESTAMPTZ"
        identities = identities_sql("batch", self.batch.schema, stitching=self.version.policy.identity_stitching)
        removed = [x.removed for x in self.shards if x.removed]
        stitched = stitch(
            self.con,
            identities=f"SELECT *, {at} AS _ingestedAt FROM ({identities})",
            records=scalar(self.con, "SELECT count(*) FROM batch"),
            graph=self.graph,
            batch_id=self.batch.batch_id,
            limit=self.version.graph_limit,
            retired=f"({_read(self.local(removed))})" if removed else None,
        )
        self.laps.lap("stitchSeconds")
        return stitched

    def _write(self, name: str, sql: str) -> int:
        """Write the rows of `sql` to the new store file `name` (under `out`, named in `written`); how many."""
        self.written[name] = self.out / name.replace("/", "__")
        target = quote_literal(str(self.written[name]))
        return self.con.execute(f"COPY ({sql}) TO {target} (FORMAT parquet, COMPRESSION zstd)").fetchall()[0][0]

    def write_touched(self, stitched: Stitched) -> None:
        """The people the batch touched (its graph update's people, and what streaming ticks read)."""
        self._write(self.touched_name, f"SELECT profileId FROM {stitched.touched} ORDER BY profileId")

    def write_graph(self, stitched: Stitched) -> int:
        """The touched people's rows as stitched, as a graph update. Past MAX_DELTAS updates, or when the updates
        would hold more than GRAPH_UPDATES_SHARE of the graph's identities, the whole graph instead: the untouched
        people's rows as they were and the touched people's as stitched. Returns how many identities the graph
        holds. An update costs what the batch touched, not the whole graph (at 1M people, 4.45M identities: 0.98 s
        to write and 37 MB to upload per batch, however small)."""
        rows = scalar(self.con, f"SELECT count(*) FROM {stitched.graph_rows}")
        pending = rows + sum(u.identities for u in self.graph_updates)
        if len(self.graph_updates) < MAX_DELTAS and pending <= self.version.identities * GRAPH_UPDATES_SHARE:
            name = f"graph/{self.uid}-update.parquet"
            self._write(name, f"SELECT ns, id, profileId, lastSeen FROM {stitched.graph_rows}")
            self.graph_updates.append(GraphUpdate(rows=name, people=self.touched_name, identities=rows))
            identities = self.version.identities + rows - stitched.replaced_rows
        else:
            self.graph_file, self.graph_updates = f"graph/{self.uid}.parquet", []
            untouched = self.graph(f"WHERE profileId NOT IN (SELECT profileId FROM {stitched.touched})")
            identities = self._write(
                self.graph_file, f"SELECT * FROM {untouched} UNION ALL SELECT * FROM {stitched.graph_rows}"
            )
        self.laps.lap("graphSeconds")
        return identities

    def move_merged(self, stitched: Stitched) -> dict[str, str]:
        """Merged people's rows are copied to the shard of the person they joined, under that person's key; in
        their old shard the absorbed keys are listed as removed (readers skip them) until it is compacted.
        The rows moved out of every shard go to their targets together, one file a target shard and kind (a
        file per source and target made each shard pass MAX_DELTAS, and be compacted, at every batch with
        merges once the store had 32 shards). Returns the merges: absorbed key → surviving key."""
        aliases = dict(self.con.execute(f"SELECT absorbed, profileId FROM {stitched.aliases}").fetchall())
        shards = sorted({shard_of(a, self.n) for a in aliases})
        moved: dict[str, list[Path]] = {"fragments": [], "events": []}
        with ThreadPoolExecutor(max_workers=1) as pool:
            # One shard's rows are picked out while the next shard's files download (a shard's events can be
            # 100 MB); its merged profiles are not read here.
            fetching = [pool.submit(self.local, self.shards[s].row_files()) for s in shards]
            for s, fetched in zip(shards, fetching, strict=True):
                fetched.result()
                for kind, path in self._move_out_of(s, stitched).items():
                    moved[kind].append(path)
        for kind, paths in moved.items():
            if paths:
                for target, names in self.write_by_shard(_read(paths), kind, "moved").items():
                    getattr(self.shards[target], kind).extend(names)
        self.laps.lap("moveSeconds")
        return aliases

    def _move_out_of(self, s: int, stitched: Stitched) -> dict[str, Path]:
        """Pick out the rows of the people merged away from shard `s`, under their survivors' keys, into a local
        file per kind (for `move_merged` to write to their shards); list them as removed."""
        picked = {}
        for kind in ("fragments", "events"):
            if not getattr(self.shards[s], kind):
                continue
            picked[kind] = self.out / f"moved-{kind}-{s}-{self.uid}.parquet"
            self.con.execute(
                f"""COPY (SELECT src.* REPLACE (a.profileId AS profileId) FROM {self.shard_rows(s, kind)} src
                          JOIN {stitched.aliases} a ON src.profileId = a.absorbed)
                    TO {quote_literal(str(picked[kind]))} (FORMAT parquet, COMPRESSION zstd)"""
            )
        removed = f"s{s:04d}/removed-{self.uid}.parquet"
        previous = self.shards[s].removed
        earlier = f"SELECT profileId FROM ({_read(self.local([previous]))}) UNION ALL " if previous else ""
        in_shard = f"{shard_sql('absorbed', self.n)} = {s}"
        self._write(removed, f"{earlier}SELECT absorbed AS profileId FROM {stitched.aliases} WHERE {in_shard}")
        self.shards[s].removed = removed
        return picked

    def add_rows(self, stitched: Stitched) -> int:
        """The batch's rows, keyed by their person, into each person's shard (fragments or events), a statement
        per ROWS_PER_WRITE rows of the batch (a file a shard each); how many."""

        def people(within: str = "") -> str:
            return f"""SELECT b.*, rp.profileId AS _person
                FROM batch b JOIN {stitched.record_people} rp ON rp.rid = b._row {within}"""

        self.con.execute(f"CREATE OR REPLACE TEMP VIEW batch_people AS {people()}")  # the remerge reads it too
        first, last = self.con.execute("SELECT min(_row), max(_row) FROM batch").fetchall()[0]
        ranges = range(first or 0, (last or 0) + 1, ROWS_PER_WRITE)
        kind = "fragments" if self.is_profile else "events"
        added = 0
        for n, lo in enumerate(ranges):
            view = "batch_people"
            if len(ranges) > 1:
                # Both sides filtered, so that the join holds one range; the lake file is in `_row` order, so the
                # batch's side reads only the range's row groups.
                hi = lo + ROWS_PER_WRITE - 1
                view = f"({people(f'WHERE b._row BETWEEN {lo} AND {hi} AND rp.rid BETWEEN {lo} AND {hi}')})"
            rows_sql = (
                fragment_sql(view, self.batch.schema, self.batch.dataset_id, person="_person")
                if self.is_profile
                else f"SELECT _person AS profileId, * EXCLUDE (_person) FROM {view}"
            )
            for shard, names in self.write_by_shard(rows_sql, kind, f"batch{n}").items():
                getattr(self.shards[shard], kind).extend(names)
            added += self.rows_written
        return added

    def compact(self) -> None:
        """Keep the number of files a reader opens bounded: a shard past MAX_DELTAS files is rewritten whole, its
        profile updates folded into its profiles and the people merged away dropped."""
        for s, files_of_shard in enumerate(self.shards):
            if max(len(files_of_shard.fragments), len(files_of_shard.events)) > MAX_DELTAS:
                for k in ("fragments", "events"):
                    if getattr(files_of_shard, k):
                        compacted = self._write_sorted(s, f"SELECT * FROM {self.shard_rows(s, k)}", k)
                        setattr(files_of_shard, k, [compacted] if compacted else [])
                profiles = profiles_sql_of(files_of_shard, self.local)
                files_of_shard.profiles = self._write_sorted(s, f"SELECT * FROM {profiles}") if profiles else None
                files_of_shard.profile_updates = files_of_shard.removed = None
        self.laps.lap("rowsSeconds")

    def remerge(self, stitched: Stitched, aliases: dict[str, str]) -> dict[str, str]:
        """The changed people's profiles merged again, shard by shard (memory follows a shard, not the store),
        beside the shard's other profiles as they were; everyone's when the union schema grew. Returns the
        profile leaves the store now has."""
        leaves = profile_leaves([self.batch.schema] if self.is_profile else [], self.version.leaves)
        everyone = leaves != self.version.leaves  # the union schema grew: every profile gets the new columns
        new_graph = graph_of(self.graph_file, self.graph_updates, self.local)("") if everyone else None
        people = (
            f"(SELECT DISTINCT profileId FROM {new_graph})"
            if everyone
            else f"""(SELECT profileId FROM {stitched.changed}
                      {"UNION SELECT DISTINCT _person FROM batch_people" if self.is_profile else ""})"""
        )
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE remerged AS SELECT * FROM {people}")
        # Their identities, once (not once per shard): every remerged person was touched by the batch, and the
        # stitched rows are a touched person's whole row set in the new graph; everyone's are in the new graph.
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE remerged_identities AS
                SELECT profileId, ns, id FROM {new_graph if everyone else stitched.graph_rows}
                WHERE profileId IN (SELECT profileId FROM remerged)"""
        )
        involved = {
            r[0] for r in self.con.execute(f"SELECT DISTINCT {shard_sql('profileId', self.n)} FROM remerged").fetchall()
        }
        for s in sorted(involved | {shard_of(a, self.n) for a in aliases}):
            self._remerge_shard(s, stitched, leaves, keep_others=not everyone)
        self.laps.lap("mergeSeconds")
        return leaves

    def _remerge_shard(self, s: int, stitched: Stitched, leaves: dict[str, str], *, keep_others: bool) -> None:
        """Merge the shard's remerged people again. Their rows go to the shard's profile updates, beside the
        earlier updates of other people; when everyone is merged again, they are the shard's new profiles."""
        shard = self.shards[s]
        fragments = (
            complete_fragments(self.con, self.shard_rows(s, "fragments"), leaves)
            if shard.fragments
            else _empty_fragments(leaves)
        )
        in_shard = f"{shard_sql('profileId', self.n)} = {s}"
        merged = merge_sql(
            fragments=fragments,
            identities=f"(SELECT * FROM remerged_identities WHERE {in_shard})",
            people=f"(SELECT profileId FROM remerged WHERE {in_shard})",
            policy=self.version.policy,
            leaves=leaves,
        )
        if not keep_others:
            shard.profiles, shard.profile_updates = self._write_sorted(s, f"SELECT * FROM ({merged})"), None
            return
        earlier = (
            f"""SELECT * FROM ({_read(self.local([shard.profile_updates]))})
                WHERE profileId NOT IN (SELECT profileId FROM remerged)
                AND profileId NOT IN (SELECT absorbed FROM {stitched.aliases}) UNION ALL BY NAME """
            if shard.profile_updates
            else ""
        )
        shard.profile_updates = self._write_sorted(s, f"{earlier}SELECT * FROM ({merged})", "updates")

    def _write_sorted(self, s: int, sql: str, kind: str = "profiles") -> str | None:
        """Write rows of shard `s` (its profiles, profile updates, or a compaction's fragments or events) to one
        file sorted by person, so that a reader of one person skips most row groups; the new file's name, None if
        no rows. (An ORDER BY inside a PARTITION_BY copy is not kept: its row groups overlapped.)"""
        name = f"s{s:04d}/{kind}-{self.uid}.parquet"
        if self._write(name, f"SELECT * FROM ({sql}) ORDER BY profileId"):
            return name
        del self.written[name]
        return None

    def next_version(
        self, stitched: Stitched, leaves: dict[str, str], added_rows: int, identities: int, *, now: dt.datetime
    ) -> StoreVersion:
        """The version this batch makes: its files, counts (`identities`: the new graph's), and the people it
        touched (for streaming ticks)."""
        batch, version = self.batch, self.version
        applied = AppliedBatch(
            batch_id=batch.batch_id,
            dataset_id=batch.dataset_id,
            ingested_at=batch.ingested_at,
            touched=self.touched_name,
            counts={**stitched.counts(), "rows": added_rows, **self.laps},
        )
        return version.model_copy(
            update={
                "id": _version_id(now),
                "created": now,
                "as_of": max(filter(None, [version.as_of, batch.ingested_at])),
                "graph": self.graph_file,
                "graph_updates": self.graph_updates,
                "shards": self.shards,
                "leaves": leaves,
                "batches": [*version.batches, applied],
                # Every new person has an identity, and every merge takes one person away.
                "people": version.people + stitched.new_people - stitched.merges,
                "identities": identities,
                "fragments": version.fragments + (added_rows if self.is_profile else 0),
                "events": version.events + (0 if self.is_profile else added_rows),
            }
        )
