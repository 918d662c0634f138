"""The simulated Campaign end to end: export files loaded from the DLZ by the blob-trigger function into
audience lists and recipients, deliveries to those lists, and their logs sent back to the platform."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from azure.functions.timer import TimerRequest

from dev.host import fire_blob_trigger
from functions.activation import destinations
from functions.campaign import (
    audience_loads,
    campaign_audience_load,
    campaign_deliveries,
    campaign_list_restore,
    campaign_list_versions,
    campaign_lists,
    campaign_log_export,
    campaign_recipients,
)
from functions.monitoring import alerts
from functions.segmentation import segments
from shared.activation import Activation
from shared.campaign.deliveries import Delivery, DeliveryRequest
from shared.campaign.service import Campaign
from shared.jobs import Job, JobStatus, JobType
from shared.storage import BlobStore
from tests import test_activation
from tests.helpers import ndjson
from tests.test_activation import T1, T2, T3, dlz, exported, person, put_destination, segment_job, sha
from tests.test_http import body, call
from tests.test_segment_jobs import put_segment

crm = test_activation.crm  # the platform side: people in the CRM, segments "gold" and "all"

SEED = "email,firstName,lastName,optOut,quarantined\n" + "\n".join(
    [
        "Ann@Example.com,Ann,Old,false,false",
        "bob@example.com,Bob,Old,true,false",  # opted out in Campaign
        "zed@example.com,Zed,Only,false,true",  # only in Campaign, quarantined
        "dee@example.com,Dee,Old,false,false",
    ]
)


@pytest.fixture
def recipients(settings, crm):
    response = call(campaign_recipients, "POST", "campaign/recipients", {}, SEED.encode())
    assert response.status_code == 200, body(response)
    assert body(response) == {"rows": 4, "created": 4, "updated": 0, "recipients": 4}
    return Campaign.from_settings(settings)


def load_run(settings, account, job: Job, *, data_files_first: bool = True) -> list[Job]:
    """Fire the dlz blob trigger as the host would: for each data file, then for the manifest."""
    blobs = dlz(settings, account)
    manifest_path = job.links["manifest"].split("/", 1)[1]
    manifest = json.loads(blobs.get(manifest_path))
    names = [f["name"] for f in manifest["files"]]
    for name in (names if data_files_first else []) + [manifest_path]:
        fire_blob_trigger(campaign_audience_load, blobs, name)
    loads = body(call(audience_loads, "GET", "audience-loads", {}))
    return [Job.model_validate(j) for j in loads if j["source"] in names]


def list_members(list_id: str) -> dict[str, str]:
    page = body(call(campaign_lists, "GET", f"campaign/lists/{list_id}", {"id": list_id}))
    return {m["email"]: m["status"] for m in page["items"]}


def test_audience_sync_adds_and_removes_members_across_incremental_files(settings, account, crm, recipients):
    assert put_destination(exportMode="incremental").status_code == 200
    activation = Activation.from_settings(settings)
    segment_job(settings, T1)
    [load] = load_run(settings, account, activation.exports.run("gold-email", now=T1))
    assert load.status is JobStatus.SUCCEEDED, load.errors
    # ann and bob are gold; bob is opted out in Campaign but still a list member (deliveries skip him).
    assert list_members("gold") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}
    assert load.metrics["added"] == 2 and load.metrics["rejected"] == {}
    [lst] = body(call(campaign_lists, "GET", "campaign/lists", {}))
    assert lst["name"] == "AEP audiences / gold" and lst["count"] == 2

    # Day 2: cy enters gold, but Campaign has no cy: rejected, never created.
    crm.ingest_at("crm/2.ndjson", ndjson(person("cy", "cy@example.com", tier="gold")), now=T2 - dt.timedelta(hours=1))
    segment_job(settings, T2)
    [load] = load_run(settings, account, activation.exports.run("gold-email", now=T2))
    assert load.metrics["rejected"] == {"unknownRecipient": 1} and load.metrics["added"] == 0
    assert len(recipients.admin.recipient_rows()) == 4

    # Day 3: bob leaves gold: removed from the list; his opt-out stays.
    crm.ingest_at(
        "crm/3.ndjson", ndjson(person("bob", "bob@example.com", tier="silver")), now=T3 - dt.timedelta(hours=1)
    )
    segment_job(settings, T3)
    [load] = load_run(settings, account, activation.exports.run("gold-email", now=T3))
    assert load.metrics["removed"] == 1
    assert list_members("gold") == {"Ann@Example.com": "realized"}
    bob = recipients.admin.recipient_rows(email="bob@example.com")[0]
    assert bob["optOut"] is True

    # The list's kept versions, newest first; restoring day 1's brings bob back, as a new version.
    versions = body(call(campaign_list_versions, "GET", "campaign/lists/gold/versions", {"id": "gold"}))
    assert [v["count"] for v in versions][:2] == [1, 2]
    day1 = versions[-1]["version"]
    restored = call(campaign_list_restore, "POST", "campaign/lists/gold/restore", {"id": "gold"}, {"version": day1})
    assert body(restored)["count"] == 2 and body(restored)["version"] > versions[0]["version"]
    assert list_members("gold") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}
    assert (
        body(call(destinations, "GET", "destinations/gold-email", {"id": "gold-email"}))["exportMode"] == "incremental"
    )
    assert body(call(segments, "GET", "segments/gold", {"id": "gold"}))["expression"]["type"] == "PQL"


def test_a_redelivered_file_is_a_no_op_and_a_full_run_replaces_the_list(settings, account, crm, recipients):
    assert put_destination(exportMode="full").status_code == 200
    activation = Activation.from_settings(settings)
    segment_job(settings, T1)
    first = activation.exports.run("gold-email", now=T1)
    [load] = load_run(settings, account, first)
    again = load_run(settings, account, first, data_files_first=False)  # the host delivers the manifest again
    assert again == [load] and recipients.tables.lists.get("gold").version == 1

    # A full export lists everyone: bob is gone from gold, so he is gone from the list.
    crm.ingest_at(
        "crm/3.ndjson", ndjson(person("bob", "bob@example.com", tier="silver")), now=T3 - dt.timedelta(hours=1)
    )
    segment_job(settings, T3)
    [load] = load_run(settings, account, activation.exports.run("gold-email", now=T3))
    assert load.metrics["removed"] == 1 and load.metrics["updated"] == 1
    assert list_members("gold") == {"Ann@Example.com": "existing"}


def tamper(blobs: BlobStore, manifest_path: str, name: str, data: bytes, **changes) -> str:
    """Write `data` as a new export file of the gold segment with a manifest that matches it (size, SHA-256),
    then apply `changes` to the manifest, as a buggy exporter might."""
    manifest = json.loads(blobs.get(manifest_path))
    entry = {
        **manifest["files"][0],
        "name": name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": data.count(b"\n") - 1,
    }
    if "rows" in changes:
        entry["rows"] = changes.pop("rows")
    manifest = {**manifest, "runId": "bad-run", "files": [entry], **changes}
    blobs.put(name, data)
    bad = name.replace(".csv", "_manifest.json").replace("segment", "manifest_")
    blobs.put(bad, json.dumps(manifest).encode())
    return bad


GOOD_HEADER = "email_lc_sha256,segmentMembershipStatus,firstName,loyaltyTier\n"


@pytest.mark.parametrize(
    ("data", "changes", "message"),
    [
        ("email,segmentMembershipStatus,firstName,loyaltyTier\nx,realized,A,gold\n", {}, "the header is"),
        (GOOD_HEADER.replace(",", ";") + "x;realized;A;gold\n", {}, "looks delimited by ';'"),
        (GOOD_HEADER + "x,realized,A,gold\ny,realized\n", {}, "cannot be read as csv"),
        (GOOD_HEADER + "x,realized,A,gold\n", {"rows": 3}, "has 1 rows but its manifest says 3"),
        (
            GOOD_HEADER.replace("loyaltyTier", "shoeSize") + "x,realized,A,42\n",
            {"columns": ["email_lc_sha256", "segmentMembershipStatus", "firstName", "shoeSize"]},
            "['shoeSize'] are not columns of target mapping 'mapRecipient'",
        ),
    ],
    ids=["bad-header", "wrong-delimiter", "truncated-row", "row-count", "unknown-column"],
)
def test_a_malformed_file_fails_its_load_and_changes_nothing(
    settings, account, crm, recipients, data, changes, message
):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    load_run(settings, account, job)
    before = recipients.tables.lists.get("gold")

    blobs = dlz(settings, account)
    bad = tamper(
        blobs, job.links["manifest"].split("/", 1)[1], "Campaign_Gold_segmentgold_bad.csv", data.encode(), **changes
    )
    fire_blob_trigger(campaign_audience_load, blobs, bad)
    [failed] = [j for j in recipients.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.source.endswith("_bad.csv")]
    assert failed.status is JobStatus.FAILED
    assert (
        failed.errors[0].message.startswith("Campaign_Gold_segmentgold_bad.csv: ")
        and message in failed.errors[0].message
    )
    assert recipients.tables.lists.get("gold") == before


def test_rows_a_load_cannot_use_are_rejected_and_counted_by_reason(settings, account, crm, recipients):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    ann, bob, dee = (sha(f"{n}@example.com") for n in ("ann", "bob", "dee"))
    rows = [
        f"{ann},realized,Ann,gold",
        f"{dee},exited,Dee,gold",  # an exit of someone not in the list: ignored
        f"{ann},exited,Ann,gold",  # Ann again: only her first row counts
        ",realized,Nobody,gold",
        f"{bob},maybe,Bob,gold",
        f"{sha('stranger@example.com')},realized,Stranger,gold",
    ]
    data = (GOOD_HEADER + "\n".join(rows) + "\n").encode()
    name = tamper(blobs, job.links["manifest"].split("/", 1)[1], "Campaign_Gold_segmentgold_mixed.csv", data)
    fire_blob_trigger(campaign_audience_load, blobs, name)
    [load] = [j for j in recipients.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.source.endswith("_mixed.csv")]
    assert load.status is JobStatus.SUCCEEDED, load.errors
    assert load.metrics["rejected"] == {
        "duplicateIdentity": 1,
        "missingIdentity": 1,
        "invalidStatus": 1,
        "unknownRecipient": 1,
    }
    assert load.metrics.items() >= {"rowsRead": 6, "added": 1, "removed": 0, "ignoredExits": 1, "listSize": 1}.items()
    assert list_members("gold") == {"Ann@Example.com": "realized"}


def test_a_file_that_does_not_match_its_manifest_is_refused(settings, account, crm, recipients):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(job.links["manifest"].split("/", 1)[1]))
    name = manifest["files"][0]["name"]
    data = blobs.get(name)
    blobs.put(name, data[:-10], metadata={"manifest": job.links["manifest"].split("/", 1)[1]})  # cut short
    fire_blob_trigger(campaign_audience_load, blobs, name)
    [load] = recipients.tables.jobs.list(JobType.AUDIENCE_LOAD)
    assert load.status is JobStatus.FAILED
    assert f"has {len(data) - 10} bytes but its manifest says {len(data)}" in load.errors[0].message
    assert recipients.tables.lists.find("gold") is None
    [alert] = body(call(alerts, "GET", "alerts?type=audienceLoad.failed"))
    assert alert["jobId"] == load.id and "its manifest says" in alert["message"]

    loads = {load.id}

    def refused(replaced: bytes) -> str:
        blobs.put(name, replaced, metadata={"manifest": job.links["manifest"].split("/", 1)[1]})
        fire_blob_trigger(campaign_audience_load, blobs, name)
        [new] = [j for j in recipients.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.id not in loads]
        loads.add(new.id)
        assert new.status is JobStatus.FAILED and recipients.tables.lists.find("gold") is None
        return new.errors[0].message

    assert f"has {len(data) + 5} bytes but its manifest says {len(data)}" in refused(data + b"extra")
    assert "SHA-256" in refused(data[:-1] + b"X")
    # The checksum is decided before what reading found: a header that cannot be read is refused as changed.
    assert "SHA-256" in refused(b"nonsense" + data[len(b"nonsense") :])
    # Deleted before its manifest's trigger loads it: refused, naming it, and nothing else changes.
    blobs.delete(name)
    fire_blob_trigger(campaign_audience_load, blobs, job.links["manifest"].split("/", 1)[1])
    [gone] = [j for j in recipients.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.id not in loads]
    assert gone.status is JobStatus.FAILED and recipients.tables.lists.find("gold") is None
    assert f"{name}: listed in its manifest but not in the DLZ" in gone.errors[0].message


@pytest.fixture(params=["delta", "rewrite"])
def delta_ratio(request, monkeypatch):
    """Profile sync both ways: as a delta of the updated recipients, and rewriting the table."""
    from shared.settings import get_settings

    monkeypatch.setenv("RECIPIENTS_DELTA_RATIO", "10" if request.param == "delta" else "0")
    get_settings.cache_clear()
    return request.param


@pytest.mark.usefixtures("delta_ratio")
def test_profile_sync_updates_recipients_that_exist_and_creates_none(settings, account, crm, recipients):
    crm.ingest_at(
        "crm/names.ndjson",
        ndjson(
            person("ann", "ann@example.com", person={"name": {"firstName": "Annie", "lastName": "New"}}),
            person("cy", "cy@example.com", person={"name": {"firstName": "Cy", "lastName": "New"}}),
            person("bob", "bob@example.com", person={"name": {"firstName": "Bob", "lastName": None}}),
        ),
        now=T1 - dt.timedelta(hours=1),
    )
    mapping = [
        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
        {"source": "person.name.firstName", "target": "firstName"},
        {"source": "person.name.lastName", "target": "lastName"},
    ]
    assert put_destination(syncType="profile", segments=["all"], mapping=mapping).status_code == 200
    segment_job(settings, T1)
    [load] = load_run(settings, account, Activation.from_settings(settings).exports.run("gold-email", now=T1))
    assert load.status is JobStatus.SUCCEEDED, load.errors
    # ann and bob exist in Campaign; cy does not and is not created; dee has no email in the platform.
    assert load.metrics["updated"] == 2 and load.metrics["rejected"] == {"unknownRecipient": 1}
    people = {r["email"]: r for r in recipients.admin.recipient_rows()}
    assert set(people) == {"Ann@Example.com", "bob@example.com", "zed@example.com", "dee@example.com"}
    assert (people["Ann@Example.com"]["firstName"], people["Ann@Example.com"]["lastName"]) == ("Annie", "New")
    # A null leaves the value as it is; Campaign's opt-out and quarantine stay as they were.
    assert (people["bob@example.com"]["lastName"], people["bob@example.com"]["optOut"]) == ("Old", True)
    assert people["zed@example.com"]["quarantined"] is True and people["dee@example.com"]["firstName"] == "Dee"
    assert recipients.tables.lists.list() == []


NAME_MAPPING = [
    {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
    {"source": "person.name.firstName", "target": "firstName"},
]


def sync_names(settings, account, crm, first: str, at: dt.datetime, *, deliveries: int = 1) -> list[Job]:
    """Ann's first name changes in the CRM; a segment job and an export run at `at` carry it to Campaign
    (profile sync of ann and bob), the load's trigger firing `deliveries` times at once."""
    import threading

    people = [person("ann", "ann@example.com", person={"name": {"firstName": first}}), person("bob", "bob@example.com")]
    crm.ingest_at(f"crm/names-{first}.ndjson", ndjson(*people), now=at - dt.timedelta(minutes=5))
    segment_job(settings, at)
    run = Activation.from_settings(settings).exports.run("gold-email", now=at)
    blobs = dlz(settings, account)
    manifest = run.links["manifest"].split("/", 1)[1]
    threads = [
        threading.Thread(target=fire_blob_trigger, args=(campaign_audience_load, blobs, manifest))
        for _ in range(deliveries)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [f["name"] for f in json.loads(blobs.get(manifest))["files"]]
    return [
        Job.model_validate(j) for j in body(call(audience_loads, "GET", "audience-loads", {})) if j["source"] in names
    ]


def test_profile_sync_writes_deltas_then_compacts_them_and_a_redelivery_during_compaction_is_a_no_op(
    settings, account, crm, recipients, monkeypatch
):
    from shared.settings import get_settings

    monkeypatch.setenv("RECIPIENTS_DELTA_RATIO", "1.0")  # deltas up to as many rows as the table (4) holds
    get_settings.cache_clear()
    settings = get_settings()
    campaign = Campaign.from_settings(settings)
    assert put_destination(syncType="profile", segments=["all"], mapping=NAME_MAPPING).status_code == 200

    def state() -> tuple[int, int, str, bool]:
        record = campaign.tables.recipients.get("recipients")
        [ann] = campaign.admin.recipient_rows(email="Ann@Example.com")
        [bob] = campaign.admin.recipient_rows(email="bob@example.com")
        return record.version, len(record.deltas), ann["firstName"], bob["optOut"]

    v0 = state()[0]
    for first, at, deltas in (("Annie", T1, 1), ("Anna", T2, 2)):  # 2 rows each: 2, then 4 rows in deltas
        [load] = sync_names(settings, account, crm, first, at)
        assert load.status is JobStatus.SUCCEEDED and load.metrics["delta"] is True, load.errors
        assert state()[1:] == (deltas, first, True)  # the newest delta wins; Campaign's opt-out stays
    with_deltas = state()[0]
    assert with_deltas == v0 + 2

    # 4 + 2 rows would pass the table's 4: this sync rewrites the table, delivered twice at the same time.
    loads = sync_names(settings, account, crm, "Ana", T3, deliveries=2)
    assert [(j.status, j.metrics["delta"]) for j in loads] == [(JobStatus.SUCCEEDED, False)]
    assert state() == (v0 + 3, 0, "Ana", True)
    assert len(campaign.admin.recipient_rows()) == 4

    # A version with deltas is restored whole.
    campaign.admin.restore(campaign.tables.recipients, "recipients", with_deltas, now=T3 + dt.timedelta(hours=1))
    assert state() == (v0 + 4, 2, "Anna", True)


def deliver(list_id: str, **options) -> dict:
    response = call(campaign_deliveries, "POST", "campaign/deliveries", {}, {"listId": list_id, **options})
    assert response.status_code == 201, body(response)
    return body(response)


def test_deliveries_skip_opted_out_and_quarantined_and_their_logs_come_back_as_events_a_segment_uses(
    settings, account, crm, recipients, landing_zone, clock
):
    assert put_destination(segments=["all"]).status_code == 200
    segment_job(settings, T1)
    [load] = load_run(settings, account, Activation.from_settings(settings).exports.run("gold-email", now=T1))
    assert list_members("all") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}

    # bob is opted out: never sent to. ann opens and clicks.
    options = {"open_rate": 1, "click_rate": 1, "hard_bounce_rate": 0, "soft_bounce_rate": 0}
    first = recipients.deliveries.deliver(DeliveryRequest(list_id="all", **options), now=T1 + dt.timedelta(hours=1))
    assert (first.targeted, first.sent, first.excluded) == (1, 1, {"optedOut": 1})
    assert (first.opens, first.clicks, first.quarantined) == (1, 1, 0)
    again = call(campaign_deliveries, "GET", f"campaign/deliveries/{first.id}", {"id": first.id})
    assert Delivery.model_validate(body(again)) == first
    assert [d["id"] for d in body(call(campaign_deliveries, "GET", "campaign/deliveries"))] == [first.id]

    # A hard bounce quarantines ann; the next delivery (over HTTP) skips her too.
    recipients.deliveries.deliver(DeliveryRequest(list_id="all", hard_bounce_rate=1), now=T1 + dt.timedelta(hours=2))
    third = deliver("all")
    assert third["targeted"] == 0 and third["excluded"] == {"optedOut": 1, "quarantined": 1}
    [ann] = recipients.admin.recipient_rows(email="Ann@Example.com")
    assert (ann["quarantined"], ann["quarantineReason"]) == (True, "hardBounce")

    # The logs go to landing as experience events, and are ingested like any other file.
    clock.move_to(T1 + dt.timedelta(days=3))  # the landing trigger runs three days later
    export = recipients.feedback.export_logs(now=T1 + dt.timedelta(days=3))
    assert export.status is JobStatus.SUCCEEDED, export.errors
    assert export.metrics["events"] == {"message.bounce": 1, "message.click": 1, "message.open": 1, "message.sent": 1}
    assert export.source.startswith("campaign-logs/")
    assert landing_zone.trigger(export.source).status is JobStatus.SUCCEEDED
    # The 4-hour timer, four hours later, finds nothing new since the watermark.
    clock.move_to(T1 + dt.timedelta(days=3, hours=4))
    campaign_log_export.build().get_user_function()(TimerRequest(past_due=False))
    [latest] = [j for j in recipients.tables.jobs.list(JobType.FEEDBACK) if j.id != export.id]
    assert latest.status is JobStatus.SUCCEEDED and latest.metrics["eventsTotal"] == 0

    # "Opened an email in the last 7 days", evaluated by the segment job and exported: ann.
    opened = 'xEvent[eventType = "message.open" and timestamp occurs <= 7 days before now].count() >= 1'
    assert put_segment("openers", opened).status_code == 200
    assert put_destination("openers-email", name="Campaign_Openers", segments=["openers"]).status_code == 200
    segment_job(settings, T1 + dt.timedelta(days=3, hours=4))
    job = Activation.from_settings(settings).exports.run("openers-email", now=T1 + dt.timedelta(days=3, hours=4))
    assert exported(settings, account, job) == {sha("ann@example.com"): "realized"}


@pytest.mark.parametrize(
    ("seed", "detail"),
    [
        ("email,shoeSize\na@example.com,42\n", "unknown columns ['shoeSize']"),
        ("firstName\nAnn\n", "every recipient needs 'email_lc_sha256'"),
        ("email,firstName\na@example.com,A\n,B\n", "rows [2] have no 'email_lc_sha256'"),
        ("email\na@example.com\n A@Example.com \n", "rows [[1, 2]] have the same 'email_lc_sha256'"),
    ],
    ids=["unknown-column", "no-key", "missing-key", "duplicate-key"],
)
def test_a_bad_recipient_seed_is_refused_naming_the_problem_and_nothing_is_stored(settings, seed, detail):
    response = call(campaign_recipients, "POST", "campaign/recipients", {}, seed.encode())
    assert response.status_code == 400 and detail in body(response)["detail"]
    assert body(call(campaign_recipients, "GET", "campaign/recipients", {})) == []


def test_a_delivery_to_an_unknown_list_is_a_404_and_bad_rates_a_400(settings):
    response = call(campaign_deliveries, "POST", "campaign/deliveries", {}, {"listId": "nope"})
    assert response.status_code == 404 and "no list 'nope'" in body(response)["detail"]
    response = call(campaign_deliveries, "POST", "campaign/deliveries", {}, {"listId": "x", "openRate": 2})
    assert response.status_code == 400 and body(response)["errors"][0]["field"] == "openRate"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"version": 2}, "manifest version 2 is not one this reader knows (it reads 1)"),
        ({"syncType": "sideways"}, "syncType"),
        ({"files": None}, "files"),
    ],
    ids=["unknown-version", "bad-sync-type", "no-files"],
)
def test_a_manifest_this_campaign_cannot_read_fails_its_load_naming_why(
    settings, account, crm, recipients, change, detail
):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    run = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(run.source))
    blobs.put(run.source, json.dumps({**manifest, **change}).encode())
    fire_blob_trigger(campaign_audience_load, blobs, run.source)
    [load] = [Job.model_validate(j) for j in body(call(audience_loads, "GET", "audience-loads", {}))]
    assert load.status is JobStatus.FAILED and load.source == run.source
    assert run.source in load.errors[0].message and detail in load.errors[0].message
    assert recipients.tables.lists.list() == []
