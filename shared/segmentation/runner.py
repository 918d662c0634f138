"""Segment jobs: evaluate segments over the profile store as of `now`, write memberships, publish them.
Each shard of the store is one query: every segment of the job, with one GROUP BY over that shard's events."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shared.engine import connect, scalar
from shared.errors import Conflict, NotFound, ValidationError
from shared.identity.policies import MergePolicyStore
from shared.identity.store import ProfileStore, StoreVersion, shard_sql
from shared.ingestion.paths import quote_ident, quote_literal
from shared.jobs import Job, JobError, JobStatus, JobStore, JobType
from shared.segmentation.definitions import SegmentStore
from shared.segmentation.evaluation import RESULTS, evaluate, fields_of
from shared.segmentation.memberships import (
    PROFILES,
    MembershipPointer,
    MembershipStore,
    membership_sql,
    write_snapshots,
)
from shared.segmentation.streaming import streaming_eligible
from shared.settings import Settings
from shared.storage import StorageAccount
from shared.storage.messages import QueueMessage

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


class SegmentJobRunner:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.segments = SegmentStore.from_settings(settings, account)
        self.memberships = MembershipStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.store = ProfileStore.from_settings(settings, account)
        self.policies = MergePolicyStore.from_settings(settings, account)
        self.queue = account.queue(settings.segment_jobs_queue)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> SegmentJobRunner:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    def run(self, *, now: dt.datetime, segment_ids: list[str] | None = None) -> Job:
        """The batch job: every segment (or those named) for everyone, as of `now`."""
        definitions = self.segments.trees()
        job_id = segment_job_id(now, segment_ids)
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
        return self._guarded(
            job, now, lambda job, started: self._evaluate(job, now, chosen, definitions, started, since=None)
        )

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
        missing = sorted(set(chosen) - set(definitions))
        if missing:
            raise NotFound(f"no segments {missing}")
        if not chosen:
            return self.jobs.finish(
                job, JobStatus.SUCCEEDED, started, now, [], metrics={"segments": 0, "totalProfiles": 0}
            )
        version = self.store.version(now)
        with tempfile.TemporaryDirectory(prefix="segment-job-") as tmp:
            work = Path(tmp)
            con = connect(self.settings, spill_dir=tmp)
            try:
                people = self._touched(con, version, since, work) if since is not None else None
                evaluated = self._evaluate_shards(con, version, now, chosen, definitions, work, people=people)
                chosen = [sid for sid in chosen if sid not in evaluated.failed]
                if not chosen:
                    raise ValidationError(
                        "no segment could be evaluated: "
                        + "; ".join(f"segment {sid}: {why}" for sid, why in evaluated.failed.items())
                    )
                memberships_started = time.monotonic()
                pointers, counts = self._write_memberships(con, job, now, chosen, evaluated.columns, work, people)
                pointers.append(
                    MembershipPointer(
                        segment_id=PROFILES,
                        job_id=job.id,
                        snapshot=version.id,
                        evaluated_at=now,
                        store_version=version.id,
                    )
                )
                membership_seconds = time.monotonic() - memberships_started
                evaluated_people = scalar(con, "SELECT count(*) FROM touched") if people else version.people
            finally:
                con.close()
        current = self.jobs.get(JobType.SEGMENT, job.id)
        if current.attempt != job.attempt:
            raise Conflict(f"segment job {job.id} was taken over by another worker; its run publishes")
        if current.status is JobStatus.CANCELLING:
            # Cancelled while running: nothing is published, the previous memberships stay current.
            return self.jobs.finish(current, JobStatus.CANCELLED, started, now, [])
        job = job.model_copy(update={"etag": current.etag})
        self.memberships.publish(pointers)
        if since is not None and version.as_of is not None and version.as_of > since:
            self.memberships.advance_watermark(version.as_of)
        metrics = {
            "segments": len(chosen),
            "totalProfiles": version.people,
            "evaluatedProfiles": evaluated_people,
            "profileStoreVersion": version.id,
            "segmentationSeconds": round(evaluated.seconds, 3),
            "membershipSeconds": round(membership_seconds, 3),
            "shards": evaluated.shards,
            "segmentedProfileCounter": {sid: c["realized"] + c["existing"] for sid, c in counts.items()},
            "segmentedProfileByStatusCounter": counts,
            **({"segmentErrors": evaluated.failed} if evaluated.failed else {}),
        }
        links = {p.segment_id: f"{self.settings.segments_container}/{p.snapshot}" for p in pointers[:-1]}
        job = job.model_copy(update={"links": links})
        broken = [JobError(code="segment", message=f"segment {sid}: {why}") for sid, why in evaluated.failed.items()]
        return self.jobs.finish(job, JobStatus.SUCCEEDED, started, now, broken, metrics=metrics)

    def _touched(self, con, version: StoreVersion, since: dt.datetime, work: Path) -> str:
        """`touched(profileId)`: the people the store's batches touched after the watermark, the only ones
        whose rules can have changed; returns a query of them."""
        files = self.store.touched_since(version, since, work / "touched")
        source = (
            "SELECT DISTINCT profileId FROM read_parquet([" + ", ".join(quote_literal(str(f)) for f in files) + "])"
            if files
            else "SELECT NULL::VARCHAR AS profileId WHERE false"
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE touched AS {source}")
        return "SELECT profileId FROM touched"

    def _evaluate_shards(
        self,
        con,
        version: StoreVersion,
        now: dt.datetime,
        chosen: list[str],
        definitions: dict,
        work: Path,
        *,
        people: str | None,
    ) -> Evaluated:
        """Evaluate the segments shard by shard into `job_results(profileId, <column per segment>)`: one query
        per shard, over that shard's profiles and events. A streaming job opens only the touched people's shards."""
        shards = range(len(version.shards))
        if people is not None:
            hit = {
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT {shard_sql('profileId', len(version.shards))} FROM touched"
                ).fetchall()
            }
            shards = [s for s in shards if s in hit]
        result = Evaluated(columns={}, failed={}, shards=[], seconds=0.0)
        result.columns = {sid: quote_ident(sid) for sid in chosen}
        columns = "".join(f", {c} BOOLEAN" for c in result.columns.values())
        con.execute(f"CREATE OR REPLACE TEMP TABLE job_results (profileId VARCHAR{columns})")
        policy = self.policies.default()
        for shard in shards:
            shard_started = time.monotonic()
            profiles = self.store.open(
                con, now=now, workdir=work / "store", shards=[shard], version=version, policy=policy
            )
            compiled = evaluate(
                con,
                profiles,
                {sid: definitions[sid] for sid in chosen if sid not in result.failed},
                fields=fields_of(profiles, self.segments.event_schemas()),
                definitions=definitions,
                people=people,
                isolate=True,
            )
            result.failed.update(compiled.failed)
            # Columns are named by segment in `job_results`, whatever a shard's compiler called them.
            select = ", ".join(f"{col} AS {quote_ident(sid)}" for sid, col in compiled.columns.items())
            con.execute(
                f"INSERT INTO job_results BY NAME SELECT profileId{', ' + select if select else ''} FROM {RESULTS}"
            )
            seconds = time.monotonic() - shard_started
            result.seconds += seconds
            result.shards.append({"shard": shard, "profiles": profiles.stats["profiles"], "seconds": round(seconds, 3)})
        return result

    def _write_memberships(self, con, job: Job, now, chosen, columns, work: Path, people: str | None):
        """Each segment's new memberships against its current ones, uploaded; their pointers and counts."""
        retention = dt.timedelta(days=self.settings.segment_exited_retention_days)
        previous = self.memberships.download_all_current(chosen, work)
        parts = {
            sid: membership_sql(
                segment_id=sid,
                qualified_sql=f"SELECT profileId FROM job_results WHERE {columns[sid]}",
                previous=previous[sid],
                now=now,
                retention=retention,
                scope_sql=people,
            )
            for sid in chosen
        }
        files, counts = write_snapshots(con, parts, out=work / "memberships", now=now)
        paths = self.memberships.upload(job.id, files)
        pointers = [
            MembershipPointer(
                segment_id=sid,
                job_id=job.id,
                snapshot=paths[sid],
                evaluated_at=now,
                size=counts[sid]["realized"] + counts[sid]["existing"],
                realized=counts[sid]["realized"],
                existing=counts[sid]["existing"],
                exited=counts[sid]["exited"],
                exited_earlier=counts[sid]["exitedEarlier"],
            )
            for sid in chosen
        ]
        return pointers, counts


@dataclass
class Evaluated:
    """What evaluating a job's shards gave: each segment's column in `job_results`, the segments that failed."""

    columns: dict[str, str]
    failed: dict[str, str]
    shards: list[dict]
    seconds: float
