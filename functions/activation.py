"""Activation: destinations and governance policies over HTTP, the hourly export timer, on-demand runs
through a queue, and the DLZ retention timer."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import utc_now
from functions.http import answers, body_of, json_response
from shared.activation import Activation, Destination, GovernancePolicy
from shared.activation.targets import TargetMapping
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _activation() -> Activation:
    return Activation.from_settings(get_settings())


@bp.function_name("export_runs")
@bp.timer_trigger(arg_name="timer", schedule="%EXPORT_SCHEDULE%", run_on_startup=False)
def export_runs(timer: func.TimerRequest) -> None:
    for job in _activation().run_due(now=utc_now()):
        log.info("export run %s: %s %s", job.id, job.status.value, job.metrics.get("identitiesActivated"))


@bp.function_name("export_run_queued")
@bp.queue_trigger(arg_name="message", queue_name="%EXPORT_RUNS_QUEUE%", connection="AzureWebJobsStorage")
def export_run_queued(message: func.QueueMessage) -> None:
    job = _activation().run_queued(message.get_json())
    log.info("export run %s: %s", job.id, job.status.value)


@bp.function_name("dlz_retention")
@bp.timer_trigger(arg_name="timer", schedule="%DLZ_RETENTION_SCHEDULE%", run_on_startup=False)
def dlz_retention(timer: func.TimerRequest) -> None:
    deleted = _activation().cleanup(now=utc_now())
    log.info("deleted %d DLZ files past retention", len(deleted))


@bp.function_name("destinations")
@bp.route(route="destinations/{id?}", methods=["GET", "PUT", "DELETE"])
@answers
def destinations(req: func.HttpRequest) -> func.HttpResponse:
    activation = _activation()
    destination_id = req.route_params.get("id")
    if req.method == "PUT" and destination_id:
        destination = Destination.model_validate({**body_of(req), "id": destination_id})
        return json_response(activation.save(destination, now=utc_now()))
    if req.method == "DELETE" and destination_id:
        activation.delete(destination_id)
        return func.HttpResponse(status_code=204)
    if destination_id:
        return json_response(activation.destinations.get(destination_id))
    return json_response(activation.destinations.list())


@bp.function_name("destination_run")
@bp.route(route="destinations/{id}/run", methods=["POST"])
@answers
def destination_run(req: func.HttpRequest) -> func.HttpResponse:
    job = _activation().enqueue(req.route_params["id"], now=utc_now())
    response = json_response(job.model_dump(mode="json"), status=202)
    response.headers["Location"] = f"/api/dataflows/{req.route_params['id']}/runs"
    return response


@bp.function_name("dataflow_runs")
@bp.route(route="dataflows/{id}/runs", methods=["GET"])
@answers
def dataflow_runs(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(_activation().runs(req.route_params["id"]))


@bp.function_name("governance_policies")
@bp.route(route="policies/{id?}", methods=["GET", "PUT", "DELETE"])
@answers
def governance_policies(req: func.HttpRequest) -> func.HttpResponse:
    store = _activation().policies
    policy_id = req.route_params.get("id")
    if req.method == "PUT" and policy_id:
        return json_response(store.put(GovernancePolicy.model_validate({**body_of(req), "id": policy_id})))
    if req.method == "DELETE" and policy_id:
        store.delete(policy_id)
        return func.HttpResponse(status_code=204)
    if policy_id:
        return json_response(store.get(policy_id))
    return json_response(store.list())


@bp.function_name("target_mappings")
@bp.route(route="target-mappings/{id?}", methods=["GET", "PUT"])
@answers
def target_mappings(req: func.HttpRequest) -> func.HttpResponse:
    store = _activation().targets
    mapping_id = req.route_params.get("id")
    if req.method == "PUT" and mapping_id:
        return json_response(store.put(TargetMapping.model_validate({**body_of(req), "id": mapping_id})))
    if mapping_id:
        return json_response(store.get(mapping_id))
    return json_response(store.list())
