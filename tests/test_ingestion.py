"""Landing files become batches in the lake: every format, bad rows with their reasons, whole-file
failures that leave nothing in the lake, the rejected-rows threshold, and duplicate deliveries."""

from __future__ import annotations

import csv
import gzip
import io
import json

import duckdb
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from shared.ingestion import LakeStore
from shared.ingestion.schemas import FieldType, Schema, SchemaClass, SchemaField, SchemaStore
from shared.jobs import JobStatus
from tests.conftest import NOW
from tests.helpers import create_dataset, event, ndjson, profile

ANN = profile(
    "c-1",
    "Ann@Example.com",
    person={"name": {"firstName": "Ann", "lastName": "Lee"}, "birthDate": "1990-04-01", "gender": "female"},
    loyalty={"tier": "gold", "points": 1200},
)


@pytest.fixture
def lake(settings, account) -> LakeStore:
    return LakeStore.from_settings(settings, account)


def lake_rows(lake: LakeStore, dataset: str) -> list[dict]:
    files = lake.batch_files(dataset)
    tables = [pq.read_table(pa.BufferReader(lake.blobs.get(f))) for f in files]
    return [row for t in tables for row in t.to_pylist()]


def errors_file(lake: LakeStore, job) -> list[dict]:
    name = job.links["errors"].split("/", 1)[1]
    return list(csv.DictReader(io.StringIO(lake.blobs.get(name).decode())))


def test_ndjson_rows_land_in_the_lake_as_typed_nested_parquet(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/2026-11-20.ndjson", ndjson(ANN, profile("c-2", person={"gender": "male"})))
    assert job.status is JobStatus.SUCCEEDED
    assert job.metrics.items() >= {"rowsRead": 2, "rowsAccepted": 2, "rowsRejected": 0}.items()
    rows = lake_rows(lake, "crm")
    assert rows[0]["person"]["name"]["firstName"] == "Ann"
    assert str(rows[0]["person"]["birthDate"]) == "1990-04-01"
    assert rows[0]["loyalty"]["points"] == 1200
    assert dict(rows[0]["identityMap"])["CRMID"] == [{"id": "c-1", "primary": True}]
    assert rows[0]["_batchId"] == job.id and rows[0]["_row"] == 1
    assert job.links["data"].endswith(f"crm/batch={job.id}/data.parquet")


def test_arrays_of_values_are_typed_and_a_wrong_member_names_the_array(settings, account, landing_zone, lake):
    custom = Schema(
        id="tastes",
        title="Tastes",
        schema_class=SchemaClass.PROFILE,
        fields=[
            SchemaField(path="person.favoriteColors", type=FieldType.ARRAY, item_type=FieldType.STRING),
            SchemaField(path="person.luckyNumbers", type=FieldType.ARRAY, item_type=FieldType.INTEGER),
        ],
    )
    SchemaStore.from_settings(settings, account).save(custom)
    create_dataset(settings, "tastes", schema_id="tastes")
    good = [profile(f"c-{i}", person={"favoriteColors": ["red", "blue"], "luckyNumbers": [7, i]}) for i in range(300)]
    bad = profile("c-bad", person={"favoriteColors": ["red", 5]})
    job = landing_zone.ingest("tastes/t.ndjson", ndjson(good[0], bad, *good[1:]))
    assert job.metrics["rowsAccepted"] == 300 and job.metrics["rowsRejected"] == 1
    assert lake_rows(lake, "tastes")[0]["person"] == {"favoriteColors": ["red", "blue"], "luckyNumbers": [7, 0]}
    [error] = errors_file(lake, job)
    assert (error["row"], error["field"]) == ("2", "person.favoriteColors[]")
    assert error["reason"].startswith("expected string in every item, found [5]")
    with pytest.raises(ValueError, match="either its items"):
        SchemaField(path="x", type=FieldType.ARRAY)


def test_numeric_strings_in_numeric_fields_are_numbers_but_booleans_are_not(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/n.ndjson", ndjson(profile("c-1", loyalty={"points": "1200"})))
    assert job.status is JobStatus.SUCCEEDED
    assert lake_rows(lake, "crm")[0]["loyalty"]["points"] == 1200
    job = landing_zone.ingest("crm/b.ndjson", ndjson(profile("c-2", loyalty={"points": True})))
    assert job.status is JobStatus.FAILED and "expected integer, found boolean true" in job.errors[1].message


def test_csv_with_dotted_columns_is_ingested_and_values_are_typed(settings, landing_zone, lake):
    create_dataset(settings, "loyalty")
    text = (
        "identityMap.CRMID,identityMap.Email,loyalty.tier,loyalty.points,person.birthDate\n"
        "c-1,ann@example.com,gold,1200,1990-04-01\n"
        'c-2,,"platinum",50,\n'
    )
    job = landing_zone.ingest("loyalty/export.csv", text)
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsAccepted"] == 2
    rows = lake_rows(lake, "loyalty")
    assert [r["loyalty"]["points"] for r in rows] == [1200, 50]
    assert rows[1]["person"]["birthDate"] is None
    assert dict(rows[1]["identityMap"])["CRMID"][0]["id"] == "c-2"


def test_parquet_files_are_ingested(settings, landing_zone, lake, tmp_path):
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    con = duckdb.connect()
    path = tmp_path / "events.parquet"
    con.execute(
        f"""COPY (SELECT 'e-' || i AS _id, '2026-11-20T10:00:00Z' AS timestamp, 'web.webpagedetails.pageViews' AS eventType,
                  MAP {{'ECID': [{{'id': 'ecid-' || i}}]}} AS identityMap FROM range(3) t(i))
            TO '{path}' (FORMAT parquet)"""
    )
    job = landing_zone.ingest("web/events.parquet", path.read_bytes())
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsAccepted"] == 3
    assert sorted(r["_id"] for r in lake_rows(lake, "web")) == ["e-0", "e-1", "e-2"]


def test_a_json_array_file_is_ingested(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/array.json", json.dumps([ANN, profile("c-9")]))
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsAccepted"] == 2


def test_bad_rows_are_written_to_the_errors_file_with_row_field_and_reason(settings, landing_zone, lake):
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    good = [event(f"e-{i}", "2026-11-20T10:00:00Z", "commerce.purchases", ECID=f"x{i}") for i in range(997)]
    wrong_type = {
        **event("e-bad1", "2026-11-20T10:00:00Z", "commerce.purchases", ECID="y"),
        "commerce": {"order": {"priceTotal": "cheap"}},
    }
    missing = event("e-bad2", "2026-11-20T10:00:00Z", "commerce.purchases", ECID="y")
    del missing["eventType"]
    bad_time = event("e-bad3", "20/11/2026 10:00", "commerce.purchases", ECID="y")
    job = landing_zone.ingest("web/day.ndjson", ndjson(*good[:10], wrong_type, missing, bad_time, *good[10:]))
    # 3 of 1000 rejected is 0.3%: under the 0.5% threshold, so the batch succeeds partially.
    assert job.status is JobStatus.SUCCEEDED
    assert job.metrics["rowsRejected"] == 3 and job.metrics["rowsAccepted"] == 997 and job.metrics["partial"]
    # Where the time went, phase by phase, in the order they ran (the store's own phases are under profileStore).
    assert list(job.metrics["phaseSeconds"]) == ["download", "validate", "errors", "write", "upload", "store"]
    assert all(seconds >= 0 for seconds in job.metrics["phaseSeconds"].values())
    errors = errors_file(lake, job)
    assert [(e["row"], e["field"]) for e in errors] == [
        ("11", "commerce.order.priceTotal"),
        ("12", "eventType"),
        ("13", "timestamp"),
    ]
    assert errors[0]["reason"] == "cheap is not a valid number"
    assert errors[1]["reason"] == "required field is missing"
    assert "20/11/2026 10:00 is not a valid date-time" in errors[2]["reason"]
    assert json.loads(errors[0]["record"])["_id"] == "e-bad1"
    assert len(lake_rows(lake, "web")) == 997
    assert job.errors[0].message.startswith("row 11, field commerce.order.priceTotal")


def test_a_batch_over_the_rejected_threshold_fails_and_writes_nothing_to_the_lake(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    rows = [profile(f"c-{i}") for i in range(98)] + [{"person": {"gender": "robot"}}] * 2
    job = landing_zone.ingest("crm/bad.ndjson", ndjson(*rows))
    assert job.status is JobStatus.FAILED
    assert job.errors[0].code == "rejected_rows"
    assert "2 of 100 rows rejected (2.00%), over the 0.50% allowed" in job.errors[0].message
    assert lake.batch_files("crm") == []
    reasons = {e["reason"] for e in errors_file(lake, job)}
    assert "robot is not one of female, male, non_specific, not_specified" in reasons


def test_the_threshold_is_a_setting(settings, landing_zone, lake, monkeypatch):
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_MAX_REJECTED_RATIO", "0.05")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    rows = [profile(f"c-{i}") for i in range(98)] + [{"person": {}}] * 2
    job = landing_zone.ingest("crm/bad.ndjson", ndjson(*rows))
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsRejected"] == 2


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("crm/empty.ndjson", b"", "the file is empty"),
        ("crm/garbage.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("crm/notes.txt", b"hello", "unsupported file type .txt"),
        (
            "crm/bad.csv",
            b"person.nme.firstName\nAnn\n",
            "columns ['person.nme.firstName'] are not fields of schema 'xdm-profile'",
        ),
        ("crm/binary.ndjson", b"\xff\xfe\x00garbage", "not UTF-8 text"),
        ("crm/array.json", b'[{"a": ', "not a JSON array of records"),
    ],
)
def test_an_unreadable_file_fails_with_a_clear_message_and_nothing_in_the_lake(
    settings, landing_zone, lake, name, data, message
):
    create_dataset(settings, "crm")
    job = landing_zone.ingest(name, data)
    assert job.status is JobStatus.FAILED
    assert message in job.errors[0].message
    assert lake.batch_files("crm") == []


def test_a_file_where_every_line_is_garbage_fails(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/text.ndjson", "this is\nnot json\n")
    assert job.status is JobStatus.FAILED and job.metrics["rowsRejected"] == 2
    assert lake.batch_files("crm") == []


def test_a_file_for_an_unknown_dataset_fails(settings, landing_zone, lake):
    job = landing_zone.ingest("nosuch/file.ndjson", ndjson(ANN))
    assert job.status is JobStatus.FAILED
    assert "unknown dataset 'nosuch'; create it before landing files" in job.errors[0].message


def test_a_file_over_the_size_limit_fails(settings, landing_zone, lake, monkeypatch):
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_MAX_FILE_BYTES", "100")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/big.ndjson", ndjson(ANN, ANN))
    assert job.status is JobStatus.FAILED
    assert "over the limit of 100 (INGESTION_MAX_FILE_BYTES)" in job.errors[0].message


def test_a_csv_row_longer_than_its_chunk_fails_naming_the_setting(settings, landing_zone, lake, monkeypatch):
    _chunked(monkeypatch, 4_000)  # CSV chunks of 1,000 bytes
    create_dataset(settings, "crm")
    text = "identityMap.Email,person.name.firstName\nann@example.com,Ann\n" + f"bob@example.com,{'B' * 3_000}\n"
    job = landing_zone.ingest("crm/long.csv", text)
    assert job.status is JobStatus.FAILED
    assert "a row is longer than a CSV chunk (1,000 bytes, a quarter of INGESTION_CHUNK_BYTES)" in job.errors[0].message
    assert lake.batch_files("crm") == []


def test_the_same_blob_delivered_twice_is_ingested_once(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    first = landing_zone.ingest("crm/a.ndjson", ndjson(ANN))
    again = landing_zone.trigger("crm/a.ndjson")
    assert again.id == first.id and again.status is JobStatus.SUCCEEDED
    assert len(lake.batch_files("crm")) == 1 and len(lake_rows(lake, "crm")) == 1


def test_a_new_version_of_the_same_blob_is_a_new_batch(settings, landing_zone, lake):
    create_dataset(settings, "crm")
    first = landing_zone.ingest("crm/a.ndjson", ndjson(ANN))
    second = landing_zone.ingest("crm/a.ndjson", ndjson(profile("c-2")))
    assert first.id != second.id
    assert len(lake.batch_files("crm")) == 2


def test_a_csv_row_with_the_wrong_number_of_columns_is_rejected_by_row(settings, landing_zone, lake, monkeypatch):
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_MAX_REJECTED_RATIO", "0.5")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/r.csv", "identityMap.CRMID,person.gender\nc-1,female\nc-2\nc-3,male\n")
    assert job.status is JobStatus.SUCCEEDED
    assert job.metrics["rowsRead"] == 3 and job.metrics["rowsRejected"] == 1
    assert [(e["row"], e["reason"]) for e in errors_file(lake, job)] == [("2", "expected 2 columns, found 1")]
    assert sorted(r["_row"] for r in lake_rows(lake, "crm")) == [1, 3]


def test_a_batch_that_failed_on_a_storage_error_is_retried_and_then_ingested_once(
    settings, landing_zone, lake, monkeypatch
):
    from shared.settings import get_settings

    create_dataset(settings, "crm")
    landing_zone.drop("crm/a.ndjson", ndjson(ANN))
    monkeypatch.setenv("LAKE_CONTAINER", "Not_A_Valid_Container")  # storage refuses it: an unexpected failure
    get_settings.cache_clear()
    with pytest.raises(Exception, match="(?i)invalid|out of range|specified resource name"):
        landing_zone.trigger("crm/a.ndjson")
    monkeypatch.setenv("LAKE_CONTAINER", settings.lake_container)
    get_settings.cache_clear()
    job = landing_zone.trigger("crm/a.ndjson")  # the host's retry
    assert job.status is JobStatus.SUCCEEDED and job.errors == []
    assert job.id == landing_zone.trigger("crm/a.ndjson").id
    assert len(lake_rows(lake, "crm")) == 1


@pytest.mark.parametrize("name", ["crm/2026-11-20.ndjson.gz", "crm/2026-11-20.csv.gz"])
def test_gzipped_files_are_read_as_the_format_inside(settings, landing_zone, lake, name):
    create_dataset(settings, "crm")
    if ".csv" in name:
        text = "identityMap.CRMID,person.name.firstName,loyalty.tier\nc-1,Ann,gold\nc-2,Bob,silver\n"
    else:
        text = ndjson(ANN, profile("c-2", person={"name": {"firstName": "Bob"}}))
    half = len(text) // 2  # two gzip members, as `cat a.gz b.gz` makes: both are read
    data = gzip.compress(text[:half].encode()) + gzip.compress(text[half:].encode())
    job = landing_zone.ingest(name, data)
    assert job.status is JobStatus.SUCCEEDED, job.errors
    assert job.metrics.items() >= {"rowsRead": 2, "rowsAccepted": 2, "compression": "gzip", "bytes": len(data)}.items()
    assert sorted(r["person"]["name"]["firstName"] for r in lake_rows(lake, "crm")) == ["Ann", "Bob"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not gzip at all", "named .gz but not gzip data"),
        (gzip.compress(b'{"a": 1}\n' * 100)[:-12], "the gzip data ends early"),
        (gzip.compress(b"x" * 10)[:10] + b"\xff" * 20, "the gzip data is damaged"),
        (gzip.compress(b"\n" * 5000), "it inflates to over 1,000 bytes, the limit (INGESTION_MAX_FILE_BYTES)"),
    ],
)
def test_a_bad_gzip_file_fails_naming_the_file_and_what_is_wrong(
    settings, landing_zone, lake, monkeypatch, data, message
):
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_MAX_FILE_BYTES", "1000")
    get_settings.cache_clear()
    create_dataset(settings, "crm")
    job = landing_zone.ingest("crm/bad.ndjson.gz", data)
    assert job.status is JobStatus.FAILED
    assert job.errors[0].message.startswith("crm/bad.ndjson.gz: ") and message in job.errors[0].message
    assert lake.batch_files("crm") == []


def _chunked(monkeypatch, chunk_bytes: int) -> None:
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_CHUNK_BYTES", str(chunk_bytes))
    get_settings.cache_clear()


@pytest.mark.parametrize("name", ["web/day.ndjson", "web/day.ndjson.gz", "web/day.parquet", "web/day.csv"])
def test_a_file_read_in_many_chunks_gives_the_batch_one_chunk_gives(
    settings, landing_zone, lake, monkeypatch, clock, name
):
    """Row numbers run across chunks, the errors and first errors are the file's, the rows keep their order."""
    create_dataset(settings, "web", schema_id="xdm-experienceevent")
    rows = [event(f"e-{i}", "2026-11-20T10:00:00Z", "commerce.purchases", ECID=f"x{i}") for i in range(1200)]
    for at in (5, 480, 1111):  # bad rows in different chunks
        rows[at] = {**rows[at], "commerce": {"order": {"priceTotal": f"cheap{at}"}}}
    text = ndjson(*rows)
    if name.endswith(".csv"):  # the same rows as CSV, and a malformed row in the middle chunk
        lines = ["_id,timestamp,eventType,identityMap.ECID,commerce.order.priceTotal"]
        for r in rows:
            price = (r.get("commerce") or {}).get("order", {}).get("priceTotal", "")
            lines.append(f"{r['_id']},{r['timestamp']},{r['eventType']},{r['identityMap']['ECID'][0]['id']},{price}")
        lines.insert(700, "too,many,columns,in,this,row")
        text = "\n".join(lines) + "\n"
    if name.endswith(".gz"):
        data = gzip.compress(text.encode())
    elif name.endswith(".parquet"):
        sink = io.BytesIO()
        pq.write_table(pajson.read_json(io.BytesIO(text.encode())), sink)
        data = sink.getvalue()
    else:
        data = text.encode()
    batches = {}
    for chunk_bytes, folder in ((1 << 30, "whole"), (20_000, "chunked")):
        _chunked(monkeypatch, chunk_bytes)
        clock.move_to(NOW)  # both batches as of the same second (the clock ticks: the first takes about one)
        job = landing_zone.ingest(f"{name.replace('web/', f'web/{folder}-')}", data)
        assert job.status is JobStatus.SUCCEEDED, job.errors
        batches[folder] = (job, errors_file(lake, job))
    (whole, whole_errors), (chunked, chunked_errors) = batches["whole"], batches["chunked"]
    assert whole.metrics["chunks"] == 1 and chunked.metrics["chunks"] > 1
    if name.endswith(".csv"):  # CSV in chunks of a quarter of INGESTION_CHUNK_BYTES (its rows grow as JSON)
        assert chunked.metrics["chunks"] >= len(data) // (20_000 // 4)
    counts = ("rowsRead", "rowsAccepted", "rowsRejected")
    malformed = name.endswith(".csv")
    expected = [1201, 1197, 4] if malformed else [1200, 1197, 3]
    assert [chunked.metrics[k] for k in counts] == [whole.metrics[k] for k in counts] == expected
    assert [e.message for e in chunked.errors] == [e.message for e in whole.errors]
    shift = 1 if malformed else 0  # the malformed row is data row 700: the bad rows after it move down one
    assert [(e["row"], e["reason"]) for e in chunked_errors] == [
        ("6", "cheap5 is not a valid number"),
        ("481", "cheap480 is not a valid number"),
        *([("700", "expected 5 columns, found 6")] if malformed else []),
        (str(1112 + shift), "cheap1111 is not a valid number"),
    ]
    assert chunked_errors == whole_errors
    by_batch = {}
    for row in lake_rows(lake, "web"):
        by_batch.setdefault(row.pop("_batchId"), []).append(row)
    assert by_batch[chunked.id] == by_batch[whole.id]
    assert [r["_row"] for r in by_batch[chunked.id]][:7] == [1, 2, 3, 4, 5, 7, 8]
    if malformed:
        assert [r["_row"] for r in by_batch[chunked.id]][694:698] == [697, 698, 699, 701]


def test_a_json_array_over_the_whole_file_limit_fails_where_csv_and_ndjson_stream(
    settings, landing_zone, lake, monkeypatch
):
    """A JSON array is one document, read whole, so it has a limit of its own; CSV and NDJSON of any size are
    read in chunks."""
    from shared.settings import get_settings

    monkeypatch.setenv("INGESTION_MAX_WHOLE_FILE_BYTES", "200")
    _chunked(monkeypatch, 200)
    create_dataset(settings, "crm")
    people = [profile(f"c-{i}") for i in range(40)]
    array = json.dumps(people)
    job = landing_zone.ingest("crm/big.json", array)
    assert job.status is JobStatus.FAILED
    assert job.errors[0].message == (
        f"crm/big.json: {len(array):,} bytes is over the limit of 200 for a JSON array, which is read whole "
        "(INGESTION_MAX_WHOLE_FILE_BYTES); land it as NDJSON (one record per line), or split it"
    )
    job = landing_zone.ingest("crm/big.ndjson", ndjson(*people))
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsAccepted"] == 40 and job.metrics["chunks"] > 10
    csv_text = "identityMap.CRMID,person.name.firstName\n" + "".join(f"c-{i},Ann\n" for i in range(40))
    job = landing_zone.ingest("crm/big.csv", csv_text)
    assert job.status is JobStatus.SUCCEEDED and job.metrics["rowsAccepted"] == 40 and job.metrics["chunks"] > 1
    assert get_settings().ingestion_max_file_bytes == 2 * 1024**3  # the default: 2 GiB


def test_a_version_replaced_before_it_was_read_fails_and_the_new_one_is_its_own_batch(settings, landing_zone, lake):
    from shared.ingestion import BatchIngestion
    from tests.conftest import NOW

    create_dataset(settings, "crm")
    old = landing_zone.drop("crm/a.ndjson", ndjson(ANN))
    landing_zone.drop("crm/a.ndjson", ndjson(ANN, profile("c-2")))
    job = BatchIngestion.from_settings(settings).ingest("crm/a.ndjson", etag=old, now=NOW)
    assert job.status is JobStatus.FAILED
    assert job.errors[0].message.startswith(f"crm/a.ndjson: version {old} is no longer in the landing container")
    assert lake.batch_files("crm") == []
    assert landing_zone.trigger("crm/a.ndjson").metrics["rowsAccepted"] == 2


def test_a_landed_file_deleted_before_its_trigger_ran_is_nothing_to_do(settings, account, landing_zone, lake):
    """The trigger binds a BlobClient: a blob gone by then is logged and left, not retried into the poison queue."""
    from functions.ingestion import ingest_landing_file
    from shared.jobs import JobStore, JobType

    create_dataset(settings, "crm")
    landing_zone.drop("crm/gone.ndjson", ndjson(ANN))
    client = landing_zone.blobs.container.get_blob_client("crm/gone.ndjson")
    client.delete_blob()
    ingest_landing_file.build().get_user_function()(client)
    assert JobStore.from_settings(settings, account).list(JobType.INGESTION) == []
