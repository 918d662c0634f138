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

from dev.host import deliver_queue_messages
from functions.activation import (
    dataflow_runs,
    destination_run,
    destinations,
    dlz_retention,
    export_run_queued,
    export_runs,
    governance_policies,
)
from shared.activation import Activation
from shared.jobs import JobStatus, JobStore, JobType
from shared.segmentation.runner import SegmentJobRunner
from shared.storage import BlobStore
from tests.conftest import NOW
from tests.helpers import create_dataset, ndjson, profile
from tests.test_http import body, call
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


def test_a_segment_may_be_called_like_the_run_s_own_folders(settings, account, crm):
    """An export downloads each segment's snapshot into a folder named after it, beside the profiles' and
    the files' folders and the folders of the snapshots last exported: segments called `profiles`, `files`
    and `gold-previous` export their own members and nobody else's, in full runs and incremental ones."""
    assert put_segment("profiles", 'loyalty.tier = "gold"').status_code == 200
    assert put_segment("files", 'loyalty.tier = "silver"').status_code == 200
    assert put_segment("gold-previous", 'loyalty.tier = "silver"').status_code == 200
    assert put_destination(segments=["profiles", "files"]).status_code == 200
    assert put_destination("changes", segments=["gold", "gold-previous"], exportMode="incremental").status_code == 200
    exports = Activation.from_settings(settings).exports
    segment_job(settings, T1)

    def activated(destination_id: str, now) -> dict[str, int]:
        job = exports.run(destination_id, now=now)
        assert job.status is JobStatus.SUCCEEDED, job.errors
        manifest = json.loads(dlz(settings, account).get(job.source))
        return {s: v["activated"] for s, v in manifest["segments"].items()}

    assert activated("gold-email", T1) == {"profiles": 2, "files": 1}
    assert activated("changes", T1) == {"gold": 2, "gold-previous": 1}
    segment_job(settings, T2)
    assert activated("changes", T2) == {"gold": 0, "gold-previous": 0}  # nobody entered or left


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


GUARDRAILS = {
    "over 50 segments": ({"segments": [f"s{i}" for i in range(51)]}, "at most 50 segments; this one has 51"),
    "over 20 fields": (
        {
            "mapping": [{"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"}]
            + [{"source": "loyalty.tier", "target": f"c{i}"} for i in range(20)]
        },
        "at most 20 mapped fields (identity included); this mapping has 22",
    ),
    "an event field": (
        {
            "mapping": [
                {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
                {"source": "commerce.order.priceTotal", "target": "loyaltyPoints"},
            ]
        },
        "'commerce.order.priceTotal' is an experience event field",
    ),
    "the identity map": (
        {
            "mapping": [
                {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
                {"source": "identityMap", "target": "email"},
            ]
        },
        "'identityMap' is the identity map",
    ),
    "no membership status": (
        {"mapping": [{"source": "loyalty.tier", "target": "loyaltyTier"}]},
        "segmentMembershipStatus is always exported and cannot be removed",
    ),
    "an unknown target identity": (
        {"identity": {"source": "identityMap.Email", "target": "email_md5"}},
        "target identity 'email_md5' is not one of external_id, ECID, email_lc_sha256, phone_sha256, GAID, IDFA",
    ),
    "a mismatched namespace": (
        {"identity": {"source": "identityMap.Phone", "target": "email_lc_sha256"}},
        "identityMap.Phone cannot be mapped to email_lc_sha256; it is read from identityMap.Email",
    ),
    "a dedup key mixing a namespace and attributes": (
        {"dedupKey": ["email_lc_sha256", "firstName"]},
        "one identity namespace or attributes, not both",
    ),
    "a dedup key of three attributes": (
        {
            "mapping": [
                {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
                {"source": "person.name.firstName", "target": "firstName"},
                {"source": "person.name.lastName", "target": "lastName"},
                {"source": "loyalty.tier", "target": "loyaltyTier"},
            ],
            "dedupKey": ["firstName", "lastName", "loyaltyTier"],
        },
        "at most 2 attributes; this one has 3",
    ),
    "a dedup key outside the target mapping": (
        {"dedupKey": ["nickname"]},
        "deduplication key 'nickname' is not a mapped column of target mapping 'mapRecipient'",
    ),
    "a frequency under 3 hours": (
        {"schedule": {"everyHours": 1, "start": "2026-11-01T00:00:00Z"}},
        "every 1 hours is under the 3-hour minimum",
    ),
    "a frequency not allowed": (
        {"schedule": {"everyHours": 5, "start": "2026-11-01T00:00:00Z"}},
        "every 5 hours is not one of 3, 6, 8, 12, 24",
    ),
    "a file name over 255 characters": ({"name": "C" * 230}, "the limit is 255"),
}


@pytest.mark.parametrize("case", list(GUARDRAILS), ids=list(GUARDRAILS))
def test_each_guardrail_is_refused_on_save_naming_the_rule_and_value(settings, crm, case):
    overrides, message = GUARDRAILS[case]
    response = put_destination(**overrides)
    assert response.status_code == 400, body(response)
    problem = body(response)
    assert problem["title"] == "guardrail" and message in problem["detail"], problem["detail"]
    assert call(destinations, "GET", "destinations/gold-email", {"id": "gold-email"}).status_code == 404


def test_an_array_or_object_attribute_cannot_be_mapped():
    from shared.activation.destinations import Destination, check_guardrails
    from shared.segmentation.pql.compiler import Fields

    fields = Fields(profile={"interests": 'STRUCT("name" VARCHAR)[]', "person.name.firstName": "VARCHAR"}, event={})
    d = Destination.model_validate(
        {
            "id": "arrays",
            **destination(
                mapping=[
                    {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
                    {"source": "interests", "target": "email"},
                    {"source": "person.name", "target": "firstName"},
                ]
            ),
        }
    )
    with pytest.raises(Exception) as raised:
        check_guardrails(d, fields=fields, columns={"email", "firstName", "email_lc_sha256"}, segments={"gold"})
    assert "'interests' is an array" in str(raised.value) and "'person.name' is an object" in str(raised.value)


def email_policy():
    return call(
        governance_policies,
        "PUT",
        "policies/no-email-c2",
        {"id": "no-email-c2"},
        {"name": "No email on C2", "marketingAction": "Email Targeting", "deniedLabels": ["C2"]},
    )


def test_governance_blocks_a_save_that_exports_labelled_data_naming_policy_labels_and_fields(settings, crm):
    assert email_policy().status_code == 200
    mapping = [
        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
        {"source": "mobilePhone.number", "target": "phone"},
    ]
    response = put_destination(mapping=mapping)
    assert response.status_code == 422
    problem = body(response)
    assert (
        "No email on C2" in problem["detail"]
        and "C2 on field 'mobilePhone.number' of dataset 'crm'" in problem["detail"]
    )
    assert problem["errors"][0]["labels"] == ["C2"] and problem["errors"][0]["fields"] == ["crm.mobilePhone.number"]
    # The same destination for another marketing action is allowed.
    assert put_destination(mapping=mapping, marketingAction="Analytics").status_code == 200


def test_governance_is_checked_again_at_run_time_and_the_run_fails_with_nothing_written(settings, account, crm):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    # After the destination was saved, the segment's field gets a label that a policy denies.
    create_dataset(settings, "crm", field_labels={"mobilePhone.number": ["C2"], "loyalty.tier": ["C2"]})
    email_policy()
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    assert job.status is JobStatus.FAILED and job.errors[0].code == "governance"
    assert (
        "field 'loyalty.tier' of dataset 'crm' (used by mapping to loyaltyTier, segment gold)" in job.errors[0].message
    )
    assert list(dlz(settings, account).names()) == []
    runs = body(call(dataflow_runs, "GET", "dataflows/gold-email/runs", {"id": "gold-email"}))
    assert runs[0]["status"] == "FAILED" and "No email on C2" in runs[0]["errors"][0]


def exported(settings, account, job) -> dict[str, str]:
    """profileId-free view of a run's rows: hashed email -> status."""
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(job.source))
    rows = [r for f in manifest["files"] for r in rows_of(blobs, f["name"])]
    return {r["email_lc_sha256"]: r["segmentMembershipStatus"] for r in rows}


def test_incremental_exports_enter_stay_and_exit_across_three_runs_the_first_a_backfill(settings, account, crm):
    assert put_destination(exportMode="incremental").status_code == 200
    activation = Activation.from_settings(settings)
    segment_job(settings, T1)
    first = activation.exports.run("gold-email", now=T1)
    assert exported(settings, account, first) == {
        sha("ann@example.com"): "realized",
        sha("bob@example.com"): "realized",
    }
    runs = activation.destinations.runs("gold-email")
    assert runs[0].backfill and runs[0].identities_activated == 2

    # Day 2: cy enters gold; ann and bob stay, so they are not exported again.
    crm.ingest_at("crm/2.ndjson", ndjson(person("cy", "cy@example.com", tier="gold")), now=T2 - dt.timedelta(hours=1))
    segment_job(settings, T2)
    second = activation.exports.run("gold-email", now=T2)
    assert exported(settings, account, second) == {sha("cy@example.com"): "realized"}

    # Day 3: bob leaves gold: exported as exited, for Campaign to remove.
    crm.ingest_at(
        "crm/3.ndjson", ndjson(person("bob", "bob@example.com", tier="silver")), now=T3 - dt.timedelta(hours=1)
    )
    segment_job(settings, T3)
    third = activation.exports.run("gold-email", now=T3)
    assert exported(settings, account, third) == {sha("bob@example.com"): "exited"}
    assert not activation.destinations.runs("gold-email")[0].backfill

    # A full export of the same day lists every active member instead.
    assert put_destination(exportMode="full").status_code == 200
    full = activation.exports.run("gold-email", now=T3 + dt.timedelta(minutes=5))
    assert set(exported(settings, account, full)) == {sha("ann@example.com"), sha("cy@example.com")}


def test_mandatory_attributes_and_dedup_keys_exclude_with_a_reason(settings, account, crm):
    crm.ingest_at(
        "crm/names.ndjson",
        ndjson(
            person("ann", "ann@example.com", person={"name": {"firstName": "Sam"}}),
            person("bob", "bob@example.com", person={"name": {"firstName": "Sam"}}),
            person("eve", "eve@example.com", person={"name": {"firstName": "Eve"}}),
        ),
        now=NOW,
    )
    assert put_segment("gold", 'loyalty.tier = "gold"').status_code == 200
    assert put_destination(segments=["all"], mandatory=["firstName"], dedupKey=["firstName"]).status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    assert job.status is JobStatus.SUCCEEDED, job.errors
    # ann and bob are both Sam: one is kept; cy has no first name; dee has no email at all.
    assert job.metrics["excluded"] == {
        "duplicateDedupKey": 1,
        "missingIdentity": 1,
        "missingMandatory:firstName": 1,
    }
    assert job.metrics["profilesReceived"] == 5 and job.metrics["identitiesActivated"] == 2
    [run] = Activation.from_settings(settings).destinations.runs("gold-email")
    assert run.excluded == job.metrics["excluded"] and run.profiles_received == 5


def test_a_scheduled_slot_runs_once_and_the_next_slot_runs_again(settings, crm):
    assert put_destination(schedule={"everyHours": 6, "start": "2026-11-20T00:00:00Z"}).status_code == 200
    segment_job(settings, T1)
    activation = Activation.from_settings(settings)
    first = activation.exports.run_due(now=T1)  # 13:00 is in the 12:00 slot
    assert [j.id for j in first] == ["exp-gold-email-20261120T120000Z"]
    assert activation.exports.run_due(now=T1 + dt.timedelta(hours=2)) == []  # the timer again, same slot
    assert [j.id for j in activation.exports.run_due(now=T1 + dt.timedelta(hours=5))] == [
        "exp-gold-email-20261120T180000Z"
    ]
    assert activation.exports.run_due(now=dt.datetime(2026, 10, 1, tzinfo=dt.UTC)) == []  # before the start


def test_after_segment_evaluation_runs_once_per_segment_job(settings, crm):
    assert put_destination(schedule={"frequency": "afterSegmentEvaluation"}).status_code == 200
    activation = Activation.from_settings(settings)
    assert activation.exports.run_due(now=T1) == []  # nothing evaluated yet
    seg = segment_job(settings, T1)
    [job] = activation.exports.run_due(now=T1)
    assert job.id == f"exp-gold-email-after-{seg.id}" and job.status is JobStatus.SUCCEEDED
    assert activation.exports.run_due(now=T1 + dt.timedelta(hours=1)) == []


def test_files_split_at_the_row_limit_with_numbered_names_and_gzip(settings, account, crm, monkeypatch):
    from shared.settings import get_settings

    monkeypatch.setenv("EXPORT_SPLIT_ROWS", "1")
    get_settings.cache_clear()
    settings = get_settings()
    assert put_destination(csv={"gzip": True, "delimiter": ";"}).status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(job.source))
    assert [f["name"] for f in manifest["files"]] == [
        "Campaign_Gold_segmentgold_20261120130000.csv.gz",
        "Campaign_Gold_segmentgold_20261120130000_2.csv.gz",
    ]
    assert [f["rows"] for f in manifest["files"]] == [1, 1] and manifest["rows"] == 2
    text = gzip.decompress(blobs.get(manifest["files"][0]["name"])).decode()
    assert text.splitlines()[0] == "email_lc_sha256;segmentMembershipStatus;firstName;loyaltyTier"


@pytest.mark.parametrize("fmt", ["json", "parquet"])
@pytest.mark.parametrize("dedup", [False, True])
def test_json_and_parquet_files_with_and_without_a_dedup_key_and_an_empty_segment(
    settings, account, crm, tmp_path, fmt, dedup
):
    """Without a dedup key the files are written straight from the query; with one, from every member's row:
    both give a file per segment (an empty one for a segment nobody is in) in the destination's format."""
    import duckdb

    assert put_segment("nobody", 'loyalty.tier = "platinum"').status_code == 200
    extra = {"dedupKey": ["email_lc_sha256"]} if dedup else {}
    assert put_destination(segments=["gold", "nobody"], format=fmt, **extra).status_code == 200
    segment_job(settings, T1)
    job = Activation.from_settings(settings).exports.run("gold-email", now=T1)
    assert job.status is JobStatus.SUCCEEDED, job.errors
    blobs = dlz(settings, account)
    manifest = json.loads(blobs.get(job.source))
    assert [(f["segmentId"], f["rows"]) for f in manifest["files"]] == [("gold", 2), ("nobody", 0)]
    rows = {}
    for f in manifest["files"]:
        assert f["name"].endswith(f".{fmt}")
        local = tmp_path / f["name"]
        local.write_bytes(blobs.get(f["name"]))
        reader = "read_parquet" if fmt == "parquet" else "read_json_auto"
        rows[f["segmentId"]] = (
            duckdb.sql(f"SELECT email_lc_sha256 FROM {reader}('{local}') ORDER BY 1").fetchall() if f["rows"] else []
        )
        assert local.stat().st_size == f["bytes"]
    assert rows["gold"] == sorted([(sha("ann@example.com"),), (sha("bob@example.com"),)])
    assert rows["nobody"] == []
    assert job.metrics["excluded"] == {"missingIdentity": 1}  # dee, gold but without an email


@pytest.mark.parametrize("pieces", [1, 2])
def test_export_files_from_partitioned_writes_whole_even_when_a_partition_comes_in_pieces(settings, tmp_path, pieces):
    """The files written straight from the query, through real DuckDB: each segment's partition becomes its
    file; a partition found in more than one piece (DuckDB past its open-file limit) is written again whole."""
    import duckdb

    from shared.activation import Destination
    from shared.activation.export import Members, build_rows, install_transforms
    from shared.engine import connect
    from shared.segmentation.memberships import LocalSnapshot

    for sid, ids in (("gold", ["p1", "p2"]), ("empty", [])):
        rows = " UNION ALL ".join(
            f"SELECT '{i}' AS profileId, 'realized' AS status, '{T1.isoformat()}'::TIMESTAMPTZ AS lastQualificationTime, "
            "NULL::TIMESTAMPTZ AS exitedAt"
            for i in ids
        )
        duckdb.execute(
            f"COPY ({rows or 'SELECT NULL::VARCHAR AS profileId, NULL AS status, NULL::TIMESTAMPTZ AS lastQualificationTime, NULL::TIMESTAMPTZ AS exitedAt WHERE false'}) "
            f"TO '{tmp_path / sid}.parquet' (FORMAT parquet)"
        )
    profiles = [  # two shards, read one at a time
        f"""(SELECT profileId, [{{'namespace': 'Email', 'id': email}}] AS identities,
        {{'name': {{'firstName': 'F'}}}} AS person, {{'tier': 'gold'}} AS loyalty
        FROM (VALUES ('{pid}', '{email}')) AS t(profileId, email))"""
        for pid, email in (("p1", "a@x.com"), ("p2", "b@x.com"))
    ]
    d = Destination.model_validate({**destination(segments=["gold", "empty"]), "id": "gold-email", "format": "csv"})
    con = connect(settings)
    install_transforms(con, country_code="1")
    members = [Members(sid, LocalSnapshot([(tmp_path / f"{sid}.parquet", None)])) for sid in ("gold", "empty")]
    rows = build_rows(con, d, members, profiles, split_rows=100)
    out = tmp_path / "files"
    if pieces == 2:  # as if DuckDB had written the partition of "gold" in two files
        (out / "group-0" / "seg=0" / "_part=1").mkdir(parents=True)
        (out / "group-0" / "seg=0" / "_part=1" / "data_9.csv").write_text("a piece\n")
    written = rows.write(out)
    assert [(w.segment_id, w.part, w.rows) for w in written] == [("gold", 1, 2), ("empty", 1, 0)]
    gold = list(csv.DictReader(io.StringIO(written[0].path.read_text())))
    assert sorted(r["email_lc_sha256"] for r in gold) == sorted([sha("a@x.com"), sha("b@x.com")])
    assert written[1].path.read_text().splitlines() == ["email_lc_sha256,segmentMembershipStatus,firstName,loyaltyTier"]


def test_a_run_that_fails_before_its_manifest_leaves_no_visible_file(settings, account, crm, monkeypatch):
    assert put_destination(segments=["gold", "all"]).status_code == 200
    segment_job(settings, T1)

    def refuse(self, name, data, **kw):
        raise OSError("the storage account went away")

    monkeypatch.setattr(BlobStore, "put", refuse)
    with pytest.raises(OSError):
        Activation.from_settings(settings).exports.run("gold-email", now=T1)
    monkeypatch.undo()
    assert list(dlz(settings, account).names()) == []
    job = JobStore.from_settings(settings, account).get(JobType.EXPORT, "exp-gold-email-20261120T130000Z-now")
    assert job.status is JobStatus.FAILED and "went away" in job.errors[0].message


def test_an_on_demand_run_goes_through_the_queue_and_its_records_read_back(settings, account, crm):
    assert put_destination(segments=["gold", "all"]).status_code == 200
    segment_job(settings, T1)
    response = call(destination_run, "POST", "destinations/gold-email/run", {"id": "gold-email"})
    assert response.status_code == 202 and response.headers["Location"] == "/api/dataflows/gold-email/runs"
    queued = body(response)
    assert queued["status"] == "QUEUED"
    queue = account.queue(settings.export_runs_queue)
    assert deliver_queue_messages(export_run_queued, queue) == 1
    job = JobStore.from_settings(settings, account).get(JobType.EXPORT, queued["id"])
    assert job.status is JobStatus.SUCCEEDED and job.metrics["files"] == 2
    runs = body(call(dataflow_runs, "GET", "dataflows/gold-email/runs", {"id": "gold-email"}))
    assert {r["segmentId"]: r["identitiesActivated"] for r in runs} == {"gold": 2, "all": 3}
    assert all(r["status"] == "SUCCEEDED" and r["files"] for r in runs)
    assert call(dataflow_runs, "GET", "dataflows/nope/runs", {"id": "nope"}).status_code == 404


def test_retention_deletes_dlz_files_older_than_the_setting(settings, account, crm, clock):
    assert put_destination().status_code == 200
    segment_job(settings, T1)
    Activation.from_settings(settings).exports.run("gold-email", now=T1)
    blobs = dlz(settings, account)
    assert len(list(blobs.names())) == 2
    dlz_retention.build().get_user_function()(TimerRequest(past_due=False))  # the same day: nothing is old
    assert len(list(blobs.names())) == 2
    assert (
        Activation.from_settings(settings).retention.cleanup(now=T1 + dt.timedelta(days=settings.dlz_retention_days))
        == []
    )
    clock.move_to(T1 + dt.timedelta(days=settings.dlz_retention_days, minutes=1))
    dlz_retention.build().get_user_function()(TimerRequest(past_due=False))
    assert list(blobs.names()) == []


def test_e164_agrees_with_libphonenumber_on_generated_numbers(settings):
    """The SQL normalisation, checked against Google's libphonenumber on numbers written the ways people
    write them: international, E.164, and national (for the default country code)."""
    import phonenumbers
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    from shared.activation.export import install_transforms
    from shared.engine import connect

    con = connect(settings)
    install_transforms(con, country_code="1")
    regions = st.sampled_from(["US", "GB", "FR", "DE", "AU", "CA"])

    @hsettings(max_examples=150, deadline=None)
    @given(regions, st.integers(min_value=0, max_value=10**6))
    def check(region, n):
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        number = phonenumbers.parse(str(example.national_number)[:-4] + f"{n % 10000:04d}", region)
        expected = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        written = [
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
            expected,
            "00" + expected[1:],
        ]
        if region in ("US", "CA"):  # national numbers mean the default country code (1)
            written.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
        for text in written:
            assert con.execute("SELECT e164(?)", [text]).fetchall()[0][0] == expected, (region, text)

    check()


def test_a_segment_job_function_triggers_after_evaluation_exports(settings, crm):
    from functions.segmentation import segment_job_daily

    assert put_destination(schedule={"frequency": "afterSegmentEvaluation"}).status_code == 200
    segment_job_daily.build().get_user_function()(TimerRequest(past_due=False))
    [job] = Activation.from_settings(settings).jobs.list(JobType.EXPORT)
    assert job.id.startswith("exp-gold-email-after-seg-") and job.status is JobStatus.SUCCEEDED


def test_malformed_destinations_get_a_400_naming_the_field_and_nothing_is_stored(settings, crm):
    response = put_destination(format="xml", exportMode="sometimes")
    assert response.status_code == 400
    problem = body(response)
    assert {e["field"] for e in problem["errors"]} == {"format", "exportMode"}
    no_identity = call(destinations, "PUT", "destinations/x1", {"id": "x1"}, {"name": "X", "segments": ["gold"]})
    assert no_identity.status_code == 400 and body(no_identity)["errors"][0]["field"] == "identity"
    not_json = call(destinations, "PUT", "destinations/x2", {"id": "x2"}, None)
    assert not_json.status_code == 400
    assert body(call(destinations, "GET", "destinations")) == []
    assert call(destination_run, "POST", "destinations/nope/run", {"id": "nope"}).status_code == 404
