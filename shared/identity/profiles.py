"""Unified profiles: the lake's fragments, stitched by the identity graph and merged by a merge policy
as of `now`, become one row per person (`unified_profiles`) and person-keyed events (`profile_events`).
Everything stays in DuckDB; this is the input of segment evaluation."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from shared.engine import scalar
from shared.identity.graph import build_identity_graph
from shared.identity.policies import MergeMethod, MergePolicy
from shared.ingestion.datasets import Dataset, DatasetStore
from shared.ingestion.lake import LakeStore
from shared.ingestion.paths import column_ref, nest, quote_ident, quote_literal
from shared.ingestion.schemas import Schema, SchemaClass
from shared.settings import Settings
from shared.storage import StorageAccount
from shared.timing import Laps

PROFILES = "unified_profiles"
EVENTS = "profile_events"


@dataclass
class UnifiedProfiles:
    """Names of the DuckDB tables that hold the result, and what building them found."""

    con: duckdb.DuckDBPyConnection
    policy: MergePolicy
    now: dt.datetime
    stats: dict[str, float] = field(default_factory=dict)
    leaves: dict[str, str] = field(default_factory=dict)  # the union profile schema: path -> DuckDB type
    profiles: str = PROFILES
    events: str = EVENTS

    def profiles_relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.table(self.profiles)

    def events_relation(self) -> duckdb.DuckDBPyRelation:
        return self.con.table(self.events)


@dataclass
class _View:
    dataset: Dataset
    schema: Schema
    view: str


class ProfileBuilder:
    def __init__(self, *, settings: Settings, lake: LakeStore, datasets: DatasetStore) -> None:
        self.settings = settings
        self.lake = lake
        self.datasets = datasets

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> ProfileBuilder:
        account = account or StorageAccount.from_settings(settings)
        return cls(
            settings=settings,
            lake=LakeStore.from_settings(settings, account),
            datasets=DatasetStore.from_settings(settings, account),
        )

    def build(
        self, con: duckdb.DuckDBPyConnection, *, policy: MergePolicy, now: dt.datetime, workdir: Path
    ) -> UnifiedProfiles:
        """Unified profiles from every dataset in the lake, as of `now`."""
        sources = [
            Source(dataset, schema, files)
            for dataset, schema in self.datasets.with_schemas()
            if (files := self.lake.download_dataset(dataset.id, workdir / dataset.id))
        ]
        return build_profiles(con, sources, policy=policy, now=now, graph_limit=self.settings.identity_graph_limit)


@dataclass
class Source:
    """One dataset's validated batches as local Parquet files."""

    dataset: Dataset
    schema: Schema
    files: list[Path]


def build_profiles(
    con: duckdb.DuckDBPyConnection, sources: list[Source], *, policy: MergePolicy, now: dt.datetime, graph_limit: int
) -> UnifiedProfiles:
    """Stitch and merge the sources' fragments as of `now` into `unified_profiles` and `profile_events`."""
    timings = Laps()
    lap = timings.lap
    views = _register(con, sources, now)
    leaves = _profile_leaves([s.schema for s in views if s.schema.schema_class is SchemaClass.PROFILE])
    _fragments(con, views, leaves)
    lap("fragmentsSeconds")
    graph = build_identity_graph(con, stitching=policy.identity_stitching, limit=graph_limit)
    lap("identityGraphSeconds")
    _merge(con, policy, leaves)
    lap("mergeSeconds")
    _events(con, [s for s in views if s.schema.schema_class is SchemaClass.EXPERIENCE_EVENT])
    lap("eventsSeconds")
    events = (
        " + ".join(
            f"(SELECT count(*) FROM {v.view})" for v in views if v.schema.schema_class is SchemaClass.EXPERIENCE_EVENT
        )
        or "0"
    )
    profile_fragments = scalar(con, "SELECT count(*) FROM fragments")
    event_fragments = scalar(con, f"SELECT {events}")
    stats = {
        **timings,
        "fragments": profile_fragments + event_fragments,
        "profileFragments": profile_fragments,
        "eventFragments": event_fragments,
        "profiles": scalar(con, f"SELECT count(*) FROM {PROFILES}"),
        **{_camel(k): v for k, v in asdict(graph).items()},
    }
    return UnifiedProfiles(con=con, policy=policy, now=now, stats=stats, leaves=leaves)


def _register(con: duckdb.DuckDBPyConnection, sources: list[Source], now: dt.datetime) -> list[_View]:
    """A view per source, each row with `rid`: its batch's offset plus its row, one BIGINT that names the
    record everywhere (identities, people, events) without numbering rows in one thread."""
    views, distinct = [], []
    for i, source in enumerate(sources):
        paths = "[" + ", ".join(quote_literal(str(p)) for p in source.files) + "]"
        # Only what was ingested by `now` counts, so a run as of a past time sees the lake as it was.
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW raw_{i} AS
            SELECT * FROM read_parquet({paths}, union_by_name = true)
            WHERE _ingestedAt <= {quote_literal(now.isoformat())}::TIMESTAMPTZ"""
        )
        distinct.append(f"SELECT {i} AS src, _batchId, max(_row) AS rows FROM raw_{i} GROUP BY _batchId")
    # Each batch's rows are numbered after the highest row of the batches before it: dense fragment ids.
    con.execute(
        "CREATE OR REPLACE TEMP TABLE batch_keys AS "
        "SELECT src, _batchId, coalesce(sum(rows) OVER (ORDER BY src, _batchId ROWS BETWEEN UNBOUNDED PRECEDING "
        "AND 1 PRECEDING), 0) AS offset FROM ("
        + (" UNION ALL ".join(distinct) or "SELECT 0 AS src, NULL::VARCHAR AS _batchId, 0 AS rows WHERE false")
        + ")"
    )
    for i, source in enumerate(sources):
        view = f"src_{i}"
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW {view} AS
            SELECT k.offset + r._row AS rid, r.* FROM raw_{i} r
            JOIN batch_keys k ON k.src = {i} AND k._batchId = r._batchId"""
        )
        views.append(_View(source.dataset, source.schema, view))
    return views


def _fragments(con: duckdb.DuckDBPyConnection, sources: list[_View], leaves: dict[str, str]) -> None:
    """`fragments`: one row per profile record with its flattened attributes, and `identity_rows` (a view):
    one row per identity a record of any dataset carries (identityMap entries and identity fields)."""
    selects, identities = [], []
    for s in sources:
        is_profile = s.schema.schema_class is SchemaClass.PROFILE
        own = {f.path for f in s.schema.fields}
        attrs = "".join(
            f", {column_ref(p) if is_profile and p in own else f'NULL::{t}'} AS {quote_ident(p)}"
            for p, t in leaves.items()
        )
        if is_profile:  # events need no attributes merged: they are reached through their views
            selects.append(
                f"""SELECT rid, {quote_literal(s.dataset.id)} AS ds, 'profile' AS cls,
                       _batchId, _row, _ingestedAt{attrs}
                FROM {s.view}"""
            )
        identities.append(
            f"""SELECT rid, _ingestedAt, ns, x.id AS id, x."primary" AS is_primary FROM (
                    SELECT rid, _ingestedAt, e.key AS ns, unnest(e.value) AS x FROM (
                        SELECT rid, _ingestedAt, unnest(map_entries(identityMap)) AS e FROM {s.view}))"""
        )
        for f in s.schema.fields:
            if f.identity:
                identities.append(
                    f"""SELECT rid, _ingestedAt, {quote_literal(f.identity.value)} AS ns, {column_ref(f.path)} AS id,
                           false AS is_primary FROM {s.view} WHERE {column_ref(f.path)} IS NOT NULL"""
                )
    if not selects:
        selects.append(
            "SELECT NULL::BIGINT AS rid, NULL::VARCHAR AS ds, NULL::VARCHAR AS cls, NULL::VARCHAR AS _batchId, "
            "NULL::BIGINT AS _row, NULL::TIMESTAMPTZ AS _ingestedAt"
            + "".join(f", NULL::{t} AS {quote_ident(p)}" for p, t in leaves.items())
            + " WHERE false"
        )
        identities.append(
            "SELECT NULL::BIGINT AS rid, NULL::TIMESTAMPTZ AS _ingestedAt, NULL::VARCHAR AS ns, NULL::VARCHAR AS id, "
            "NULL::BOOLEAN AS is_primary WHERE false"
        )
    con.execute("CREATE OR REPLACE TEMP TABLE fragments AS " + " UNION ALL ".join(selects))
    con.execute("CREATE OR REPLACE TEMP VIEW identity_rows AS " + " UNION ALL ".join(identities))


def _merge(con: duckdb.DuckDBPyConnection, policy: MergePolicy, leaves: dict[str, str]) -> None:
    order = "struct_pack(t := f._ingestedAt, b := f._batchId, r := f._row)"
    where = "f.cls = 'profile'"
    if policy.method is MergeMethod.DATASET_PRECEDENCE:
        rank = " ".join(f"WHEN {quote_literal(d)} THEN {i}" for i, d in enumerate(policy.dataset_order))
        order = f"struct_pack(p := -(CASE f.ds {rank} END), t := f._ingestedAt, b := f._batchId, r := f._row)"
        where += " AND f.ds IN (" + ", ".join(quote_literal(d) for d in policy.dataset_order) + ")"
    picks = "".join(
        f", arg_max(f.{quote_ident(p)}, {order}) FILTER (WHERE f.{quote_ident(p)} IS NOT NULL) AS {quote_ident(p)}"
        for p in leaves
    )
    nested = "".join(
        f", {expr} AS {quote_ident(name)}" for name, expr in nest({p: f"m.{quote_ident(p)}" for p in leaves})
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {PROFILES} AS
        WITH merged AS (
            SELECT fp.person, max(f._ingestedAt) AS lastUpdated{picks}
            FROM fragments f JOIN fragment_people fp USING (rid)
            WHERE {where}
            GROUP BY fp.person
        ), idents AS (
            SELECT l.label AS person, list({{'namespace': i.ns, 'id': i.id}} ORDER BY i.ns, i.id) AS identities
            FROM labels l JOIN identities i USING (node) GROUP BY l.label
        )
        SELECT p.profileId, idents.identities{nested}, m.lastUpdated AS _lastUpdated
        FROM people p JOIN idents USING (person) LEFT JOIN merged m USING (person)"""
    )


def _events(con: duckdb.DuckDBPyConnection, sources: list[_View]) -> None:
    """`profile_events`: every event with its person's profile id, as a view: segment evaluation reads it
    once, inside its single aggregation, so it is never copied."""
    selects = [
        f"""SELECT pe.profileId, s.* FROM {s.view} s
            JOIN fragment_people fp ON fp.rid = s.rid
            JOIN people pe ON pe.person = fp.person"""
        for s in sources
    ]
    if not selects:
        selects = [
            "SELECT NULL::VARCHAR AS profileId, NULL::BIGINT AS rid, NULL::VARCHAR AS _id, "
            "NULL::TIMESTAMPTZ AS timestamp, NULL::VARCHAR AS eventType WHERE false"
        ]
    con.execute(f"CREATE OR REPLACE TEMP VIEW {EVENTS} AS " + " UNION ALL BY NAME ".join(selects))


def _profile_leaves(schemas: list[Schema]) -> dict[str, str]:
    """The union schema: every attribute path of every profile schema, with its DuckDB type."""
    leaves: dict[str, str] = {}
    for schema in schemas:
        for f in schema.fields:
            leaves.setdefault(f.path, f.duckdb_type)
    return leaves


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)
