"""Monitoring over HTTP: health, and every job of every kind (ingestion, segment, export, audience load,
feedback), filtered and paged, newest first."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import platform
import tomllib
from pathlib import Path

import azure.functions as func

from functions import utc_now
from functions.http import Op, answers, json_response, problem, query_int, read
from shared.errors import ValidationError
from shared.jobs import Job, JobPage, JobStatus, JobStore, JobType
from shared.monitoring.alerts import ALERT_TYPES, Alert, AlertRules
from shared.monitoring.webhooks import Attempt, Subscription, SubscriptionCreated, SubscriptionRequest, Webhooks
from shared.settings import get_settings
from shared.storage import StorageAccount

bp = func.Blueprint()
log = logging.getLogger(__name__)
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
@answers(Op("get", "/health", "Storage reachability and versions (503 when storage does not answer)"))
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
@answers(
    Op(
        "get",
        "/jobs",
        "Jobs of every type, newest first, filtered and paged",
        response=JobPage,
        query={
            "type": "comma-separated: " + ", ".join(t.value for t in JobType),
            "status": "one of " + ", ".join(s.value for s in JobStatus),
            "since": "ISO 8601 time with a zone",
            "until": "ISO 8601 time with a zone",
            "limit": "1 to 1000 (50)",
            "continuationToken": "from the previous page",
        },
    ),
    Op("get", "/jobs/{id}", "One job of any type: status, times, metrics, errors, links", response=Job),
)
def jobs(req: func.HttpRequest) -> func.HttpResponse:
    """`GET /api/jobs?type=export,segment&status=FAILED&since=…&until=…&limit=50&continuationToken=…`,
    newest first; `GET /api/jobs/{id}` one job with its metrics, errors and links."""
    store = _jobs()
    job_id = req.route_params.get("id")
    if job_id:
        return json_response(store.find_any(job_id))
    statuses = _enum_list(req, "status", JobStatus)
    if len(statuses) > 1:
        raise ValidationError("query parameter 'status': give one status")
    page = store.page(
        types=_enum_list(req, "type", JobType),
        status=statuses[0] if statuses else None,
        since=_time(req, "since"),
        until=_time(req, "until"),
        limit=query_int(req, "limit", 50),
        token=req.params.get("continuationToken"),
    )
    return json_response(page)


@bp.function_name("alerts")
@bp.route(route="alerts", methods=["GET"])
@answers(
    Op(
        "get",
        "/alerts",
        "Alerts, newest first",
        response=list[Alert],
        query={
            "type": "comma-separated alert types: " + ", ".join(sorted(ALERT_TYPES)),
            "since": "ISO 8601 time with a zone",
            "limit": "1 to 1000 (100)",
        },
    )
)
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    """`GET /api/alerts?type=segment.jobFailed,job.delayed&since=…&limit=100`, newest first."""
    types = [t for t in (req.params.get("type") or "").split(",") if t]
    unknown = [t for t in types if t not in ALERT_TYPES]
    if unknown:
        raise ValidationError(f"query parameter 'type': {unknown} are not alert types; they are {sorted(ALERT_TYPES)}")
    settings = get_settings()
    rules = AlertRules.from_settings(settings, StorageAccount.from_settings(settings))
    found = rules.store.list(types=types, since=_time(req, "since"), limit=query_int(req, "limit", 100))
    return json_response(found)


def _webhooks() -> Webhooks:
    return Webhooks.from_settings(get_settings())


@bp.function_name("subscriptions")
@bp.route(route="subscriptions/{id?}", methods=["GET", "POST", "DELETE"])
@answers(
    Op("get", "/subscriptions", "Webhook subscriptions (never their secrets)", response=list[Subscription]),
    Op(
        "post",
        "/subscriptions",
        "Subscribe a webhook; the answer shows its signing secret, once",
        request=SubscriptionRequest,
        response=SubscriptionCreated,
        status=201,
        location=True,
    ),
    Op("get", "/subscriptions/{id}", "One subscription", response=Subscription),
    Op("delete", "/subscriptions/{id}", "Delete a subscription", status=204),
)
def subscriptions(req: func.HttpRequest) -> func.HttpResponse:
    """POST creates (201, with the signing secret, shown this once); GET lists or reads; DELETE removes."""
    webhooks = _webhooks()
    sub_id = req.route_params.get("id")
    if req.method == "POST" and not sub_id:
        created = webhooks.create(read(req, SubscriptionRequest), now=utc_now())
        return json_response(created, status=201, location=f"/api/subscriptions/{created.id}")
    if req.method == "DELETE" and sub_id:
        webhooks.delete(sub_id)
        return func.HttpResponse(status_code=204)
    if req.method == "GET" and sub_id:
        return json_response(webhooks.get(sub_id))
    if req.method == "GET":
        return json_response(webhooks.list())
    raise ValidationError(f"{req.method} /api/subscriptions{'/' + sub_id if sub_id else ''} is not supported")


@bp.function_name("subscription_test")
@bp.route(route="subscriptions/{id}/test", methods=["POST"])
@answers(Op("post", "/subscriptions/{id}/test", "Queue a signed test event", status=202))
def subscription_test(req: func.HttpRequest) -> func.HttpResponse:
    """Queue a test event to the subscription (202); its delivery shows in .../deliveries."""
    event = _webhooks().send_test(req.route_params["id"], now=utc_now())
    return json_response(event, status=202)


@bp.function_name("subscription_deliveries")
@bp.route(route="subscriptions/{id}/deliveries", methods=["GET"])
@answers(Op("get", "/subscriptions/{id}/deliveries", "Every delivery attempt, newest first", response=list[Attempt]))
def subscription_deliveries(req: func.HttpRequest) -> func.HttpResponse:
    """Every delivery attempt to the subscription, newest first: status, latency, outcome, error."""
    webhooks = _webhooks()
    webhooks.get(req.route_params["id"])
    return json_response(webhooks.history(req.route_params["id"]))


@bp.function_name("alert_delivery")
@bp.queue_trigger(arg_name="message", queue_name="%ALERT_DELIVERIES_QUEUE%", connection="AzureWebJobsStorage")
def alert_delivery(message: func.QueueMessage) -> None:
    attempt = _webhooks().deliver(message.get_json(), now=utc_now())
    if attempt is not None:
        log.info("webhook %s attempt %d: %s", attempt.message_id, attempt.attempt, attempt.outcome)


@bp.function_name("monitor")
@bp.timer_trigger(arg_name="timer", schedule="%MONITOR_SCHEDULE%", run_on_startup=False)
def monitor(timer: func.TimerRequest) -> None:
    settings = get_settings()
    raised = AlertRules.from_settings(settings, StorageAccount.from_settings(settings)).check_delays(now=utc_now())
    log.info("monitor: %d new delay alerts", len(raised))


@bp.function_name("dashboard")
@bp.route(route="dashboard", methods=["GET"])
@answers(Op("get", "/dashboard", "The monitoring page", media="text/html"))
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """The monitoring page: jobs, dataflow runs, segment sizes over time, lists and alerts. Plain HTML and
    script, no build step; it reads the API with the function key it was opened with."""
    page = (Path(__file__).parent / "dashboard.html").read_bytes()
    return func.HttpResponse(page, status_code=200, mimetype="text/html", charset="utf-8")
