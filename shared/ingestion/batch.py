"""Batch ingestion: one landed file becomes one batch — read, validated against its dataset's schema,
written to the lake, with a job record and an errors file. The same blob (name + ETag) is ingested once."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from shared.engine import connect
from shared.errors import Conflict, NotFound, ValidationError
from shared.ingestion.datasets import DatasetStore
from shared.ingestion.lake import DATA_FILE, LakeStore
from shared.ingestion.records import inflated
from shared.ingestion.schemas import Schema
from shared.ingestion.validation import CheckedFile, check_file
from shared.jobs import Job, JobError, JobStatus, JobStore, JobType
from shared.models import Metrics
from shared.settings import Settings
from shared.storage import BlobStore, StorageAccount, TooLarge
from shared.timing import Laps

log = logging.getLogger(__name__)

# A failure of this code means "try again": the platform retries the trigger and the batch is re-claimed.


class IngestionMetrics(Metrics):
    """What an ingestion batch reports in its job's metrics (the alert rules read it too)."""

    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    bytes: int = 0
    format: str = ""
    compression: str | None = Field(None, description="`gzip` for a .gz file; `bytes` counts it compressed.")
    partial: bool | None = Field(None, description="Some rows were rejected, the rest accepted.")
    chunks: int | None = Field(None, description="How many chunks the file was validated in (INGESTION_CHUNK_BYTES).")
    profile_store: dict[str, Any] | None = Field(
        None, description="What the batch did to the profile store: new people, merges, rows, phase seconds."
    )
    phase_seconds: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Where the batch's time went, in seconds: download, validate, errors (writing the errors file, when rows "
            "were rejected), write (the lake file), upload, store (the profile store's update)."
        ),
    )
    duration_seconds: float | None = None

    @property
    def rejected_rate(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


@dataclass(frozen=True)
class Checked:
    """What validating a landed file gave: the job (links, metrics), its first errors, and the batch accepted
    into the lake; None when too many rows were rejected (the first error says so)."""

    job: Job
    metrics: IngestionMetrics
    errors: list[JobError]
    errors_total: int
    accepted: AcceptedBatch | None


@dataclass(frozen=True)
class AcceptedBatch:
    """A batch validated into the lake, as a local Parquet file: what the profile store applies."""

    dataset_id: str
    schema: Schema
    file: Path
    batch_id: str
    ingested_at: dt.datetime


# What runs on each accepted batch before its job succeeds (the profile store, registered by `shared.app`):
# made per ingestion from (settings, account), it returns metrics for the job; if it fails, the batch is retried.
BatchListenerFactory = Callable[[Settings, StorageAccount], Callable[[AcceptedBatch, dt.datetime], dict]]
_LISTENERS: list[BatchListenerFactory] = []


def batch_id_for(path: str, etag: str) -> str:
    """The batch of a landed blob version: the same name and ETag always give the same batch."""
    return "b" + hashlib.sha256(f"{path}\n{etag.strip(chr(34))}".encode()).hexdigest()[:24]


def split_landing_path(path: str) -> tuple[str, str]:
    """`{dataset}/{file}` → (dataset, file), refusing paths without a dataset folder."""
    dataset, sep, file_name = path.partition("/")
    if not sep or not dataset or not file_name:
        raise ValidationError(f"{path!r}: files must land in a dataset folder, as '<dataset>/<file>'")
    return dataset, file_name


class BatchIngestion:
    def __init__(
        self,
        *,
        settings: Settings,
        landing: BlobStore,
        lake: LakeStore,
        datasets: DatasetStore,
        jobs: JobStore,
        listeners: list[Callable[[AcceptedBatch, dt.datetime], dict]] | None = None,
    ) -> None:
        self.listeners = listeners or []
        self.settings = settings
        self.landing = landing
        self.lake = lake
        self.datasets = datasets
        self.jobs = jobs

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> BatchIngestion:
        account = account or StorageAccount.from_settings(settings)
        return cls(
            settings=settings,
            landing=BlobStore(account.container(settings.landing_container)),
            lake=LakeStore.from_settings(settings, account),
            datasets=DatasetStore.from_settings(settings, account),
            jobs=JobStore.from_settings(settings, account),
            listeners=[factory(settings, account) for factory in _LISTENERS],
        )

    @staticmethod
    def on_accepted(factory: BatchListenerFactory) -> None:
        """Have every ingestion made from settings hand each accepted batch to `factory(settings, account)`."""
        if factory not in _LISTENERS:
            _LISTENERS.append(factory)

    def ingest(self, path: str, *, now: dt.datetime, etag: str | None = None) -> Job:
        """Ingest the landed file at `path` (relative to the landing container), the version `etag` (the
        current one by default), as of `now`. The file is streamed to local disk, never held in memory."""
        etag = etag or self.landing.etag(path)
        job = self._claim(path, etag, now)
        if job is None:
            return self.jobs.get(JobType.INGESTION, batch_id_for(path, etag))
        claimed = job
        job = self.jobs.attempt(claimed, now, lambda started: self._run(claimed, path, etag, now))
        log.info("batch %s of %s: %s %s", job.id, path, job.status.value, job.metrics)
        return job

    def _claim(self, path: str, etag: str, now: dt.datetime) -> Job | None:
        """Create or take over the batch's job record; None when it is done or another worker holds it."""
        dataset_id = path.partition("/")[0]
        job = Job(
            id=batch_id_for(path, etag),
            type=JobType.INGESTION,
            status=JobStatus.PROCESSING,
            subject=dataset_id,
            source=f"{self.landing.name}/{path}",
            created=now,
            started=now,
            links={"landing": f"{self.landing.name}/{path}", "etag": etag},
        )
        claim = self.jobs.claim(job)
        if not claim.ours:
            log.info("batch %s of %s is already %s; nothing to do", job.id, path, claim.job.status.value)
            return None
        return claim.job

    def _landed(self, path: str, etag: str, tmp: Path) -> tuple[str, str, Schema, Path, int]:
        """The dataset a landed file is for, its file name, the dataset's schema, the file downloaded into `tmp`
        and its size; or why it cannot be read."""
        dataset_id, file_name = split_landing_path(path)
        try:
            dataset = self.datasets.get(dataset_id)
        except NotFound as exc:
            raise ValidationError(f"{path}: unknown dataset {dataset_id!r}; create it before landing files") from exc
        limit = self.settings.ingestion_max_file_bytes
        local = tmp / "landed"
        try:
            size = self.landing.download_version(path, etag, local, max_bytes=limit)
        except TooLarge as exc:
            raise ValidationError(
                f"{path}: {exc.size} bytes is over the limit of {limit} (INGESTION_MAX_FILE_BYTES); split the file"
            ) from exc
        except (NotFound, Conflict) as exc:
            raise ValidationError(
                f"{path}: version {etag} is no longer in the landing container (deleted or replaced before it was "
                "read); a new version is ingested as a batch of its own"
            ) from exc
        return dataset_id, file_name, self.datasets.schemas.get(dataset.schema_id), local, size

    def _run(self, job: Job, path: str, etag: str, now: dt.datetime) -> Job:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
            checked = self._check(job, path, etag, now, Path(tmp))
            if checked.accepted is None:
                return self.jobs.finish(
                    checked.job, JobStatus.FAILED, started, now, checked.errors, errors_total=checked.errors_total
                )
            # The validation's memory (its connection, the file's rows) is gone before the store's update runs.
            laps = Laps()
            applied = {k: v for listener in self.listeners for k, v in listener(checked.accepted, now).items()}
            laps.lap("store")
            metrics = IngestionMetrics.model_validate({**checked.metrics.model_dump(), **applied})
            metrics.phase_seconds.update(laps)  # after the validation's phases
            job = checked.job.model_copy(update={"metrics": metrics.model_dump(exclude_none=True)})
            return self.jobs.finish(
                job, JobStatus.SUCCEEDED, started, now, checked.errors, errors_total=checked.errors_total
            )

    def _check(self, job: Job, path: str, etag: str, now: dt.datetime, tmp: Path) -> Checked:
        """Read and validate the file, a chunk at a time; write the accepted rows to the lake (unless too many
        were rejected) and the rejected ones to its errors file. Nothing this holds in memory outlives the call."""
        laps = Laps()
        dataset_id, file_name, schema, landed, size = self._landed(path, etag, tmp)
        laps.lap("download")
        settings = self.settings
        con = connect(settings, spill_dir=str(tmp))
        try:
            content = inflated(landed, path, limit=settings.ingestion_max_file_bytes, into=tmp / "inflated")
            if content != landed:
                landed.unlink()  # the .gz is not needed once inflated
            checked = check_file(
                con,
                content,
                file_name=path,
                schema=schema,
                work=tmp,
                batch_id=job.id,
                ingested_at=now,
                chunk_bytes=settings.ingestion_chunk_bytes,
                whole_file_limit=settings.ingestion_max_whole_file_bytes,
            )
            laps.lap("validate")
            metrics = IngestionMetrics(
                rows_read=checked.rows_read,
                rows_accepted=checked.accepted,
                rows_rejected=checked.rejected,
                bytes=size,
                format=file_name.lower().removesuffix(".gz").rsplit(".", 1)[-1],
                compression="gzip" if content != landed else None,
                chunks=checked.chunks,
            )
            errors = [
                JobError(code="row", message=f"row {row}{', field ' + f if f else ''}: {reason}")
                for row, f, reason in checked.first_errors(20)
            ]
            links = dict(job.links)
            if checked.rejected:
                checked.write_errors(tmp / "errors.csv")
                self.lake.write_errors(dataset_id, job.id, tmp / "errors.csv")
                links["errors"] = f"{self.lake.blobs.name}/{self.lake.errors_path(dataset_id, job.id)}"
                laps.lap("errors")
            if checked.rows_read == 0:
                raise ValidationError(f"{path}: the file has no rows")
            failure = self._too_many_rejected(checked)
            if failure is not None:
                metrics = metrics.model_copy(update={"phase_seconds": dict(laps)})
                job = job.model_copy(update={"metrics": metrics.model_dump(exclude_none=True), "links": links})
                return Checked(job, metrics, [failure, *errors], checked.rejected + 1, None)
            checked.write_accepted(tmp / DATA_FILE)
            laps.lap("write")
            self.lake.write_batch(dataset_id, job.id, tmp / DATA_FILE)
            laps.lap("upload")
            links["data"] = f"{self.lake.blobs.name}/{self.lake.data_path(dataset_id, job.id)}"
            accepted = AcceptedBatch(dataset_id, schema, tmp / DATA_FILE, job.id, now)
            metrics = metrics.model_copy(update={"partial": checked.rejected > 0, "phase_seconds": dict(laps)})
            return Checked(job.model_copy(update={"links": links}), metrics, errors, checked.rejected, accepted)
        finally:
            con.close()

    def _too_many_rejected(self, checked: CheckedFile) -> JobError | None:
        """The summary error of a batch that rejected more than INGESTION_MAX_REJECTED_RATIO (or every row)."""
        limit = self.settings.ingestion_max_rejected_ratio
        if checked.rejected_ratio <= limit and checked.accepted > 0:
            return None
        return JobError(
            code="rejected_rows",
            message=(
                f"{checked.rejected} of {checked.rows_read} rows rejected ({checked.rejected_ratio:.2%}), over the "
                f"{limit:.2%} allowed (INGESTION_MAX_REJECTED_RATIO); nothing was written to the lake"
            ),
        )
