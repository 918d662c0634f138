"""Every HTTP answer the tests see is checked against the operation its function declares: the status, the
Location header, the body against the declared model (by its camelCase names only), problems as RFC 9457,
and no snake_case key anywhere in a body. `OBSERVED` gathers which declared operations the suite exercised."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import azure.functions as func
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter

from functions.http import Op
from functions.openapi import Problem, document
from shared.activation.runs import ExportMetrics
from shared.campaign.feedback import FeedbackMetrics
from shared.campaign.loads import AudienceLoadMetrics
from shared.identity.store import StoreSummary
from shared.ingestion.batch import IngestionMetrics
from shared.segmentation.shards import SegmentJobMetrics

METRICS = {
    "ingestion": IngestionMetrics,
    "segment": SegmentJobMetrics,
    "export": ExportMetrics,
    "audience-load": AudienceLoadMetrics,
    "feedback": FeedbackMetrics,
    "profile-rebuild": StoreSummary,
}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")
OBSERVED: set[tuple[str, str]] = set()


def operation(user_function: Any, method: str, route_params: dict[str, str]) -> Op:
    """The declared operation a request reached: its method, and whether the path names an id."""
    declared: tuple[Op, ...] = getattr(user_function, "operations", ())
    found = [op for op in declared if op.method == method.lower() and ("{id}" in op.path) == ("id" in route_params)]
    assert found, f"{user_function.__name__}: no declared operation answers {method} with {route_params}"
    return found[0]


def snake_keys(value: Any, where: str = "$") -> list[str]:
    if isinstance(value, dict):
        found = [f"{where}.{k}" for k in value if SNAKE.fullmatch(str(k))]
        return found + [p for k, v in value.items() for p in snake_keys(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in snake_keys(v, f"{where}[{i}]")]
    return []


def check(user_function: Any, request: func.HttpRequest, response: func.HttpResponse) -> None:
    op = operation(user_function, request.method, dict(request.route_params))
    where = f"{op.method.upper()} {op.path}"
    raw = response.get_body()
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json", f"{where}: an error answered {response.mimetype}"
        Problem.model_validate_json(raw)
        return
    OBSERVED.add((op.method, op.path))
    assert response.status_code == op.status, f"{where} answered {response.status_code}, declared {op.status}"
    if op.location:
        assert response.headers.get("Location"), f"{where}: declared a Location header, answered none"
    if op.status == 204 or op.media != "application/json":
        return
    body = json.loads(raw)
    assert not snake_keys(body), f"{where}: snake_case keys {snake_keys(body)[:5]}"
    if op.response is not None:
        TypeAdapter(op.response).validate_python(body, by_alias=True, by_name=False)
        errors = [e.message for e in documented(op.method, op.path, op.status).iter_errors(body)]
        assert not errors, f"{where}: the answer does not match /api/openapi.json: {errors[:3]}"
    for job in jobs_in(body):
        check_metrics(job)


@functools.cache
def documented(method: str, path: str, status: int) -> Draft202012Validator:
    """A validator for an operation's answer, from the generated /api/openapi.json itself."""
    doc = document()
    content = doc["paths"]["/api" + path][method]["responses"][str(status)]["content"]
    schema = next(iter(content.values()))["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


def jobs_in(body: Any) -> list[dict]:
    """The jobs an answer carries: a job, a page of them, or a list."""
    if isinstance(body, dict) and "items" in body:
        body = body["items"]
    candidates = body if isinstance(body, list) else [body]
    return [j for j in candidates if isinstance(j, dict) and {"type", "status", "metrics"} <= set(j)]


def check_metrics(job: dict) -> None:
    """A job's metrics are what its type's model declares, every key by its camelCase name: a writer that
    renamed one would break the readers (the alert rules) silently."""
    model = METRICS.get(job["type"])
    if model is None:
        return
    known = {f.alias or name for name, f in model.model_fields.items()}
    unknown = set(job["metrics"]) - known
    assert not unknown, f"{job['type']} job {job['id']}: metrics {sorted(unknown)} are not in {model.__name__}"
    model.model_validate(job["metrics"], by_alias=True, by_name=False)
