"""Alert rules. Evaluated when a job starts or ends (the job store calls `on_job`) and by the monitor timer
(`check_delays`). Each alert is stored once, keyed by its rule and what it is about, so the same condition
never alerts twice; a new alert is handed to the webhook subscriptions that want its type."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from pydantic import Field

from shared.activation.destinations import DestinationStore, Frequency
from shared.activation.runs import ExportMetrics, run_id_for
from shared.errors import Conflict
from shared.ingestion.batch import IngestionMetrics
from shared.jobs import Job, JobError, JobStatus, JobStore, JobType
from shared.models import ApiModel
from shared.segmentation.runner import SegmentJobRunner
from shared.segmentation.shards import SegmentJobMetrics
from shared.settings import Settings
from shared.storage import EntityTable, StorageAccount
from shared.storage.tables import newer_than_bound, newest_first

log = logging.getLogger(__name__)
AlertListener = Callable[[Settings, StorageAccount, "Alert"], object]
_LISTENERS: list[AlertListener] = []

# Alert types, in the terms of Adobe's alert subscriptions.
ALERT_TYPES = {
    "source.flowRunStart": "an ingestion batch started",
    "source.flowRunSuccess": "an ingestion batch succeeded",
    "source.flowRunFailure": "an ingestion batch failed",
    "ingestion.rowsRejected": "an ingestion batch rejected more rows than ALERT_REJECTED_RATE",
    "segment.jobFailed": "a segment job failed",
    "segment.sizeChanged": "a segment's size changed by more than ALERT_SIZE_CHANGE between two jobs",
    "destination.flowRunStart": "an export run started",
    "destination.flowRunSuccess": "an export run succeeded",
    "destination.flowRunFailure": "an export run failed",
    "destination.skippedRateExceeded": "an export run excluded more profiles than ALERT_EXCLUDED_RATE",
    "destination.flowRunDelayed": "a dataflow's scheduled run has not happened ALERT_DELAY_MINUTES after its slot",
    "audienceLoad.failed": "a Campaign audience load failed",
    "job.delayed": "a job has been PROCESSING longer than ALERT_DELAY_MINUTES",
    "job.abandoned": "a job's worker stopped renewing its lease and nobody took it over within one more lease",
    "subscription.disabled": "a webhook subscription was disabled after its deliveries kept failing",
}
_FLOW = {JobType.INGESTION: "source", JobType.EXPORT: "destination"}


class Alert(ApiModel):
    id: str
    type: str
    subject: str
    message: str
    created: dt.datetime
    job_id: str | None = None
    job_type: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    link: str | None = Field(None, description="Where to look: the job's API route.")


def alert_id(alert_type: str, key: str) -> str:
    safe = "".join("_" if c in "/\\#?" or ord(c) < 32 else c for c in key)
    return f"{alert_type}--{safe}"[:500]


class AlertStore:
    def __init__(self, table: EntityTable) -> None:
        self.table = table

    def add(self, alert: Alert) -> bool:
        """Store the alert unless the same one is already stored; True when it is new."""
        try:
            self.table.insert({"PartitionKey": "alert", "RowKey": alert.id, "definition": alert.model_dump_json()})
        except Conflict:
            return False
        key = f"{newest_first(alert.created)}_{alert.id}"
        self.table.upsert({"PartitionKey": INDEX, "RowKey": key, "type": alert.type, "id": alert.id})
        return True

    def list(
        self, *, types: list[str] | None = None, since: dt.datetime | None = None, limit: int = 100
    ) -> list[Alert]:
        """Newest first, read from the index: about `limit` index entries and `limit` alerts."""
        clauses, params = ["PartitionKey eq @pk"], {"pk": INDEX}
        if types:
            clauses.append("( " + " or ".join(f"type eq @t{i}" for i in range(len(types))) + " )")
            params.update({f"t{i}": t for i, t in enumerate(types)})
        if since:
            clauses.append("RowKey lt @since")
            params["since"] = newer_than_bound(since)
        keys = self.table.first(" and ".join(clauses), parameters=params, count=limit)
        return [Alert.model_validate_json(self.table.get("alert", k["id"])["definition"]) for k in keys]


INDEX = "newest"  # the partition of the alerts table that lists every alert newest first


class AlertRules:
    """The rules, with their thresholds from the settings."""

    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.account = account
        self.store = AlertStore(EntityTable(account.table(settings.table_name("alerts"))))
        self.jobs = JobStore(EntityTable(account.table(settings.table_name("jobs"))))

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> AlertRules:
        return cls(settings=settings, account=account)

    def raise_alert(
        self, alert_type: str, key: str, subject: str, message: str, now: dt.datetime, job: Job | None = None, **metrics
    ) -> Alert | None:
        alert = Alert(
            id=alert_id(alert_type, key),
            type=alert_type,
            subject=subject,
            message=message,
            created=now,
            job_id=job.id if job else None,
            job_type=job.type.value if job else None,
            metrics=metrics,
            link=f"/api/jobs/{job.id}" if job else None,
        )
        if not self.store.add(alert):
            return None
        for listener in _LISTENERS:
            listener(self.settings, self.account, alert)
        return alert

    @staticmethod
    def listen(listener: AlertListener) -> None:
        """Hand every new alert to `listener(settings, account, alert)`: `shared.app` subscribes the webhooks,
        which sit above the rules (they raise alerts of their own)."""
        if listener not in _LISTENERS:
            _LISTENERS.append(listener)

    # Rules on a job's start and end --------------------------------------------------------------

    def on_job(self, job: Job) -> list[Alert]:
        raised = [a for a in self._rules(job) if a is not None]
        for a in raised:
            log.info("alert %s: %s", a.type, a.message)
        return raised

    def _rules(self, job: Job) -> list[Alert | None]:
        at = job.ended or job.started or job.created
        flow = _FLOW.get(job.type)
        out: list[Alert | None] = []
        what = f"{job.type.value} job {job.id} ({job.subject or job.source})"
        if job.status is JobStatus.PROCESSING:
            if flow:
                out.append(self.raise_alert(f"{flow}.flowRunStart", job.id, job.subject, f"{what} started", at, job))
            return out
        if not job.status.terminal:
            return out
        first_error = job.errors[0].message if job.errors else ""
        if flow and job.status is JobStatus.SUCCEEDED:
            out.append(self.raise_alert(f"{flow}.flowRunSuccess", job.id, job.subject, f"{what} succeeded", at, job))
        if flow and job.status is JobStatus.FAILED:
            message = f"{what} failed: {first_error}"
            out.append(self.raise_alert(f"{flow}.flowRunFailure", job.id, job.subject, message, at, job))
        ingested = IngestionMetrics.model_validate(job.metrics) if job.type is JobType.INGESTION else None
        if ingested and ingested.rejected_rate > self.settings.alert_rejected_rate:
            rate = ingested.rejected_rate
            message = (
                f"{what} rejected {ingested.rows_rejected:,} of {ingested.rows_read:,} rows ({rate:.2%}), over "
                f"{self.settings.alert_rejected_rate:.2%}; see its errors file"
            )
            out.append(
                self.raise_alert("ingestion.rowsRejected", job.id, job.subject, message, at, job, rejectedRate=rate)
            )
        if job.type is JobType.SEGMENT and job.status is JobStatus.FAILED:
            out.append(
                self.raise_alert("segment.jobFailed", job.id, job.subject, f"{what} failed: {first_error}", at, job)
            )
        if job.type is JobType.SEGMENT and job.status is JobStatus.SUCCEEDED:
            out += self._size_changes(job, at)
        exported = ExportMetrics.model_validate(job.metrics) if job.type is JobType.EXPORT and job.metrics else None
        if exported and exported.excluded_rate > self.settings.alert_excluded_rate:
            message = (
                f"{what} excluded {exported.excluded_rate:.2%} of the profiles it received, over "
                f"{self.settings.alert_excluded_rate:.2%}: {exported.excluded}"
            )
            out.append(
                self.raise_alert(
                    "destination.skippedRateExceeded", job.id, job.subject, message, at, job, excluded=exported.excluded
                )
            )
        if job.type is JobType.AUDIENCE_LOAD and job.status is JobStatus.FAILED:
            out.append(
                self.raise_alert("audienceLoad.failed", job.id, job.subject, f"{what} failed: {first_error}", at, job)
            )
        return out

    def _size_changes(self, job: Job, at: dt.datetime) -> list[Alert | None]:
        # The segment job before this one: one read of the newest-first index, however long the history.
        earlier = self.jobs.page(types=[JobType.SEGMENT], status=JobStatus.SUCCEEDED, until=job.created, limit=1).items
        if not earlier:
            return []
        sizes = _sizes(job)
        before = _sizes(earlier[0])
        out: list[Alert | None] = []
        for sid, now_size in sizes.items():
            old = before.get(sid)
            if not old or abs(now_size - old) / old <= self.settings.alert_size_change:
                continue
            change = (now_size - old) / old
            message = (
                f"segment {sid} went from {old:,} to {now_size:,} members ({change:+.0%}) between segment jobs "
                f"{earlier[0].id} and {job.id}, more than ±{self.settings.alert_size_change:.0%}"
            )
            out.append(
                self.raise_alert(
                    "segment.sizeChanged", f"{job.id}-{sid}", sid, message, at, job, before=old, after=now_size
                )
            )
        return out

    # The monitor timer ----------------------------------------------------------------------------

    def check_delays(self, *, now: dt.datetime) -> list[Alert]:
        """Jobs PROCESSING too long, and scheduled dataflow slots that have not run."""
        limit = dt.timedelta(minutes=self.settings.alert_delay_minutes)
        raised: list[Alert | None] = self._abandon(now)
        for job_type in JobType:
            for job in self.jobs.list(job_type, status=JobStatus.PROCESSING):
                since = job.started or job.created
                if now - since > limit:
                    minutes = int((now - since).total_seconds() // 60)
                    message = f"{job.type.value} job {job.id} has been PROCESSING for {minutes} minutes"
                    raised.append(self.raise_alert("job.delayed", job.id, job.subject, message, now, job))
        for d in DestinationStore.from_settings(self.settings, self.account).list():
            if not d.enabled or d.schedule.frequency is not Frequency.HOURS:
                continue
            slot = d.schedule.slot(now - limit)
            if slot is None or (d.updated and d.updated > slot):
                continue
            run_id = run_id_for(d, slot)
            if self.jobs.find(JobType.EXPORT, run_id) is None:
                message = f"dataflow {d.id}: the run of slot {slot.isoformat()} has not happened"
                raised.append(self.raise_alert("destination.flowRunDelayed", run_id, d.id, message, now))
        return [a for a in raised if a is not None]

    def _abandon(self, now: dt.datetime) -> list[Alert | None]:
        """Jobs whose lease ended more than a lease ago, with nobody taking them over: FAILED, and an alert."""
        lease = dt.timedelta(seconds=self.settings.job_lease_seconds)
        raised: list[Alert | None] = []
        for job_type in JobType:
            for status in (JobStatus.PROCESSING, JobStatus.CANCELLING):
                for job in self.jobs.list(job_type, status=status):
                    if not job.abandoned(now - lease) or self._resumed(job):
                        continue
                    message = (
                        f"{job.type.value} job {job.id}: its worker stopped renewing the lease "
                        f"(attempt {job.attempt}) and nobody took it over"
                    )
                    error = JobError(code="abandoned", message=message)
                    failed = job.model_copy(update={"status": JobStatus.FAILED, "ended": now, "errors": [error]})
                    try:
                        self.jobs.save(failed.model_copy(update={"errors_total": 1, "lease_until": None}))
                    except Conflict:  # taken over or renewed meanwhile: not abandoned after all
                        continue
                    raised.append(self.raise_alert("job.abandoned", job.id, job.subject, message, now, failed))
        return raised

    def _resumed(self, job: Job) -> bool:
        """A fanned-out segment job whose shards all finished but whose fan-in worker died: published now,
        rather than failed (its shards' work is done; only the publishing was lost)."""
        if job.type is not JobType.SEGMENT:
            return False
        done = SegmentJobRunner.from_settings(self.settings, self.account).resume_fan_in(job)
        return done is not None and done.status.terminal


def _sizes(job: Job) -> dict[str, int]:
    return SegmentJobMetrics.model_validate(job.metrics).sizes()
