"""The simulated Campaign: audience loads from the DLZ (blob trigger), recipients, lists, audience load
jobs, deliveries over HTTP, and the timer that sends delivery logs back to the platform."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob
from pydantic.alias_generators import to_camel

from functions import blob_source, blob_version, utc_now
from functions.http import Op, answers, json_response, query_int, read
from shared.campaign.deliveries import Delivery, DeliveryRequest
from shared.campaign.recipients import RECIPIENTS_ID
from shared.campaign.service import Campaign
from shared.campaign.snapshots import RestoreRequest, SnapshotRecord, Snapshots, SnapshotVersion
from shared.errors import ValidationError
from shared.jobs import Job, JobType
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _campaign() -> Campaign:
    return Campaign.from_settings(get_settings())


@bp.function_name("campaign_audience_load")
@bp.blob_trigger(
    arg_name="client", path="%DLZ_CONTAINER%/{name}", connection="AzureWebJobsStorage", source=blob_source()
)
def campaign_audience_load(client: blob.BlobClient) -> None:
    """Bound as a client (an SDK type): the load reads the file itself, checked against its manifest, so the
    host does not read it first."""
    etag = blob_version(client)
    for job in _campaign().loads.on_blob(client.blob_name, now=utc_now(), etag=etag) if etag else []:
        log.info("audience load %s: %s %s", job.id, job.status.value, job.metrics)


@bp.function_name("audience_loads")
@bp.route(route="audience-loads", methods=["GET"])
@answers(
    Op(
        "get",
        "/audience-loads",
        "Campaign audience load jobs, newest first",
        response=list[Job],
        query={"limit": "at most 1000 (100)"},
    )
)
def audience_loads(req: func.HttpRequest) -> func.HttpResponse:
    """Campaign's Administration > Audit > Audience load jobs, newest first."""
    jobs = _campaign().tables.jobs.list(JobType.AUDIENCE_LOAD)
    return json_response(jobs[: query_int(req, "limit", 100, low=0)])


@bp.function_name("campaign_lists")
@bp.route(route="campaign/lists/{id?}", methods=["GET"])
@answers(
    Op("get", "/campaign/lists", "Campaign audience lists", response=list[SnapshotRecord]),
    Op("get", "/campaign/lists/{id}", "One list with a page of members", query={"offset": "0…", "limit": "1 to 1000"}),
)
def campaign_lists(req: func.HttpRequest) -> func.HttpResponse:
    """The lists (without an id), or one list with a page of its members (`offset`, `limit`)."""
    campaign = _campaign()
    list_id = req.route_params.get("id")
    if not list_id:
        return json_response(campaign.tables.lists.list())
    page = campaign.admin.members(
        list_id, offset=query_int(req, "offset", 0, low=0, high=10**9), limit=query_int(req, "limit", 100, low=0)
    )
    return json_response({**page, "items": _camel_case(page["items"])})


@bp.function_name("campaign_recipients")
@bp.route(route="campaign/recipients", methods=["GET", "POST", "DELETE"])
@answers(
    Op("get", "/campaign/recipients", "Campaign recipients", query={"limit": "1 to 1000"}),
    Op(
        "delete",
        "/campaign/recipients",
        "Delete recipients (their ids are never given again)",
        query={"ids": "recipient ids separated by commas"},
    ),
    Op(
        "post",
        "/campaign/recipients",
        "Import a seed/CRM file (CSV, or NDJSON with ?format=ndjson)",
        request="text/csv",
        query={"format": "csv (default) or ndjson"},
    ),
)
def campaign_recipients(req: func.HttpRequest) -> func.HttpResponse:
    """POST a seed/CRM file (CSV, or NDJSON with `?format=ndjson`) to create and update recipients (an
    import never deletes); DELETE `?ids=1,2` to delete recipients; GET the first recipients (`limit`)."""
    campaign = _campaign()
    if req.method == "DELETE":
        return json_response(campaign.admin.delete_recipients(_ids(req.params.get("ids", "")), now=utc_now()))
    if req.method == "POST":
        suffix = ".ndjson" if req.params.get("format") == "ndjson" else ".csv"
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / f"seed{suffix}"
            file.write_bytes(req.get_body())
            return json_response(campaign.admin.seed_recipients(file, now=utc_now()))
    return json_response(_camel_case(campaign.admin.recipient_rows(limit=query_int(req, "limit", 100, low=0))))


def _camel_case(rows: list[dict]) -> list[dict]:
    """Recipient rows as the API answers them: the table's columns (`external_id`) in camelCase (`externalId`)."""
    return [{to_camel(k): v for k, v in row.items()} for row in rows]


def _ids(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and len(p) <= 18 for p in parts):
        raise ValidationError(f"query parameter 'ids' must be recipient ids separated by commas, not {text[:100]!r}")
    return [int(p) for p in parts]


def _versions_or_restore(req: func.HttpRequest, kind: str, record_id: str) -> func.HttpResponse:
    """The kept versions of the recipients or of a list (`kind`), or a restore of one of them."""
    campaign = _campaign()
    table: Snapshots = getattr(campaign.tables, kind)
    if req.method == "POST":
        version = read(req, RestoreRequest).version
        return json_response(campaign.admin.restore(table, record_id, version, now=utc_now()))
    return json_response(campaign.admin.versions(table, record_id))


@bp.function_name("campaign_recipient_versions")
@bp.route(route="campaign/recipients/versions", methods=["GET"])
@answers(
    Op(
        "get",
        "/campaign/recipients/versions",
        "The kept versions of the recipients",
        response=list[SnapshotVersion],
    )
)
def campaign_recipient_versions(req: func.HttpRequest) -> func.HttpResponse:
    """The versions of the recipients table kept for SNAPSHOT_RETENTION_HOURS, newest first."""
    return _versions_or_restore(req, "recipients", RECIPIENTS_ID)


@bp.function_name("campaign_recipient_restore")
@bp.route(route="campaign/recipients/restore", methods=["POST"])
@answers(
    Op(
        "post",
        "/campaign/recipients/restore",
        "Bring a kept version of the recipients back",
        request=RestoreRequest,
        response=SnapshotRecord,
    )
)
def campaign_recipient_restore(req: func.HttpRequest) -> func.HttpResponse:
    """Bring a kept version of the recipients back (`{"version": n}`), as a new version."""
    return _versions_or_restore(req, "recipients", RECIPIENTS_ID)


@bp.function_name("campaign_list_versions")
@bp.route(route="campaign/lists/{id}/versions", methods=["GET"])
@answers(Op("get", "/campaign/lists/{id}/versions", "The kept versions of a list", response=list[SnapshotVersion]))
def campaign_list_versions(req: func.HttpRequest) -> func.HttpResponse:
    """The versions of one list kept for SNAPSHOT_RETENTION_HOURS, newest first."""
    return _versions_or_restore(req, "lists", req.route_params["id"])


@bp.function_name("campaign_list_restore")
@bp.route(route="campaign/lists/{id}/restore", methods=["POST"])
@answers(
    Op(
        "post",
        "/campaign/lists/{id}/restore",
        "Bring a kept version of a list back",
        request=RestoreRequest,
        response=SnapshotRecord,
    )
)
def campaign_list_restore(req: func.HttpRequest) -> func.HttpResponse:
    """Bring a kept version of one list back (`{"version": n}`), as a new version."""
    return _versions_or_restore(req, "lists", req.route_params["id"])


@bp.function_name("snapshot_retention")
@bp.timer_trigger(arg_name="timer", schedule="%SNAPSHOT_RETENTION_SCHEDULE%", run_on_startup=False)
def snapshot_retention(timer: func.TimerRequest) -> None:
    deleted = _campaign().admin.expire_snapshots(now=utc_now())
    log.info("deleted %d snapshot versions past retention", len(deleted))


@bp.function_name("campaign_deliveries")
@bp.route(route="campaign/deliveries/{id?}", methods=["GET", "POST"])
@answers(
    Op("get", "/campaign/deliveries", "Simulated deliveries, newest first", response=list[Delivery]),
    Op("get", "/campaign/deliveries/{id}", "One delivery", response=Delivery),
    Op(
        "post",
        "/campaign/deliveries",
        "Send to a list (simulated)",
        request=DeliveryRequest,
        response=Delivery,
        status=201,
        location=True,
    ),
)
def campaign_deliveries(req: func.HttpRequest) -> func.HttpResponse:
    """POST a delivery to a list (simulated sending, 201); GET the deliveries or one."""
    campaign = _campaign()
    if req.method == "POST":
        delivery = campaign.deliveries.deliver(read(req, DeliveryRequest), now=utc_now())
        return json_response(delivery, status=201, location=f"/api/campaign/deliveries/{delivery.id}")
    delivery_id = req.route_params.get("id")
    if delivery_id:
        return json_response(campaign.deliveries.get(delivery_id))
    return json_response(campaign.deliveries.list())


@bp.function_name("campaign_log_export")
@bp.timer_trigger(arg_name="timer", schedule="%CAMPAIGN_LOG_SCHEDULE%", run_on_startup=False)
def campaign_log_export(timer: func.TimerRequest) -> None:
    job = _campaign().feedback.export_logs(now=utc_now())
    log.info("campaign log export %s: %s %s", job.id, job.status.value, job.metrics.get("events"))
