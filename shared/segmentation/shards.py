"""Segment jobs fanned out by shard. A job's plan (`ShardPlan`: segments, store version, shards) becomes one
task per shard on `SEGMENT_SHARDS_QUEUE`, which the Functions platform spreads over instances. Each shard's
record in Table storage says whether it is QUEUED, DONE (with its results file), FAILED or CANCELLED; the
records are written with ETags, so a redelivered task finds its shard finished and changes nothing. The task
that finishes last wins the fan-in marker (an insert: one winner) and publishes every segment at once."""

from __future__ import annotations

import datetime as dt
import json
import logging
from enum import StrEnum
from typing import Any

from pydantic import Field

from shared.errors import Conflict
from shared.models import ApiModel, Metrics
from shared.segmentation.memberships import SnapshotPart
from shared.settings import Settings
from shared.storage import EntityTable, StorageAccount
from shared.storage.messages import QueueMessage

PLAN_ROW = "_plan"
log = logging.getLogger(__name__)
FAN_IN_ROW = "_fanin"


class ShardPlan(QueueMessage):
    """What a job evaluates, which every shard task carries: its segments, over which store version."""

    job_id: str
    attempt: int
    now: dt.datetime
    segments: list[str]
    store_version: str
    shards: list[int]
    since: dt.datetime | None = None


class ShardTask(QueueMessage):
    """One shard of a planned job, on `SEGMENT_SHARDS_QUEUE`."""

    plan: ShardPlan
    shard: int


class ShardResult(ApiModel):
    """One evaluated shard: each segment's part of the job's snapshots (uploaded, with its counts), the
    segments that failed in it, and its metrics (rows, seconds, memory). A fanned-out shard task stores it as
    a blob that its shard record names."""

    shard: int
    parts: dict[str, SnapshotPart]
    failed: dict[str, str]
    metrics: dict[str, Any]


class ShardMetrics(Metrics):
    """What one shard task reports: its people, the rows it evaluated, and where its time went."""

    shard: int
    profiles: int = 0
    evaluated: int = 0
    seconds: float = 0
    load_seconds: float | None = None
    evaluate_seconds: float | None = None
    membership_seconds: float | None = None
    duckdb_memory_mb: float | None = Field(
        None, alias="duckdbMemoryMB", description="DuckDB's memory in use when the shard's work ended."
    )
    peak_rss_mb: float | None = Field(
        None,
        alias="peakRssMB",
        description="The worker process's peak resident memory during the shard (sampled; its own invocation's "
        "peak when shards run one per invocation).",
    )


class SegmentJobMetrics(Metrics):
    """What a segment job reports in its metrics (the alert rules and the demo read the counters)."""

    segments: int = 0
    total_profiles: int = 0
    evaluated_profiles: int | None = None
    profile_store_version: str | None = None
    shards_planned: int | None = None
    segmentation_seconds: float | None = None
    membership_seconds: float | None = None
    shards: list[ShardMetrics] | None = None
    segmented_profile_counter: dict[str, int] = Field(default_factory=dict)
    segmented_profile_by_status_counter: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per segment: realized, existing and exited counts."
    )
    segment_errors: dict[str, str] | None = Field(None, description="Segments that failed alone, and why.")
    duration_seconds: float | None = None

    def sizes(self) -> dict[str, int]:
        """Each segment's members: realized and existing."""
        counts = self.segmented_profile_by_status_counter
        return {sid: c.get("realized", 0) + c.get("existing", 0) for sid, c in counts.items()}


class ShardStatus(StrEnum):
    QUEUED = "QUEUED"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ShardRecords:
    """One Table partition per job attempt: a row per shard, the plan's row, and the fan-in marker."""

    def __init__(self, table: EntityTable) -> None:
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> ShardRecords:
        return cls(EntityTable(account.table(settings.table_name("segmentshards"))))

    @staticmethod
    def partition(plan: ShardPlan) -> str:
        return f"{plan.job_id}.{plan.attempt}"

    def create(self, plan: ShardPlan, *, planned_at: dt.datetime) -> None:
        """Every shard QUEUED, in transactions of at most 100 (Azure's limit), the plan's row last: until it
        exists, no fan-in can begin."""
        pk = self.partition(plan)
        rows = [{"PartitionKey": pk, "RowKey": f"{s:04d}", "status": ShardStatus.QUEUED.value} for s in plan.shards]
        for start in range(0, len(rows), 100):
            self.table.transact([("upsert", row, {}) for row in rows[start : start + 100]])
        plan_row = {"plannedAt": planned_at, "shards": len(rows), "plan": plan.model_dump_json(by_alias=True)}
        self.table.upsert({"PartitionKey": pk, "RowKey": PLAN_ROW, **plan_row})

    def plan_of(self, job_id: str, attempt: int) -> ShardPlan | None:
        """The plan of a fanned-out job attempt, as its planner recorded it (None for a job run inline)."""
        row = self.table.find(f"{job_id}.{attempt}", PLAN_ROW)
        return ShardPlan.model_validate_json(row["plan"]) if row and row.get("plan") else None

    def get(self, plan: ShardPlan, shard: int) -> dict[str, Any]:
        return self.table.get(self.partition(plan), f"{shard:04d}")

    def finish(self, record: dict[str, Any], status: ShardStatus, **fields: Any) -> bool:
        """Record how a shard ended, if it is still as read; False when another worker finished it first."""
        entity = {
            "PartitionKey": record["PartitionKey"],
            "RowKey": record["RowKey"],
            "status": status.value,
            **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()},
        }
        try:
            self.table.update(entity, etag=record["etag"])
        except Conflict:
            return False
        return True

    def all(self, plan: ShardPlan) -> dict[str, dict[str, Any]]:
        rows = self.table.all("PartitionKey eq @pk", parameters={"pk": self.partition(plan)})
        return {r["RowKey"]: r for r in rows}

    def claim_fan_in(self, plan: ShardPlan, *, now: dt.datetime, lease: dt.timedelta) -> bool:
        """The one worker that inserts the marker publishes; everyone else stops. The marker holds for `lease`:
        if its worker died before publishing, the next worker to look once the lease has ended (a redelivered
        shard task, or the monitor) takes the fan-in over."""
        marker = {"PartitionKey": self.partition(plan), "RowKey": FAN_IN_ROW, "leaseUntil": now + lease}
        try:
            self.table.insert(marker)
            return True
        except Conflict:
            held = self.table.get(marker["PartitionKey"], FAN_IN_ROW)
        if held.get("leaseUntil") is None or held["leaseUntil"] >= now:
            return False
        try:
            self.table.update(marker, etag=held["etag"])
        except Conflict:  # another worker took it over first
            return False
        log.warning("segment job %s: the fan-in's worker stopped before publishing; taking it over", plan.job_id)
        return True


def shard_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for key, r in sorted(records.items()) if not key.startswith("_")]
