"""Activation: destinations and governance policies over HTTP, the hourly export timer, on-demand runs
through a queue, and the DLZ retention timer."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import utc_now
from functions.http import Op, answers, json_response, read
from shared.activation import Activation, DataflowRun, Destination, GovernancePolicy
from shared.activation.targets import TargetMapping
from shared.jobs import Job
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _activation() -> Activation:
    return Activation.from_settings(get_settings())


@bp.function_name("export_runs")
@bp.timer_trigger(arg_name="timer", schedule="%EXPORT_SCHEDULE%", run_on_startup=False)
def export_runs(timer: func.TimerRequest) -> None:
    for job in _activation().exports.run_due(now=utc_now()):
        log.info("export run %s: %s %s", job.id, job.status.value, job.metrics.get("identitiesActivated"))


@bp.function_name("export_run_queued")
@bp.queue_trigger(arg_name="message", queue_name="%EXPORT_RUNS_QUEUE%", connection="AzureWebJobsStorage")
def export_run_queued(message: func.QueueMessage) -> None:
    job = _activation().exports.run_queued(message.get_json())
    log.info("export run %s: %s", job.id, job.status.value)


@bp.function_name("dlz_retention")
@bp.timer_trigger(arg_name="timer", schedule="%DLZ_RETENTION_SCHEDULE%", run_on_startup=False)
def dlz_retention(timer: func.TimerRequest) -> None:
    deleted = _activation().retention.cleanup(now=utc_now())
    log.info("deleted %d DLZ files past retention", len(deleted))


@bp.function_name("destinations")
@bp.route(route="destinations/{id?}", methods=["GET", "PUT", "DELETE"])
@answers(
    Op("get", "/destinations", "Campaign destinations (dataflows)", response=list[Destination]),
    Op("get", "/destinations/{id}", "One destination", response=Destination),
    Op(
        "put",
        "/destinations/{id}",
        "Save a destination (guardrails 400, governance 422)",
        request=Destination,
        response=Destination,
    ),
    Op("delete", "/destinations/{id}", "Delete a destination", status=204),
)
def destinations(req: func.HttpRequest) -> func.HttpResponse:
    activation = _activation()
    destination_id = req.route_params.get("id")
    if req.method == "PUT" and destination_id:
        return json_response(activation.destinations.save(read(req, Destination, id=destination_id), now=utc_now()))
    if req.method == "DELETE" and destination_id:
        activation.destinations.delete(destination_id)
        return func.HttpResponse(status_code=204)
    if destination_id:
        return json_response(activation.destinations.get(destination_id))
    return json_response(activation.destinations.list())


@bp.function_name("destination_run")
@bp.route(route="destinations/{id}/run", methods=["POST"])
@answers(
    Op(
        "post",
        "/destinations/{id}/run",
        "Export now: the QUEUED export job",
        response=Job,
        status=202,
        location=True,
    )
)
def destination_run(req: func.HttpRequest) -> func.HttpResponse:
    job = _activation().exports.enqueue(req.route_params["id"], now=utc_now())
    return json_response(job, status=202, location=f"/api/dataflows/{req.route_params['id']}/runs")


@bp.function_name("dataflow_runs")
@bp.route(route="dataflows/{id}/runs", methods=["GET"])
@answers(
    Op("get", "/dataflows/{id}/runs", "A destination's runs per segment, newest first", response=list[DataflowRun])
)
def dataflow_runs(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(_activation().destinations.runs(req.route_params["id"]))


@bp.function_name("governance_policies")
@bp.route(route="policies/{id?}", methods=["GET", "PUT", "DELETE"])
@answers(
    Op("get", "/policies", "Governance policies", response=list[GovernancePolicy]),
    Op("get", "/policies/{id}", "One policy", response=GovernancePolicy),
    Op("put", "/policies/{id}", "Save a policy", request=GovernancePolicy, response=GovernancePolicy),
    Op("delete", "/policies/{id}", "Delete a policy", status=204),
)
def governance_policies(req: func.HttpRequest) -> func.HttpResponse:
    store = _activation().policies
    policy_id = req.route_params.get("id")
    if req.method == "PUT" and policy_id:
        return json_response(store.put(read(req, GovernancePolicy, id=policy_id)))
    if req.method == "DELETE" and policy_id:
        store.delete(policy_id)
        return func.HttpResponse(status_code=204)
    if policy_id:
        return json_response(store.get(policy_id))
    return json_response(store.list())


@bp.function_name("target_mappings")
@bp.route(route="target-mappings/{id?}", methods=["GET", "PUT"])
@answers(
    Op("get", "/target-mappings", "Campaign target mappings", response=list[TargetMapping]),
    Op("get", "/target-mappings/{id}", "One target mapping", response=TargetMapping),
    Op("put", "/target-mappings/{id}", "Save a target mapping", request=TargetMapping, response=TargetMapping),
)
def target_mappings(req: func.HttpRequest) -> func.HttpResponse:
    store = _activation().targets
    mapping_id = req.route_params.get("id")
    if req.method == "PUT" and mapping_id:
        return json_response(store.put(read(req, TargetMapping, id=mapping_id)))
    if mapping_id:
        return json_response(store.get(mapping_id))
    return json_response(store.list())
