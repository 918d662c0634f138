"""Profile store rebuilds as jobs: asked for over HTTP, queued, and run by a queue trigger under a lease, so a
long replay of the lake survives a worker that dies and is never run twice at once."""

from __future__ import annotations

import datetime as dt
import logging

from shared.errors import Conflict
from shared.identity.store import ProfileStore
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.settings import Settings
from shared.storage import StorageAccount
from shared.storage.messages import QueueMessage

log = logging.getLogger(__name__)


class ProfileRebuildMessage(QueueMessage):
    """A rebuild on `PROFILE_JOBS_QUEUE`: which job, as of when."""

    job_id: str
    now: dt.datetime


def rebuild_job_id(now: dt.datetime) -> str:
    return f"rebuild-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


class ProfileRebuilds:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.store = ProfileStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.queue = account.queue(settings.profile_jobs_queue)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> ProfileRebuilds:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    def enqueue(self, *, now: dt.datetime) -> Job:
        """Record a rebuild as QUEUED and put it on the queue; the same second asked twice is one job."""
        job = Job(
            id=rebuild_job_id(now),
            type=JobType.PROFILE_REBUILD,
            status=JobStatus.QUEUED,
            subject="profile store",
            created=now,
        )
        try:
            job = self.jobs.create(job)
        except Conflict:
            return self.jobs.get(JobType.PROFILE_REBUILD, job.id)
        ProfileRebuildMessage(job_id=job.id, now=now).send(self.queue)
        return job

    def run_queued(self, message: ProfileRebuildMessage | dict) -> Job:
        message = ProfileRebuildMessage.of(message)
        queued = self.jobs.get(JobType.PROFILE_REBUILD, message.job_id)
        claim = self.jobs.claim(queued.model_copy(update={"started": message.now}))
        if not claim.ours:
            log.info("profile rebuild %s is %s; nothing to do", queued.id, claim.job.status.value)
            return claim.job

        def rebuild() -> tuple[dict, dict]:
            version = self.store.rebuild(now=message.now)
            return version.summary(), {}

        return self.jobs.run(claim.job, message.now, rebuild)
