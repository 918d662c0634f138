"""Definitions are type-checked when saved (a 400 naming the position, the operator and both types, with
nothing stored), a definition that cannot compile at job time fails alone while the others publish, and
`not (exists …)` holds for a person without events."""

from __future__ import annotations

import pytest

from functions.segmentation import segments
from shared.jobs import JobStatus
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.runner import SegmentJobRunner
from shared.storage import StorageAccount
from tests import test_activation
from tests.conftest import NOW
from tests.helpers import event
from tests.test_http import body, call
from tests.test_pql import world  # noqa: F401 - the CLI fixture
from tests.test_segment_jobs import put_segment

crm = test_activation.crm

ILL_TYPED = [
    ("loyalty.tier > 5", "line 1, column 14: `>` compares loyalty.tier (string) with 5 (number)"),
    ("5 < loyalty.tier", "line 1, column 3: `<` compares 5 (number) with loyalty.tier (string)"),
    ('loyalty.points = "many"', '`=` compares loyalty.points (number) with "many" (string)'),
    ("loyalty.points = true", "`=` compares loyalty.points (number) with true (boolean)"),
    ("loyalty.tier = true", "`=` compares loyalty.tier (string) with true (boolean)"),
    ("person.birthDate > 1990", "`>` compares person.birthDate (date) with 1990 (number)"),
    ('person.birthDate = "soon"', '`=` compares person.birthDate (date) with "soon" (string)'),
    ("loyalty.tier = loyalty.points", "`=` compares loyalty.tier (string) with loyalty.points (number)"),
    ("person.name.firstName != 3.5", "`!=` compares person.name.firstName (string) with 3.5 (number)"),
    ("loyalty.tier in [1, 2]", "`in` compares loyalty.tier (string) with 1 (number)"),
    ('loyalty.points in ["a"]', '`in` compares loyalty.points (number) with "a" (string)'),
    ("loyalty.tier notIn [true]", "`notIn` compares loyalty.tier (string) with true (boolean)"),
    ('loyalty.points like "%1%"', "`like` needs a string, but loyalty.points is a number"),
    ('loyalty.points.startsWith("1")', "`startsWith` needs a string, but loyalty.points is a number"),
    ('person.birthDate.contains("19")', "`contains` needs a string, but person.birthDate is a date"),
    ("loyalty.tier occurs <= 3 days before now", "`occurs` needs a date or time, but loyalty.tier is a string"),
    ("loyalty.points occurs before today", "`occurs` needs a date or time, but loyalty.points is a number"),
    (
        "xEvent[timestamp occurs <= 7 days before now].sum(eventType) > 1",
        "`sum` needs a number, but eventType is a string",
    ),
    (
        "xEvent[timestamp occurs <= 7 days before now].avg(web.webPageDetails.name) > 1",
        "`avg` needs a number, but web.webPageDetails.name is a string",
    ),
    (
        'xEvent[timestamp occurs <= 7 days before now].count() > "x"',
        '`>` compares xEvent[…].count() (number) with "x" (string)',
    ),
    ("xEvent[eventType = 3].count() > 0", "`=` compares eventType (string) with 3 (number)"),
    (
        "xEvent[timestamp occurs <= 7 days before now].max(timestamp) > 5",
        "`>` compares xEvent[…].max(timestamp) (time) with 5 (number)",
    ),
    ('exists E from xEvent where (E.commerce.order.priceTotal = "x")', "commerce.order.priceTotal (number)"),
    # The rest of the language: arithmetic, if, functions, arrays, regular expressions, quantifiers
    ('loyalty.points + "x" > 1', 'line 1, column 16: `+` needs numbers, but "x" is a string'),
    ("loyalty.tier * 2 > 1", "`*` needs numbers, but loyalty.tier is a string"),
    ("-loyalty.tier < 0", "`-` needs a number, but loyalty.tier is a string"),
    ('if(loyalty.points > 1, 1, "a") = 1', '`if` gives 1 (number) or "a" (string): both must have one type'),
    ("loyalty.tier.getYear() = 2020", "`getYear` needs a date or time, but loyalty.tier is a string"),
    ('person.birthDate.getMonth() = "June"', '`=` compares person.birthDate.getMonth() (number) with "June"'),
    ("currentYear() = person.birthDate", "`=` compares currentYear() (number) with person.birthDate (date)"),
    (
        "xEvent[productListItems.SKU.includes(5)].count() > 0",
        "`includes` compares productListItems.SKU (string) with 5 (number)",
    ),
    ('loyalty.tier.includes("a")', "`includes` needs a list, but loyalty.tier is a string"),
    ('person.birthDate.matches("19")', "`matches` needs a string, but person.birthDate is a date"),
    ('loyalty.tier.matches("(?=gold)")', "do not support lookaround"),
    ('loyalty.tier.regexGroup("(a)", 2) = "a"', "`regexGroup` takes a group number from 0 to 1"),
    ('loyalty.tier.matches("(")', "is invalid"),
    ("loyalty.points", "loyalty.points is a number, not a condition"),
    ("exists I from loyalty.tier where I = 1", "needs an array, but loyalty.tier is a string"),
    ("(sum X.eventType over X from xEvent) > 1", "`sum` needs a number, but X.eventType is a string"),
    ("let S = (loyalty.tier) in (S > 2)", "`>` compares S (string) with 2 (number)"),
]


@pytest.mark.parametrize(("pql", "detail"), ILL_TYPED, ids=[p for p, _ in ILL_TYPED])
def test_an_ill_typed_definition_is_refused_on_save_naming_where_and_the_types(settings, crm, pql, detail):
    response = call(segments, "PUT", "segments/bad", {"id": "bad"}, {"name": "bad", "expression": {"value": pql}})
    assert response.status_code == 400 and detail in body(response)["detail"], body(response)
    assert call(segments, "GET", "segments/bad", {"id": "bad"}).status_code == 404


@pytest.mark.parametrize(
    "pql",
    [
        'loyalty.points = "300"',  # a numeric string compares as a number
        'person.birthDate = "1985-06-15"',  # a date string as a date
        "person.birthDate occurs before today",
        "xEvent[timestamp occurs <= 7 days before now].sum(commerce.order.priceTotal) > 10.5",
        'loyalty.tier in ["gold", "platinum"]',
    ],
)
def test_the_documented_coercions_are_accepted(settings, crm, pql):
    assert put_segment("ok", pql).status_code == 200


def test_a_definition_that_no_longer_compiles_fails_alone_and_the_others_publish(settings, account, crm):
    # Saved when its field existed; the schema no longer has it (written as a store holding an old one would).
    store = SegmentStore.from_settings(settings, StorageAccount.from_settings(settings))
    store.records.put("stale", SegmentDefinition(id="stale", name="stale", expression={"value": "loyalty.level > 2"}))
    job = SegmentJobRunner.from_settings(settings).run(now=NOW)
    assert job.status is JobStatus.SUCCEEDED
    assert job.metrics["segmentedProfileCounter"] == {"all": 4, "gold": 3}
    assert "unknown field 'loyalty.level'" in job.metrics["segmentErrors"]["stale"]
    assert [e.message.split(":")[0] for e in job.errors] == ["segment stale"]


def test_not_exists_holds_for_a_person_without_events(world):  # noqa: F811 - the fixture
    events = [event("e1", "2026-11-20T10:00:00Z", "message.open", CRMID="ann")]
    assert world('not (exists E from xEvent where (E.eventType = "message.open"))', events) == {"joe", "jo", "zoe"}
    assert world('exists E from xEvent where (E.eventType = "message.open")', events) == {"ann"}
