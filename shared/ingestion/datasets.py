"""Datasets: named containers of ingested data, each of one schema, with data-usage labels on the
dataset and on single fields (C1–C12 contract, I1/I2 identity, S1/S2 sensitive)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from shared.errors import ValidationError
from shared.ingestion.schemas import Schema, SchemaStore
from shared.models import ApiModel
from shared.settings import Settings
from shared.storage import EntityTable, RecordStore, StorageAccount

Label = Annotated[str, StringConstraints(pattern=r"^(C([1-9]|1[0-2])|I[12]|S[12])$")]


class Dataset(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "crm",
                    "name": "CRM profiles",
                    "schemaId": "xdm-profile",
                    "labels": ["C2"],
                    "fieldLabels": {"personalEmail.address": ["I1"]},
                }
            ]
        }
    )

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{1,62}$",
        description="Also the folder name in `landing`.",
    )
    name: str
    schema_id: str
    labels: list[Label] = Field(default_factory=list)
    field_labels: dict[str, list[Label]] = Field(default_factory=dict)
    created: dt.datetime | None = None

    @model_validator(mode="after")
    def _unique_labels(self) -> Dataset:
        self.labels = sorted(set(self.labels))
        self.field_labels = {k: sorted(set(v)) for k, v in self.field_labels.items()}
        return self

    def check_against(self, schema: Schema) -> None:
        if schema.id != self.schema_id:
            raise ValidationError(f"dataset {self.id!r} is of schema {self.schema_id!r}, not {schema.id!r}")
        known = {f.path for f in schema.fields} | {"identityMap"}
        unknown = sorted(set(self.field_labels) - known)
        if unknown:
            raise ValidationError(f"dataset {self.id!r}: labelled fields {unknown} are not in schema {schema.id!r}")


class DatasetStore(RecordStore[Dataset]):
    model, table_name, partition, noun = Dataset, "datasets", "dataset", "dataset"
    hint = "; create it first (PUT /api/datasets/{id})"

    def __init__(self, table: EntityTable, schemas: SchemaStore) -> None:
        super().__init__(table)
        self.schemas = schemas

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> DatasetStore:
        return cls(
            EntityTable(account.table(settings.table_name("datasets"))),
            SchemaStore.from_settings(settings, account),
        )

    def save(self, dataset: Dataset, *, now: dt.datetime) -> Dataset:
        dataset.check_against(self.schemas.get(dataset.schema_id))
        existing = self.records.find(dataset.id)
        created = dataset.created or (existing and existing.created) or now
        return self.records.put(dataset.id, dataset.model_copy(update={"created": created}))

    def with_schemas(self) -> list[tuple[Dataset, Schema]]:
        """Every dataset with its schema: what definitions, governance and profile building read."""
        return [(d, self.schemas.get(d.schema_id)) for d in self.list()]
