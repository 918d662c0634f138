"""The identity graph: fragments (profile records and events) that share any identity are one person.
Connected components are found in DuckDB by label propagation with pointer jumping, a few set-based
passes rather than a loop over rows. A graph over the limit (Adobe: 50 identities) keeps its most
recently seen identities; fragments left with none are not part of any profile and are counted."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from shared.engine import scalar

MAX_PASSES = 200


@dataclass
class GraphStats:
    identities: int
    people: int
    oversize_graphs: int
    identities_dropped: int
    fragments_unlinked: int
    passes: int


def normalized_id(ns: str, raw: str) -> str:
    """SQL for an identity value as it is compared: emails trimmed and lowercased, others trimmed."""
    return f"CASE WHEN {ns} = 'Email' THEN lower(trim({raw})) ELSE trim({raw}) END"


def build_identity_graph(con: duckdb.DuckDBPyConnection, *, stitching: bool, limit: int) -> GraphStats:
    """From `identity_rows(rid, _ingestedAt, ns, id, is_primary)` and `fragments(rid)` build
    `identities(node, ns, id, key, lastSeen)`, `fragment_people(rid, person)` and `people(person, profileId)`."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE fragment_ids AS
        SELECT rid, ns, nid AS id, ns || ':' || nid AS key, is_primary, _ingestedAt FROM (
            SELECT rid, _ingestedAt, ns, {normalized_id("ns", "id")} AS nid, coalesce(is_primary, false) AS is_primary
            FROM identity_rows
        ) WHERE nid IS NOT NULL AND nid <> ''"""
    )
    if not stitching:
        # Without stitching a fragment is known by its primary identity alone.
        con.execute(
            """CREATE OR REPLACE TEMP TABLE fragment_ids AS SELECT * FROM fragment_ids
               QUALIFY row_number() OVER (PARTITION BY rid ORDER BY is_primary DESC, ns, id) = 1"""
        )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE identities AS
        SELECT row_number() OVER (ORDER BY key) AS node, key, any_value(ns) AS ns, any_value(id) AS id,
               max(_ingestedAt) AS lastSeen
        FROM fragment_ids GROUP BY key"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE edges AS
        SELECT DISTINCT f.rid, i.node FROM fragment_ids f JOIN identities i USING (key)"""
    )
    passes = _components(con)
    oversize = scalar(
        con, f"SELECT count(*) FROM (SELECT label FROM labels GROUP BY label HAVING count(*) > {int(limit)})"
    )
    dropped = 0
    if oversize:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE dropped_nodes AS
            SELECT node FROM (
                SELECT l.node, row_number() OVER (PARTITION BY l.label ORDER BY i.lastSeen DESC, i.key) AS keep_rank
                FROM labels l JOIN identities i USING (node)
                WHERE l.label IN (SELECT label FROM labels GROUP BY label HAVING count(*) > {int(limit)})
            ) WHERE keep_rank > {int(limit)}"""
        )
        dropped = scalar(con, "SELECT count(*) FROM dropped_nodes")
        con.execute("DELETE FROM edges WHERE node IN (SELECT node FROM dropped_nodes)")
        con.execute("DELETE FROM identities WHERE node IN (SELECT node FROM dropped_nodes)")
        passes += _components(con)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE fragment_people AS
        SELECT e.rid, min(l.label) AS person FROM edges e JOIN labels l USING (node) GROUP BY e.rid"""
    )
    # The profile id is a digest of the person's smallest identity key: stable while that identity stays.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE people AS
        SELECT l.label AS person, 'p' || left(md5(min(i.key)), 23) AS profileId
        FROM labels l JOIN identities i USING (node) GROUP BY l.label"""
    )
    return GraphStats(
        identities=scalar(con, "SELECT count(*) FROM identities"),
        people=scalar(con, "SELECT count(*) FROM people"),
        oversize_graphs=int(oversize),
        identities_dropped=int(dropped),
        fragments_unlinked=scalar(
            con, "SELECT count(*) FROM fragments WHERE rid NOT IN (SELECT rid FROM fragment_people)"
        ),
        passes=passes,
    )


def _components(con: duckdb.DuckDBPyConnection) -> int:
    """Label every node of `edges(rid, node)` with the smallest node of its component: `labels(node, label)`."""
    con.execute("CREATE OR REPLACE TEMP TABLE labels AS SELECT DISTINCT node, node AS label FROM edges")
    for n in range(1, MAX_PASSES + 1):
        con.execute(
            """CREATE OR REPLACE TEMP TABLE fragment_labels AS
            SELECT e.rid, min(l.label) AS label FROM edges e JOIN labels l USING (node) GROUP BY e.rid"""
        )
        con.execute(
            """CREATE OR REPLACE TEMP TABLE next_labels AS
            SELECT e.node, min(f.label) AS label FROM edges e JOIN fragment_labels f USING (rid) GROUP BY e.node"""
        )
        # Pointer jumping: a label is itself a node of the component, so its own label is as good or better.
        con.execute(
            """CREATE OR REPLACE TEMP TABLE next_labels AS
            SELECT n.node, least(n.label, j.label) AS label
            FROM next_labels n JOIN next_labels j ON j.node = n.label"""
        )
        changed = scalar(con, "SELECT count(*) FROM next_labels n JOIN labels l USING (node) WHERE n.label <> l.label")
        con.execute("CREATE OR REPLACE TEMP TABLE labels AS SELECT * FROM next_labels")
        if changed == 0:
            return n
    raise RuntimeError(f"identity graph did not settle in {MAX_PASSES} passes")
