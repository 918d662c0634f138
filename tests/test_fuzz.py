"""Hypothesis throws generated files at the ingestion readers and generated PQL at the segment route: every
file ends in a batch that succeeded or failed with its reason, every expression in a 200 or a 400, and
nothing raises."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from functions.segmentation import segments
from shared.ingestion import BatchIngestion
from shared.jobs import JobStatus
from tests.conftest import NOW
from tests.helpers import create_dataset
from tests.test_http import body, call

FUZZ = hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_names = itertools.count()

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ids = st.lists(st.fixed_dictionaries({"id": values}, optional={"primary": values}), max_size=2)
records = st.fixed_dictionaries(
    {},
    optional={
        "identityMap": st.dictionaries(
            st.sampled_from(["CRMID", "Email", "ECID", "Phone", "Nope", ""]), ids | values, max_size=3
        ),
        "person": st.fixed_dictionaries(
            {}, optional={"name": st.fixed_dictionaries({}, optional={"firstName": values}), "birthDate": values}
        ),
        "loyalty": st.fixed_dictionaries({}, optional={"tier": values, "points": values}),
        "personalEmail": st.fixed_dictionaries({}, optional={"address": values}),
        "extra": values,
    },
)
COLUMNS = ["identityMap.CRMID", "identityMap.Email", "person.birthDate", "loyalty.points", "loyalty.tier", "nope"]


@st.composite
def landed_files(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["ndjson", "json", "csv", "bytes"]))
    rows = draw(st.lists(records, max_size=5))
    if kind == "ndjson":
        lines = [json.dumps(r) for r in rows] + draw(st.lists(st.text(max_size=20), max_size=2))
        return ".ndjson", "\n".join(draw(st.permutations(lines))).encode()
    if kind == "json":
        return ".json", json.dumps(rows if draw(st.booleans()) else {"records": rows}).encode()
    if kind == "csv":
        header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=4))
        cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=10)
        lines = [",".join(header)] + [
            ",".join(draw(st.lists(cells, max_size=5))) for _ in range(draw(st.integers(0, 4)))
        ]
        return ".csv", "\n".join(lines).encode()
    return draw(st.sampled_from([".csv", ".ndjson", ".json", ".parquet"])), draw(st.binary(max_size=200))


@pytest.fixture
def crm(settings):
    create_dataset(settings, "crm")
    return BatchIngestion.from_settings(settings)


@FUZZ
@given(file=landed_files())
def test_any_landed_file_ends_in_a_batch_that_succeeded_or_failed_with_its_reason(crm, file):
    suffix, data = file
    path = f"crm/f{next(_names)}{suffix}"
    job = crm.ingest(path, etag=crm.landing.put(path, data), now=NOW)
    assert job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert job.status is JobStatus.SUCCEEDED or (job.errors and all(e.code != "internal" for e in job.errors)), job


TOKENS = [
    "loyalty.tier",
    "loyalty.points",
    "person.birthDate",
    "homeAddress.city",
    "person.name.firstName",
    "nope.field",
    "=",
    "!=",
    "<",
    ">=",
    "and",
    "or",
    "not",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    '"gold"',
    '"%a%"',
    "1",
    "-2.5",
    "99999",
    "true",
    "null",
    "in",
    "notIn",
    "like",
    "occurs",
    "<=",
    "days",
    "before",
    "now",
    "today",
    "between",
    "date(2020, 1, 1)",
    "xEvent",
    "eventType",
    "timestamp",
    "count()",
    "sum(commerce.order.priceTotal)",
    '.startsWith("J")',
    ".isNull()",
    "exists",
    "E",
    "from",
    "where",
    'inSegment("x")',
    "CHAIN",
    ":",
]


@FUZZ
@given(words=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12))
def test_any_expression_is_saved_or_refused_with_a_400(crm, words):
    pql = " ".join(words)
    response = call(segments, "PUT", "segments/fuzz", {"id": "fuzz"}, {"name": "fuzz", "expression": {"value": pql}})
    assert response.status_code in (200, 400), (pql, body(response))
