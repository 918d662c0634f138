"""Segmentation: the daily segment job (timer), on-demand jobs and segment definitions over HTTP."""

from __future__ import annotations

import datetime as dt
import logging

import azure.functions as func

from functions import utc_now
from functions.http import Op, answers, json_response, read
from shared.activation import Activation
from shared.activation.destinations import Frequency
from shared.errors import ValidationError
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.segmentation.definitions import PreviewRequest, SegmentDefinition, SegmentJobRequest, SegmentStore
from shared.segmentation.insight import SegmentInsight
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.storage import StorageAccount

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _activate(job: Job, now: dt.datetime) -> None:
    """Destinations scheduled "after segment evaluation" export as soon as a job has published."""
    if job.status is JobStatus.SUCCEEDED:
        for run in Activation.from_settings(get_settings()).exports.run_due(
            now=now, frequency=Frequency.AFTER_SEGMENT_EVALUATION
        ):
            log.info("export run %s after segment job %s: %s", run.id, job.id, run.status.value)


@bp.function_name("segment_job_daily")
@bp.timer_trigger(arg_name="timer", schedule="%SEGMENT_SCHEDULE%", run_on_startup=False)
def segment_job_daily(timer: func.TimerRequest) -> None:
    now = utc_now()
    job = SegmentJobRunner.from_settings(get_settings()).run(now=now)
    log.info("segment job %s: %s %s", job.id, job.status.value, job.metrics.get("segmentedProfileCounter"))
    _activate(job, now)


@bp.function_name("segment_job_streaming")
@bp.timer_trigger(arg_name="timer", schedule="%STREAMING_SCHEDULE%", run_on_startup=False)
def segment_job_streaming(timer: func.TimerRequest) -> None:
    now = utc_now()
    job = SegmentJobRunner.from_settings(get_settings()).run_streaming(now=now)
    log.info("streaming segment job %s: %s, %s people", job.id, job.status.value, job.metrics.get("evaluatedProfiles"))
    _activate(job, now)


@bp.function_name("segment_jobs")
@bp.route(route="segment-jobs/{id?}", methods=["GET", "POST", "DELETE"])
@answers(
    Op("get", "/segment-jobs", "Segment jobs, newest first", response=list[Job]),
    Op("get", "/segment-jobs/{id}", "One segment job", response=Job),
    Op(
        "post",
        "/segment-jobs",
        "Queue a segment job as of now",
        request=SegmentJobRequest,
        response=Job,
        status=202,
        location=True,
    ),
    Op("delete", "/segment-jobs/{id}", "Cancel a queued or running segment job", response=Job, status=202),
)
def segment_jobs(req: func.HttpRequest) -> func.HttpResponse:
    settings = get_settings()
    if req.method == "POST":
        request = read(req, SegmentJobRequest)
        job = SegmentJobRunner.from_settings(settings).enqueue(now=utc_now(), segment_ids=request.segments or None)
        return json_response(job, status=202, location=f"/api/segment-jobs/{job.id}")
    if req.method == "DELETE" and req.route_params.get("id"):
        return json_response(SegmentJobRunner.from_settings(settings).cancel(req.route_params["id"]), status=202)
    jobs = JobStore.from_settings(settings, StorageAccount.from_settings(settings))
    if req.route_params.get("id"):
        return json_response(jobs.get(JobType.SEGMENT, req.route_params["id"]))
    return json_response(jobs.list(JobType.SEGMENT)[:50])


@bp.function_name("segment_job_queued")
@bp.queue_trigger(arg_name="message", queue_name="%SEGMENT_JOBS_QUEUE%", connection="AzureWebJobsStorage")
def segment_job_queued(message: func.QueueMessage) -> None:
    job = SegmentJobRunner.from_settings(get_settings()).run_queued(message.get_json())
    log.info("queued segment job %s: %s", job.id, job.status.value)
    if job.status.terminal:  # nothing to fan out; otherwise the shard that finishes last activates
        _activate(job, utc_now())


@bp.function_name("segment_shard_queued")
@bp.queue_trigger(arg_name="message", queue_name="%SEGMENT_SHARDS_QUEUE%", connection="AzureWebJobsStorage")
def segment_shard_queued(message: func.QueueMessage) -> None:
    job = SegmentJobRunner.from_settings(get_settings()).run_shard(message.get_json())
    if job is not None:  # this shard finished last and published the job
        log.info("segment job %s: %s %s", job.id, job.status.value, job.metrics.get("segmentedProfileCounter"))
        _activate(job, utc_now())


@bp.function_name("segments")
@bp.route(route="segments/{id?}", methods=["GET", "PUT", "DELETE"])
@answers(
    Op("get", "/segments", "Segment definitions", response=list[SegmentDefinition]),
    Op("get", "/segments/{id}", "One segment definition", response=SegmentDefinition),
    Op(
        "put",
        "/segments/{id}",
        "Save a definition (PQL validated: 400 with line and column)",
        request=SegmentDefinition,
        response=SegmentDefinition,
    ),
    Op("delete", "/segments/{id}", "Delete a definition no other segment or destination uses", status=204),
)
def segments(req: func.HttpRequest) -> func.HttpResponse:
    settings = get_settings()
    store = SegmentStore.from_settings(settings, StorageAccount.from_settings(settings))
    segment_id = req.route_params.get("id")
    if req.method == "PUT" and segment_id:
        return json_response(store.save(read(req, SegmentDefinition, id=segment_id), now=utc_now()))
    if req.method == "DELETE" and segment_id:
        store.delete(segment_id)
        return func.HttpResponse(status_code=204)
    if segment_id:
        return json_response(store.get(segment_id))
    return json_response(store.list())


@bp.function_name("segment_preview")
@bp.route(route="segments-preview", methods=["POST"])
@answers(
    Op("post", "/segments-preview", "Size, entering and exiting profiles of an expression now", request=PreviewRequest)
)
def segment_preview(req: func.HttpRequest) -> func.HttpResponse:
    request = read(req, PreviewRequest)
    insight = SegmentInsight(SegmentJobRunner.from_settings(get_settings()))
    return json_response(insight.preview(request.expression.value, now=utc_now(), segment_id=request.segment_id))


@bp.function_name("segment_explain")
@bp.route(route="segments/{id}/explain", methods=["GET"])
@answers(
    Op("get", "/segments/{id}/explain", "Why one profile is or is not a member", query={"profile": "a profile id"})
)
def segment_explain(req: func.HttpRequest) -> func.HttpResponse:
    profile_id = req.params.get("profile")
    if not profile_id:
        raise ValidationError("name the person: ?profile=<profileId>")
    insight = SegmentInsight(SegmentJobRunner.from_settings(get_settings()))
    return json_response(insight.explain(req.route_params["id"], profile_id, now=utc_now()))
