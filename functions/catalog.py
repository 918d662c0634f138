"""Configuration over HTTP: schemas, datasets, merge policies, ingestion batch status, and the profile store
(what it holds, its rebuild as a queued job, and the retention timer that deletes files no version names)."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import utc_now
from functions.http import Op, answers, json_response, read
from shared.identity import MergePolicy, MergePolicyStore, ProfileStore
from shared.identity.policies import MergePolicies, MergePolicyRequest
from shared.identity.rebuilds import ProfileRebuilds
from shared.identity.store import StoreSummary
from shared.ingestion import Dataset, DatasetStore, Schema, SchemaStore
from shared.jobs import Job, JobStore, JobType
from shared.segmentation.memberships import MembershipStore
from shared.settings import get_settings
from shared.storage import StorageAccount

bp = func.Blueprint()
log = logging.getLogger(__name__)


def _account() -> StorageAccount:
    return StorageAccount.from_settings(get_settings())


@bp.function_name("schemas")
@bp.route(route="schemas/{id?}", methods=["GET", "PUT"])
@answers(
    Op("get", "/schemas", "Schemas (built-in XDM-lite ones included)", response=list[Schema]),
    Op("get", "/schemas/{id}", "One schema", response=Schema),
    Op("put", "/schemas/{id}", "Create or replace a schema", request=Schema, response=Schema),
)
def schemas(req: func.HttpRequest) -> func.HttpResponse:
    store = SchemaStore.from_settings(get_settings(), _account())
    schema_id = req.route_params.get("id")
    if req.method == "PUT" and schema_id:
        return json_response(store.save(read(req, Schema, id=schema_id)))
    if schema_id:
        return json_response(store.get(schema_id))
    return json_response(store.list())


@bp.function_name("datasets")
@bp.route(route="datasets/{id?}", methods=["GET", "PUT"])
@answers(
    Op("get", "/datasets", "Datasets", response=list[Dataset]),
    Op("get", "/datasets/{id}", "One dataset", response=Dataset),
    Op(
        "put",
        "/datasets/{id}",
        "Create or replace a dataset (checked against its schema)",
        request=Dataset,
        response=Dataset,
    ),
)
def datasets(req: func.HttpRequest) -> func.HttpResponse:
    store = DatasetStore.from_settings(get_settings(), _account())
    dataset_id = req.route_params.get("id")
    if req.method == "PUT" and dataset_id:
        return json_response(store.save(read(req, Dataset, id=dataset_id), now=utc_now()))
    if dataset_id:
        return json_response(store.get(dataset_id))
    return json_response(store.list())


@bp.function_name("merge_policies")
@bp.route(route="merge-policies/{id?}", methods=["GET", "PUT"])
@answers(
    Op("get", "/merge-policies", "Merge policies, and which is the default", response=MergePolicies),
    Op("get", "/merge-policies/{id}", "One merge policy", response=MergePolicy),
    Op(
        "put",
        "/merge-policies/{id}",
        "Save a merge policy (`default: true` makes it the default)",
        request=MergePolicyRequest,
        response=MergePolicy,
    ),
)
def merge_policies(req: func.HttpRequest) -> func.HttpResponse:
    store = MergePolicyStore.from_settings(get_settings(), _account())
    policy_id = req.route_params.get("id")
    if req.method == "PUT" and policy_id:
        request = read(req, MergePolicyRequest, id=policy_id)
        policy = MergePolicy.model_validate(request.model_dump(exclude={"default"}))
        return json_response(store.save(policy, make_default=request.default))
    if policy_id:
        return json_response(store.get(policy_id))
    return json_response(MergePolicies(default=store.default().id, policies=store.list()))


@bp.function_name("batches")
@bp.route(route="batches/{id}", methods=["GET"])
@answers(Op("get", "/batches/{id}", "An ingestion batch", response=Job))
def batches(req: func.HttpRequest) -> func.HttpResponse:
    jobs = JobStore.from_settings(get_settings(), _account())
    return json_response(jobs.get(JobType.INGESTION, req.route_params["id"]))


@bp.function_name("profiles")
@bp.route(route="profiles", methods=["GET"])
@answers(
    Op(
        "get",
        "/profiles",
        "What the profile store holds: people, identities, fragments, events, shards, last batch",
        response=StoreSummary,
    )
)
def profiles(req: func.HttpRequest) -> func.HttpResponse:
    """What the profile store holds: people, identities, fragments, events, shards and the last batch."""
    return json_response(ProfileStore.from_settings(get_settings(), _account()).version().summary())


@bp.function_name("profiles_rebuild")
@bp.route(route="profiles/rebuild", methods=["POST"])
@answers(
    Op(
        "post",
        "/profiles/rebuild",
        "Rebuild the profile store from the lake (a queued job)",
        response=Job,
        status=202,
        location=True,
    )
)
def profiles_rebuild(req: func.HttpRequest) -> func.HttpResponse:
    job = ProfileRebuilds.from_settings(get_settings(), _account()).enqueue(now=utc_now())
    return json_response(job, status=202, location=f"/api/jobs/{job.id}")


@bp.function_name("profile_rebuild_queued")
@bp.queue_trigger(arg_name="message", queue_name="%PROFILE_JOBS_QUEUE%", connection="AzureWebJobsStorage")
def profile_rebuild_queued(message: func.QueueMessage) -> None:
    job = ProfileRebuilds.from_settings(get_settings()).run_queued(message.get_json())
    log.info("profile rebuild %s: %s %s", job.id, job.status.value, job.metrics)


@bp.function_name("profile_store_retention")
@bp.timer_trigger(arg_name="timer", schedule="%PROFILE_RETENTION_SCHEDULE%", run_on_startup=False)
def profile_store_retention(timer: func.TimerRequest) -> None:
    """Delete the store's files that no kept version names: the current memberships' version is kept too,
    since exports read the profiles the memberships were computed from."""
    settings, account = get_settings(), _account()
    computed_from = MembershipStore.from_settings(settings, account).current_profiles()
    keep = [computed_from.store_version] if computed_from and computed_from.store_version else []
    deleted = ProfileStore.from_settings(settings, account).expire(now=utc_now(), keep=keep)
    log.info("deleted %d profile store files no kept version names", len(deleted))
