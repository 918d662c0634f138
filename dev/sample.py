"""A deterministic, realistic sample: CRM profiles (NDJSON), loyalty members (CSV, known only by email)
and web/commerce events (NDJSON, devices that sometimes log in). Generated in DuckDB, so a million rows
take seconds; the same size always gives the same files. Shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from shared.sql import quote_literal

FIRST = ["Ann", "Bob", "Carla", "Dev", "Eun", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mo", "Nia"]
LAST = ["Lee", "Garcia", "Smith", "Okafor", "Kim", "Novak", "Rossi", "Tanaka", "Silva", "Brown", "Khan"]
PLACES = [
    ("San Jose", "CA", "95110"),
    ("Los Angeles", "CA", "90012"),
    ("Austin", "TX", "73301"),
    ("New York", "NY", "10001"),
    ("Seattle", "WA", "98101"),
    ("Miami", "FL", "33101"),
    ("Denver", "CO", "80202"),
    ("Boston", "MA", "02108"),
]
EVENT_TYPES = [
    "web.webpagedetails.pageViews",
    "web.webpagedetails.pageViews",
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
    "message.open",
]
SKUS = ["PS", "XB", "SW", "HEAD", "CAM", "TV"]


@dataclass(frozen=True)
class SampleFiles:
    profiles: Path  # dataset crm
    loyalty: Path  # dataset loyalty
    event_files: tuple[Path, ...]  # dataset web, split to stay under the ingestion file limit
    recipients: Path  # Campaign's own recipient seed (not landed: Campaign imports it itself)
    people: int
    events_count: int

    @property
    def events(self) -> Path:
        return self.event_files[0]


def _pick(values: list[str], h: str) -> str:
    return f"({_list(values)})[1 + ({h}) % {len(values)}]"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(quote_literal(v) for v in values) + "]"


def write_sample(
    out: Path,
    *,
    people: int,
    events_per_person: int = 5,
    now: dt.datetime,
    bad_every: int = 2000,
    events_per_file: int = 500_000,
) -> SampleFiles:
    """Write the three landing files for `people` persons into `out`; events fall in the 30 days before `now`."""
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")
    # A deterministic pseudo-random number per (row, purpose), as a signed integer that can index lists.
    con.execute("CREATE MACRO hh(a, b) AS CAST(hash(a, b) % 1000000007 AS BIGINT)")
    city = f"({_list([p[0] for p in PLACES])})[1 + hh(i, 'place') % {len(PLACES)}]"
    state = f"({_list([p[1] for p in PLACES])})[1 + hh(i, 'place') % {len(PLACES)}]"
    postal = f"({_list([p[2] for p in PLACES])})[1 + hh(i, 'place') % {len(PLACES)}]"
    email = "lower(first) || '.' || lower(last) || i || '@example.com'"
    # Some CRM emails arrive in other cases or with spaces, as real exports do; every `bad_every`-th row is bad.
    con.execute(
        f"""CREATE TABLE persons AS SELECT i, first, last, {email} AS email FROM (
            SELECT i, {_pick(FIRST, "hh(i, 'first')")} AS first, {_pick(LAST, "hh(i, 'last')")} AS last
            FROM range({int(people)}) t(i))"""
    )
    profiles = out / "crm-profiles.ndjson"
    con.execute(
        f"""COPY (
            SELECT
              {{'CRMID': [{{'id': 'crm-' || i, 'primary': true}}],
                'Email': [{{'id': CASE hh(i, 'case') % 10 WHEN 0 THEN upper(email) WHEN 1 THEN ' ' || email ELSE email END,
                            'primary': false}}]}} AS identityMap,
              {{'name': {{'firstName': first, 'lastName': last}},
                'birthDate': CASE WHEN i % {int(bad_every)} = {int(bad_every) - 1} THEN 'unknown'
                                  ELSE strftime(DATE '1950-01-01' + CAST(hh(i, 'birth') % 20000 AS INTEGER), '%Y-%m-%d') END,
                'gender': ['female', 'male', 'non_specific'][1 + hh(i, 'g') % 3]}} AS person,
              {{'address': email}} AS personalEmail,
              {{'city': {city}, 'stateProvince': {state}, 'countryCode': 'US', 'postalCode': {postal}}} AS homeAddress,
              {{'marketing': {{'email': {{'val': CASE WHEN hh(i, 'optin') % 10 < 8 THEN 'y' ELSE 'n' END}}}}}} AS consents
            FROM persons WHERE hh(i, 'crm') % 10 <> 9 ORDER BY i
        ) TO {quote_literal(str(profiles))} (FORMAT json)"""
    )
    loyalty = out / "loyalty-members.csv"
    con.execute(
        f"""COPY (
            SELECT email AS "identityMap.Email",
                   '+1415' || lpad(CAST(i AS VARCHAR), 7, '0') AS "mobilePhone.number",
                   ['bronze', 'silver', 'gold', 'platinum'][1 + hh(i, 'tier') % 4] AS "loyalty.tier",
                   CAST(hh(i, 'points') % 5000 AS BIGINT) AS "loyalty.points"
            FROM persons WHERE hh(i, 'loyal') % 2 = 0 ORDER BY i
        ) TO {quote_literal(str(loyalty))} (FORMAT csv, HEADER)"""
    )
    # Campaign's recipients: most CRM people (Campaign's own copy of the email, not normalised), some opted
    # out or quarantined, and some people Campaign never heard of.
    recipients = out / "campaign-recipients.csv"
    con.execute(
        f"""COPY (
            SELECT 'crm-' || i AS external_id, email, first AS firstName, last AS lastName,
                   hh(i, 'optout') % 20 = 0 AS optOut, hh(i, 'quarantine') % 100 = 0 AS quarantined
            FROM persons WHERE hh(i, 'campaign') % 20 <> 0 ORDER BY i
        ) TO {quote_literal(str(recipients))} (FORMAT csv, HEADER)"""
    )
    total = int(people) * int(events_per_person)
    start = (now - dt.timedelta(days=30)).isoformat()
    files = []
    for n, first in enumerate(range(0, max(total, 1), events_per_file)):
        last = min(first + events_per_file, total)
        events = out / ("web-events.ndjson" if total <= events_per_file else f"web-events-{n:03d}.ndjson")
        files.append(events)
        con.execute(
            f"""COPY (
                SELECT _id, strftime(ts, '%Y-%m-%dT%H:%M:%SZ') AS timestamp, eventType,
                       CASE WHEN eventType = 'commerce.purchases'
                            THEN {{'order': {{'priceTotal': price, 'currencyCode': 'USD'}}}} END AS commerce,
                       CASE WHEN eventType LIKE 'commerce.%' THEN [{{'SKU': sku, 'quantity': 1, 'priceTotal': price}}] END AS productListItems,
                       {{'webPageDetails': {{'name': CASE WHEN eventType LIKE 'web.%' THEN 'home' ELSE 'product' END}}}} AS web,
                       identityMap
                FROM (
                    SELECT 'ev-' || j AS _id,
                           {quote_literal(start)}::TIMESTAMPTZ + to_seconds(CAST(hh(j, 'ts') % (30 * 86400) AS BIGINT)) AS ts,
                           {_pick(EVENT_TYPES, "hh(j, 'type')")} AS eventType,
                           {_pick(SKUS, "hh(j, 'sku')")} AS sku,
                           round(5 + (hh(j, 'price') % 50000) / 100.0, 2) AS price,
                           {{'ECID': [{{'id': 'ecid-' || p || '-' || (hh(j, 'dev') % 2), 'primary': true}}],
                             'CRMID': CASE WHEN hh(j, 'login') % 3 = 0 THEN [{{'id': 'crm-' || p, 'primary': false}}] END}} AS identityMap
                    FROM (SELECT j, hh(j, 'who') % {int(people)} AS p FROM range({first}, {last}) t(j))
                ) ORDER BY _id
            ) TO {quote_literal(str(events))} (FORMAT json)"""
        )
    con.close()
    return SampleFiles(
        profiles=profiles,
        loyalty=loyalty,
        event_files=tuple(files),
        recipients=recipients,
        people=int(people),
        events_count=total,
    )
