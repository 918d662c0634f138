"""NDJSON chunks read typed at once (`validation.typed_lines`) give exactly what the row-by-row checks give: the
same counts, errors and lake rows, for plainly valid files and for files with every kind of doubtful value."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from unittest import mock

import duckdb
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.engine import connect
from shared.ingestion import validation
from shared.ingestion.schemas import EVENT_SCHEMA, PROFILE_SCHEMA
from shared.settings import Settings
from tests.conftest import NOW
from tests.helpers import event, profile

texts = st.text(max_size=6)
doubtful = st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats() | texts | st.just({"x": 1})
finite = st.floats(allow_nan=False, allow_infinity=False)


def records(kind: str, clean: bool):
    """Records of the built-in event or profile schema: plainly valid ones (`clean`), or with doubtful values
    anywhere (numbers for strings, strings for numbers, NaN, blank ids, unknown namespaces, bad dates, …)."""

    def maybe(valid):
        return valid if clean else valid | doubtful

    ids = st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b@x.com", "c"]) if clean else st.sampled_from(["a", " ", ""]) | doubtful},
        optional={"primary": maybe(st.booleans()), "authenticatedState": st.just("authenticated")},
    )
    identity_map = st.dictionaries(
        st.sampled_from(["ECID", "Email", "CRMID", "Phone"] + ([] if clean else ["Nope"])),
        st.lists(ids if clean else ids | st.none(), min_size=1, max_size=2) | st.none(),
        min_size=1,
    )
    if kind == "events":
        timestamps = ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00+02:00", "2026-11-01", "2026-11-01 10:00:00"]
        items = st.fixed_dictionaries(
            {}, optional={"SKU": maybe(texts), "quantity": maybe(st.integers(0, 9)), "priceTotal": maybe(finite)}
        )
        return st.fixed_dictionaries(
            {
                "_id": maybe(texts),
                "timestamp": st.sampled_from(timestamps if clean else [*timestamps, "2026-13-01", "2026-11-01T10"]),
                "eventType": st.just("commerce.purchases"),
                "identityMap": identity_map,
            },
            optional={
                "commerce": st.fixed_dictionaries({"order": st.fixed_dictionaries({"priceTotal": maybe(finite)})}),
                "productListItems": maybe(st.lists(items if clean else items | st.none(), max_size=2)),
                "web": st.fixed_dictionaries({"webPageDetails": st.fixed_dictionaries({"name": maybe(texts)})}),
                "extra": st.integers(),
            },
        )
    return st.fixed_dictionaries(
        {"identityMap": identity_map},
        optional={
            "person": st.fixed_dictionaries(
                {},
                optional={
                    "birthDate": st.sampled_from(["1980-02-29", "1990-01-01"] + ([] if clean else ["1981-02-29"])),
                    "gender": st.sampled_from(["female", "male"]) if clean else texts,
                },
            ),
            "loyalty": st.fixed_dictionaries(
                {}, optional={"tier": maybe(texts), "points": maybe(st.integers(-(2**63), 2**63 - 1))}
            ),
            "personalEmail": st.fixed_dictionaries({}, optional={"address": maybe(st.sampled_from(["a@x.com"]))}),
        },
    )


def _check(path: Path, schema, *, typed: bool, chunk_bytes: int):
    """Counts, first errors, the errors file and the accepted rows of `path`, with or without the typed reading."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        con = connect(Settings(), spill_dir=tmp)
        row_by_row = mock.patch.object(validation, "typed_lines", lambda *a: None)
        with contextlib.nullcontext() if typed else row_by_row:
            checked = validation.check_file(
                con,
                path,
                file_name=path.name,
                schema=schema,
                work=work,
                batch_id="b",
                ingested_at=NOW,
                chunk_bytes=chunk_bytes,
            )
        checked.write_accepted(work / "accepted.parquet")
        rows = duckdb.sql(f"SELECT * FROM '{work / 'accepted.parquet'}'").fetchall()
        errors = ""
        if checked.rejected:
            checked.write_errors(work / "errors.csv")
            errors = (work / "errors.csv").read_text()
        con.close()
    return checked.rows_read, checked.rejected, checked.first_errors(), errors, rows


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["events", "profiles"]),
    data=st.data(),
    doubtful_rows=st.integers(0, 2),
    blank=st.booleans(),
    chunk_bytes=st.sampled_from([200, 1 << 20]),
)
def test_typed_chunks_give_what_the_row_checks_give(kind, data, doubtful_rows, blank, chunk_bytes):
    schema = EVENT_SCHEMA if kind == "events" else PROFILE_SCHEMA
    rows = data.draw(st.lists(records(kind, clean=True), min_size=1, max_size=8))
    rows += data.draw(st.lists(records(kind, clean=False), min_size=doubtful_rows, max_size=doubtful_rows))
    lines = [json.dumps(r) for r in rows] + ([""] if blank else [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "day.ndjson"
        path.write_text("\n".join(data.draw(st.permutations(lines))) + "\n")
        assert _check(path, schema, typed=True, chunk_bytes=chunk_bytes) == _check(
            path, schema, typed=False, chunk_bytes=chunk_bytes
        )


def test_a_plainly_valid_chunk_is_read_typed_and_a_doubtful_one_row_by_row(tmp_path):
    valid = [event(f"e{i}", "2026-11-01T10:00:00Z", "web.webpagedetails.pageViews", ECID=f"d{i}") for i in range(3)]
    doubtful = {**valid[0], "_id": 5}  # a number where a string belongs: the row checks name it
    seen = []
    real = validation.typed_lines

    def spy(con, lines, schema):
        typed = real(con, lines, schema)
        seen.append(typed is not None)
        return typed

    for records, expected in ((valid, [True]), ([*valid, doubtful], [False])):
        path = tmp_path / "day.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        seen.clear()
        with mock.patch.object(validation, "typed_lines", spy):
            rows_read, rejected, errors, _, accepted = _check(path, EVENT_SCHEMA, typed=True, chunk_bytes=1 << 20)
        assert seen == expected
        assert (rows_read, rejected, len(accepted)) == (len(records), len(records) - len(valid), len(valid))
    assert errors == [(4, "_id", "expected string, found bigint 5")]


def test_the_identity_map_keeps_one_form_whatever_the_record_gives(tmp_path):
    """Namespaces in their order, those given as null left out: the same from either reading."""
    record = profile(crm="c-1", email="a@x.com")
    record["identityMap"] = {"Email": record["identityMap"]["Email"], "ECID": None, "CRMID": [{"id": "c-1"}]}
    path = tmp_path / "crm.ndjson"
    path.write_text(json.dumps(record) + "\n")
    for typed in (True, False):
        *_, rows = _check(path, PROFILE_SCHEMA, typed=typed, chunk_bytes=1 << 20)
        identity_map = rows[0][-4]  # before _batchId, _row, _ingestedAt
        assert list(identity_map) == ["Email", "CRMID"]  # in Namespace order, ECID (null) left out
