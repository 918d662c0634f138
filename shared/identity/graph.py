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
    """From `identity_rows(rid, _ingestedAt, ns, id, is_primary)` build
    `identities(node, ns, id, lastSeen)`, `fragment_people(rid, person)` and `people(person, profileId)`.
    Identities are grouped by a 64-bit hash of (namespace, normalized id), not by string keys (two of five
    million identities colliding has odds of about one in a million)."""
    primary_only = (
        "QUALIFY row_number() OVER (PARTITION BY rid ORDER BY coalesce(is_primary, false) DESC, ns, nid) = 1"
        if not stitching  # without stitching a fragment is known by its primary identity alone
        else ""
    )
    # Views, not tables: at millions of events these rows are read twice and never held in memory.
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW fragment_ids AS
        SELECT rid, ns, nid, hash(ns, nid) AS h, _ingestedAt FROM (
            SELECT rid, _ingestedAt, ns, {normalized_id("ns", "id")} AS nid, is_primary FROM identity_rows
        ) WHERE nid IS NOT NULL AND nid <> '' {primary_only}"""
    )
    # Dense node numbers (DuckDB aggregates small dense keys far faster), CRMIDs first: hubs with the
    # smallest labels let labels settle in fewer passes.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE identities AS
        SELECT row_number() OVER (ORDER BY ns, h) AS node, * FROM (
            SELECT h, any_value(ns) AS ns, any_value(nid) AS id, max(_ingestedAt) AS lastSeen
            FROM fragment_ids GROUP BY h)"""
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE edges AS SELECT DISTINCT f.rid, i.node FROM fragment_ids f JOIN identities i USING (h)"
    )
    linked = scalar(con, "SELECT count(DISTINCT rid) FROM edges")
    passes = _components(con)
    oversize = scalar(
        con, f"SELECT count(*) FROM (SELECT label FROM labels GROUP BY label HAVING count(*) > {int(limit)})"
    )
    dropped = 0
    if oversize:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE dropped_nodes AS
            SELECT node FROM (
                SELECT l.node, row_number() OVER (PARTITION BY l.label ORDER BY i.lastSeen DESC, i.ns, i.id) AS keep_rank
                FROM labels l JOIN identities i USING (node)
                WHERE l.label IN (SELECT label FROM labels GROUP BY label HAVING count(*) > {int(limit)})
            ) WHERE keep_rank > {int(limit)}"""
        )
        dropped = scalar(con, "SELECT count(*) FROM dropped_nodes")
        con.execute("DELETE FROM edges WHERE node IN (SELECT node FROM dropped_nodes)")
        con.execute("DELETE FROM identities WHERE node IN (SELECT node FROM dropped_nodes)")
        passes += _components(con)
    # Once the labels settle, each fragment's label from the last pass is its person.
    con.execute("CREATE OR REPLACE TEMP TABLE fragment_people AS SELECT rid, label AS person FROM fragment_labels")
    # The profile id is a digest of the person's smallest identity: stable while that identity stays.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE people AS
        SELECT l.label AS person, 'p' || left(md5(min(i.ns || ':' || i.id)), 23) AS profileId
        FROM labels l JOIN identities i USING (node) GROUP BY l.label"""
    )
    return GraphStats(
        identities=scalar(con, "SELECT count(*) FROM identities"),
        people=scalar(con, "SELECT count(*) FROM people"),
        oversize_graphs=int(oversize),
        identities_dropped=int(dropped),
        fragments_unlinked=linked - scalar(con, "SELECT count(*) FROM fragment_people"),
        passes=passes,
    )


def _components(con: duckdb.DuckDBPyConnection) -> int:
    """Label every node of `edges(rid, node)` with the smallest node of its component: `labels(node, label)`,
    and every fragment with its component's label: `fragment_labels(rid, label)`."""
    con.execute("CREATE OR REPLACE TEMP TABLE labels AS SELECT DISTINCT node, node AS label FROM edges")
    con.execute("CREATE OR REPLACE TEMP TABLE fragment_labels (rid BIGINT, label BIGINT)")
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
