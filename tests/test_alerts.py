"""Alert rules, each firing once, delays found with an injected `now`, and signed webhook deliveries to a
real local HTTP receiver that verifies them with the standardwebhooks library."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import urllib.parse

import pytest
from standardwebhooks import Webhook

from dev.host import deliver_queue_messages
from dev.receiver import Receiver
from functions.monitoring import alert_delivery, alerts, subscription_deliveries, subscription_test, subscriptions
from shared.activation import Activation, Destination
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.monitoring import webhooks
from shared.monitoring.alerts import AlertRules
from shared.monitoring.webhooks import Webhooks
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.storage import StorageAccount
from tests import test_activation
from tests.conftest import NOW
from tests.helpers import create_dataset, ndjson, profile
from tests.test_activation import T1, T2, destination, person, put_destination
from tests.test_http import body, call

crm = test_activation.crm


def alert_types(**query) -> list[str]:
    route = "alerts" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    return [a["type"] for a in body(call(alerts, "GET", route))]


def rules(settings) -> AlertRules:
    return AlertRules.from_settings(settings, StorageAccount.from_settings(settings))


def test_ingestion_alerts_fire_once_per_batch(settings, landing_zone):
    create_dataset(settings, "crm")
    rows = [profile(f"c-{i}") for i in range(98)] + [{"person": {"gender": "robot"}}] * 2
    job = landing_zone.ingest("crm/bad.ndjson", ndjson(*rows))
    landing_zone.trigger("crm/bad.ndjson")  # the host delivers the same blob again: the same batch
    assert job.status is JobStatus.FAILED
    assert sorted(alert_types()) == [
        "ingestion.rowsRejected",
        "source.flowRunFailure",
        "source.flowRunStart",
    ]
    [rejected] = body(call(alerts, "GET", "alerts?type=ingestion.rowsRejected"))
    assert "rejected 2 of 100 rows (2.00%)" in rejected["message"] and rejected["link"] == f"/api/jobs/{job.id}"


def test_segment_failure_and_size_change_alerts(settings, account, crm, monkeypatch):
    monkeypatch.setenv("ALERT_SIZE_CHANGE", "0.3")
    get_settings.cache_clear()
    settings = get_settings()
    runner = SegmentJobRunner.from_settings(settings)
    assert runner.run(now=T1).status is JobStatus.SUCCEEDED  # gold: ann, bob, dee
    crm.ingest_at(
        "crm/2.ndjson", ndjson(person("bob", "bob@example.com", tier="silver")), now=T2 - dt.timedelta(hours=1)
    )
    second = runner.run(now=T2)  # gold: ann, dee (-33%)
    [change] = body(call(alerts, "GET", "alerts?type=segment.sizeChanged"))
    assert change["subject"] == "gold" and "from 3 to 2 members (-33%)" in change["message"]
    assert change["jobId"] == second.id

    from shared.segmentation.definitions import SegmentDefinition, SegmentStore

    SegmentStore.from_settings(settings, account).records.put(
        "broken", SegmentDefinition(id="broken", name="b", expression={"value": "gone.field = 1"})
    )
    failed = runner.run(now=T2 + dt.timedelta(hours=1), segment_ids=["broken"])  # nothing it can evaluate
    assert failed.status is JobStatus.FAILED
    assert alert_types(type="segment.jobFailed") == ["segment.jobFailed"]


def test_export_alerts_start_success_excluded_rate_and_failure(settings, crm):
    activation = Activation.from_settings(settings)
    assert put_destination(segments=["all"]).status_code == 200
    failed = activation.exports.run("gold-email", now=T1)  # no segment job yet: the run fails
    assert failed.status is JobStatus.FAILED
    SegmentJobRunner.from_settings(settings).run(now=T1)
    ok = activation.exports.run("gold-email", now=T1 + dt.timedelta(minutes=1))
    assert ok.status is JobStatus.SUCCEEDED  # dee has no email: 1 of 4 excluded, over 1%
    types = alert_types()
    for expected in ("destination.flowRunStart", "destination.flowRunFailure", "destination.flowRunSuccess"):
        assert expected in types
    [skipped] = body(call(alerts, "GET", "alerts?type=destination.skippedRateExceeded"))
    assert "excluded 25.00% of the profiles" in skipped["message"] and "missingIdentity" in skipped["message"]
    assert types.count("destination.flowRunStart") == 2


def test_delays_are_found_with_an_injected_now_and_alert_once(settings, crm):
    jobs = JobStore.from_settings(settings, StorageAccount.from_settings(settings))
    # Slow, not dead: its worker keeps renewing the lease.
    alive = NOW + dt.timedelta(days=1)
    jobs.create(
        Job(id="stuck", type=JobType.SEGMENT, status=JobStatus.PROCESSING, created=NOW, started=NOW, lease_until=alive)
    )
    # Daily at noon, saved an hour before today's slot: that slot is the first it owes.
    schedule = {"frequency": "hours", "everyHours": 24, "start": "2026-11-01T12:00:00Z"}
    Activation.from_settings(settings).destinations.save(
        Destination.model_validate({**destination(schedule=schedule), "id": "daily"}), now=NOW - dt.timedelta(hours=1)
    )
    assert rules(settings).check_delays(now=NOW + dt.timedelta(minutes=149)) == []
    raised = rules(settings).check_delays(now=NOW + dt.timedelta(minutes=151))
    assert sorted(a.type for a in raised) == ["destination.flowRunDelayed", "job.delayed"]
    assert {a.subject for a in raised} == {"daily", ""}
    assert rules(settings).check_delays(now=NOW + dt.timedelta(minutes=200)) == []  # each condition once


@pytest.fixture
def receiver(settings, monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE", "true")  # the receiver is on loopback
    monkeypatch.setenv("WEBHOOK_RETRY_SECONDS", "0")
    get_settings.cache_clear()
    server = Receiver()
    yield server
    server.stop()


def subscribe(url: str, **extra) -> dict:
    response = call(subscriptions, "POST", "subscriptions", {}, {"url": url, **extra})
    assert response.status_code == 201, body(response)
    return body(response)


def deliver_all(settings) -> int:
    queue = StorageAccount.from_settings(get_settings()).queue(get_settings().alert_deliveries_queue)
    total = 0
    while n := deliver_queue_messages(alert_delivery, queue):
        total += n
    return total


def raise_delay(settings, key: str = "stuck"):
    jobs = JobStore.from_settings(get_settings(), StorageAccount.from_settings(get_settings()))
    alive = NOW + dt.timedelta(days=1)  # slow, not dead: its worker keeps renewing the lease
    jobs.create(
        Job(id=key, type=JobType.EXPORT, status=JobStatus.PROCESSING, created=NOW, started=NOW, lease_until=alive)
    )
    return rules(get_settings()).check_delays(now=NOW + dt.timedelta(hours=3))


def test_a_delivery_is_signed_retried_after_a_failure_and_verified_by_the_receiver(settings, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    created = subscribe(receiver.url, eventTypes=["job.delayed"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    receiver.script = [(500, {}), (200, {})]
    raise_delay(settings)
    assert deliver_all(settings) == 2
    assert len(receiver.received) == 2
    path, headers, data = receiver.received[-1]
    payload = Webhook(secret).verify(data, headers)  # the stock library: signature and timestamp
    assert payload["type"] == "job.delayed" and payload["data"]["jobId"] == "stuck"
    assert headers["webhook-id"] == payload["id"] == receiver.received[0][1]["webhook-id"]
    history = body(call(subscription_deliveries, "GET", "x", {"id": created["id"]}))
    assert [(h["attempt"], h["outcome"], h["status"]) for h in history] == [(2, "delivered", 200), (1, "retry", 500)]
    assert all(h["latencyMs"] >= 0 for h in history)
    # The secret was shown once: never again, and never logged.
    assert "secret" not in body(call(subscriptions, "GET", "x", {"id": created["id"]}))
    assert all("secret" not in s for s in body(call(subscriptions, "GET", "subscriptions")))
    assert secret not in caplog.text and secret[6:] not in caplog.text


def test_a_test_event_is_delivered_and_verifies(settings, receiver):
    created = subscribe(receiver.url)
    assert call(subscription_test, "POST", "x", {"id": created["id"]}).status_code == 202
    assert deliver_all(settings) == 1
    _, headers, data = receiver.received[0]
    assert Webhook(created["secret"]).verify(data, headers)["type"] == "test"


def test_410_disables_429_honours_retry_after_and_redirects_are_not_followed(settings, receiver):
    gone = subscribe(receiver.url + "/gone", eventTypes=["job.delayed"])
    receiver.script = [(410, {})]
    raise_delay(settings, "one")
    deliver_all(settings)
    assert body(call(subscriptions, "GET", "x", {"id": gone["id"]}))["enabled"] is False
    call(subscriptions, "DELETE", "x", {"id": gone["id"]})

    busy = subscribe(receiver.url, eventTypes=["job.delayed"])
    receiver.script = [(429, {"Retry-After": "120"})]
    raise_delay(settings, "two")
    assert deliver_all(settings) == 1  # the retry waits 120 s on the queue, invisible until then
    [attempt] = Webhooks.from_settings(get_settings()).history(busy["id"])
    assert (attempt.status, attempt.outcome) == (429, "retry")
    call(subscriptions, "DELETE", "x", {"id": busy["id"]})

    moved = subscribe(receiver.url, eventTypes=["job.delayed"])
    receiver.script = [(302, {"Location": receiver.url + "/elsewhere"}), (200, {})]
    before = len(receiver.received)
    raise_delay(settings, "three")
    deliver_all(settings)
    paths = [p for p, _, _ in receiver.received[before:]]
    assert paths == ["/hooks", "/hooks"]  # retried at its own URL, never at the redirect's
    outcomes = [(a.status, a.outcome) for a in Webhooks.from_settings(get_settings()).history(moved["id"])]
    assert outcomes == [(200, "delivered"), (302, "retry")]


def test_a_subscription_that_keeps_failing_is_disabled_and_an_alert_says_so(settings, receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_RETRY_SECONDS", "10")
    monkeypatch.setenv("WEBHOOK_RETRY_HOURS", "0.001")  # 3.6 s: the first backoff is already past it
    get_settings.cache_clear()
    failing = subscribe(receiver.url, eventTypes=["job.delayed"])
    receiver.script = [(503, {})]
    raise_delay(settings)
    deliver_all(settings)
    sub = body(call(subscriptions, "GET", "x", {"id": failing["id"]}))
    assert sub["enabled"] is False and "kept failing" in sub["disabledReason"]
    assert "subscription.disabled" in alert_types()


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://example.com/hook", "must be an https:// URL"),
        ("https://127.0.0.1/hook", "127.0.0.1, a private or loopback"),
        ("https://10.1.2.3/hook", "10.1.2.3, a private"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("https://[::1]/hook", "::1"),
        ("https://localhost/hook", "resolves to"),
    ],
)
def test_private_and_metadata_addresses_are_refused(settings, url, detail):
    response = call(subscriptions, "POST", "subscriptions", {}, {"url": url})
    assert response.status_code == 400 and detail in body(response)["detail"]
    assert body(call(subscriptions, "GET", "subscriptions")) == []


def answers(*addresses: str):
    """A name resolver that answers these addresses, in this order."""

    def resolve(host, port, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


@pytest.mark.parametrize(
    "addresses",
    [("93.184.216.34", "169.254.169.254"), ("169.254.169.254",), ("0.0.0.0",), ("169.254.10.1",)],  # noqa: S104
    ids=["public-then-metadata", "metadata", "unspecified", "link-local"],
)
def test_metadata_link_local_and_unspecified_addresses_are_refused_even_when_private_ones_are_allowed(
    settings, monkeypatch, addresses
):
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    monkeypatch.setattr(webhooks, "resolver", answers(*addresses))
    response = call(subscriptions, "POST", "subscriptions", {}, {"url": "https://hooks.example.com/in"})
    assert response.status_code == 400 and "webhooks never go there" in body(response)["detail"], body(response)
    assert body(call(subscriptions, "GET", "subscriptions")) == []


def test_a_delivery_goes_to_the_address_that_was_checked_not_to_a_second_lookup(settings, receiver, monkeypatch):
    """DNS rebinding: the name answers the checked address, then another one; the delivery is pinned."""
    port = urllib.parse.urlsplit(receiver.url).port
    # The subscription's check and the send's check answer the receiver; any later lookup would answer an
    # address where nobody listens, so only a delivery pinned to the checked address arrives.
    lookups = iter([answers("127.0.0.1"), answers("127.0.0.1")] + [answers("127.0.0.2")] * 10)
    monkeypatch.setattr(webhooks, "resolver", lambda *a, **kw: next(lookups)(*a, **kw))
    created = subscribe(f"http://hooks.example.test:{port}/hook", eventTypes=["job.delayed"])
    raise_delay(settings)
    deliver_all(settings)
    assert len(receiver.received) == 1
    _, headers, data = receiver.received[0]
    assert headers["host"] == f"hooks.example.test:{port}"
    assert Webhook(created["secret"]).verify(data, headers)["type"] == "job.delayed"


def test_an_address_allowed_at_creation_is_refused_again_at_send_time(settings, receiver, monkeypatch):
    created = subscribe(receiver.url, eventTypes=["job.delayed"])
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE", "false")
    get_settings.cache_clear()
    raise_delay(settings)
    deliver_all(settings)
    assert receiver.received == []
    sub = body(call(subscriptions, "GET", "x", {"id": created["id"]}))
    assert sub["enabled"] is False and "refused" in sub["disabledReason"]


def test_bad_subscriptions_and_alert_queries_are_problems(settings):
    response = call(subscriptions, "POST", "subscriptions", {}, {"url": "https://example.com", "eventTypes": ["nope"]})
    assert response.status_code == 400 and "['nope'] are not alert types" in body(response)["detail"]
    assert call(subscriptions, "GET", "x", {"id": "sub-none"}).status_code == 404
    response = call(alerts, "GET", "alerts?type=nope")
    assert response.status_code == 400 and "not alert types" in body(response)["detail"]


def test_alerts_serialise_as_json(settings):
    raise_delay(settings)
    [alert] = body(call(alerts, "GET", "alerts?type=job.delayed"))
    assert json.dumps(alert) and alert["type"] == "job.delayed" and alert["jobType"] == "export"
