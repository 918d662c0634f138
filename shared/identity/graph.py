"""The identity graph, maintained one batch at a time: each identity (namespace and normalized id) belongs to
one person. A batch's records are stitched to the people their identities already name, and the people a
record links are merged; only the batch's identities are looked up. A person's key stays: a new person is
keyed by a digest of its smallest identity, and a merge keeps the smallest key of the people it joins
(the others resolve to it through the batch's aliases). A graph over the limit (Adobe: 50 identities) keeps
its most recently seen identities; records stay with the person they were stitched to.

Connected components of the batch's small graph are found in DuckDB by label propagation with pointer
jumping: a few set-based passes rather than a loop over rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from shared.engine import scalar
from shared.sql import quote_literal

MAX_PASSES = 200
# What stitching builds on its way to `Stitched` and drops once done.
_WORK_TABLES = (
    "batch_identities",
    "known",
    "nodes",
    "edges",
    "labels",
    "fragment_labels",
    "next_labels",
    "component_known",
    "component_names",
    "components_found",
    "person_rows",
    "component_people",
    "replaced_rows",
    "candidate_rows",
    "ranked_rows",
    "dropped",
)
GRAPH_COLUMNS = "ns VARCHAR, id VARCHAR, profileId VARCHAR, lastSeen TIMESTAMPTZ"
# The graph as a reader gives it: `graph(clause)` is SQL of the rows (GRAPH_COLUMNS) that `SELECT ... FROM <rows> g
# <clause>` keeps, the clause a filter of rows one at a time (a WHERE, a SEMI JOIN), applied as each file is read.
GraphRows = Callable[[str], str]


@dataclass(frozen=True)
class Stitched:
    """What stitching one batch gave: DuckDB tables (handles, by name) and counts."""

    record_people: str  # (rid, profileId): the person of each of the batch's records that has an identity
    aliases: str  # (absorbed, profileId): people merged into another by this batch
    graph_rows: str  # (ns, id, profileId, lastSeen): the new rows of every person the batch touched
    changed: str  # (profileId): people whose identities changed (new, merged or dropped)
    touched: str  # (profileId): every person the batch named, the absorbed ones too
    replaced_rows: int  # how many rows the touched people had in the graph before (`graph_rows` replace them)
    new_people: int
    merges: int
    identities_dropped: int
    records_unlinked: int

    def counts(self) -> dict[str, int]:
        return {
            "newPeople": self.new_people,
            "merges": self.merges,
            "identitiesDropped": self.identities_dropped,
            "recordsUnlinked": self.records_unlinked,
        }


def stitch(
    con: duckdb.DuckDBPyConnection,
    *,
    identities: str,
    records: int,
    graph: GraphRows,
    batch_id: str,
    limit: int,
    retired: str | None = None,
) -> Stitched:
    """Stitch a batch, given `identities(rid, ns, id)` (the batch's records and their normalized identities)
    and the graph before it (`graph`). `records` is how many records the batch has. The batch's time is each
    record's `lastSeen` there: `identities` also carries `_ingestedAt`. `retired` (profileId) names keys of
    people merged away, which a new person must not take either. The graph is read twice: for the batch's
    identities, then for the rows of the people they belong to and of the names new people would take."""
    _batch_graph(con, identities, graph)
    components(con)
    _name_people(con, graph, batch_id, retired)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE record_people AS
        SELECT f.rid, c.profileId FROM fragment_labels f JOIN component_people c USING (label) WHERE f.rid >= 0"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE aliases AS
        SELECT DISTINCT k.profileId AS absorbed, c.profileId
        FROM known k JOIN nodes n USING (ns, id) JOIN labels l USING (node) JOIN component_people c USING (label)
        WHERE k.profileId <> c.profileId"""
    )
    _regraph(con, limit)
    stitched = Stitched(
        record_people="record_people",
        aliases="aliases",
        graph_rows="graph_rows",
        changed="changed_people",
        touched="touched_people",
        replaced_rows=scalar(con, "SELECT count(*) FROM replaced_rows"),
        new_people=scalar(con, "SELECT count(*) FROM component_people WHERE joined = 0"),
        merges=scalar(con, "SELECT count(*) FROM aliases"),
        identities_dropped=scalar(con, "SELECT count(*) FROM dropped"),
        records_unlinked=records - scalar(con, "SELECT count(DISTINCT rid) FROM record_people"),
    )
    # The work tables go once the counts are read. Beside them, writing a 5M-row profile batch's rows into a
    # 10M-person store ran out of a 600MB DUCKDB_MEMORY_LIMIT (alone, the same write peaks at 654 MB RSS).
    for table in _WORK_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    return stitched


def _name_people(con: duckdb.DuckDBPyConnection, graph: GraphRows, batch_id: str, retired: str | None) -> None:
    """`component_people`: each component's person, and `person_rows`: the graph's rows of the known people and
    of the names new people would take (one read of the graph)."""
    # Each component's known people, then its smallest identity, each in a statement of its own: as one query
    # (both aggregates over the same joins) it ran out of a 600MB DUCKDB_MEMORY_LIMIT on a 5M-row profile batch
    # into a 10M-person store, where each part alone spills.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE component_known AS
        SELECT label, min(profileId) AS known_person, count(*) AS joined
        FROM (SELECT DISTINCT l.label, k.profileId FROM labels l JOIN nodes n USING (node) JOIN known k USING (ns, id))
        GROUP BY label"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE component_names AS
        SELECT l.label, min(n.ns || ':' || n.id) AS identity FROM labels l JOIN nodes n USING (node) GROUP BY l.label"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE components_found AS
        SELECT c.label, k.known_person, coalesce(k.joined, 0) AS joined,
               'p' || left(md5(c.identity), 23) AS fresh,
               'p' || left(md5(c.identity || '@' || {quote_literal(batch_id)}), 23) AS salted
        FROM component_names c LEFT JOIN component_known k USING (label)"""
    )
    new = "FROM components_found WHERE known_person IS NULL"  # the names a new person may take
    named = (
        f"WHERE profileId IN (SELECT profileId FROM known UNION ALL SELECT fresh {new} UNION ALL SELECT salted {new})"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE person_rows AS SELECT * FROM {graph(named)}")
    taken = f" UNION ALL SELECT profileId FROM {retired}" if retired else ""
    # Each component's person: the smallest known person it joins, or a new one named by its smallest identity
    # (salted by the batch when that name is taken, e.g. by a person that once held the identity).
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE component_people AS
        WITH taken AS (SELECT profileId FROM person_rows{taken})
        SELECT label, joined,
               coalesce(known_person,
                        CASE WHEN fresh IN (SELECT profileId FROM taken) THEN salted ELSE fresh END) AS profileId
        FROM components_found"""
    )


def _batch_graph(con: duckdb.DuckDBPyConnection, identities: str, graph: GraphRows) -> None:
    """The small graph a batch is stitched over: its identities as `nodes`, and as `edges` its records and the
    known people those identities already belong to (people get negative group numbers)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE batch_identities AS SELECT * FROM ({identities})")
    # The lookup of the batch's identities (an identity is one row of the graph).
    lookup = "SEMI JOIN (SELECT DISTINCT ns, id FROM batch_identities) b USING (ns, id)"
    con.execute(f"CREATE OR REPLACE TEMP TABLE known AS SELECT ns, id, profileId FROM {graph(lookup)}")
    con.execute(
        """CREATE OR REPLACE TEMP TABLE nodes AS
        SELECT row_number() OVER () AS node, ns, id, lastSeen
        FROM (SELECT ns, id, max(_ingestedAt) AS lastSeen FROM batch_identities GROUP BY ns, id)"""
    )
    # Records and known people are both groups of identities: people get negative group numbers.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE edges AS
        SELECT DISTINCT b.rid, n.node FROM batch_identities b JOIN nodes n USING (ns, id)
        UNION ALL
        SELECT -dense_rank() OVER (ORDER BY k.profileId) AS rid, n.node FROM known k JOIN nodes n USING (ns, id)"""
    )


def _regraph(con: duckdb.DuckDBPyConnection, limit: int) -> None:
    """`graph_rows`: the whole new graph of every person the batch touched (their old identities, those of
    the people merged into them and the batch's), cut to the `limit` most recently seen; `dropped`: the cut;
    `replaced_rows`: the touched people's rows before."""
    con.execute(
        """CREATE OR REPLACE TEMP TABLE touched_people AS
        SELECT profileId FROM component_people UNION SELECT absorbed FROM aliases"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE replaced_rows AS
        SELECT ns, id, profileId, lastSeen FROM person_rows WHERE profileId IN (SELECT profileId FROM touched_people)"""
    )
    # An identity is one row of the graph and one node of the batch, and where it is both, its person is the
    # same (the component's person, which its old one was merged into): a join by identity, not a GROUP BY of
    # both by identity and person (a 400k-event batch into a 1M-person store: 0.40 s against 0.64 s).
    con.execute(
        """CREATE OR REPLACE TEMP TABLE candidate_rows AS
        SELECT ns, id, coalesce(g.profileId, b.profileId) AS profileId, greatest(g.lastSeen, b.lastSeen) AS lastSeen
        FROM (SELECT g.ns, g.id, coalesce(a.profileId, g.profileId) AS profileId, g.lastSeen
              FROM replaced_rows g LEFT JOIN aliases a ON a.absorbed = g.profileId) g
        FULL OUTER JOIN (SELECT n.ns, n.id, c.profileId, n.lastSeen
                         FROM nodes n JOIN labels l USING (node) JOIN component_people c USING (label)) b
        USING (ns, id)"""
    )
    # Only the people over the limit are ranked (a sort of their rows): most people are far below it.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE ranked_rows AS
        SELECT *, row_number() OVER (PARTITION BY profileId ORDER BY lastSeen DESC, ns, id) AS keep_rank
        FROM candidate_rows WHERE profileId IN (
            SELECT profileId FROM candidate_rows GROUP BY profileId HAVING count(*) > {int(limit)})"""
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE dropped AS SELECT * FROM ranked_rows WHERE keep_rank > {int(limit)}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE graph_rows AS
        SELECT * FROM candidate_rows WHERE profileId NOT IN (SELECT profileId FROM ranked_rows)
        UNION ALL SELECT ns, id, profileId, lastSeen FROM ranked_rows WHERE keep_rank <= {int(limit)}"""
    )
    # A person's identities changed when the batch brought a new one, merged people or cut some.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE changed_people AS
        SELECT c.profileId FROM nodes n JOIN labels l USING (node) JOIN component_people c USING (label)
        WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.ns = n.ns AND k.id = n.id AND k.profileId = c.profileId)
        UNION SELECT profileId FROM aliases UNION SELECT absorbed FROM aliases UNION SELECT profileId FROM dropped"""
    )


def components(con: duckdb.DuckDBPyConnection) -> int:
    """Label every node of `edges(rid, node)` with the smallest node of its component: `labels(node, label)`,
    and every group of nodes with its component's label: `fragment_labels(rid, label)`. Returns the passes."""
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
