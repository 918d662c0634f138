"""Campaign's delivery logs sent back to the platform: every few hours the log rows since the last export
become experience events in `landing`, ingested like any other file."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field

from shared.campaign import recipients as rcp
from shared.campaign.deliveries import EVENT_HORIZON, events_sql
from shared.campaign.tables import CampaignTables
from shared.errors import NotFound
from shared.ingestion.datasets import Dataset, DatasetStore
from shared.jobs import Job, JobStatus, JobType
from shared.models import Metrics
from shared.sql import quote_literal
from shared.storage import BlobStore


class FeedbackMetrics(Metrics):
    """What a log export reports: the window, the deliveries in it, and the events sent back."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    deliveries: int = 0
    events: dict[str, int] = Field(default_factory=dict, description="Events sent back, by event type.")
    events_total: int = 0
    file: str = Field("", description="The NDJSON file in `landing` (none when there was nothing to send).")
    duration_seconds: float | None = None


class FeedbackExport:
    def __init__(self, tables: CampaignTables) -> None:
        self.tables = tables

    def export_logs(self, *, now: dt.datetime) -> Job:
        """Send the log rows since the last export (the watermark) up to `now` to `landing` as experience
        events, one NDJSON file per export, ingested like any other file. Once per `now`."""
        job = Job(
            id=f"feedback-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}",
            type=JobType.FEEDBACK,
            status=JobStatus.PROCESSING,
            subject=self.tables.settings.campaign_feedback_dataset,
            created=now,
            started=now,
        )
        claim = self.tables.jobs.claim(job)
        if not claim.ours:
            return claim.job
        job = claim.job
        return self.tables.jobs.run(job, now, lambda: self._export_logs(job, now))

    def _export_logs(self, job: Job, now: dt.datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        mark = self.tables.deliveries_table.find("watermark", "logs")
        since = dt.datetime.fromisoformat(mark["at"]) if mark else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        recent = [d for d in self.tables.delivery_records.all() if since - EVENT_HORIZON < d.sent_at <= now]
        metrics: dict[str, Any] = {"since": since.isoformat(), "until": now.isoformat(), "deliveries": len(recent)}
        events: dict[str, int] = {}
        name = ""
        current = self.tables.recipients.find(rcp.RECIPIENTS_ID)
        if recent and current is not None:
            dataset = self.tables.settings.campaign_feedback_dataset
            with self.tables.session("logs-") as (con, tmp):
                wanted = {
                    f"{d.id}-{log_name}": d.logs[log_name] for d in recent for log_name in ("broadlog", "trackinglog")
                }
                for local, blob in wanted.items():
                    self.tables.blobs.download(blob, tmp / f"{local}.parquet")
                logs = {
                    log_name: "["
                    + ", ".join(quote_literal(str(tmp / f"{d.id}-{log_name}.parquet")) for d in recent)
                    + "]"
                    for log_name in ("broadlog", "trackinglog")
                }
                recipients = self.tables.recipients_source(current)
                con.execute("CREATE TEMP TABLE events AS " + events_sql(logs, recipients, since, now))
                events = dict(con.execute("SELECT eventType, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall())
                if events:
                    out = tmp / "events.ndjson"
                    con.execute(f"COPY events TO {quote_literal(str(out))} (FORMAT json)")
                    self._ensure_dataset(dataset, now)
                    name = f"{dataset}/campaign-logs-{since:%Y%m%dT%H%M%SZ}-{now:%Y%m%dT%H%M%SZ}.ndjson"
                    # Written once: a rerun (a takeover before the watermark moved) must not land it twice.
                    landing = BlobStore(self.tables.account.container(self.tables.settings.landing_container))
                    landing.put_file(name, out, overwrite=False)
        self.tables.deliveries_table.upsert(
            {"PartitionKey": "watermark", "RowKey": "logs", "at": now.isoformat(), "job": job.id}
        )
        links = {"file": f"{self.tables.settings.landing_container}/{name}"} if name else {}
        metrics = {**metrics, "events": events, "eventsTotal": sum(events.values()), "file": name}
        return FeedbackMetrics.model_validate(metrics).model_dump(mode="json"), {"links": links, "source": name}

    def _ensure_dataset(self, dataset_id: str, now: dt.datetime) -> None:
        datasets = DatasetStore.from_settings(self.tables.settings, self.tables.account)
        try:
            datasets.get(dataset_id)
        except NotFound:
            datasets.save(
                Dataset(id=dataset_id, name="Campaign delivery logs", schema_id="xdm-experienceevent"), now=now
            )
