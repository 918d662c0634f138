"""Leases, not eternal claims: a job whose worker died is taken over by the next trigger or redelivered
message once its lease has ended, and run again from a clean start; the monitor fails one that nobody
takes over within one more lease. A worker that is alive keeps its claim however long it works."""

from __future__ import annotations

import datetime as dt
import json
import time

from azure.functions.timer import TimerRequest

from dev.host import deliver_queue_messages, fire_blob_trigger
from functions.activation import export_run_queued
from functions.monitoring import monitor
from functions.segmentation import segment_job_daily
from shared.activation import Activation
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.segmentation.memberships import MembershipStore
from shared.segmentation.runner import segment_job_id
from shared.storage import StorageAccount
from tests import test_activation
from tests.conftest import NOW
from tests.test_activation import T1, dlz, exported, put_destination, segment_job, sha
from tests.test_alerts import rules
from tests.test_campaign import SEED, list_members
from tests.test_http import body, call

crm = test_activation.crm


def jobs(settings) -> JobStore:
    return JobStore.from_settings(settings, StorageAccount.from_settings(settings))


def died_holding(settings, job: Job) -> Job:
    """What a worker killed mid-job leaves behind: the job claimed under a lease nobody renews."""
    claim = jobs(settings).claim(job)
    assert claim.ours
    return claim.job


def test_a_segment_job_whose_worker_died_is_run_again_by_the_retry_for_the_same_now(settings, crm, clock):
    job_id = segment_job_id(NOW, None)
    held = died_holding(
        settings, Job(id=job_id, type=JobType.SEGMENT, subject="all segments", created=NOW, started=NOW)
    )

    # The timer's retry while the lease still runs: someone holds it, so nothing runs twice.
    clock.move_to(NOW, tick=False)
    segment_job_daily.build().get_user_function()(TimerRequest(past_due=True))
    assert jobs(settings).get(JobType.SEGMENT, job_id).status is JobStatus.PROCESSING
    assert MembershipStore.from_settings(settings, StorageAccount.from_settings(settings)).current_profiles() is None

    # Past the lease the dead worker took (the clock ticked from NOW while the fixtures ran: not NOW + lease).
    clock.move_to(held.lease_until + dt.timedelta(seconds=1), tick=True)
    done = segment_job(settings, NOW)  # the retry, as of the same `now`
    assert (done.id, done.attempt, done.metrics["segmentedProfileCounter"]) == (job_id, 2, {"all": 4, "gold": 3})
    assert done.lease_until is None and done.errors == []
    assert (
        MembershipStore.from_settings(settings, StorageAccount.from_settings(settings)).current_profiles().job_id
        == job_id
    )


def test_an_export_run_whose_worker_died_is_finished_by_the_redelivered_message(settings, account, crm, clock):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    activation = Activation.from_settings(settings)
    queued = activation.exports.enqueue("gold-email", now=T1)
    queue = account.queue(settings.export_runs_queue)
    [message] = queue.receive_messages(visibility_timeout=1)  # the first worker takes the message...
    died_holding(settings, queued)  # ...claims the run and is killed before writing anything
    assert deliver_queue_messages(export_run_queued, queue) == 0  # invisible until its timeout ends
    time.sleep(1.5)

    assert deliver_queue_messages(export_run_queued, queue) == 1  # redelivered while the lease runs: a no-op
    assert jobs(settings).get(JobType.EXPORT, queued.id).status is JobStatus.PROCESSING
    queue.send_message(message.content)  # redelivered again, after the lease
    clock.move_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.job_lease_seconds + 1))
    assert deliver_queue_messages(export_run_queued, queue) == 1

    run = jobs(settings).get(JobType.EXPORT, queued.id)
    assert (run.status, run.attempt) == (JobStatus.SUCCEEDED, 2)
    assert exported(settings, account, run) == {sha("ann@example.com"): "realized", sha("bob@example.com"): "realized"}
    assert json.loads(dlz(settings, account).get(run.source))["runId"] == run.id


def test_an_audience_load_whose_worker_died_is_loaded_whole_by_the_next_trigger(settings, account, crm, clock):
    from functions.campaign import campaign_audience_load, campaign_recipients
    from shared.campaign.loads import load_id

    assert call(campaign_recipients, "POST", "campaign/recipients", {}, SEED.encode()).status_code == 200
    assert put_destination(segments=["all"]).status_code == 200
    segment_job(settings, T1)
    run = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(run.source))
    [entry] = manifest["files"]
    name = entry["name"]
    load = Job(id=load_id(name, blobs.etag(name)), type=JobType.AUDIENCE_LOAD, source=name, created=T1, started=T1)
    died_holding(settings, load)

    fire_blob_trigger(campaign_audience_load, blobs, run.source)  # the manifest's trigger: the file is held
    assert jobs(settings).get(JobType.AUDIENCE_LOAD, load.id).status is JobStatus.PROCESSING
    clock.move_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.job_lease_seconds + 1))
    fire_blob_trigger(campaign_audience_load, blobs, name)  # the host's retry of the file's own trigger

    done = jobs(settings).get(JobType.AUDIENCE_LOAD, load.id)
    assert (done.status, done.attempt, done.metrics["listSize"]) == (JobStatus.SUCCEEDED, 2, 2)
    assert list_members("all") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}


def test_the_monitor_fails_a_job_nobody_took_over_within_one_more_lease(settings, clock):
    lease = dt.timedelta(seconds=settings.job_lease_seconds)
    died_holding(settings, Job(id="lost", type=JobType.FEEDBACK, created=NOW, started=NOW))
    assert rules(settings).check_delays(now=NOW + 2 * lease - dt.timedelta(seconds=5)) == []
    clock.move_to(NOW + 2 * lease + dt.timedelta(seconds=5))
    monitor.build().get_user_function()(TimerRequest(past_due=False))
    failed = jobs(settings).get(JobType.FEEDBACK, "lost")
    assert failed.status is JobStatus.FAILED and failed.errors[0].code == "abandoned"
    from functions.monitoring import alerts

    [alert] = body(call(alerts, "GET", "alerts?type=job.abandoned"))
    assert alert["jobId"] == "lost" and "stopped renewing the lease" in alert["message"]


def test_a_worker_that_is_alive_keeps_its_claim_however_long_it_works(settings, account):
    table = JobStore.from_settings(settings, account).table
    short = JobStore(table, lease=dt.timedelta(seconds=1))
    held = short.claim(Job(id="slow", type=JobType.INGESTION, created=NOW, started=NOW)).job
    with short.leased(held):
        time.sleep(2.5)  # two and a half leases, renewed every third of one
        assert not short.claim(Job(id="slow", type=JobType.INGESTION, created=NOW, started=NOW)).ours
    finished = short.finish(held, JobStatus.SUCCEEDED, time.monotonic(), NOW, [])
    assert (finished.status, finished.attempt, finished.lease_until) == (JobStatus.SUCCEEDED, 1, None)
