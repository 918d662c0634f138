"""Unified profiles as DuckDB relations, and the SQL that makes them. Segment evaluation, preview and explain
read `unified_profiles` (one merged row per person) and `profile_events` (every event with its person's
profile id); the profile store writes them with the SQL here: the identities a record carries, a record's
attributes as a person-keyed fragment, and the merge of a person's fragments by a merge policy."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb

from shared.identity.policies import MergeMethod, MergePolicy
from shared.ingestion.schemas import Schema
from shared.sql import column_ref, nest, quote_ident, quote_literal

PROFILES = "unified_profiles"
EVENTS = "profile_events"
# The columns a person-keyed fragment carries besides its attributes (flat, named by dotted path).
FRAGMENT_KEYS = {
    "profileId": "VARCHAR",
    "ds": "VARCHAR",
    "_batchId": "VARCHAR",
    "_row": "BIGINT",
    "_ingestedAt": "TIMESTAMPTZ",
}
EMPTY_EVENTS = (
    "SELECT NULL::VARCHAR AS profileId, NULL::VARCHAR AS _id, NULL::TIMESTAMPTZ AS timestamp, "
    "NULL::VARCHAR AS eventType, NULL::TIMESTAMPTZ AS _ingestedAt WHERE false"
)


@dataclass
class UnifiedProfiles:
    """Names of the DuckDB relations that hold the profiles a job reads, and what the store says of them."""

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


def profile_leaves(schemas: list[Schema], known: dict[str, str] | None = None) -> dict[str, str]:
    """The union schema: every attribute path of every profile schema, with its DuckDB type (the first
    declaration of a path wins, so a store's leaves only ever grow)."""
    leaves = dict(known or {})
    for schema in schemas:
        for f in schema.fields:
            leaves.setdefault(f.path, f.duckdb_type)
    return leaves


def normalized_id(ns: str, raw: str) -> str:
    """SQL for an identity value as it is compared: emails trimmed and lowercased, others trimmed."""
    return f"CASE WHEN {ns} = 'Email' THEN lower(trim({raw})) ELSE trim({raw}) END"


def identities_sql(view: str, schema: Schema, *, stitching: bool) -> str:
    """`(rid, ns, id)`: each identity a record of `view` carries (identityMap entries and identity fields),
    normalized; without stitching, only each record's primary identity (or its first)."""
    rows = [
        f"""SELECT _row AS rid, ns, x.id AS id, x."primary" AS is_primary FROM (
                SELECT _row, e.key AS ns, unnest(e.value) AS x FROM (
                    SELECT _row, unnest(map_entries(identityMap)) AS e FROM {view}))"""
    ]
    for f in schema.fields:
        if f.identity:
            rows.append(
                f"""SELECT _row AS rid, {quote_literal(f.identity.value)} AS ns, {column_ref(f.path)} AS id,
                       false AS is_primary FROM {view} WHERE {column_ref(f.path)} IS NOT NULL"""
            )
    primary_only = (
        "QUALIFY row_number() OVER (PARTITION BY rid ORDER BY coalesce(is_primary, false) DESC, ns, id) = 1"
        if not stitching  # without stitching a fragment is known by its primary identity alone
        else ""
    )
    return f"""SELECT DISTINCT rid, ns, id FROM (
        SELECT rid, ns, {normalized_id("ns", "id")} AS id, is_primary FROM ({" UNION ALL ".join(rows)})
        WHERE id IS NOT NULL AND trim(id) <> '' {primary_only})"""


def fragment_sql(view: str, schema: Schema, dataset_id: str, person: str) -> str:
    """A profile batch's records as fragments: `person` (an expression of `view`) as profileId, the record's
    key columns, and each attribute of the schema flat, named by its dotted path."""
    attrs = "".join(f", {column_ref(f.path)} AS {quote_ident(f.path)}" for f in schema.fields)
    return f"""SELECT {person} AS profileId, {quote_literal(dataset_id)} AS ds, _batchId, _row, _ingestedAt{attrs}
        FROM {view}"""


def complete_fragments(con: duckdb.DuckDBPyConnection, files_sql: str, leaves: dict[str, str]) -> str:
    """SQL over fragment files with every leaf of the union schema, NULL where no file has it."""
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {files_sql}").fetchall()}
    cols = [
        f"{quote_ident(k)}" if k in present else f"NULL::{t} AS {quote_ident(k)}"
        for k, t in {**FRAGMENT_KEYS, **leaves}.items()
    ]
    return f"(SELECT {', '.join(cols)} FROM {files_sql})"


def merge_sql(*, fragments: str, identities: str, people: str, policy: MergePolicy, leaves: dict[str, str]) -> str:
    """One merged row per person of `people(profileId)`: its identities (`identities(profileId, ns, id)`),
    each attribute from its fragments chosen by the merge policy, and when it was last updated."""
    order = "struct_pack(t := f._ingestedAt, b := f._batchId, r := f._row)"
    where = "true"
    if policy.method is MergeMethod.DATASET_PRECEDENCE:
        rank = " ".join(f"WHEN {quote_literal(d)} THEN {i}" for i, d in enumerate(policy.dataset_order))
        order = f"struct_pack(p := -(CASE f.ds {rank} END), t := f._ingestedAt, b := f._batchId, r := f._row)"
        where = "f.ds IN (" + ", ".join(quote_literal(d) for d in policy.dataset_order) + ")"
    picks = "".join(
        f", arg_max(f.{quote_ident(p)}, {order}) FILTER (WHERE f.{quote_ident(p)} IS NOT NULL) AS {quote_ident(p)}"
        for p in leaves
    )
    nested = "".join(
        f", {expr} AS {quote_ident(name)}" for name, expr in nest({p: f"m.{quote_ident(p)}" for p in leaves})
    )
    return f"""
        WITH merged AS (
            SELECT f.profileId, max(f._ingestedAt) AS lastUpdated{picks}
            FROM {fragments} f WHERE {where} AND f.profileId IN (SELECT profileId FROM {people})
            GROUP BY f.profileId
        ), idents AS (
            SELECT profileId, list({{'namespace': ns, 'id': id}} ORDER BY ns, id) AS identities
            FROM {identities} WHERE profileId IN (SELECT profileId FROM {people}) GROUP BY profileId
        )
        SELECT i.profileId, i.identities{nested}, m.lastUpdated AS _lastUpdated
        FROM idents i LEFT JOIN merged m USING (profileId)"""
