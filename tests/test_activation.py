"""Activation end to end: destinations saved over HTTP with their guardrails and governance, export runs
through the timer, the queue and on demand, and the files, manifests and run records they leave in the DLZ."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json

import pytest
from azure.functions.timer import TimerRequest

from functions.activation import (
    destinations,
    export_runs,
)
from shared.jobs import JobStatus
from shared.segmentation.runner import SegmentJobRunner
from shared.storage import BlobStore
from tests.conftest import NOW
from tests.helpers import create_dataset, ndjson, profile
from tests.test_http import call
from tests.test_segment_jobs import put_segment

T1 = NOW + dt.timedelta(hours=1)
T2 = T1 + dt.timedelta(days=1)
T3 = T2 + dt.timedelta(days=1)


def person(crm: str, email: str | None = None, *, tier: str = "gold", phone: str | None = None, **attrs) -> dict:
    record = profile(crm, email, loyalty={"tier": tier}, **attrs)
    if email:
        record["personalEmail"] = {"address": email}
    if phone:
        record["mobilePhone"] = {"number": phone}
    return record


@pytest.fixture
def crm(settings, landing_zone):
    create_dataset(settings, "crm", field_labels={"mobilePhone.number": ["C2"]})
    landing_zone.ingest_at(
        "crm/1.ndjson",
        ndjson(
            person("ann", " Ann@Example.com ", phone="(415) 555-0101"),
            person("bob", "bob@example.com", phone="+44 20 7946 0958"),
            person("cy", "cy@example.com", tier="silver"),
            person("dee", None),  # no email: excluded when the identity is the email
        ),
        now=NOW,
    )
    assert put_segment("gold", 'loyalty.tier = "gold"').status_code == 200
    assert put_segment("all", "true").status_code == 200
    return landing_zone


def destination(**overrides) -> dict:
    body = {
        "name": "Campaign_Gold",
        "segments": ["gold"],
        "identity": {"source": "identityMap.Email", "target": "email_lc_sha256"},
        "mapping": [
            {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
            {"source": "person.name.firstName", "target": "firstName"},
            {"source": "loyalty.tier", "target": "loyaltyTier"},
        ],
        "schedule": {"frequency": "hours", "everyHours": 24, "start": "2026-11-01T00:00:00Z"},
    }
    body.update(overrides)
    return body


def put_destination(dest_id: str = "gold-email", **overrides):
    return call(destinations, "PUT", f"destinations/{dest_id}", {"id": dest_id}, destination(**overrides))


def segment_job(settings, now):
    job = SegmentJobRunner.from_settings(settings).run(now=now)
    assert job.status is JobStatus.SUCCEEDED, job.errors
    return job


def dlz(settings, account) -> BlobStore:
    return BlobStore(account.container(settings.dlz_container))


def rows_of(blobs: BlobStore, name: str) -> list[dict]:
    data = blobs.get(name)
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode())))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_full_export_writes_hashed_identities_a_file_per_segment_and_a_manifest_last(settings, account, crm):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    export_runs.build().get_user_function()(TimerRequest(past_due=False))  # the real clock is past the start

    blobs = dlz(settings, account)
    names = sorted(blobs.names())
    [manifest_name] = [n for n in names if "_manifest_" in n]
    manifest = json.loads(blobs.get(manifest_name))
    [entry] = manifest["files"]
    assert entry["name"].startswith("Campaign_Gold_segmentgold_") and entry["name"].endswith(".csv")
    data = blobs.get(entry["name"])
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    rows = rows_of(blobs, entry["name"])
    assert entry["rows"] == len(rows) == 2
    assert {r["email_lc_sha256"] for r in rows} == {sha("ann@example.com"), sha("bob@example.com")}
    assert list(rows[0]) == ["email_lc_sha256", "segmentMembershipStatus", "firstName", "loyaltyTier"]
    assert {r["segmentMembershipStatus"] for r in rows} == {"realized"}
    assert manifest["columns"] == list(rows[0])


def test_known_sha256_values_and_e164_normalisation(settings):
    from shared.activation.export import install_transforms
    from shared.engine import connect

    con = connect(settings)
    install_transforms(con, country_code="1")
    cases = {
        "(415) 555-0101": "+14155550101",
        "1-415-555-0101": "+14155550101",
        "+44 20 7946 0958": "+442079460958",
        "0044 20 7946 0958": "+442079460958",
        "415.555.0101": "+14155550101",
        "call me": None,
        "12": None,
    }
    for raw, expected in cases.items():
        assert con.execute("SELECT e164(?)", [raw]).fetchall()[0][0] == expected, raw
    # Known SHA-256 values (lowercase hex) of the normalised email and phone.
    known = {
        "email_sha256(' Test@Example.COM ')": "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b",
        "email_sha256('ann@example.com')": "71d4f55f72fa128dfb468a1a3901507c804b74316488744d769d7f4b16696476",
        "phone_sha256('(415) 555-0101')": "54a97a4595350c4cc6399b01b572a4614416acfec53a508dfa2a36ed3da25817",
    }
    for expr, digest in known.items():
        assert con.execute(f"SELECT {expr}").fetchall()[0][0] == digest, expr
