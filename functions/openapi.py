"""`GET /api/openapi.json`: the OpenAPI 3.1 document of every HTTP function, its schemas generated from the
pydantic models the functions read and write. A test compares its paths and methods with what the
Functions host indexes, so the document cannot drift from the code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from functions.http import answers, json_response
from shared.activation import DataflowRun, Destination, GovernancePolicy
from shared.activation.targets import TargetMapping
from shared.campaign.deliveries import Delivery, DeliveryRequest
from shared.campaign.snapshots import RestoreRequest, SnapshotRecord, SnapshotVersion
from shared.identity import MergePolicy
from shared.ingestion import Dataset, Schema
from shared.jobs import Job, JobPage
from shared.monitoring.alerts import ALERT_TYPES, Alert
from shared.monitoring.webhooks import Attempt, Subscription, SubscriptionRequest
from shared.segmentation.definitions import PreviewRequest, SegmentDefinition, SegmentJobRequest

bp = func.Blueprint()


class Problem(BaseModel):
    """An error (RFC 9457, `application/problem+json`): what went wrong and what to fix."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class SubscriptionCreated(Subscription):
    secret: str  # shown in this answer only


@dataclass
class Op:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | str | None = None  # a model, or a media type for raw bodies
    response: type[BaseModel] | None = None
    many: bool = False
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)
    media: str = "application/json"


OPS = [
    Op("get", "/health", "Storage reachability and versions (503 when storage does not answer)"),
    Op(
        "get",
        "/jobs",
        "Jobs of every type, newest first, filtered and paged",
        response=JobPage,
        query={
            "type": "comma-separated: ingestion, segment, export, audience-load, feedback",
            "status": "one of NEW, QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELLING, CANCELLED",
            "since": "ISO 8601 time with a zone",
            "until": "ISO 8601 time with a zone",
            "limit": "1 to 1000 (50)",
            "continuationToken": "from the previous page",
        },
    ),
    Op("get", "/jobs/{id}", "One job of any type: status, times, metrics, errors, links", response=Job),
    Op(
        "get",
        "/alerts",
        "Alerts, newest first",
        response=Alert,
        many=True,
        query={
            "type": "comma-separated alert types: " + ", ".join(sorted(ALERT_TYPES)),
            "since": "ISO 8601 time with a zone",
            "limit": "1 to 1000 (100)",
        },
    ),
    Op("get", "/subscriptions", "Webhook subscriptions (never their secrets)", response=Subscription, many=True),
    Op(
        "post",
        "/subscriptions",
        "Subscribe a webhook; the answer shows its signing secret, once",
        request=SubscriptionRequest,
        response=SubscriptionCreated,
        status=201,
    ),
    Op("get", "/subscriptions/{id}", "One subscription", response=Subscription),
    Op("delete", "/subscriptions/{id}", "Delete a subscription", status=204),
    Op("post", "/subscriptions/{id}/test", "Queue a signed test event", status=202),
    Op("get", "/subscriptions/{id}/deliveries", "Every delivery attempt, newest first", response=Attempt, many=True),
    Op("get", "/schemas", "Schemas (built-in XDM-lite ones included)", response=Schema, many=True),
    Op("get", "/schemas/{id}", "One schema", response=Schema),
    Op("put", "/schemas/{id}", "Create or replace a schema", request=Schema, response=Schema),
    Op("get", "/datasets", "Datasets", response=Dataset, many=True),
    Op("get", "/datasets/{id}", "One dataset", response=Dataset),
    Op(
        "put",
        "/datasets/{id}",
        "Create or replace a dataset (checked against its schema)",
        request=Dataset,
        response=Dataset,
    ),
    Op("get", "/merge-policies", "Merge policies, the default included", response=MergePolicy, many=True),
    Op("get", "/merge-policies/{id}", "One merge policy", response=MergePolicy),
    Op("put", "/merge-policies/{id}", "Save a merge policy", request=MergePolicy, response=MergePolicy),
    Op("get", "/batches/{id}", "An ingestion batch", response=Job),
    Op("get", "/profiles", "What the profile store holds: people, identities, fragments, events, shards, last batch"),
    Op("post", "/profiles/rebuild", "Rebuild the profile store from the lake (a queued job)", response=Job, status=202),
    Op("get", "/segments", "Segment definitions", response=SegmentDefinition, many=True),
    Op("get", "/segments/{id}", "One segment definition", response=SegmentDefinition),
    Op(
        "put",
        "/segments/{id}",
        "Save a definition (PQL validated: 400 with line and column)",
        request=SegmentDefinition,
        response=SegmentDefinition,
    ),
    Op("delete", "/segments/{id}", "Delete a definition no other segment uses", status=204),
    Op("get", "/segments/{id}/explain", "Why one profile is or is not a member", query={"profile": "a profile id"}),
    Op("post", "/segments-preview", "Size, entering and exiting profiles of an expression now", request=PreviewRequest),
    Op("get", "/segment-jobs", "Segment jobs, newest first", response=Job, many=True),
    Op("get", "/segment-jobs/{id}", "One segment job", response=Job),
    Op(
        "post",
        "/segment-jobs",
        "Queue a segment job as of now",
        request=SegmentJobRequest,
        response=Job,
        status=202,
    ),
    Op("delete", "/segment-jobs/{id}", "Cancel a queued or running segment job", response=Job),
    Op("get", "/destinations", "Campaign destinations (dataflows)", response=Destination, many=True),
    Op("get", "/destinations/{id}", "One destination", response=Destination),
    Op(
        "put",
        "/destinations/{id}",
        "Save a destination (guardrails 400, governance 422)",
        request=Destination,
        response=Destination,
    ),
    Op("delete", "/destinations/{id}", "Delete a destination", status=204),
    Op("post", "/destinations/{id}/run", "Export now: the QUEUED export job", response=Job, status=202),
    Op(
        "get", "/dataflows/{id}/runs", "A destination's runs per segment, newest first", response=DataflowRun, many=True
    ),
    Op("get", "/policies", "Governance policies", response=GovernancePolicy, many=True),
    Op("get", "/policies/{id}", "One policy", response=GovernancePolicy),
    Op("put", "/policies/{id}", "Save a policy", request=GovernancePolicy, response=GovernancePolicy),
    Op("delete", "/policies/{id}", "Delete a policy", status=204),
    Op("get", "/target-mappings", "Campaign target mappings", response=TargetMapping, many=True),
    Op("get", "/target-mappings/{id}", "One target mapping", response=TargetMapping),
    Op("put", "/target-mappings/{id}", "Save a target mapping", request=TargetMapping, response=TargetMapping),
    Op(
        "get",
        "/audience-loads",
        "Campaign audience load jobs, newest first",
        response=Job,
        many=True,
        query={"limit": "at most 1000 (100)"},
    ),
    Op("get", "/campaign/lists", "Campaign audience lists", response=SnapshotRecord, many=True),
    Op("get", "/campaign/lists/{id}", "One list with a page of members", query={"offset": "0…", "limit": "1 to 1000"}),
    Op("get", "/campaign/lists/{id}/versions", "The kept versions of a list", response=SnapshotVersion, many=True),
    Op(
        "post",
        "/campaign/lists/{id}/restore",
        "Bring a kept version of a list back",
        request=RestoreRequest,
        response=SnapshotRecord,
    ),
    Op("get", "/campaign/recipients", "Campaign recipients", query={"limit": "1 to 1000"}),
    Op(
        "delete",
        "/campaign/recipients",
        "Delete recipients (their ids are never given again)",
        query={"ids": "recipient ids separated by commas"},
    ),
    Op(
        "get",
        "/campaign/recipients/versions",
        "The kept versions of the recipients",
        response=SnapshotVersion,
        many=True,
    ),
    Op(
        "post",
        "/campaign/recipients/restore",
        "Bring a kept version of the recipients back",
        request=RestoreRequest,
        response=SnapshotRecord,
    ),
    Op(
        "post",
        "/campaign/recipients",
        "Import a seed/CRM file (CSV, or NDJSON with ?format=ndjson)",
        request="text/csv",
        query={"format": "csv (default) or ndjson"},
    ),
    Op("get", "/campaign/deliveries", "Simulated deliveries, newest first", response=Delivery, many=True),
    Op("get", "/campaign/deliveries/{id}", "One delivery", response=Delivery),
    Op(
        "post",
        "/campaign/deliveries",
        "Send to a list (simulated)",
        request=DeliveryRequest,
        response=Delivery,
        status=201,
    ),
    Op("get", "/openapi.json", "This document"),
    Op("get", "/dashboard", "The monitoring page", media="text/html"),
]
MODELS = [Problem, SubscriptionCreated] + list(
    dict.fromkeys(m for op in OPS for m in (op.request, op.response) if isinstance(m, type))
)


def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation" if any(op.request is m for op in OPS) else "serialization") for m in MODELS],
        ref_template="#/components/schemas/{model}",
        by_alias=True,
    )
    schemas = defs.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        operation: dict[str, Any] = {
            "operationId": (op.method + op.path.replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")),
            "summary": op.summary,
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
            * ("{id}" in op.path)
            + [
                {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
                for n, d in op.query.items()
            ],
            "responses": {
                str(op.status): _response(op),
                "default": {
                    "description": "A problem: 400 invalid input, 404 not found, 409 conflict, 422 governance",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
            },
        }
        if isinstance(op.request, str):
            operation["requestBody"] = {"required": True, "content": {op.request: {"schema": {"type": "string"}}}}
        elif op.request is not None:
            ref = {"$ref": f"#/components/schemas/{op.request.__name__}"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        paths.setdefault("/api" + op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Audience Bridge",
            "version": "0.1.0",
            "description": "Profiles and events in, segments out to a Data Landing Zone, Campaign loads, jobs "
            "and alerts. Every route takes a function key (`code` query parameter or `x-functions-key` header).",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"}},
        },
        "security": [{"functionKey": []}],
        "paths": paths,
    }


def _response(op: Op) -> dict[str, Any]:
    if op.status == 204:
        return {"description": "Done"}
    if op.response is None:
        schema = {"type": "string"} if op.media == "text/html" else {"type": "object"}
        return {"description": "OK", "content": {op.media: {"schema": schema}}}
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{op.response.__name__}"}
    schema = {"type": "array", "items": ref} if op.many else ref
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"])
@answers
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(document())
