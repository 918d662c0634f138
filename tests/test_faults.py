"""Fault injection: storage failing at chosen calls (connection resets, timeouts, 503s after the work was
done), through the real SDK pipeline against Azurite. After each, nothing is half-written or unreadable,
nothing stays PROCESSING past its lease, and a retry gives the rows an undisturbed run gives."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dev.host import deliver_queue_messages, fire_blob_trigger
from functions.activation import export_run_queued
from functions.campaign import campaign_audience_load, campaign_recipients
from shared.activation import Activation
from shared.campaign.service import Campaign
from shared.jobs import JobStatus, JobType
from shared.segmentation.memberships import MembershipStore
from shared.segmentation.runner import SegmentJobRunner
from shared.storage import BlobStore, StorageAccount
from tests import test_activation, test_campaign
from tests.conftest import NOW
from tests.faults import Fault, injected, put_to
from tests.helpers import ndjson, profile
from tests.test_activation import T1, dlz, exported, put_destination, segment_job, sha
from tests.test_campaign import SEED, list_members
from tests.test_http import call
from tests.test_leases import jobs

crm = test_activation.crm
recipients = test_campaign.recipients
ROOT = Path(__file__).resolve().parent.parent
GOLD_AND_ALL = {"all": 4, "gold": 3}  # what an undisturbed job over the crm fixture gives


def test_a_segment_job_whose_storage_went_away_mid_run_is_run_again_after_its_lease(settings, crm, clock):
    # Storage goes away once the first membership snapshot is uploaded: every call fails from then on,
    # the job's own record included, so the job cannot even record that it failed.
    with injected(Fault(after=put_to(settings.segments_container))), pytest.raises(Exception, match="injected"):
        SegmentJobRunner.from_settings(settings).run(now=NOW)
    [stuck] = jobs(settings).list(JobType.SEGMENT)
    assert stuck.status is JobStatus.PROCESSING
    assert MembershipStore.from_settings(settings, StorageAccount.from_settings(settings)).current_profiles() is None

    held = SegmentJobRunner.from_settings(settings).run(now=NOW)  # the retry, within the lease: someone holds it
    assert (held.status, held.attempt) == (JobStatus.PROCESSING, 1)
    # Past the lease the first worker took (the clock ticks from NOW, so it ended later than NOW + the lease).
    clock.move_to(stuck.lease_until + dt.timedelta(seconds=1))
    done = segment_job(settings, NOW)
    assert (done.id, done.attempt, done.metrics["segmentedProfileCounter"]) == (stuck.id, 2, GOLD_AND_ALL)


@pytest.mark.parametrize("kind", ["reset", "timeout"])
def test_an_export_whose_manifest_cannot_be_written_leaves_no_files_and_its_redelivery_exports(
    settings, account, crm, kind
):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    queued = Activation.from_settings(settings).exports.enqueue("gold-email", now=T1)
    queue = account.queue(settings.export_runs_queue)
    [message] = queue.peek_messages()
    manifest = lambda method, url: method == "PUT" and "manifest" in url  # noqa: E731
    with injected(Fault(manifest, kind=kind)), pytest.raises(Exception, match="injected"):
        deliver_queue_messages(export_run_queued, queue)
    failed = jobs(settings).get(JobType.EXPORT, queued.id)
    assert failed.status is JobStatus.FAILED and failed.retryable
    assert list(dlz(settings, account).names()) == []  # the committed files were taken back

    queue.send_message(message.content)  # the host's redelivery of the message
    deliver_queue_messages(export_run_queued, queue)
    run = jobs(settings).get(JobType.EXPORT, queued.id)
    assert (run.status, run.attempt) == (JobStatus.SUCCEEDED, 2)
    assert exported(settings, account, run) == {sha("ann@example.com"): "realized", sha("bob@example.com"): "realized"}


def test_an_audience_load_that_cannot_publish_its_list_changes_nothing_and_the_retry_loads_it(settings, account, crm):
    assert call(campaign_recipients, "POST", "campaign/recipients", {}, SEED.encode()).status_code == 200
    assert put_destination(segments=["all"]).status_code == 200
    segment_job(settings, T1)
    run = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    with injected(Fault(put_to(settings.campaign_container))), pytest.raises(Exception, match="injected"):
        fire_blob_trigger(campaign_audience_load, blobs, run.source)
    [load] = jobs(settings).list(JobType.AUDIENCE_LOAD)
    assert load.status is JobStatus.FAILED and load.retryable
    assert call(campaign_recipients, "GET", "campaign/recipients", {}).status_code == 200

    fire_blob_trigger(campaign_audience_load, blobs, run.source)  # the host's retry
    done = jobs(settings).get(JobType.AUDIENCE_LOAD, load.id)
    assert (done.status, done.attempt, done.metrics["listSize"]) == (JobStatus.SUCCEEDED, 2, 2)
    assert list_members("all") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}


def test_a_lost_answer_to_a_job_claim_still_runs_the_job(settings, landing_zone):
    """The insert of the batch's record happens, but its answer is lost: the claim is still this worker's."""
    test_activation.create_dataset(settings, "crm")
    insert = lambda method, url: method == "POST" and url.rstrip("/").endswith("jobs")  # noqa: E731
    with injected(Fault(insert, kind="503", times=1)):
        job = landing_zone.ingest("crm/1.ndjson", ndjson(profile(crm="c-1", email="a@example.com")))
    assert job.status is JobStatus.SUCCEEDED, job
    assert (job.attempt, job.metrics["rowsAccepted"]) == (1, 1)


def test_a_batch_whose_lake_write_fails_is_ingested_whole_by_the_hosts_retry(settings, landing_zone):
    test_activation.create_dataset(settings, "crm")
    data = ndjson(*(profile(crm=f"c-{i}", email=f"p{i}@example.com") for i in range(50)))
    landing_zone.drop("crm/1.ndjson", data)
    with injected(Fault(put_to(settings.lake_container))), pytest.raises(Exception, match="injected"):
        landing_zone.trigger("crm/1.ndjson")
    failed = jobs(settings).list(JobType.INGESTION)[0]
    assert failed.status is JobStatus.FAILED and failed.retryable
    # A 503 after the lake write happened is retried by the SDK and changes nothing.
    with injected(Fault(put_to(settings.lake_container), kind="503", times=1)):
        done = landing_zone.trigger("crm/1.ndjson")
    assert (done.id, done.status, done.attempt, done.metrics["rowsAccepted"]) == (failed.id, JobStatus.SUCCEEDED, 2, 50)
    assert json.dumps(done.errors) == "[]" or done.errors == []


def python(code: str) -> subprocess.Popen:
    """A worker process running `code` with this test's app settings (they are in the environment)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finished(*workers: subprocess.Popen) -> list[str]:
    outputs = [w.communicate(timeout=120)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    return outputs


def test_a_segment_job_whose_worker_is_killed_is_taken_over_after_its_lease(settings, crm, clock):
    worker = python(
        f"""
        import datetime as dt
        from shared.segmentation.runner import SegmentJobRunner
        from shared.settings import get_settings
        from tests.faults import Fault, injected, put_to
        settings = get_settings()
        with injected(Fault(put_to(settings.segments_container), kind="hang")):  # stops at its first upload
            SegmentJobRunner.from_settings(settings).run(now=dt.datetime.fromisoformat("{NOW.isoformat()}"))
        """
    )
    deadline = time.monotonic() + 60
    while not (held := jobs(settings).list(JobType.SEGMENT)) or held[0].status is not JobStatus.PROCESSING:
        assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read().decode()
        time.sleep(0.2)
    time.sleep(1)  # well inside its work now
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)

    [stuck] = jobs(settings).list(JobType.SEGMENT)
    assert stuck.status is JobStatus.PROCESSING and stuck.lease_until is not None
    clock.move_to(stuck.lease_until + dt.timedelta(seconds=1))
    done = segment_job(settings, NOW)
    assert (done.id, done.attempt, done.metrics["segmentedProfileCounter"]) == (stuck.id, 2, GOLD_AND_ALL)


def test_two_processes_firing_the_same_blob_ingest_it_once(settings, account, landing_zone):
    test_activation.create_dataset(settings, "crm")
    landing_zone.drop("crm/1.ndjson", ndjson(*(profile(crm=f"c-{i}", email=f"p{i}@example.com") for i in range(200))))
    fire = """
        from dev.host import fire_blob_trigger
        from functions.ingestion import ingest_landing_file
        from shared.settings import get_settings
        from shared.storage import BlobStore, StorageAccount
        settings = get_settings()
        landing = BlobStore(StorageAccount.from_settings(settings).container(settings.landing_container))
        fire_blob_trigger(ingest_landing_file, landing, "crm/1.ndjson")
        """
    finished(python(fire), python(fire))
    [batch] = jobs(settings).list(JobType.INGESTION)
    assert (batch.status, batch.attempt, batch.metrics["rowsAccepted"]) == (JobStatus.SUCCEEDED, 1, 200)
    lake = BlobStore(account.container(settings.lake_container))
    assert len([n for n in lake.names() if n.endswith(".parquet")]) == 1


def test_two_processes_running_the_same_timer_and_message_do_the_work_once(settings, account, crm):
    assert put_destination().status_code == 200
    timer = f"""
        import datetime as dt
        from shared.segmentation.runner import SegmentJobRunner
        from shared.settings import get_settings
        SegmentJobRunner.from_settings(get_settings()).run(now=dt.datetime.fromisoformat("{T1.isoformat()}"))
        """
    finished(python(timer), python(timer))
    [job] = jobs(settings).list(JobType.SEGMENT)
    assert (job.status, job.attempt, job.metrics["segmentedProfileCounter"]) == (JobStatus.SUCCEEDED, 1, GOLD_AND_ALL)

    queued = Activation.from_settings(settings).exports.enqueue("gold-email", now=T1)
    [message] = account.queue(settings.export_runs_queue).peek_messages()
    deliver = f"""
        import azure.functions as func
        from functions.activation import export_run_queued
        body = {message.content!r}.encode()
        export_run_queued.build().get_user_function()(func.QueueMessage(id="m", body=body))
        """
    finished(python(deliver), python(deliver))
    run = jobs(settings).get(JobType.EXPORT, queued.id)
    assert (run.status, run.attempt) == (JobStatus.SUCCEEDED, 1)
    names = list(dlz(settings, account).names())
    assert len(names) == 2 and exported(settings, account, run) == {
        sha("ann@example.com"): "realized",
        sha("bob@example.com"): "realized",
    }


def test_a_log_export_that_fails_before_its_watermark_moves_lands_its_file_once(settings, account, crm, recipients):
    from shared.campaign.deliveries import DeliveryRequest
    from tests.test_campaign import load_run

    assert put_destination(segments=["all"]).status_code == 200
    segment_job(settings, T1)
    load_run(settings, account, Activation.from_settings(settings).exports.run("gold-email", now=T1))
    recipients.deliveries.deliver(DeliveryRequest(list_id="all", open_rate=1), now=T1 + dt.timedelta(hours=1))
    later = T1 + dt.timedelta(days=1)
    watermark = lambda method, url: "watermark" in url and method in ("PUT", "PATCH", "MERGE")  # noqa: E731
    with injected(Fault(watermark)), pytest.raises(Exception, match="injected"):
        Campaign.from_settings(settings).feedback.export_logs(now=later)
    [failed] = [j for j in jobs(settings).list(JobType.FEEDBACK) if j.status is JobStatus.FAILED]
    landing = BlobStore(account.container(settings.landing_container))
    logs = f"{settings.campaign_feedback_dataset}/"
    [name] = list(landing.names(logs))
    etag = landing.etag(name)

    done = Campaign.from_settings(settings).feedback.export_logs(now=later)  # the host's retry
    assert (done.id, done.status, done.attempt) == (failed.id, JobStatus.SUCCEEDED, 2)
    assert list(landing.names(logs)) == [name] and landing.etag(name) == etag  # not a new file to ingest again
