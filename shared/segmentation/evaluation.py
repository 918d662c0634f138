"""Evaluating many segments over unified profiles in one query: a boolean per segment, per person."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import duckdb

from shared.identity.profiles import UnifiedProfiles
from shared.ingestion.schemas import EVENT_SCHEMA, Schema
from shared.segmentation.pql import ast
from shared.segmentation.pql.compiler import CompiledSegments, Compiler, Fields

RESULTS = "segment_results"


def fields_of(profiles: UnifiedProfiles, event_schemas: list[Schema] | None = None) -> Fields:
    """What definitions may name: the union profile schema of these profiles and the event schemas."""
    event: dict[str, str] = {"timestamp": "TIMESTAMPTZ", "eventType": "VARCHAR", "_id": "VARCHAR"}
    for schema in event_schemas or [EVENT_SCHEMA]:
        for f in schema.fields:
            event.setdefault(f.path, f.duckdb_type)
    return Fields(profile=dict(profiles.leaves), event=event)


def compile_segments(
    segments: Mapping[str, ast.Expr],
    *,
    fields: Fields,
    now: dt.datetime,
    definitions: Mapping[str, ast.Expr] | None = None,
) -> CompiledSegments:
    definitions = {**(definitions or {}), **segments}
    return Compiler(fields, now, definitions=definitions).compile_segments(segments)


def evaluate(
    con: duckdb.DuckDBPyConnection,
    profiles: UnifiedProfiles,
    segments: Mapping[str, ast.Expr],
    *,
    fields: Fields,
    definitions: Mapping[str, ast.Expr] | None = None,
) -> CompiledSegments:
    """Write `segment_results(profileId, s0, s1, …)`: one row per person, one boolean per segment."""
    compiled = compile_segments(segments, fields=fields, now=profiles.now, definitions=definitions)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULTS} AS {compiled.sql}", compiled.params)
    return compiled
