"""The simulated Campaign end to end: export files loaded from the DLZ by the blob-trigger function into
audience lists and recipients, deliveries to those lists, and their logs sent back to the platform."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dev.host import fire_blob_trigger
from functions.campaign import audience_loads, campaign_audience_load, campaign_lists, campaign_recipients
from shared.activation import Activation
from shared.campaign.service import Campaign
from shared.jobs import Job, JobStatus
from tests import test_activation
from tests.helpers import ndjson
from tests.test_activation import T1, T2, T3, dlz, person, put_destination, segment_job
from tests.test_http import body, call

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
    [load] = load_run(settings, account, activation.run("gold-email", now=T1))
    assert load.status is JobStatus.SUCCEEDED, load.errors
    # ann and bob are gold; bob is opted out in Campaign but still a list member (deliveries skip him).
    assert list_members("gold") == {"Ann@Example.com": "realized", "bob@example.com": "realized"}
    assert load.metrics["added"] == 2 and load.metrics["rejected"] == {}
    [lst] = body(call(campaign_lists, "GET", "campaign/lists", {}))
    assert lst["name"] == "AEP audiences / gold" and lst["count"] == 2

    # Day 2: cy enters gold, but Campaign has no cy: rejected, never created.
    crm.ingest_at("crm/2.ndjson", ndjson(person("cy", "cy@example.com", tier="gold")), now=T2 - dt.timedelta(hours=1))
    segment_job(settings, T2)
    [load] = load_run(settings, account, activation.run("gold-email", now=T2))
    assert load.metrics["rejected"] == {"unknownRecipient": 1} and load.metrics["added"] == 0
    assert len(recipients.recipient_rows()) == 4

    # Day 3: bob leaves gold: removed from the list; his opt-out stays.
    crm.ingest_at(
        "crm/3.ndjson", ndjson(person("bob", "bob@example.com", tier="silver")), now=T3 - dt.timedelta(hours=1)
    )
    segment_job(settings, T3)
    [load] = load_run(settings, account, activation.run("gold-email", now=T3))
    assert load.metrics["removed"] == 1
    assert list_members("gold") == {"Ann@Example.com": "realized"}
    bob = recipients.recipient_rows("email = 'bob@example.com'")[0]
    assert bob["optOut"] is True
