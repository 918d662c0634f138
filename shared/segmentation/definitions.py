"""Segment definitions: a PQL expression with a name, stored in the `segments` table and validated on save
(it parses, its fields exist, its inSegment targets exist, and it makes no cycle)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from shared.ingestion.datasets import DatasetStore
from shared.ingestion.schemas import PROFILE_SCHEMA, Schema, SchemaClass
from shared.models import ApiModel
from shared.segmentation.evaluation import event_fields
from shared.segmentation.pql import ast, parse
from shared.segmentation.pql.compiler import Compiler, Fields
from shared.segmentation.usage import SegmentUsage, UsageGraph, referencing, unused, used_by_destination
from shared.settings import Settings
from shared.storage import EntityTable, RecordStore, StorageAccount


class Expression(ApiModel):
    type: Literal["PQL"] = "PQL"
    format: Literal["pql/text"] = "pql/text"
    value: str = Field(min_length=1, max_length=20_000)


SEGMENT_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


class SegmentDefinition(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "gold-ca",
                    "name": "Gold in California",
                    "expression": {
                        "type": "PQL",
                        "format": "pql/text",
                        "value": 'loyalty.tier = "gold" and homeAddress.stateProvince = "CA"',
                    },
                }
            ]
        }
    )

    id: str = Field(pattern=SEGMENT_ID)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    expression: Expression
    updated: dt.datetime | None = None

    def tree(self) -> ast.Expr:
        return parse(self.expression.value)


class PreviewRequest(ApiModel):
    """A definition to try before saving it, and optionally the segment whose membership it would replace."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "expression": {"value": 'xEvent[eventType = "commerce.purchases"].count() >= 3'},
                    "segmentId": "repeat-buyers",
                }
            ]
        }
    )

    expression: Expression
    segment_id: str | None = Field(None, alias="segmentId", pattern=SEGMENT_ID)


class SegmentJobRequest(ApiModel):
    """Which segments an on-demand segment job evaluates: all of them when none are named."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"segments": ["gold-ca", "repeat-buyers"]}]})

    segments: list[Annotated[str, Field(pattern=SEGMENT_ID)]] | None = Field(None, max_length=1000)


def catalog_fields(datasets: DatasetStore) -> Fields:
    """What definitions may name when saved: the union of the datasets' profile schemas, and their events'."""
    schemas = [schema for _, schema in datasets.with_schemas()]
    profile: dict[str, str] = {}
    for schema in [s for s in schemas if s.schema_class is SchemaClass.PROFILE] or [PROFILE_SCHEMA]:
        for f in schema.fields:
            profile.setdefault(f.path, f.duckdb_type)
    events = [s for s in schemas if s.schema_class is SchemaClass.EXPERIENCE_EVENT]
    return Fields(profile=profile, event=event_fields(events))


class SegmentStore(RecordStore[SegmentDefinition]):
    model, table_name, partition, noun = SegmentDefinition, "segments", "segment", "segment"

    def __init__(self, table: EntityTable, datasets: DatasetStore) -> None:
        super().__init__(table)
        self.usage = SegmentUsage(table, bootstrap=self._stored_usage)
        self.datasets = datasets

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> SegmentStore:
        return cls(
            EntityTable(account.table(settings.table_name("segments"))), DatasetStore.from_settings(settings, account)
        )

    def event_schemas(self) -> list[Schema]:
        """The experience-event schemas of the datasets: the event fields definitions may name."""
        schemas = (schema for _, schema in self.datasets.with_schemas())
        return [s for s in schemas if s.schema_class is SchemaClass.EXPERIENCE_EVENT]

    def trees(self) -> dict[str, ast.Expr]:
        return {d.id: d.tree() for d in self.list()}

    def save(self, definition: SegmentDefinition, *, now: dt.datetime) -> SegmentDefinition:
        """Validate against the catalog and the other segments, then store."""
        others = self.trees()
        others[definition.id] = definition.tree()
        # Compiling checks every field, every inSegment target and that no cycle runs through this one.
        Compiler(catalog_fields(self.datasets), now, definitions=others).compile_segments(
            {definition.id: others[definition.id]}
        )
        # The same rules again on the usage record, in one guarded write: a concurrent save that would close
        # a cycle with this one sees these references. The old ones count too until the record is stored.
        refs = ast.segment_references(others[definition.id])
        old = self.records.find(definition.id)
        self.usage.change(referencing(definition.id, refs, keep=ast.segment_references(old.tree()) if old else set()))
        stored = self.records.put(definition.id, definition.model_copy(update={"updated": now}))
        self.usage.change(referencing(definition.id, refs))
        return stored

    def delete(self, segment_id: str) -> None:
        """Delete a segment that nothing uses; 409 naming the segments and destinations that use it."""
        self.get(segment_id)
        self.usage.change(unused(segment_id))
        self.records.delete(segment_id)

    def use(self, destination_id: str, segment_ids: set[str], *, keep: set[str] = frozenset()) -> None:
        """Record that a destination exports these segments (refusing ones that do not exist)."""
        self.usage.change(used_by_destination(destination_id, segment_ids, keep=keep))

    def _stored_usage(self) -> UsageGraph:
        return UsageGraph(segments={d.id: sorted(ast.segment_references(d.tree())) for d in self.list()})
