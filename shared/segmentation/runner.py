"""Segment jobs: evaluate segments over the profile store as of `now`, write memberships, publish them.
Each shard of the store is one query: every segment of the job, with one GROUP BY over that shard's events."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from shared.engine import connect, scalar
from shared.errors import BridgeError, Conflict, NotFound, ValidationError
from shared.identity.policies import MergePolicyStore
from shared.identity.store import ProfileStore, StoreVersion, shard_sql
from shared.ingestion.schemas import Schema
from shared.jobs import Job, JobError, JobStatus, JobStore, JobType
from shared.segmentation.definitions import SegmentStore
from shared.segmentation.evaluation import RESULTS, evaluate, fields_of
from shared.segmentation.memberships import (
    PROFILES,
    SHARD_FILES,
    STATUS_COUNTS,
    LocalSnapshot,
    MembershipPointer,
    MembershipStore,
    SnapshotPart,
    segments_with,
    write_shard,
)
from shared.segmentation.pql import ast
from shared.segmentation.shards import (
    SegmentJobMetrics,
    ShardMetrics,
    ShardPlan,
    ShardRecords,
    ShardResult,
    ShardStatus,
    ShardTask,
    shard_rows,
)
from shared.segmentation.streaming import streaming_eligible
from shared.settings import Settings
from shared.sql import quote_ident, quote_literal
from shared.storage import StorageAccount
from shared.storage.messages import QueueMessage
from shared.timing import Laps, PeakRss

log = logging.getLogger(__name__)


class SegmentJobMessage(QueueMessage):
    """An on-demand segment job on `SEGMENT_JOBS_QUEUE`: which job, as of when, which segments (all if none)."""

    job_id: str
    now: dt.datetime
    segments: list[str] | None = None


def segment_job_id(now: dt.datetime, segment_ids: list[str] | None) -> str:
    """The same run (time and segments) always has the same id, so a timer firing twice runs once."""
    scope = ",".join(sorted(segment_ids)) if segment_ids else "*"
    digest = hashlib.sha256(scope.encode()).hexdigest()[:8]
    return f"seg-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{digest}"


def _touched_in_shard(con: duckdb.DuckDBPyConnection, inputs: JobInputs, shard: int) -> str | None:
    """A streaming tick's people in this shard, as a table (read beside `con`); None for every job else.
    Everyone touched is in scope, the people merged away too (they leave every segment), but only this shard's:
    at 10M people a tick after large batches touches millions."""
    if inputs.touched is None:
        return None
    con.execute(
        f"""CREATE OR REPLACE TABLE touched AS SELECT profileId FROM ({inputs.touched})
            WHERE {shard_sql("profileId", len(inputs.version.shards))} = {int(shard)}"""
    )
    return "SELECT profileId FROM touched"


@dataclass
class JobInputs:
    """What every shard of a job reads alike: read once for the job when its shards run here, by each task
    when they are fanned out."""

    version: StoreVersion
    definitions: dict[str, ast.Expr]
    event_schemas: list[Schema]
    current: dict[str, MembershipPointer]  # the memberships the job compares with
    touched: str | None  # a streaming tick's people (SQL over their files, fetched once)
    compiled: dict = field(default_factory=dict)  # the shards' statement, compiled once (`evaluate`)


class SegmentJobRunner:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.segments = SegmentStore.from_settings(settings, account)
        self.memberships = MembershipStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.store = ProfileStore.from_settings(settings, account)
        self.policies = MergePolicyStore.from_settings(settings, account)
        self.queue = account.queue(settings.segment_jobs_queue)
        self.shard_queue = account.queue(settings.segment_shards_queue)
        self.shard_records = ShardRecords.from_settings(settings, account)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> SegmentJobRunner:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    def run(self, *, now: dt.datetime, segment_ids: list[str] | None = None, job_id: str | None = None) -> Job:
        """The batch job: every segment (or those named) for everyone, as of `now`. Its id comes from `now` and the
        segments, so a timer firing twice runs it once; another `job_id` runs it again as of the same moment."""
        definitions = self.segments.trees()
        job_id = job_id or segment_job_id(now, segment_ids)
        subject = ",".join(sorted(segment_ids)) if segment_ids else "all segments"
        return self._run(
            job_id,
            subject,
            now,
            lambda job, started: self._evaluate(
                job, now, segment_ids or sorted(definitions), definitions, started, since=None
            ),
        )

    def enqueue(self, *, now: dt.datetime, segment_ids: list[str] | None = None) -> Job:
        """Record an on-demand job as QUEUED and put it on the queue; `run_queued` runs it."""
        definitions = self.segments.trees()
        missing = sorted(set(segment_ids or []) - set(definitions))
        if missing:
            raise NotFound(f"no segments {missing}")
        job = Job(
            id=segment_job_id(now, segment_ids),
            type=JobType.SEGMENT,
            status=JobStatus.QUEUED,
            subject=",".join(sorted(segment_ids)) if segment_ids else "all segments",
            created=now,
        )
        try:
            job = self.jobs.create(job)
        except Conflict:
            return self.jobs.get(JobType.SEGMENT, job.id)  # the same request again: the same job
        SegmentJobMessage(job_id=job.id, now=now, segments=segment_ids).send(self.queue)
        return job

    def run_queued(self, message: SegmentJobMessage | dict) -> Job:
        """Run a queued job once: a redelivered message finds it claimed or done and does nothing, unless
        the worker that claimed it died (its lease ended): then this one runs it again."""
        message = SegmentJobMessage.of(message)
        queued = self.jobs.get(JobType.SEGMENT, message.job_id)
        now = message.now
        claim = self.jobs.claim(queued.model_copy(update={"started": now}))
        if not claim.ours:
            log.info("segment job %s is %s; nothing to do", queued.id, claim.job.status.value)
            return claim.job
        job = claim.job
        definitions = self.segments.trees()
        chosen = message.segments or sorted(definitions)
        return self._guarded(job, now, lambda job, started: self._fan_out(job, now, chosen, definitions, started))

    def _fan_out(self, job: Job, now: dt.datetime, chosen: list[str], definitions: dict, started: float) -> Job:
        """Plan the job and put one task per shard on the shards queue; the last shard to finish publishes.
        The job's lease then covers its shards until SEGMENT_SHARD_TIMEOUT_SECONDS: a shard still unfinished
        by then is stuck, and the monitor fails the job (the previous memberships stay current)."""
        plan = self._plan(job, now, chosen, definitions, since=None)
        if not plan.shards:
            return self._publish(job, plan, [], started)
        self.shard_records.create(plan, planned_at=self.jobs.clock())
        for shard in plan.shards:
            ShardTask(plan=plan, shard=shard).send(self.shard_queue)
        deadline = self.jobs.clock() + dt.timedelta(seconds=self.settings.segment_shard_timeout_seconds)
        for _ in range(5):  # the lease renewal may write the record meanwhile: read it again
            current = self.jobs.get(JobType.SEGMENT, job.id)
            planned = SegmentJobMetrics(shards_planned=len(plan.shards), profile_store_version=plan.store_version)
            metrics = planned.model_dump(exclude_none=True, exclude_defaults=True)
            try:
                return self.jobs.save(current.model_copy(update={"lease_until": deadline, "metrics": metrics}))
            except Conflict:
                continue
        raise Conflict(f"segment job {job.id} kept changing while its shards were planned")

    def run_shard(self, message: ShardTask | dict) -> Job | None:
        """Evaluate one shard of a planned job, once: a redelivered task finds its shard finished and only
        checks the fan-in. Returns the job when this task published it (or failed or cancelled it)."""
        task = ShardTask.of(message)
        plan = task.plan
        record = self.shard_records.get(plan, task.shard)
        if record["status"] == ShardStatus.QUEUED.value:
            job = self.jobs.get(JobType.SEGMENT, plan.job_id)
            if job.attempt != plan.attempt or job.status.terminal:
                log.info(
                    "segment job %s moved on; shard %d of attempt %d is not needed", job.id, task.shard, plan.attempt
                )
                return None
            if job.status is JobStatus.CANCELLING:
                self.shard_records.finish(record, ShardStatus.CANCELLED)
            else:
                with tempfile.TemporaryDirectory(prefix="segment-shard-task-") as tmp:
                    try:
                        result = self.evaluate_shard(plan, task.shard, self._inputs(plan, Path(tmp)))
                    except BridgeError as exc:
                        self.shard_records.finish(record, ShardStatus.FAILED, error=exc.message[:2000])
                    else:
                        name = f"{SHARD_FILES}/job={plan.job_id}/attempt={plan.attempt}/shard={task.shard:04d}.json"
                        self.memberships.blobs.put(name, result.model_dump_json(by_alias=True).encode())
                        self.shard_records.finish(
                            record, ShardStatus.DONE, result=name, metrics=result.metrics, failed=result.failed
                        )
        return self._fan_in(plan)

    def _fan_in(self, plan: ShardPlan) -> Job | None:
        """When every shard has finished, the one worker that claims the fan-in publishes the job."""
        records = self.shard_records.all(plan)
        shards = shard_rows(records)
        if "_plan" not in records or any(r["status"] == ShardStatus.QUEUED.value for r in shards):
            return None
        if not self.shard_records.claim_fan_in(plan, now=self.jobs.clock(), lease=self.jobs.lease):
            return None
        job = self.jobs.get(JobType.SEGMENT, plan.job_id)
        if job.attempt != plan.attempt or job.status.terminal:
            return None
        elapsed = (self.jobs.clock() - records["_plan"]["plannedAt"]).total_seconds()
        started = time.monotonic() - max(elapsed, 0.0)
        if job.status is JobStatus.CANCELLING:
            return self.jobs.finish(job, JobStatus.CANCELLED, started, plan.now, [])
        failures = [r for r in shards if r["status"] == ShardStatus.FAILED.value]
        if failures:
            errors = [JobError(code="shard", message=f"shard {int(r['RowKey'])}: {r.get('error')}") for r in failures]
            return self.jobs.finish(job, JobStatus.FAILED, started, plan.now, errors)
        results = [ShardResult.model_validate_json(self.memberships.blobs.get(r["result"])) for r in shards]
        return self.jobs.attempt(job, plan.now, lambda _: self._publish(job, plan, results, started))

    def resume_fan_in(self, job: Job) -> Job | None:
        """Publish a fanned-out job whose shards all finished but whose fan-in worker died before publishing
        (the monitor's call, once the job's deadline has passed); None when there is nothing to resume."""
        plan = self.shard_records.plan_of(job.id, job.attempt)
        return self._fan_in(plan) if plan is not None else None

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is CANCELLING until it stops before publishing."""
        job = self.jobs.get(JobType.SEGMENT, job_id)
        if job.status.terminal:
            raise Conflict(f"segment job {job_id} is already {job.status.value}")
        target = JobStatus.CANCELLED if job.status in (JobStatus.NEW, JobStatus.QUEUED) else JobStatus.CANCELLING
        try:
            return self.jobs.save(job.model_copy(update={"status": target}))
        except Conflict:  # its worker renewed the lease or moved it on meanwhile: decide again
            return self.cancel(job_id)

    def run_streaming(self, *, now: dt.datetime) -> Job:
        """The streaming job: streaming-eligible segments, for the people touched by data ingested since
        the last streaming job (its watermark); everyone else keeps their membership."""
        definitions = self.segments.trees()
        eligible = sorted(sid for sid, tree in definitions.items() if streaming_eligible(tree, definitions))
        since = self.memberships.watermark() or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        job_id = "stream-" + segment_job_id(now, eligible).removeprefix("seg-")
        return self._run(
            job_id,
            "streaming",
            now,
            lambda job, started: self._evaluate(job, now, eligible, definitions, started, since=since),
        )

    def _run(self, job_id: str, subject: str, now: dt.datetime, evaluate_job) -> Job:
        job = Job(
            id=job_id, type=JobType.SEGMENT, status=JobStatus.PROCESSING, subject=subject, created=now, started=now
        )
        claim = self.jobs.claim(job)
        if not claim.ours:
            log.info("segment job %s is already %s", job.id, claim.job.status.value)
            return claim.job
        return self._guarded(claim.job, now, evaluate_job)

    def _guarded(self, job: Job, now: dt.datetime, evaluate_job) -> Job:
        """Run the evaluation; a product error fails the job, anything else fails it and is raised for retry."""
        return self.jobs.attempt(job, now, lambda started: evaluate_job(job, started))

    def _evaluate(
        self,
        job: Job,
        now: dt.datetime,
        chosen: list[str],
        definitions: dict,
        started: float,
        *,
        since: dt.datetime | None,
    ) -> Job:
        """Run every shard of the job here, one after another, then publish (the timers' and the CLI's way)."""
        plan = self._plan(job, now, chosen, definitions, since=since)
        if not plan.shards:
            return self._publish(job, plan, [], started)
        with tempfile.TemporaryDirectory(prefix="segment-job-") as tmp, ThreadPoolExecutor(max_workers=1) as pool:
            work = Path(tmp)
            inputs = self._inputs(plan, work)
            version = inputs.version
            files = {shard: work / f"store-{shard:04d}" for shard in plan.shards}
            # While a shard is evaluated, the next one's files download (the fan-out gets this from its instances).
            fetching = pool.submit(self.store.fetch, version, [plan.shards[0]], files[plan.shards[0]])
            results = []
            for n, shard in enumerate(plan.shards):
                fetching.result()
                if n + 1 < len(plan.shards):
                    following = plan.shards[n + 1]
                    fetching = pool.submit(self.store.fetch, version, [following], files[following])
                results.append(self.evaluate_shard(plan, shard, inputs, files=files[shard]))
                shutil.rmtree(files[shard], ignore_errors=True)
            return self._publish(job, plan, results, started)

    def _plan(
        self, job: Job, now: dt.datetime, chosen: list[str], definitions: dict, *, since: dt.datetime | None
    ) -> ShardPlan:
        """What a job evaluates: which segments, over which store version, in which shards (a streaming job:
        only the shards of the people touched since the watermark)."""
        missing = sorted(set(chosen) - set(definitions))
        if missing:
            raise NotFound(f"no segments {missing}")
        version = self.store.version(now)
        version.check_policy(self.policies.default())
        shards = list(range(len(version.shards))) if chosen else []
        current = self.memberships.current_pointers()
        # A tick evaluates only the touched people's shards, and the others keep their parts of each snapshot:
        # unless a snapshot is not split by today's shards (written before, or with another shard count).
        # A first tick (everyone touched: `touched_since` is None) evaluates every shard, as the daily job does.
        if since is not None and all(current[sid].split_by(len(version.shards)) for sid in chosen if sid in current):
            with tempfile.TemporaryDirectory(prefix="segment-plan-") as tmp, duckdb.connect() as con:
                touched = self.store.touched_since(version, since, Path(tmp))
                if touched is not None:
                    in_shards = f"SELECT DISTINCT {shard_sql('profileId', len(version.shards))} FROM ({touched})"
                    hit = {r[0] for r in con.execute(in_shards).fetchall()}
                    shards = [s for s in shards if s in hit]
        return ShardPlan(
            job_id=job.id,
            attempt=job.attempt,
            now=now,
            segments=chosen,
            store_version=version.id,
            shards=shards,
            since=since,
        )

    def _inputs(self, plan: ShardPlan, work: Path) -> JobInputs:
        """What every shard of the job reads alike (a streaming tick's touched people fetched to `work`)."""
        version = self.store.by_id(plan.store_version)
        touched = self.store.touched_since(version, plan.since, work / "touched") if plan.since is not None else None
        return JobInputs(
            version=version,
            definitions=self.segments.trees(),
            event_schemas=self.segments.event_schemas(),
            current=self.memberships.current_pointers(),
            touched=touched,
        )

    def evaluate_shard(
        self, plan: ShardPlan, shard: int, inputs: JobInputs, *, files: Path | None = None
    ) -> ShardResult:
        """One shard of a job, in its own DuckDB connection (as its own invocation would be): the segments
        over that shard's profiles and events (a streaming job: its touched people only), then each segment's
        memberships of that shard against its previous ones, uploaded as the shard's part of the job's
        snapshots. `files` is where the shard's store files already are (fetched ahead), if they are."""
        started, laps = time.monotonic(), Laps()
        version, definitions = inputs.version, inputs.definitions
        with tempfile.TemporaryDirectory(prefix=f"segment-shard-{shard}-") as tmp, PeakRss() as memory:
            con = connect(self.settings, spill_dir=tmp)
            try:
                profiles = self.store.open(
                    con, now=plan.now, workdir=files or Path(tmp) / "store", shards=[shard], version=version
                )
                laps.lap("loadSeconds")
                people = _touched_in_shard(con, inputs, shard)
                compiled = evaluate(
                    con,
                    profiles,
                    {sid: definitions[sid] for sid in plan.segments if sid in definitions},
                    fields=fields_of(profiles, inputs.event_schemas),
                    definitions=definitions,
                    people=people,
                    isolate=True,
                    cache=inputs.compiled,
                )
                laps.lap("evaluateSeconds")
                # Columns are named by segment, whatever the shard's compiler called them; a table, not a temp
                # table, so that the memberships are written beside this connection.
                select = "".join(f", {col} AS {quote_ident(sid)}" for sid, col in compiled.columns.items())
                con.execute(f"CREATE TABLE shard_results AS SELECT profileId{select} FROM {RESULTS}")
                rows = scalar(con, "SELECT count(*) FROM shard_results")
                parts = self._write_memberships(con, plan, shard, inputs, list(compiled.columns), Path(tmp), people)
                peak = scalar(con, "SELECT max(memory_usage_bytes) FROM duckdb_memory()") or 0
                laps.lap("membershipSeconds")
            finally:
                con.close()
        return ShardResult(
            shard=shard,
            parts=parts,
            failed=compiled.failed,
            metrics=ShardMetrics.model_validate(
                {
                    "shard": shard,
                    "profiles": profiles.stats["profiles"],
                    "evaluated": rows,
                    "seconds": round(time.monotonic() - started, 3),
                    **laps,
                    "duckdbMemoryMB": round(peak / 2**20, 1),
                    "peakRssMB": memory.mb,
                }
            ).model_dump(exclude_none=True),
        )

    def _write_memberships(
        self, con, plan: ShardPlan, shard: int, inputs: JobInputs, chosen: list[str], work: Path, people: str | None
    ) -> dict[str, SnapshotPart]:
        """Each segment's new memberships in this shard against its current ones (this shard's part of them,
        or, when the current snapshot is not split by today's shards, its rows in this shard), written to the
        shard's one file and uploaded: the shard's part of each snapshot, with its counts."""
        shards = len(inputs.version.shards)
        wanted, before, unsplit = {}, {}, []
        for sid in chosen:
            pointer = inputs.current.get(sid)
            if pointer is not None:
                split = pointer.split_by(shards)
                unsplit += [] if split else [sid]
                wanted[sid] = pointer.files([shard] if split else None)
                before.update((sid, p) for p in pointer.parts or [] if split and p.shard == shard)
        previous = self.memberships.download({sid: f for sid, f in wanted.items() if f}, work / "previous")
        kept = self._unchanged(con, before, previous, people) if people else {}
        target = work / "memberships.parquet"
        counts = write_shard(
            con,
            [sid for sid in chosen if sid not in kept],
            results="shard_results",
            previous=previous,
            target=target,
            now=plan.now,
            retention=dt.timedelta(days=self.settings.segment_exited_retention_days),
            scope_sql=people,
            previous_where=(
                f"segment NOT IN ({', '.join(map(quote_literal, unsplit))}) OR {shard_sql('profileId', shards)} = {shard}"
                if unsplit
                else None
            ),
        )
        if not counts:  # no segment has rows in this shard: no file, no parts
            return kept
        path = self.memberships.shard_path(plan.job_id, plan.attempt, shard)
        etag = self.memberships.upload(path, target)
        self.memberships.cache.trim()
        return kept | {
            sid: SnapshotPart(shard=shard, path=path, etag=etag, segment=sid, **found) for sid, found in counts.items()
        }

    @staticmethod
    def _unchanged(
        con, before: dict[str, SnapshotPart], local: dict[str, LocalSnapshot], people: str
    ) -> dict[str, SnapshotPart]:
        """The parts a streaming tick leaves as they are (carried into its snapshots, not written again): those
        where nobody it evaluated qualifies now or has a row before."""
        if not before:
            return {}
        qualified = con.execute(
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE {quote_ident(sid)})" for sid in before)
            + " FROM shard_results"
        ).fetchall()[0]
        quiet = [sid for sid, n in zip(before, qualified, strict=True) if n == 0]
        if not quiet:
            return {}
        touched = segments_with(con, {sid: local[sid] for sid in quiet}, people)
        return {sid: before[sid].carried() for sid in quiet if sid not in touched}

    def _publish(self, job: Job, plan: ShardPlan, results: list[ShardResult], started: float) -> Job:
        """Fan-in: every shard's parts become each segment's new snapshot, published all at once (or, when the
        job was cancelled meanwhile or taken over, nothing is published). A shard the job did not evaluate (a
        streaming tick's untouched ones) keeps its current part."""
        if not plan.segments:
            metrics = SegmentJobMetrics(segments=0, total_profiles=0)
            return self.jobs.finish(
                job, JobStatus.SUCCEEDED, started, plan.now, [], metrics=metrics.model_dump(exclude_none=True)
            )
        failed: dict[str, str] = {}
        for r in results:
            failed.update(r.failed)
        chosen = [sid for sid in plan.segments if sid not in failed]
        if plan.segments and not chosen:
            raise ValidationError(
                "no segment could be evaluated: " + "; ".join(f"segment {sid}: {why}" for sid, why in failed.items())
            )
        version = self.store.by_id(plan.store_version) if plan.shards else self.store.version(plan.now)
        now = plan.now
        pointers = self._pointers(job, plan, results, chosen, len(version.shards))
        counts = {sid: dict.fromkeys(STATUS_COUNTS, 0) for sid in chosen}
        counts |= {p.segment_id: p.counts() for p in pointers}
        pointers.append(
            MembershipPointer(
                segment_id=PROFILES, job_id=job.id, snapshot=version.id, evaluated_at=now, store_version=version.id
            )
        )
        current_job = self.jobs.get(JobType.SEGMENT, job.id)
        if current_job.attempt != job.attempt or current_job.status.terminal:
            raise Conflict(f"segment job {job.id} was taken over or ended meanwhile; this run does not publish")
        if current_job.status is JobStatus.CANCELLING:
            # Cancelled while running: nothing is published, the previous memberships stay current.
            return self.jobs.finish(current_job, JobStatus.CANCELLED, started, now, [])
        job = current_job
        self.memberships.publish(pointers)
        if plan.since is not None and version.as_of is not None and version.as_of > plan.since:
            self.memberships.advance_watermark(version.as_of)
        shards = sorted((ShardMetrics.model_validate(r.metrics) for r in results), key=lambda m: m.shard)
        metrics = SegmentJobMetrics(
            segments=len(chosen),
            total_profiles=version.people,
            evaluated_profiles=sum(m.evaluated for m in shards),
            profile_store_version=version.id,
            segmentation_seconds=round(sum(m.seconds for m in shards), 3),
            membership_seconds=round(sum(m.membership_seconds or 0 for m in shards), 3),
            shards=shards,
            segmented_profile_counter={sid: c["realized"] + c["existing"] for sid, c in counts.items()},
            segmented_profile_by_status_counter=counts,
            segment_errors=failed or None,
        ).model_dump(exclude_none=True)
        links = {p.segment_id: f"{self.settings.segments_container}/{p.snapshot}" for p in pointers[:-1]}
        job = job.model_copy(update={"links": links})
        broken = [JobError(code="segment", message=f"segment {sid}: {why}") for sid, why in failed.items()]
        return self.jobs.finish(job, JobStatus.SUCCEEDED, started, now, broken, metrics=metrics)

    def _pointers(
        self, job: Job, plan: ShardPlan, results: list[ShardResult], chosen: list[str], shards: int
    ) -> list[MembershipPointer]:
        """Each chosen segment's new snapshot: the evaluated shards' parts (a shard without rows has none), and
        (for a streaming tick) the current parts of the shards it did not evaluate."""
        current, evaluated = self.memberships.current_pointers(), set(plan.shards)
        pointers = []
        for sid in chosen:
            before = current.get(sid)
            kept = (before.parts or []) if plan.since is not None and before and before.split_by(shards) else []
            parts = [r.parts[sid] for r in results if sid in r.parts]
            parts += [p.carried() for p in kept if p.shard not in evaluated]
            pointers.append(MembershipPointer.of_parts(sid, job.id, parts, shards=shards, evaluated_at=plan.now))
        return pointers
