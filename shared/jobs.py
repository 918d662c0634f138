"""Job records: every ingestion batch, segment job, export run and audience load has one, with status,
times, metrics and errors, kept in the `jobs` table.

A worker claims a job under a lease (`JOB_LEASE_SECONDS`) and renews it while it works. A worker that
dies stops renewing, so whoever next finds the job (a redelivered message, a retried trigger) after its
lease ended takes it over and runs it again from a clean start; the monitor fails a job nobody takes over
within one more lease. Leases are kept on the workers' wall clock, not the job's `now` (a job may run as
of any moment); the clock is a parameter of the store, so tests move it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core.exceptions import AzureError
from pydantic import Field

from shared.errors import BridgeError, Conflict, NotFound, ValidationError, clipped
from shared.models import ApiModel
from shared.settings import Settings
from shared.storage import EntityTable, StorageAccount
from shared.storage.tables import NEWEST_FIRST_DIGITS, decode_token, encode_token, newer_than_bound, newest_first
from shared.timing import Every

INTERNAL = "internal"  # the code of an unexpected failure: raised again to the host, whose retry runs the job again
MAX_STORED_ERRORS = 50
MAX_ERRORS_CHARS = 24_000  # the stored list stays well inside Table storage's 64 KiB per string
log = logging.getLogger(__name__)


class JobType(StrEnum):
    INGESTION = "ingestion"
    SEGMENT = "segment"
    EXPORT = "export"
    AUDIENCE_LOAD = "audience-load"
    FEEDBACK = "feedback"
    PROFILE_REBUILD = "profile-rebuild"


class JobStatus(StrEnum):
    NEW = "NEW"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobError(ApiModel):
    code: str
    message: str


class Job(ApiModel):
    id: str
    type: JobType
    status: JobStatus = JobStatus.NEW
    subject: str = Field("", description="What the job works on: a dataset, a segment, a dataflow.")
    source: str = Field("", description="The input, such as the landing blob of an ingestion batch.")
    created: dt.datetime
    started: dt.datetime | None = None
    ended: dt.datetime | None = None
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="What the job measured, one model per type (see their schemas): IngestionMetrics, "
        "SegmentJobMetrics, ExportMetrics, AudienceLoadMetrics, FeedbackMetrics, StoreSummary (a rebuild).",
    )
    errors: list[JobError] = Field(default_factory=list)
    errors_total: int = 0
    links: dict[str, str] = Field(default_factory=dict)
    attempt: int = Field(0, description="How many times a worker has claimed the job (a takeover adds one).")
    lease_until: dt.datetime | None = Field(None, description="When the claim ends unless its worker renews it.")
    holder: str = Field("", exclude=True, description="The claim that holds the job.")
    etag: str | None = Field(None, exclude=True)

    @property
    def retryable(self) -> bool:
        """Failed unexpectedly (storage, a crash of the work): the host's retry may run it again."""
        return self.status is JobStatus.FAILED and any(e.code == INTERNAL for e in self.errors)

    def abandoned(self, at: dt.datetime) -> bool:
        """Claimed, and its worker stopped renewing the lease before `at` (a record without one predates leases)."""
        return self.status in (JobStatus.PROCESSING, JobStatus.CANCELLING) and (
            self.lease_until is None or self.lease_until < at
        )

    def finished(
        self,
        status: JobStatus,
        *,
        now: dt.datetime,
        seconds: float,
        errors: list[JobError],
        metrics: dict[str, Any] | None = None,
        errors_total: int | None = None,
    ) -> Job:
        """The job as it ends: its status, its duration (measured, not read from the clock) and outcome."""
        seconds = round(seconds, 3)
        return self.model_copy(
            update={
                "status": status,
                "ended": now + dt.timedelta(seconds=seconds),
                "metrics": {**self.metrics, **(metrics or {}), "durationSeconds": seconds},
                "errors": errors,
                "errors_total": errors_total if errors_total is not None else len(errors),
            }
        )

    def to_entity(self) -> dict[str, Any]:
        kept = _fitting(self.errors)
        return {
            "PartitionKey": self.type.value,
            "RowKey": self.id,
            "status": self.status.value,
            "subject": self.subject,
            "source": self.source,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "metrics": json.dumps(self.metrics, default=str),
            "errors": json.dumps([e.model_dump() for e in kept]),
            "errorsTotal": max(self.errors_total, len(self.errors)),
            "links": json.dumps(self.links),
            "attempt": self.attempt,
            "leaseUntil": self.lease_until,
            "holder": self.holder,
        }

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> Job:
        return cls(
            id=entity["RowKey"],
            type=JobType(entity["PartitionKey"]),
            status=JobStatus(entity["status"]),
            subject=entity.get("subject", ""),
            source=entity.get("source", ""),
            created=entity["created"],
            started=entity.get("started"),
            ended=entity.get("ended"),
            metrics=json.loads(entity.get("metrics") or "{}"),
            errors=[JobError(**e) for e in json.loads(entity.get("errors") or "[]")],
            errors_total=entity.get("errorsTotal", 0),
            links=json.loads(entity.get("links") or "{}"),
            attempt=entity.get("attempt", 0),
            lease_until=entity.get("leaseUntil"),
            holder=entity.get("holder", ""),
            etag=entity.get("etag"),
        )


def _fitting(errors: list[JobError]) -> list[JobError]:
    """The first errors, each message clipped, as many as fit in one stored property, and how many did not."""
    kept, size = [], 0
    for error in errors[:MAX_STORED_ERRORS]:
        error = error.model_copy(update={"message": clipped(error.message)})
        size += len(error.model_dump_json())
        if size > MAX_ERRORS_CHARS:
            break
        kept.append(error)
    if size > MAX_ERRORS_CHARS:  # past MAX_STORED_ERRORS, errorsTotal alone says how many there were
        kept.append(JobError(code="truncated", message=f"and {len(errors) - len(kept):,} more"))
    return kept


class JobPage(ApiModel):
    """One page of jobs, newest first, and the token for the next page (None at the end)."""

    items: list[Job]
    continuation_token: str | None = Field(None, serialization_alias="continuationToken")


WatcherFactory = Callable[[Settings, StorageAccount], Callable[["Job"], object]]
_WATCHERS: list[WatcherFactory] = []


@dataclass
class Claim:
    """What claiming a job gave: the record, and whether this worker now holds it."""

    job: Job
    ours: bool


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobStore:
    """Job records, one partition per job type, keyed by job id."""

    def __init__(
        self,
        table: EntityTable,
        *,
        watcher: Callable[[Job], object] | None = None,
        lease: dt.timedelta = dt.timedelta(minutes=5),
        clock: Callable[[], dt.datetime] = wall_clock,
    ) -> None:
        self.table = table
        self.watcher = watcher
        self.lease = lease
        self.clock = clock

    @staticmethod
    def watch(factory: WatcherFactory) -> None:
        """Have every job store made from settings tell `factory(settings, account)` of each job that starts
        or ends. `shared.app` registers the alert rules, which sit above the areas that run jobs."""
        if factory not in _WATCHERS:
            _WATCHERS.append(factory)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> JobStore:
        """The job store of the app, with the registered watchers (the alert rules) told of every job."""
        watchers = [factory(settings, account) for factory in _WATCHERS]

        def watcher(job: Job) -> None:
            for watch in watchers:
                watch(job)

        return cls(
            EntityTable(account.table(settings.table_name("jobs"))),
            watcher=watcher if watchers else None,
            lease=dt.timedelta(seconds=settings.job_lease_seconds),
        )

    def _notify(self, job: Job) -> None:
        if self.watcher is None:
            return
        try:
            self.watcher(job)
        except Exception:  # noqa: BLE001 - alerting must never fail the job it watches
            log.exception("alert rules failed on job %s", job.id)

    def find(self, job_type: JobType, job_id: str) -> Job | None:
        entity = self.table.find(job_type.value, job_id)
        return Job.from_entity(entity) if entity else None

    def get(self, job_type: JobType, job_id: str) -> Job:
        return Job.from_entity(self.table.get(job_type.value, job_id))

    def create(self, job: Job) -> Job:
        """Insert a new record; `Conflict` if another worker created it first."""
        stored = self.table.insert(job.to_entity())
        self._index(job)
        job = job.model_copy(update={"etag": stored["etag"]})
        if job.status is JobStatus.PROCESSING:
            self._notify(job)
        return job

    def save(self, job: Job) -> Job:
        """Write the job back, failing with `Conflict` if it changed since it was read."""
        if job.etag is None:
            stored = self.table.upsert(job.to_entity())
        else:
            stored = self.table.update(job.to_entity(), etag=job.etag)
        self._index(job)
        job = job.model_copy(update={"etag": stored["etag"]})
        if job.status.terminal or job.status is JobStatus.PROCESSING:
            self._notify(job)
        return job

    def claim(self, job: Job) -> Claim:
        """Create the job's record PROCESSING under a lease. If it exists, take it over when it is QUEUED (a
        queued job's message), when its worker's lease has ended (a crash), or when it failed unexpectedly
        (the host's retry); otherwise it is someone else's or done, and not ours."""
        holder = uuid.uuid4().hex  # tells this claim from another when an answer is lost on the way back
        lease = {"status": JobStatus.PROCESSING, "lease_until": self.clock() + self.lease, "holder": holder}
        try:
            return Claim(self.create(job.model_copy(update={**lease, "attempt": 1})), True)
        except Conflict:  # someone's, or ours if the SDK retried an insert whose answer was lost
            existing = self.get(job.type, job.id)
        except AzureError:  # did the insert happen before the connection broke?
            existing = self.find(job.type, job.id)
            if existing is None:
                raise
        if existing.holder == holder:
            return Claim(existing, True)
        if not (existing.status is JobStatus.QUEUED or existing.abandoned(self.clock()) or existing.retryable):
            return Claim(existing, False)
        if existing.status is not JobStatus.QUEUED:
            log.warning("%s job %s: taking over attempt %d", job.type.value, job.id, existing.attempt)
        fresh = {"started": job.started, "ended": None, "metrics": {}, "errors": [], "errors_total": 0}
        try:
            return Claim(
                self.save(existing.model_copy(update={**lease, **fresh, "attempt": existing.attempt + 1})), True
            )
        except Conflict:  # another worker took it first
            return Claim(self.get(job.type, job.id), False)

    @contextmanager
    def leased(self, job: Job) -> Iterator[None]:
        """Renew the job's lease while the block runs (every third of the lease), so nobody takes it over."""

        def renew() -> None:
            try:
                self._renew(job)
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the work goes on
                log.warning("could not renew the lease of %s job %s", job.type.value, job.id, exc_info=True)

        renewer = Every(self.lease.total_seconds() / 3, renew, name=f"lease-{job.id}").start()
        try:
            yield
        finally:
            renewer.stop()

    def _renew(self, job: Job) -> None:
        latest = self.get(job.type, job.id)
        if latest.attempt != job.attempt or latest.status.terminal:
            return  # taken over, or already ended: not ours to extend
        entity = {"PartitionKey": job.type.value, "RowKey": job.id, "leaseUntil": self.clock() + self.lease}
        self.table.update(entity, etag=latest.etag, merge=True)

    def finish(
        self,
        job: Job,
        status: JobStatus,
        started: float,
        now: dt.datetime,
        errors: list[JobError],
        *,
        metrics: dict[str, Any] | None = None,
        errors_total: int | None = None,
    ) -> Job:
        """Record how a job ended; `started` is its `time.monotonic()` start. The outcome of the worker that
        holds the claim stands (over lease renewals, and over a cancel that came too late); a worker whose
        claim was taken over gets `Conflict`, and the new holder's outcome stands instead."""
        seconds = time.monotonic() - started
        done = job.finished(status, now=now, seconds=seconds, errors=errors, metrics=metrics, errors_total=errors_total)
        done = done.model_copy(update={"lease_until": None})
        try:
            return self.save(done)
        except Conflict:
            latest = self.get(job.type, job.id)
            if latest.attempt != job.attempt:
                raise Conflict(f"{job.type.value} job {job.id} was taken over by another worker") from None
            return self.save(done.model_copy(update={"etag": latest.etag}))

    def attempt(
        self,
        job: Job,
        now: dt.datetime,
        work: Callable[[float], Job],
        *,
        on_failure: Callable[[str], object] | None = None,
    ) -> Job:
        """Do a claimed job's work under its lease. `work(started)` records how the job ended and returns it
        (`started` is the `time.monotonic()` start). A product error (`BridgeError`) is the job's outcome:
        FAILED with its code and message. Anything else is recorded as FAILED (internal) and raised again,
        so the host retries, and the retry's claim takes the job over."""
        started = time.monotonic()
        try:
            with self.leased(job):
                return work(started)
        except BridgeError as exc:
            if on_failure:
                on_failure(exc.message)
            return self.finish(job, JobStatus.FAILED, started, now, [JobError(code=exc.code, message=exc.message)])
        except Exception as exc:
            if on_failure:
                on_failure(str(exc))
            self.finish(job, JobStatus.FAILED, started, now, [JobError(code=INTERNAL, message=str(exc))])
            raise

    def run(
        self,
        job: Job,
        now: dt.datetime,
        work: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        *,
        on_failure: Callable[[str], object] | None = None,
    ) -> Job:
        """`attempt` for work that returns the metrics and any changes to the record (links, source): the job
        ends SUCCEEDED with them."""

        def succeed(started: float) -> Job:
            metrics, changes = work()
            return self.finish(job.model_copy(update=changes), JobStatus.SUCCEEDED, started, now, [], metrics=metrics)

        return self.attempt(job, now, succeed, on_failure=on_failure)

    def list(self, job_type: JobType, *, status: JobStatus | None = None) -> list[Job]:
        flt, params = "PartitionKey eq @pk", {"pk": job_type.value}
        if status:
            flt += " and status eq @status"
            params["status"] = status.value
        return sorted(
            (Job.from_entity(e) for e in self.table.all(flt, parameters=params)),
            key=lambda j: j.created,
            reverse=True,
        )

    def find_any(self, job_id: str) -> Job:
        """A job by its id, whatever its type."""
        for entity in self.table.all("RowKey eq @id", parameters={"id": job_id}):
            return Job.from_entity(entity)
        raise NotFound(f"no job {job_id!r}; GET /api/jobs lists them")

    def _index(self, job: Job) -> None:
        self.table.upsert(index_entity(job))

    def page(
        self,
        *,
        types: list[JobType] | None = None,
        status: JobStatus | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
        token: str | None = None,
    ) -> JobPage:
        """Jobs matching the filters, newest first (by creation time, then type and id), `limit` at a time,
        read from the index: a page reads about `limit` index entries and `limit` jobs. The token is the last
        job of the previous page: a job created meanwhile does not shift the pages."""
        clauses, params = ["PartitionKey eq @pk"], {"pk": INDEX}
        if types:
            # The SDK finds @names between spaces, so the parentheses stand apart.
            clauses.append("( " + " or ".join(f"type eq @t{i}" for i in range(len(types))) + " )")
            params.update({f"t{i}": t.value for i, t in enumerate(types)})
        if status:
            clauses.append("status eq @status")
            params["status"] = status.value
        if since:  # created >= since
            clauses.append("RowKey lt @since")
            params["since"] = newer_than_bound(since)
        if until:  # created < until
            clauses.append("RowKey ge @until")
            params["until"] = newer_than_bound(until)
        after = decode_token(token)
        if after is not None:
            if not isinstance(after, str) or not after[:NEWEST_FIRST_DIGITS].isdigit():
                raise ValidationError("continuationToken is not one this service issued")
            clauses.append("RowKey gt @after")
            params["after"] = after
        keys = self.table.first(" and ".join(clauses), parameters=params, count=limit + 1)
        entries = keys[:limit]
        items = [self.get(JobType(e["type"]), e["RowKey"].split("_", 2)[2]) for e in entries]
        more = len(keys) > limit
        return JobPage(items=items, continuation_token=encode_token(entries[-1]["RowKey"]) if more else None)


INDEX = "newest"  # the partition of the jobs table that lists every job newest first


def index_entity(job: Job) -> dict[str, Any]:
    """The job's entry in the newest-first index (one partition, keyed by inverted creation time), with what
    listings filter on, so a page of jobs costs a page of reads however long the history."""
    return {"PartitionKey": INDEX, "RowKey": _newest_key(job), "type": job.type.value, "status": job.status.value}


def _newest_key(job: Job) -> str:
    return f"{newest_first(job.created)}_{job.type.value}_{job.id}"
