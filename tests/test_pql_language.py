"""The PQL language as Adobe's documentation shows it (boolean, comparison, arithmetic, string, array/list/set,
date and time, aggregation, quantifiers, misc), through `python -m shared.cli segments evaluate` with a custom
schema holding the fields the examples name. Members are worked out by hand; the data trips naive readings:
nulls, division by zero, empty and missing arrays, a person without events, ECID-only events, case."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from shared.cli import main
from shared.segmentation.evaluation import event_fields
from shared.segmentation.pql import PqlError, parse
from shared.segmentation.pql.compiler import Compiler, Fields
from tests.helpers import event, ndjson, profile

NOW = "2026-11-22T12:00:00Z"  # currentYear() 2026, currentMonth() 11, currentDayOfMonth() 22

SCHEMA = {
    "id": "adobe-examples",
    "title": "The fields Adobe's PQL examples name",
    "class": "profile",
    "fields": [
        {"path": "person.birthMonth", "type": "integer"},
        {"path": "person.birthDay", "type": "integer"},
        {"path": "person.birthYear", "type": "integer"},
        {"path": "person.age", "type": "integer"},
        {"path": "homeAddress.countryISO", "type": "string"},
        {"path": "product.price", "type": "number"},
        {"path": "product.inventory", "type": "integer"},
        {"path": "product.saleYear", "type": "integer"},
        {"path": "product.sale", "type": "date"},
        {"path": "totalProduct.price", "type": "number"},
        {"path": "totalProduct.sold", "type": "integer"},
        {"path": "person.favoriteColors", "type": "array", "itemType": "string"},
        {"path": "person.favoriteCities", "type": "array", "itemType": "string"},
        {"path": "person.visitedCities", "type": "array", "itemType": "string"},
        {"path": "person.eatenFoods", "type": "array", "itemType": "string"},
        {"path": "person.luckyNumbers", "type": "array", "itemType": "integer"},
        {
            "path": "person.orders",
            "type": "array",
            "items": [{"name": "storeId", "type": "string"}, {"name": "price", "type": "number"}],
        },
    ],
}

PEOPLE = [
    profile(
        "ann",
        person={
            "name": {"firstName": "Ann"},
            "birthDate": "1985-06-15",
            "birthMonth": 3,
            "birthDay": 22,
            "birthYear": 1985,
            "age": 40,
            "orders": [{"storeId": "s1", "price": 60}, {"storeId": "s2", "price": 50}],
            "favoriteColors": ["red", "yellow"],
            "favoriteCities": ["Paris"],
            "visitedCities": ["Paris", "Rome"],
            "eatenFoods": ["sushi", "pizza", "ramen"],
            "luckyNumbers": [7, 3, 7],
        },
        personalEmail={"address": "ann@example.com"},
        homeAddress={"countryISO": "CA"},
        product={"price": 10, "inventory": 200, "saleYear": 2025, "sale": "2026-03-10"},
        totalProduct={"price": 100, "sold": 50},
        loyalty={"points": 1200},
    ),
    profile(
        "joe",
        person={
            "name": {"firstName": "Joe"},
            "birthDate": "1979-12-31",
            "birthMonth": 6,
            "birthDay": 1,
            "birthYear": 1979,
            "age": 35,
            "orders": [{"storeId": "s1", "price": 20}, {"storeId": "s1", "price": 30}],
            "favoriteColors": ["blue", "green", "red"],
            "favoriteCities": ["Rome", "Oslo"],
            "visitedCities": ["Rome"],
            "eatenFoods": ["sushi"],
        },
        personalEmail={"address": "joe@test.org"},
        homeAddress={"countryISO": "US"},
        product={"price": 5.5, "inventory": 100, "saleYear": 2026, "sale": "2026-03-20"},
        totalProduct={"price": 100, "sold": 0},  # division by zero: no value, so no comparison holds
        loyalty={"points": 300},
    ),
    profile(
        "jo",
        person={
            "name": {"firstName": "jo"},
            "birthDate": "1991-02-01",
            "birthMonth": 12,
            "birthYear": 1991,
            "age": 33,
            "orders": [],
            "favoriteColors": [],
            "favoriteCities": [],
        },
        homeAddress={"countryISO": "CA"},
        totalProduct={"price": 10, "sold": 20},
    ),
    profile("zoe", person={"name": {"firstName": "Zoë"}, "birthMonth": 11}),  # most fields null, no orders
]


def _purchase(event_id: str, day: str, price: float, currency: str, items: list[dict], **ids) -> dict:
    record = event(event_id, f"2026-11-{day}T10:00:00Z", "commerce.purchases", **ids)
    record["commerce"] = {"order": {"priceTotal": price, "currencyCode": currency}}
    record["productListItems"] = items
    return record


EVENTS = [
    _purchase("e1", "20", 60, "USD", [{"SKU": "PS", "priceTotal": 60, "quantity": 1}], CRMID="ann"),
    _purchase("e2", "21", 45, "USD", [{"SKU": "XB", "priceTotal": 45, "quantity": 1}], CRMID="ann"),
    _purchase(
        "e3",
        "19",
        70,
        "USD",
        [{"SKU": "PS", "priceTotal": 30, "quantity": 1}, {"SKU": "PS", "priceTotal": 40, "quantity": 2}],
        CRMID="joe",
    ),
    _purchase("e4", "18", 900, "EUR", [{"SKU": "XB", "priceTotal": 900, "quantity": 9}], CRMID="jo"),
    _purchase("e5", "23", 5000, "USD", [{"SKU": "PS", "priceTotal": 5000}], CRMID="joe"),  # after now
]


@pytest.fixture
def members(tmp_path: Path, capsys):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "p.ndjson").write_text(ndjson(*PEOPLE))
    (tmp_path / "e.ndjson").write_text(ndjson(*EVENTS))

    def run(pql: str) -> set[str]:
        args = ["segments", "evaluate", "--pql", pql, "--as-of", NOW, "--schema", str(tmp_path / "schema.json")]
        args += ["--profiles", str(tmp_path / "p.ndjson"), "--events", str(tmp_path / "e.ndjson")]
        code = main(args)
        out, err = capsys.readouterr()
        if code != 0:
            raise PqlError(err.strip())
        return {crm for line in out.splitlines() for crm in json.loads(line)["identities"].get("CRMID", [])}

    return run


EXAMPLES = [
    # Boolean functions
    ('homeAddress.countryISO = "CA" and person.birthYear = 1985', {"ann"}),
    ('homeAddress.countryISO = "CA" or person.birthYear = 1985', {"ann", "jo"}),
    ('not (homeAddress.countryISO = "CA")', {"joe", "zoe"}),  # zoe has no country: not (null = "CA") holds
    ('!(homeAddress.countryISO = "CA")', {"joe", "zoe"}),
    ('if (homeAddress.countryISO = "CA", 1, 2) = 1', {"ann", "jo"}),
    ('if (homeAddress.countryISO = "CA", 1, 2) = 2', {"joe", "zoe"}),  # a null test takes the else branch
    # Comparison functions
    ("person.birthYear = 1985", {"ann"}),
    ("person.birthYear != 1985", {"joe", "jo"}),  # != does not hold for a null
    ("person.birthYear < 1985", {"joe"}),
    ("person.birthYear <= 1985", {"ann", "joe"}),
    ("person.birthYear > 1985", {"jo"}),
    ("person.birthYear >= 1985", {"ann", "jo"}),
    # Arithmetic functions, with precedence
    ("person.age % 5 = 0", {"ann", "joe"}),
    ("not (person.age % 5 = 0)", {"jo", "zoe"}),
    ("product.inventory * product.price > 1000", {"ann"}),
    ("loyalty.points - 1000 > 0", {"ann"}),
    ("totalProduct.price / totalProduct.sold >= 2", {"ann"}),  # joe divides by zero
    ("totalProduct.price / totalProduct.sold < 2", {"jo"}),
    ("person.age + 5 * 2 = 50", {"ann"}),  # 40 + 10
    ("(person.age + 5) * 2 = 80", {"joe"}),  # (35 + 5) * 2
    ("-person.age < -36", {"ann"}),
    ("person.age - 3 - 2 = 30", {"joe"}),  # left to right: (35 - 3) - 2
    ("(person.age - 50) % 7 = -3", {"ann", "jo"}),  # the remainder keeps the dividend's sign: -10, -17
    # String functions
    ('person.name.firstName.matches("(?i)^jo")', {"joe", "jo"}),
    ('person.name.firstName.matches("^jo")', {"jo"}),
    ('!person.name.firstName.matches("^J")', {"ann", "jo", "zoe"}),
    (r'personalEmail.address.regexGroup("@(\\w+)", 1) = "example"', {"ann"}),
    (r'personalEmail.address.regexGroup("@(\\w+)\\.(\\w+)", 2) = "org"', {"joe"}),
    ('personalEmail.address.regexGroup("^x(.*)", 1).isNull()', {"ann", "joe", "jo", "zoe"}),  # no match: null
    ('person.name.firstName.doesNotStartWith("J", false)', {"ann", "zoe"}),
    ('person.name.firstName like "%o%"', {"joe", "jo", "zoe"}),  # Zoë
    # Array, list and set functions, as the docs write them
    ("person.birthMonth in [3, 6, 9]", {"ann", "joe"}),
    ('person.favoriteColors.intersects(["red", "blue", "green"])', {"ann", "joe"}),
    ('person.favoriteColors.intersection(["red", "blue", "green", "pink"]) = ["red", "blue", "green"]', {"joe"}),
    ("person.favoriteCities.subsetOf(person.visitedCities)", {"ann"}),  # jo's visited cities are missing
    ('person.eatenFoods.supersetOf(["sushi", "pizza"])', {"ann"}),
    ('person.favoriteColors.includes("red")', {"ann", "joe"}),
    ('"red" in person.favoriteColors', {"ann", "joe"}),
    ("person.favoriteColors.count() = 0", {"jo", "zoe"}),
    ("person.luckyNumbers.distinct().count() = 2", {"ann"}),
    ("person.luckyNumbers.sum() = 17 and person.luckyNumbers.max() = 7", {"ann"}),
    ("person.birthMonth notIn [3, 6, 9]", {"jo", "zoe"}),
    ('person.orders.storeId.intersects(["s2", "s9"])', {"ann"}),
    ('person.orders.storeId.intersection(["s2", "s3"]) = ["s2"]', {"ann"}),
    ('person.orders.storeId.intersection(["s1", "s2"]) = ["s2", "s1"]', {"ann"}),  # lists compare as sets
    ('person.orders.storeId.subsetOf(["s1", "s2", "s3"])', {"ann", "joe", "jo"}),  # jo's empty list too
    ('person.orders.storeId.supersetOf(["s1", "s2"])', {"ann"}),
    ('person.orders.storeId.includes("s1")', {"ann", "joe"}),
    ("person.orders.storeId.distinct().count() > 1", {"ann"}),
    ("person.orders.count() = 0", {"jo", "zoe"}),  # an empty array and a missing one both count 0
    ('"s2" in person.orders.storeId', {"ann"}),
    # Aggregation functions
    ("person.orders.count() = 2", {"ann", "joe"}),
    ("person.orders.sum(order.price) > 100", {"ann"}),  # 110; Adobe writes the item variable, we accept both
    ("person.orders.sum(price) = 50", {"joe"}),
    ("person.orders.average(price) = 55", {"ann"}),
    ("person.orders.min(price) = 20", {"joe"}),
    ("person.orders.max(price) = 60", {"ann"}),
    # Date and time functions
    ("person.birthMonth = currentMonth()", {"zoe"}),
    ("person.birthDate.getMonth() = 6", {"ann"}),
    ("product.saleYear = currentYear()", {"joe"}),
    ("person.birthDate.getYear() in [1991, 1992, 1993, 1994, 1995]", {"jo"}),
    ("person.birthDay = currentDayOfMonth()", {"ann"}),
    ("product.sale.getDayOfMonth() <= 15", {"ann"}),
    ("product.sale occurs on date(2026, 3, 20)", {"joe"}),
    ("product.sale occurs date(2026, 3, 20)", {"joe"}),  # `on` is optional
    ("product.sale occurs this month", set()),
    ("product.sale occurs before date(2026, 3, 20)", {"ann"}),
    # Logical quantifiers (events after now, such as joe's e5, are never read)
    (
        'exists E from xEvent where (E.commerce.order.priceTotal > 50), I from E.productListItems where I.SKU = "PS"',
        {"ann", "joe"},
    ),
    (
        'forall E from xEvent where (E.commerce.order.priceTotal > 50), I from E.productListItems where I.SKU = "PS"',
        {"joe", "zoe"},  # ann's e2 is 45; jo's items are XB; zoe has no events, and forall holds over none
    ),
    ('exists E from xEvent : (E.commerce.order.currencyCode = "EUR")', {"jo"}),
    ('forall E from xEvent : (E.commerce.order.currencyCode = "USD")', {"ann", "joe", "zoe"}),
    ("exists E from xEvent where E.productListItems.count() >= 2", {"joe"}),
    ('exists E from xEvent where E.productListItems.SKU.includes("XB")', {"ann", "jo"}),
    ("exists O from person.orders where O.price > 55", {"ann"}),
    ('forall O from person.orders : O.storeId = "s1"', {"joe", "jo", "zoe"}),  # empty and missing arrays too
    ("xEvent[productListItems.count() >= 2].count() = 1", {"joe"}),
    ("xEvent[productListItems.sum(priceTotal) > 50].count() > 0", {"ann", "joe", "jo"}),
    # Aggregation over events, and let
    (
        'let S = (sum X.commerce.order.priceTotal over X from xEvent where X.commerce.order.currencyCode = "USD")'
        " in (S > 100 and S < 1000)",
        {"ann"},  # 60 + 45 = 105; joe's e5 is after now
    ),
    ("(average X.commerce.order.priceTotal over X from xEvent) > 100", {"jo"}),
    ("(count X over X from xEvent) = 2", {"ann"}),
    ("(count X over X from xEvent) = 0", {"zoe"}),
    (
        '(sum I.priceTotal over E from xEvent where (E.eventType = "commerce.purchases"), '
        'I from E.productListItems where I.SKU = "PS") >= 70',
        {"joe"},  # 30 + 40; ann's PS item is 60
    ),
    ("(max I.quantity over E from xEvent, I from E.productListItems) = 9", {"jo"}),
    ("(avg I.priceTotal over E from xEvent, I from E.productListItems) = 35", {"joe"}),  # (30 + 40) / 2
    ("let A = (person.age), B = (A % 7) in (B = 5)", {"ann", "jo"}),  # 40 % 7 = 5, 33 % 7 = 5
    ("let T = (2026) in (exists E from xEvent where E.timestamp.getYear() = T)", {"ann", "joe", "jo"}),
]


@pytest.mark.parametrize(("pql", "expected"), EXAMPLES, ids=[p for p, _ in EXAMPLES])
def test_the_documented_examples_select_the_members_worked_out_by_hand(members, pql, expected):
    assert members(pql) == expected


def test_identical_conditions_in_several_segments_are_computed_once():
    fields = Fields({"loyalty.tier": "VARCHAR"}, event_fields())
    compiler = Compiler(fields, dt.datetime(2026, 11, 22, tzinfo=dt.UTC))
    window = 'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 7 days before now].count()'
    compiled = compiler.compile_segments(
        {
            "a": parse(f"{window} > 0"),
            "b": parse(f'{window} > 2 and loyalty.tier = "gold"'),
            "c": parse('exists E from xEvent where (E.eventType = "commerce.purchases")'),
        }
    )
    assert len(compiler.aggregates) == 2, compiled.sql  # the window once, the exists once
    assert compiled.sql.count("COUNT(*) FILTER") == 2
    assert set(compiled.params.values()) >= {"commerce.purchases", "gold"}
    assert list(compiled.params.values()).count("commerce.purchases") == 1  # one parameter per value


def test_the_same_tree_generates_postgresql():
    from shared.segmentation.pql.dialects import postgres

    fields = Fields({"loyalty.tier": "VARCHAR", "loyalty.points": "BIGINT"}, event_fields())
    dialect = postgres({"profileId": "person", "loyalty.tier": "tier", "loyalty.points": "points"} | {
        "timestamp": "ts", "eventType": "eventtype", "commerce.order.priceTotal": "price"
    })  # fmt: skip
    compiler = Compiler(fields, dt.datetime(2026, 11, 22, tzinfo=dt.UTC), dialect=dialect)
    sql = compiler.compile_segments(
        {
            "s": parse(
                "loyalty.points / 3 > 1 and xEvent[timestamp occurs <= 7 days before now].sum(commerce.order.priceTotal) > 5"
            )
        },
        profiles="prof",
        events="ev",
    ).sql
    assert "$" not in sql and "'2026-11-22T00:00:00+00:00'" in sql  # values are inlined for psql
    assert 'CAST("p"."points" AS DOUBLE PRECISION) / NULLIF(3, 0)' in sql  # / divides as numbers do
    assert "INTERVAL '604800 SECOND'" in sql and '"e"."price"' in sql
