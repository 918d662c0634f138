"""Configuration over HTTP: the functions answer JSON, and problem+json naming what to fix."""

from __future__ import annotations

import json
import urllib.parse

import azure.functions as func

from functions.catalog import batches, datasets, merge_policies, schemas
from shared.jobs import JobStatus
from tests import api_contract
from tests.helpers import ndjson, profile


def call(function, method: str, route: str, params: dict | None = None, body: object = None) -> func.HttpResponse:
    """Call an HTTP function as the host would; a query string in `route` becomes the request's params."""
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(route).query))
    request = func.HttpRequest(
        method=method, url=f"http://localhost/api/{route}", body=raw, route_params=params or {}, params=query
    )
    user_function = function.build().get_user_function()
    response = user_function(request)
    api_contract.check(user_function, request, response)
    return response


def body(response: func.HttpResponse):
    return json.loads(response.get_body())


def test_a_dataset_is_created_and_read_back_over_http(settings):
    created = call(
        datasets,
        "PUT",
        "datasets/crm",
        {"id": "crm"},
        {
            "name": "CRM",
            "schemaId": "xdm-profile",
            "labels": ["C2", "C2"],
            "fieldLabels": {"personalEmail.address": ["I1"]},
        },
    )
    assert created.status_code == 200
    got = body(call(datasets, "GET", "datasets/crm", {"id": "crm"}))
    assert got["labels"] == ["C2"] and got["fieldLabels"] == {"personalEmail.address": ["I1"]}
    assert [d["id"] for d in body(call(datasets, "GET", "datasets"))] == ["crm"]


def test_a_dataset_with_a_bad_label_is_refused_as_problem_json_naming_the_field(settings):
    response = call(
        datasets, "PUT", "datasets/crm", {"id": "crm"}, {"name": "CRM", "schemaId": "xdm-profile", "labels": ["C99"]}
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = body(response)
    assert problem["errors"][0]["field"] == "labels.0"


def test_a_dataset_labelling_a_field_its_schema_lacks_is_refused(settings):
    response = call(
        datasets,
        "PUT",
        "datasets/crm",
        {"id": "crm"},
        {"name": "CRM", "schemaId": "xdm-profile", "fieldLabels": {"shoe.size": ["C1"]}},
    )
    assert response.status_code == 400
    assert "labelled fields ['shoe.size'] are not in schema 'xdm-profile'" in body(response)["detail"]


def test_an_unknown_dataset_is_404_and_a_body_that_is_not_json_is_400(settings):
    assert call(datasets, "GET", "datasets/nope", {"id": "nope"}).status_code == 404
    assert call(datasets, "PUT", "datasets/crm", {"id": "crm"}, b"{not json").status_code == 400


def store_visits(*fields: dict) -> dict:
    """A custom experience-event schema: the three fields every event needs, and these."""
    required = [
        {"path": "_id", "type": "string", "required": True},
        {"path": "timestamp", "type": "date-time", "required": True},
        {"path": "eventType", "type": "string", "required": True},
    ]
    return {"title": "Store visits", "class": "experienceevent", "fields": [*required, *fields]}


def test_schemas_are_listed_and_custom_ones_stored(settings):
    listed = [s["id"] for s in body(call(schemas, "GET", "schemas"))]
    assert listed == ["xdm-profile", "xdm-experienceevent"]
    custom = store_visits({"path": "store.id", "type": "string"})
    assert call(schemas, "PUT", "schemas/store-visits", {"id": "store-visits"}, custom).status_code == 200
    assert body(call(schemas, "GET", "schemas/store-visits", {"id": "store-visits"}))["fields"][3]["path"] == "store.id"
    broken = {**custom, "fields": custom["fields"][1:]}
    response = call(schemas, "PUT", "schemas/bad", {"id": "bad"}, broken)
    assert response.status_code == 400 and "must declare '_id'" in json.dumps(body(response))


def test_merge_policies_list_the_default_and_a_new_one_can_become_it(settings):
    assert body(call(merge_policies, "GET", "merge-policies"))["default"] == "default"
    new = {"name": "CRM first", "method": "dataSetPrecedence", "datasetOrder": ["crm"], "default": True}
    assert call(merge_policies, "PUT", "merge-policies/crm-first", {"id": "crm-first"}, new).status_code == 200
    assert body(call(merge_policies, "GET", "merge-policies"))["default"] == "crm-first"
    bad = {"name": "x", "method": "dataSetPrecedence"}
    assert call(merge_policies, "PUT", "merge-policies/x1", {"id": "x1"}, bad).status_code == 400


def test_a_batch_reads_back_with_its_status_counts_and_links(settings, landing_zone):
    call(datasets, "PUT", "datasets/crm", {"id": "crm"}, {"name": "CRM", "schemaId": "xdm-profile"})
    job = landing_zone.ingest("crm/a.ndjson", ndjson(profile("c-1")))
    got = body(call(batches, "GET", f"batches/{job.id}", {"id": job.id}))
    assert got["status"] == JobStatus.SUCCEEDED.value and got["metrics"]["rowsAccepted"] == 1
    assert got["links"]["data"].endswith("data.parquet")
    assert call(batches, "GET", "batches/nope", {"id": "nope"}).status_code == 404


def test_a_built_in_schema_cannot_be_replaced(settings):
    response = call(
        schemas, "PUT", "schemas/xdm-profile", {"id": "xdm-profile"}, {"title": "x", "class": "profile", "fields": []}
    )
    assert response.status_code == 400 and "built in" in body(response)["detail"]


def test_a_custom_schema_drives_validation_of_its_dataset(settings, landing_zone):
    visit = store_visits(
        {"path": "store.id", "type": "string", "required": True}, {"path": "store.minutes", "type": "integer"}
    )
    call(schemas, "PUT", "schemas/store-visits", {"id": "store-visits"}, visit)
    call(datasets, "PUT", "datasets/visits", {"id": "visits"}, {"name": "Visits", "schemaId": "store-visits"})
    good = {
        "_id": "v1",
        "timestamp": "2026-11-20T09:00:00Z",
        "eventType": "store.visit",
        "store": {"id": "s-1", "minutes": 12},
        "identityMap": {"CRMID": [{"id": "c-1"}]},
    }
    bad = {**good, "_id": "v2", "store": {"minutes": 3}}
    job = landing_zone.ingest("visits/a.ndjson", ndjson(good, bad))
    assert job.status is JobStatus.FAILED  # 1 of 2 rejected is far over 0.5%
    assert "row 2, field store.id: required field is missing" in [e.message for e in job.errors]


def test_the_rest_of_the_configuration_answers_as_declared(settings):
    """Routes no other test reads, through `call`, so their answers are checked against their declarations."""
    from functions.activation import governance_policies, target_mappings
    from functions.catalog import profiles, profiles_rebuild
    from functions.monitoring import dashboard

    policy = {"name": "No email to C2", "marketingAction": "Email Targeting", "deniedLabels": ["C2"]}
    assert call(governance_policies, "PUT", "policies/no-c2", {"id": "no-c2"}, policy).status_code == 200
    assert [p["id"] for p in body(call(governance_policies, "GET", "policies"))] == ["no-c2"]
    assert body(call(governance_policies, "GET", "policies/no-c2", {"id": "no-c2"}))["deniedLabels"] == ["C2"]
    assert call(governance_policies, "DELETE", "policies/no-c2", {"id": "no-c2"}).status_code == 204

    mapping = {"name": "Loyalty", "key": "external_id", "columns": ["external_id", "loyaltyTier"]}
    assert call(target_mappings, "PUT", "target-mappings/mapLoyalty", {"id": "mapLoyalty"}, mapping).status_code == 200
    assert {m["id"] for m in body(call(target_mappings, "GET", "target-mappings"))} == {"mapRecipient", "mapLoyalty"}
    assert body(call(target_mappings, "GET", "target-mappings/mapRecipient", {"id": "mapRecipient"}))["key"]

    assert body(call(merge_policies, "GET", "merge-policies/default", {"id": "default"}))["identityStitching"] is True
    assert body(call(profiles, "GET", "profiles"))["people"] == 0
    rebuild = call(profiles_rebuild, "POST", "profiles/rebuild")
    assert rebuild.headers["Location"] == f"/api/jobs/{body(rebuild)['id']}"
    assert b"<html" in call(dashboard, "GET", "dashboard").get_body().lower()
