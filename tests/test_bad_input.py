"""Every route refuses bad input with a 400 problem and stores nothing: bodies that are not JSON objects,
too big or too deep, ids that could never be ids, wrongly typed fields, PQL that would exhaust the parser,
and files whose errors would not fit in a job record."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from functions.activation import destination_run, destinations, governance_policies, target_mappings
from functions.campaign import (
    campaign_deliveries,
    campaign_list_restore,
    campaign_recipient_restore,
    campaign_recipients,
)
from functions.catalog import datasets, merge_policies, schemas
from functions.monitoring import jobs, subscription_test, subscriptions
from functions.segmentation import segment_jobs, segment_preview, segments
from shared.jobs import JobStatus
from shared.storage import StorageAccount
from tests.helpers import create_dataset
from tests.test_http import body, call

# (function, method, route, route id) of every route that reads a JSON body.
JSON_ROUTES = [
    (schemas, "PUT", "schemas/x", "x"),
    (datasets, "PUT", "datasets/x", "x"),
    (merge_policies, "PUT", "merge-policies/x", "x"),
    (segments, "PUT", "segments/x", "x"),
    (segment_jobs, "POST", "segment-jobs", None),
    (segment_preview, "POST", "segments-preview", None),
    (destinations, "PUT", "destinations/x", "x"),
    (governance_policies, "PUT", "policies/x", "x"),
    (target_mappings, "PUT", "target-mappings/x", "x"),
    (campaign_deliveries, "POST", "campaign/deliveries", None),
    (campaign_recipient_restore, "POST", "campaign/recipients/restore", None),
    (campaign_list_restore, "POST", "campaign/lists/x/restore", "x"),
    (subscriptions, "POST", "subscriptions", None),
]
NOT_OBJECTS = [b"null", b"[]", b'"text"', b"42", b"true", b"{", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 50_000]
ROUTE_IDS = [pytest.param(*r, id=f"{r[1]} {r[2]}") for r in JSON_ROUTES]


def stored(settings) -> dict[str, int]:
    """How many entities each of this test's tables holds, and how many blobs each container, where any."""
    account = StorageAccount.from_settings(settings)
    service = account.table_service
    counts: dict[str, int] = {}
    for table in service.list_tables():
        if table.name.startswith(settings.table_prefix):
            counts[table.name] = sum(1 for _ in service.get_table_client(table.name).list_entities())
    for name in (settings.landing_container, settings.lake_container, settings.dlz_container):
        container = account.container(name)
        counts[name] = sum(1 for _ in container.list_blobs()) if container.exists() else 0
    return {name: n for name, n in counts.items() if n}  # an empty table made on first use stores nothing


def params(route_id: str | None) -> dict:
    return {"id": route_id} if route_id else {}


@pytest.mark.parametrize(("function", "method", "route", "route_id"), ROUTE_IDS)
def test_a_body_that_is_not_a_json_object_is_a_400_and_nothing_is_stored(settings, function, method, route, route_id):
    before = stored(settings)
    for raw in NOT_OBJECTS:
        response = call(function, method, route, params(route_id), raw)
        assert response.status_code == 400, (raw[:20], body(response))
        assert body(response)["title"] == "validation"
    big = json.dumps({"name": "x" * (1024 * 1024)}).encode()
    assert call(function, method, route, params(route_id), big).status_code == 400
    assert stored(settings) == before


@pytest.mark.parametrize(("function", "method", "route", "route_id"), ROUTE_IDS)
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )
)
def test_any_json_body_gets_an_answer_and_never_a_crash(settings, function, method, route, route_id, value):
    response = call(function, method, route, params(route_id), value)
    assert response.status_code < 500, body(response)


@pytest.mark.parametrize(
    ("function", "method", "route"),
    [
        (segments, "GET", "segments"),
        (segments, "DELETE", "segments"),
        (destinations, "PUT", "destinations"),
        (jobs, "GET", "jobs"),
        (subscriptions, "DELETE", "subscriptions"),
        (subscription_test, "POST", "subscriptions"),
        (destination_run, "POST", "destinations"),
    ],
)
@pytest.mark.parametrize("bad_id", ["x" * 200_000, "a/b", "a#b", "\x00", "é" * 10])
def test_an_id_that_could_never_be_an_id_is_a_400_before_it_reaches_storage(settings, function, method, route, bad_id):
    response = call(function, method, f"{route}/x", {"id": bad_id}, {"name": "x"})
    assert response.status_code == 400, body(response)
    assert "is not an id" in body(response)["detail"]


def test_segment_jobs_refuse_segments_that_are_not_a_list_of_ids(settings):
    for bad in ({"segments": 12345}, {"segments": "gold"}, {"segments": [1, 2]}, {"segments": ["../x"]}):
        response = call(segment_jobs, "POST", "segment-jobs", {}, bad)
        assert response.status_code == 400, body(response)
        assert body(response)["errors"][0]["field"].startswith("segments")


@pytest.mark.parametrize(
    ("pql", "detail"),
    [
        ("not (" * 1000 + "a = 1" + ")" * 1000, "nest deeper than 64 levels"),
        ("not " * 2000 + "loyalty.points = 1", "nests deeper than 150 levels"),
        ('loyalty.tier = "gold\x00"', "control character"),
        ("person.birthDate occurs <= 99999999999 days before now", "at most 73,049 days"),
        ("loyalty.points > 99999999999999999999999", "out of range"),
        ("x" * 20_001, "at most 20000 characters"),
    ],
    ids=["nested-parentheses", "nested-not", "nul", "huge-span", "huge-number", "too-long"],
)
def test_pql_that_would_exhaust_the_parser_is_refused_on_save_with_where(settings, pql, detail):
    create_dataset(settings, "crm")
    response = call(segments, "PUT", "segments/s", {"id": "s"}, {"name": "s", "expression": {"value": pql}})
    assert response.status_code == 400 and detail in json.dumps(body(response)), body(response)
    assert body(call(segments, "GET", "segments", {})) == []


def test_a_recipient_file_with_a_number_for_an_email_is_imported_as_text(settings):
    seed = b'{"email": 42, "firstName": "N"}\n{"email": "a@example.com", "firstName": 7}\n'
    response = call(campaign_recipients, "POST", "campaign/recipients?format=ndjson", {}, seed)
    assert response.status_code == 200, body(response)
    assert body(response)["created"] == 2


def test_a_refused_subscription_stores_no_secret(settings):
    before = stored(settings)
    for bad in ({"url": "https://example.com/" + "x" * 70_000}, {"url": "http://169.254.169.254/"}):
        assert call(subscriptions, "POST", "subscriptions", {}, bad).status_code == 400
    assert stored(settings) == before


def test_a_landing_file_whose_errors_would_not_fit_fails_its_batch_with_them_cut_short(settings, landing_zone):
    create_dataset(settings, "crm")
    header = ",".join(f"column{i}" for i in range(10_000))
    job = landing_zone.ingest("crm/wide.csv", header + "\n" + ",".join("1" for _ in range(10_000)) + "\n")
    assert job.status is JobStatus.FAILED
    [error] = job.errors
    assert "and 9,990 more" in error.message and len(error.message) < 2000
