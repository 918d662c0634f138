"""Monitoring over HTTP: health, and every job of every kind (ingestion, segment, export, audience load,
feedback), filtered and paged, newest first."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import tomllib
from pathlib import Path

import azure.functions as func

from functions.http import answers, json_response, problem
from shared.errors import ValidationError
from shared.jobs import JobStatus, JobStore, JobType
from shared.settings import get_settings
from shared.storage import StorageAccount

bp = func.Blueprint()
ROOT = Path(__file__).resolve().parent.parent


def _jobs() -> JobStore:
    settings = get_settings()
    return JobStore.from_settings(settings, StorageAccount.from_settings(settings))


def versions() -> dict[str, str]:
    """The product's version and those of the parts that decide its behaviour."""
    out = {"audienceBridge": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]}
    out["python"] = platform.python_version()
    for name in ("duckdb", "azure-functions", "azure-storage-blob", "azure-data-tables", "pydantic"):
        out[name] = importlib.metadata.version(name)
    return out


@bp.function_name("health")
@bp.route(route="health", methods=["GET"])
@answers
def health(req: func.HttpRequest) -> func.HttpResponse:
    """200 when storage answers, 503 (problem+json) when it does not; versions either way."""
    try:
        _jobs().table.query(page_size=1)
    except Exception as exc:  # noqa: BLE001 - any failure to reach storage is the answer
        return problem(503, "storage unreachable", f"the storage account did not answer: {exc}")
    return json_response({"status": "ok", "storage": "reachable", "versions": versions()})


def _enum_list(req: func.HttpRequest, name: str, kind):
    raw = req.params.get(name)
    if not raw:
        return []
    allowed = [k.value for k in kind]
    out = []
    for value in raw.split(","):
        if value not in allowed:
            raise ValidationError(f"query parameter {name!r}: {value!r} is not one of {allowed}")
        out.append(kind(value))
    return out


def _time(req: func.HttpRequest, name: str) -> dt.datetime | None:
    raw = req.params.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(f"query parameter {name!r}: {raw!r} is not an ISO 8601 time") from exc
    if value.tzinfo is None:
        raise ValidationError(f"query parameter {name!r}: {raw!r} needs a time zone, such as Z")
    return value


@bp.function_name("jobs")
@bp.route(route="jobs/{id?}", methods=["GET"])
@answers
def jobs(req: func.HttpRequest) -> func.HttpResponse:
    """`GET /api/jobs?type=export,segment&status=FAILED&since=…&until=…&limit=50&continuationToken=…`,
    newest first; `GET /api/jobs/{id}` one job with its metrics, errors and links."""
    store = _jobs()
    job_id = req.route_params.get("id")
    if job_id:
        return json_response(store.find_any(job_id).model_dump(mode="json"))
    statuses = _enum_list(req, "status", JobStatus)
    if len(statuses) > 1:
        raise ValidationError("query parameter 'status': give one status")
    limit = req.params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise ValidationError(f"query parameter 'limit' must be a whole number from 1 to 1000, not {limit!r}")
    page = store.page(
        types=_enum_list(req, "type", JobType),
        status=statuses[0] if statuses else None,
        since=_time(req, "since"),
        until=_time(req, "until"),
        limit=int(limit),
        token=req.params.get("continuationToken"),
    )
    return json_response(page.model_dump(mode="json", by_alias=True))
