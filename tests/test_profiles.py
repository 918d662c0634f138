"""Unified profiles: fragments stitched across datasets and events, merged by policy, as of `now`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from shared.engine import connect
from shared.identity import MergeMethod, MergePolicy, MergePolicyStore, ProfileStore
from shared.settings import get_settings
from tests.conftest import NOW
from tests.helpers import create_dataset, event, ndjson, profile

T1 = NOW
T2 = NOW + dt.timedelta(hours=1)
LATER = NOW + dt.timedelta(days=1)


@pytest.fixture
def build(settings, tmp_path: Path):
    def run(policy: MergePolicy | None = None, now: dt.datetime = LATER):
        settings = get_settings()  # as the function would read them, after any test's own settings
        con = connect(settings, spill_dir=str(tmp_path))
        store = ProfileStore.from_settings(settings)
        if policy is not None:  # the store is merged by one policy: another one needs a rebuild
            store.rebuild(policy=policy, now=now)
        result = store.open(con, now=now, workdir=tmp_path / "store")
        rows = result.profiles_relation().to_arrow_table().to_pylist()
        return result, rows

    return run


def by_identity(rows: list[dict], ns: str, value: str) -> dict:
    matches = [r for r in rows if {"namespace": ns, "id": value} in r["identities"]]
    assert len(matches) == 1, f"{ns}:{value} is in {len(matches)} profiles"
    return matches[0]


@pytest.fixture
def two_datasets_and_events(settings, landing_zone):
    create_dataset(settings, "crm")
    create_dataset(settings, "loyalty")
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    landing_zone.ingest_at(
        "crm/day1.ndjson",
        ndjson(
            profile("c-1", "  Ann@Example.COM ", person={"name": {"firstName": "Ann"}}, loyalty={"tier": "silver"}),
            profile("c-2", "bob@example.com", person={"name": {"firstName": "Bob"}}),
        ),
        now=T1,
    )
    # The loyalty system knows Ann only by her email, in another case, and has a newer tier.
    landing_zone.ingest_at(
        "loyalty/day1.csv",
        "identityMap.Email,loyalty.tier,loyalty.points\nann@example.com,gold,1200\ncarol@example.com,bronze,10\n",
        now=T2,
    )
    # Web events: a logged-in event links Ann's device (ECID) to her CRM id; the device's other event follows.
    landing_zone.ingest_at(
        "web/day1.ndjson",
        ndjson(
            event("e-1", "2026-11-20T10:00:00Z", "commerce.productViews", ECID="dev-9"),
            event("e-2", "2026-11-20T10:05:00Z", "commerce.purchases", ECID="dev-9", CRMID="c-1"),
            event("e-3", "2026-11-20T11:00:00Z", "web.webpagedetails.pageViews", ECID="dev-anon"),
        ),
        now=T2,
    )


def test_fragments_sharing_any_identity_are_one_person_across_datasets_and_events(build, two_datasets_and_events):
    result, rows = build()
    ann = by_identity(rows, "Email", "ann@example.com")
    assert {(i["namespace"], i["id"]) for i in ann["identities"]} == {
        ("CRMID", "c-1"),
        ("Email", "ann@example.com"),
        ("ECID", "dev-9"),
    }
    assert by_identity(rows, "ECID", "dev-9")["profileId"] == ann["profileId"]
    # Ann, Bob, Carol (loyalty only) and the anonymous device.
    assert result.stats["profiles"] == 4
    events = result.events_relation().to_arrow_table().to_pylist()
    assert {e["_id"] for e in events if e["profileId"] == ann["profileId"]} == {"e-1", "e-2"}


def test_emails_are_compared_trimmed_and_case_insensitively(build, two_datasets_and_events):
    _, rows = build()
    ann = by_identity(rows, "Email", "ann@example.com")
    assert ann["person"]["name"]["firstName"] == "Ann" and ann["loyalty"]["points"] == 1200


def test_timestamp_ordered_policy_takes_the_latest_ingested_non_null_value(build, two_datasets_and_events):
    _, rows = build()
    ann = by_identity(rows, "CRMID", "c-1")
    assert ann["loyalty"]["tier"] == "gold"  # loyalty (T2) is newer than crm (T1)
    assert ann["person"]["name"]["firstName"] == "Ann"  # null in loyalty does not erase it


def test_dataset_precedence_policy_prefers_the_first_dataset_listed(build, two_datasets_and_events):
    policy = MergePolicy(
        id="crm-first", name="CRM first", method=MergeMethod.DATASET_PRECEDENCE, dataset_order=["crm", "loyalty"]
    )
    _, rows = build(policy)
    ann = by_identity(rows, "CRMID", "c-1")
    assert ann["loyalty"]["tier"] == "silver"
    assert ann["loyalty"]["points"] == 1200  # crm has none, so loyalty's value stands


def test_without_stitching_fragments_join_only_on_their_primary_identity(build, two_datasets_and_events):
    policy = MergePolicy(id="no-stitch", name="No stitching", identity_stitching=False)
    _, rows = build(policy)
    crm_ann = by_identity(rows, "CRMID", "c-1")
    assert crm_ann["loyalty"]["tier"] == "silver"
    assert all(i != {"namespace": "Email", "id": "ann@example.com"} for i in crm_ann["identities"])


def test_a_run_as_of_an_earlier_time_sees_only_what_was_ingested_by_then(build, two_datasets_and_events):
    _, rows = build(now=T1)
    assert len(rows) == 2  # only the crm batch existed at T1
    assert by_identity(rows, "CRMID", "c-1")["loyalty"]["tier"] == "silver"


def test_the_same_inputs_give_the_same_profile_ids(build, two_datasets_and_events):
    _, first = build()
    _, second = build()
    assert sorted(r["profileId"] for r in first) == sorted(r["profileId"] for r in second)


def test_the_default_policy_is_stored_once_and_can_be_changed(settings, account):
    store = MergePolicyStore.from_settings(settings, account)
    assert store.default().id == "default"
    store.save(
        MergePolicy(id="crm-first", name="x", method="dataSetPrecedence", dataset_order=["crm"]), make_default=True
    )
    assert store.default().id == "crm-first"
    store.save(MergePolicy(id="default", name="back"), make_default=True)
    assert store.default().name == "back"


def test_no_data_gives_no_profiles(build, settings):
    create_dataset(settings, "crm")
    result, rows = build()
    assert rows == [] and result.stats["profiles"] == 0
