"""`GET /api/openapi.json`: the OpenAPI 3.1 document of every HTTP function, generated from the operations
each function declares (`functions.http.answers`), its schemas from the pydantic models those operations
read and write. The tests check the document with openapi-spec-validator, its paths and methods against what
the Functions host indexes, and every response they see against the operation's declared model."""

from __future__ import annotations

from typing import Any, get_args, get_origin

import azure.functions as func
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

# Every area's functions, so that their declarations are all in OPERATIONS however this module is imported.
from functions import activation, campaign, catalog, monitoring, segmentation  # noqa: F401
from functions.http import OPERATIONS, Op, answers, json_response
from shared.activation.runs import ExportMetrics
from shared.campaign.feedback import FeedbackMetrics
from shared.campaign.loads import AudienceLoadMetrics
from shared.identity.store import StoreSummary
from shared.ingestion.batch import IngestionMetrics
from shared.models import ApiModel
from shared.segmentation.shards import SegmentJobMetrics

bp = func.Blueprint()


class Problem(ApiModel):
    """An error (RFC 9457, `application/problem+json`): what went wrong and what to fix."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def _model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model an operation's request or response names, and whether it is a list of them."""
    if get_origin(annotation) is list:
        return get_args(annotation)[0], True
    return (annotation, False) if isinstance(annotation, type) else (None, False)


# What jobs report, by type (`Job.metrics`): documented beside the operations' own models.
METRICS = [IngestionMetrics, SegmentJobMetrics, ExportMetrics, AudienceLoadMetrics, FeedbackMetrics, StoreSummary]


def document() -> dict[str, Any]:
    requests = {_model(op.request)[0] for op in OPERATIONS} - {None}
    models = (
        [Problem, *METRICS]
        + [m for m in dict.fromkeys(_model(op.response)[0] for op in OPERATIONS) if m]
        + list(requests)
    )
    _, defs = models_json_schema(
        [(m, "validation" if m in requests else "serialization") for m in dict.fromkeys(models)],
        ref_template="#/components/schemas/{model}",
        by_alias=True,
    )
    schemas = defs.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
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
    headers = {"Location": {"description": "Where to follow the work", "schema": {"type": "string"}}}
    model, many = _model(op.response)
    if model is None:
        schema: dict[str, Any] = {"type": "string"} if op.media == "text/html" else {"type": "object"}
    else:
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        schema = {"type": "array", "items": ref} if many else ref
    return {"description": "OK", "content": {op.media: {"schema": schema}}} | (
        {"headers": headers} if op.location else {}
    )


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"])
@answers(Op("get", "/openapi.json", "This document"))
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(document())
