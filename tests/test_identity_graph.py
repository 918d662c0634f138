"""The identity graph puts records in the same person exactly when a chain of shared identities joins them."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.identity.graph import stitch
from shared.identity.profiles import normalized_id
from shared.identity.store import graph_of

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
    con.execute("CREATE TEMP TABLE identity_rows (rid BIGINT, ns VARCHAR, id VARCHAR, is_primary BOOLEAN)")
    con.executemany("INSERT INTO identity_rows VALUES (?, ?, ?, ?)", rows)
    stitched = stitch(
        con,
        identities=f"""SELECT DISTINCT rid, ns, {normalized_id("ns", "id")} AS id,
                              TIMESTAMPTZ '2026-11-20 00:00:00+00' AS _ingestedAt FROM identity_rows""",
        records=len(fragments),
        graph=graph_of(None, [], lambda names: []),  # an empty store's
        batch_id="b1",
        limit=1000,
    )
    assert stitched.new_people == len(
        {p for p in con.execute(f"SELECT profileId FROM {stitched.record_people}").fetchall()}
    )
    got: dict[str, set[int]] = {}
    for rid, person in con.execute(f"SELECT rid, profileId FROM {stitched.record_people}").fetchall():
        got.setdefault(person, set()).add(rid)
    # Emails differ only by case and spaces here ('  X3' vs 'x3'), so they must still join.
    expected = union_find_people([[(ns, n) for ns, n in ids] for ids in fragments])
    assert {frozenset(g) for g in got.values()} == expected
    # Stitching leaves only what it returns: its work tables would hold the memory the rows are written with.
    left = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}
    returned = (stitched.record_people, stitched.aliases, stitched.graph_rows, stitched.changed, stitched.touched)
    assert left == {"identity_rows", *returned}
