"""The identity graph puts fragments in the same person exactly when a chain of shared identities joins them."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.identity.graph import build_identity_graph

NAMESPACES = ["ECID", "Email", "CRMID"]
fragment = st.lists(st.tuples(st.sampled_from(NAMESPACES), st.integers(0, 12)), min_size=1, max_size=4)


def union_find_people(fragments: list[list[tuple[str, int]]]) -> set[frozenset[int]]:
    parent: dict[object, object] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for rid, ids in enumerate(fragments, start=1):
        for ns, n in ids:
            parent[find(("id", ns, n))] = find(("rid", rid))
    groups: dict[object, set[int]] = {}
    for rid in range(1, len(fragments) + 1):
        groups.setdefault(find(("rid", rid)), set()).add(rid)
    return {frozenset(g) for g in groups.values()}


@settings(max_examples=60, deadline=None)
@given(st.lists(fragment, min_size=1, max_size=25))
def test_people_are_the_connected_components_of_shared_identities(fragments):
    con = duckdb.connect()
    rows = [
        (rid, ns, f"{'  X' if ns == 'Email' and n % 2 else 'x'}{n}", i == 0)
        for rid, ids in enumerate(fragments, start=1)
        for i, (ns, n) in enumerate(ids)
    ]
    con.execute("CREATE TEMP TABLE fragments AS SELECT range + 1 AS rid FROM range(?)", [len(fragments)])
    con.execute(
        "CREATE TEMP TABLE identity_rows (rid BIGINT, ns VARCHAR, id VARCHAR, is_primary BOOLEAN, _ingestedAt TIMESTAMPTZ)"
    )
    con.executemany("INSERT INTO identity_rows VALUES (?, ?, ?, ?, TIMESTAMPTZ '2026-11-20 00:00:00+00')", rows)
    build_identity_graph(con, stitching=True, limit=1000)
    got: dict[int, set[int]] = {}
    for rid, person in con.execute("SELECT rid, person FROM fragment_people").fetchall():
        got.setdefault(person, set()).add(rid)
    # Emails differ only by case and spaces here ('  X3' vs 'x3'), so they must still join.
    expected = union_find_people([[(ns, n) for ns, n in ids] for ids in fragments])
    assert {frozenset(g) for g in got.values()} == expected
