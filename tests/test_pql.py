"""PQL semantics, through `python -m shared.cli segments evaluate`: members worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli import main
from shared.segmentation.pql import PqlError, parse
from tests.helpers import event, ndjson, profile

NOW = "2026-11-22T12:00:00Z"

PEOPLE = [
    profile(
        "ann",
        "Ann@Example.com",
        person={"name": {"firstName": "Ann"}, "gender": "female", "birthDate": "1985-06-15"},
        homeAddress={"stateProvince": "CA", "city": "San Jose"},
        loyalty={"tier": "gold", "points": 1200},
    ),
    profile(
        "joe",
        person={"name": {"firstName": "Joe"}, "gender": "male", "birthDate": "1979-12-31"},
        homeAddress={"stateProvince": "TX", "city": "Austin"},
        loyalty={"tier": "silver", "points": "300"},
    ),
    profile(
        "jo",
        person={"name": {"firstName": "jo"}, "birthDate": "1990-12-31"},
        homeAddress={"stateProvince": "CA", "city": "Los Angeles"},
        loyalty={"tier": "platinum", "points": 10},
    ),
    profile(
        "zoe",
        person={"name": {"firstName": "Zoë"}, "gender": "female"},
        homeAddress={"stateProvince": "NY", "city": "Fresno"},
    ),
]


@pytest.fixture
def world(tmp_path: Path, capsys):
    def members(pql: str, events: list[dict] = (), *, segments: dict | None = None, people=PEOPLE, now=NOW) -> set[str]:
        (tmp_path / "p.ndjson").write_text(ndjson(*people))
        args = ["segments", "evaluate", "--pql", pql, "--profiles", str(tmp_path / "p.ndjson"), "--as-of", now]
        if events:
            (tmp_path / "e.ndjson").write_text(ndjson(*events))
            args += ["--events", str(tmp_path / "e.ndjson")]
        if segments:
            (tmp_path / "s.json").write_text(json.dumps(segments))
            args += ["--segments", str(tmp_path / "s.json")]
        code = main(args)
        out, err = capsys.readouterr()
        if code != 0:
            assert out == "", "nothing is printed on stdout when the expression is invalid"
            raise PqlError(err.strip())
        return {crm for line in out.splitlines() for crm in json.loads(line)["identities"].get("CRMID", [])}

    return members


def test_profile_conditions_with_and(world):
    assert world('homeAddress.stateProvince = "CA" and person.gender = "female"') == {"ann"}


def test_string_functions_are_case_sensitive_unless_the_flag_says_false(world):
    assert world('person.name.firstName.startsWith("Jo")') == {"joe"}
    assert world('person.name.firstName.startsWith("Jo", false)') == {"joe", "jo"}
    assert world('person.name.firstName.doesNotStartWith("Jo")') == {"ann", "jo", "zoe"}
    assert world('person.name.firstName.endsWith("OE", false)') == {"joe"}
    assert world('person.name.firstName.contains("n")') == {"ann"}
    assert world('person.name.firstName.equals("ZOË", false)') == {"zoe"}  # Unicode lower-casing


def test_like_in_and_notin(world):
    assert world('homeAddress.city like "%es%"') == {"jo", "zoe"}  # Los Angeles, Fresno (San Jose has "se")
    assert world('loyalty.tier in ["gold", "platinum"]') == {"ann", "jo"}
    assert world('loyalty.tier notIn ["gold"]') == {"joe", "jo"}  # zoe has no tier: notIn excludes nulls


def test_comparisons_with_null_are_false_and_not_of_them_is_true(world):
    assert world('person.gender != "female"') == {"joe"}
    assert world('not (person.gender = "female")') == {"joe", "jo"}
    assert world('!(person.gender = "female")') == {"joe", "jo"}
    assert world("person.birthDate.isNull()") == {"zoe"}
    assert world("person.birthDate.isNotNull()") == {"ann", "joe", "jo"}


def test_numeric_strings_in_numeric_fields_are_numbers(world):
    assert world("loyalty.points > 250") == {"ann", "joe"}


def test_occurs_between_dates_includes_both_days(world):
    assert world("person.birthDate occurs between date(1980, 1, 1) and date(1990, 12, 31)") == {"ann", "jo"}
    assert world("person.birthDate occurs on date(1985, 6, 15)") == {"ann"}
    assert world("person.birthDate occurs before date(1980, 1, 1)") == {"joe"}
    assert world("person.birthDate occurs >= 45 years before now") == {"joe"}  # born 1979; Ann (1985) is 41


PURCHASE = "commerce.purchases"


def purchase(eid: str, ts: str, price: float, **ids) -> dict:
    return {**event(eid, ts, PURCHASE, **ids), "commerce": {"order": {"priceTotal": price}}}


def test_event_count_windows_include_the_boundary_for_le_and_exclude_it_for_lt(world):
    events = [
        purchase("e1", "2026-10-23T12:00:00Z", 10, CRMID="ann"),  # exactly 30 days before now
        purchase("e2", "2026-11-21T12:00:00Z", 10, CRMID="ann"),
        purchase("e3", "2026-11-21T12:00:00Z", 10, CRMID="joe"),
        purchase("e4", "2026-11-22T12:00:01Z", 10, CRMID="joe"),  # after now: never in a window
    ]
    base = 'xEvent[eventType = "commerce.purchases" and timestamp occurs {op} 30 days before now].count() >= 2'
    assert world(base.format(op="<="), events) == {"ann"}
    assert world(base.format(op="<"), events) == set()
    assert world('xEvent[eventType = "commerce.purchases"].count() = 1', events) == {"joe"}


def test_sums_take_events_stitched_by_any_identity_and_compare_instants(world):
    events = [
        purchase("e1", "2026-11-20T10:00:00+02:00", 60, Email="ANN@example.com ", ECID="dev-a"),
        purchase("e2", "2026-11-21T09:00:00Z", 50, ECID="dev-a"),  # only the device: stitched through e1
        purchase("e3", "2026-11-10T09:00:00Z", 500, CRMID="joe"),  # outside the 7-day window
    ]
    pql = (
        'xEvent[(timestamp occurs < 7 days before now) and eventType = "commerce.purchases"]'
        ".sum(commerce.order.priceTotal) > 100"
    )
    assert world(pql, events) == {"ann"}
    assert world('xEvent[eventType = "commerce.purchases"].max(commerce.order.priceTotal) >= 500', events) == {"joe"}
    assert world('xEvent[eventType = "commerce.purchases"].avg(commerce.order.priceTotal) = 55', events) == {"ann"}


def test_an_event_filter_counts_a_null_field_as_not_equal_under_not_and_unmatched_under_or(world):
    """A comparison with a missing field is false inside xEvent[…] too, so `not` of it holds (the filter keeps
    only what is true: a null that reached a NOT would drop the event)."""
    events = [
        purchase("e1", "2026-11-21T09:00:00Z", 10, CRMID="ann"),
        event("e2", "2026-11-21T09:00:00Z", PURCHASE, CRMID="ann"),  # no price
        event("e3", "2026-11-21T09:00:00Z", PURCHASE, CRMID="joe"),  # no price
        event("e4", "2026-11-21T09:00:00Z", "message.open", CRMID="jo"),
    ]
    assert world("xEvent[not (commerce.order.priceTotal = 10)].count() >= 1", events) == {"ann", "joe", "jo"}
    assert world("xEvent[not (commerce.order.priceTotal = 10)].count() = 1", events) == {"ann", "joe", "jo"}
    either = 'xEvent[commerce.order.priceTotal = 10 or eventType = "message.open"].count() = 1'
    assert world(either, events) == {"ann", "jo"}
    both = 'xEvent[not (commerce.order.priceTotal = 10 and eventType = "commerce.purchases")].count() = 2'
    assert world(both, events) == set()
    assert world(both.replace("= 2", "= 1"), events) == {"ann", "joe", "jo"}


def test_exists_with_an_event_alias(world):
    events = [event("o1", "2026-11-21T09:00:00Z", "message.open", CRMID="jo")]
    assert world('exists E from xEvent where (E.eventType = "message.open")', events) == {"jo"}


def test_chain_requires_the_steps_in_time_order_within_their_windows(world):
    events = [
        event("v1", "2026-11-22T08:00:00Z", "commerce.productViews", CRMID="ann"),
        purchase("p1", "2026-11-22T09:00:00Z", 10, CRMID="ann"),
        purchase("p2", "2026-11-22T08:00:00Z", 10, CRMID="joe"),  # bought first, viewed later: no chain
        event("v2", "2026-11-22T09:00:00Z", "commerce.productViews", CRMID="joe"),
        event("v3", "2026-11-20T08:00:00Z", "commerce.productViews", CRMID="jo"),  # view too long ago
        purchase("p3", "2026-11-22T09:00:00Z", 10, CRMID="jo"),
    ]
    pql = (
        'CHAIN(xEvent, timestamp, [C0: WHAT(eventType.equals("commerce.productViews", false)) WHEN(<= 24 hours before now), '
        'C1: WHAT(eventType.equals("commerce.purchases", false)) WHEN(<= 24 hours before now)])'
    )
    assert world(pql, events) == {"ann"}


def test_relative_days_and_periods(world):
    events = [
        event("t1", "2026-11-22T01:00:00Z", "x", CRMID="ann"),  # today
        event("t2", "2026-11-21T23:59:59Z", "x", CRMID="joe"),  # yesterday
        event("t3", "2026-10-31T12:00:00Z", "x", CRMID="jo"),  # last month
    ]
    assert world("xEvent[timestamp occurs on today].count() > 0", events) == {"ann"}
    assert world("xEvent[timestamp occurs on yesterday].count() > 0", events) == {"joe"}
    assert world("xEvent[timestamp occurs this month].count() > 0", events) == {"ann", "joe"}
    assert world("xEvent[timestamp occurs last month].count() > 0", events) == {"jo"}
    assert world("xEvent[timestamp occurs before today].count() > 0", events) == {"joe", "jo"}


def test_in_segment_uses_the_referenced_definition_and_refuses_cycles(world):
    segments = {"ca": 'homeAddress.stateProvince = "CA"', "gold": 'inSegment("ca") and loyalty.tier = "gold"'}
    assert world('inSegment("gold") or person.name.firstName = "Zoë"', segments=segments) == {"ann", "zoe"}
    with pytest.raises(PqlError, match=r'inSegment\("nope"\): no such segment'):
        world('inSegment("nope")', segments=segments)
    loop = {"a": 'inSegment("b")', "b": 'inSegment("a")'}
    with pytest.raises(PqlError, match="inSegment cycle: a → b → a"):
        world('inSegment("a")', segments=loop)


@pytest.mark.parametrize(
    ("pql", "message"),
    [
        ('loyalty.tier = "gold" and', "line 1, column 26: the expression ends too soon"),
        ('loyalty.tier == "gold"', "line 1, column 15: unexpected '='"),
        ('loyalty.tier = "gold" and\n  loyalty.points ~ 3', "line 2, column 18: unexpected character '~'"),
        ('xEvent[eventType = "x"].cnt() > 1', "line 1, column 25: unknown event function 'cnt'"),
        ("person.shoeSize > 40", "unknown field 'person.shoeSize': not in the union profile schema"),
        ('xEvent[shoe = "x"].count() > 0', "unknown field 'shoe': not in xdm-experienceevent"),
        ("timestamp occurs <= 3 fortnights before now", "unexpected 'fortnights'; expected a unit"),
    ],
)
def test_invalid_pql_is_an_error_with_line_column_and_what_was_expected(world, pql, message):
    with pytest.raises(PqlError, match=None) as caught:
        world(pql)
    assert message in str(caught.value)


def test_every_example_of_the_design_parses():
    for text in [
        'homeAddress.stateProvince = "CA" and person.gender = "female"',
        'person.name.firstName.startsWith("Jo")',
        'homeAddress.city like "%es%"',
        'loyalty.tier in ["gold", "platinum"]',
        "person.birthDate occurs between date(1980, 1, 1) and date(1990, 12, 31)",
        "personalEmail.address.isNotNull()",
        'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 30 days before now].count() >= 2',
        'exists E from xEvent where (E.eventType = "message.open")',
        'not (inSegment("x"))',
    ]:
        parse(text)


def test_the_cli_takes_custom_schemas_and_type_checks_against_them(tmp_path, capsys):
    """`--schema` (repeatable) extends the built-in schemas: a custom field is known, and typed."""
    custom = {
        "id": "crm-extras",
        "title": "CRM extras",
        "class": "profile",
        "fields": [{"path": "extras.shoeSize", "type": "integer"}, {"path": "extras.club", "type": "string"}],
    }
    (tmp_path / "s.json").write_text(json.dumps(custom))
    people = [profile("ann", extras={"shoeSize": 38, "club": "gold"}), profile("bob", extras={"shoeSize": 44})]
    (tmp_path / "p.ndjson").write_text(ndjson(*people))
    base = ["segments", "evaluate", "--profiles", str(tmp_path / "p.ndjson"), "--as-of", NOW]
    assert main([*base, "--pql", "extras.shoeSize > 40", "--schema", str(tmp_path / "s.json")]) == 0
    out, _ = capsys.readouterr()
    assert [json.loads(line)["identities"]["CRMID"] for line in out.splitlines()] == [["bob"]]

    assert main([*base, "--pql", "extras.shoeSize > 40"]) == 2  # without the schema the field is unknown
    assert "unknown field 'extras.shoeSize'" in capsys.readouterr().err
    assert main([*base, "--pql", "extras.club > 5", "--schema", str(tmp_path / "s.json")]) == 2
    assert "`>` compares extras.club (string) with 5 (number)" in capsys.readouterr().err
