"""Configuration records (schemas, datasets, merge policies, …): one pydantic model per entity, stored as
its JSON in one property, so the model is the single definition of the record."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as ModelError

from shared.errors import ValidationError
from shared.storage.tables import EntityTable

M = TypeVar("M", bound=BaseModel)


class ModelTable(Generic[M]):
    def __init__(self, table: EntityTable, model: type[M], *, partition: str) -> None:
        self.table = table
        self.model = model
        self.partition = partition

    def put(self, key: str, record: M) -> M:
        self.table.upsert(
            {"PartitionKey": self.partition, "RowKey": key, "definition": record.model_dump_json(by_alias=True)}
        )
        return record

    def find(self, key: str) -> M | None:
        entity = self.table.find(self.partition, key)
        return self._load(entity) if entity else None

    def delete(self, key: str) -> None:
        self.table.delete(self.partition, key)

    def all(self) -> list[M]:
        rows = self.table.all("PartitionKey eq @pk", parameters={"pk": self.partition})
        return [self._load(e) for e in sorted(rows, key=lambda e: e["RowKey"])]

    def _load(self, entity: dict) -> M:
        try:
            return self.model.model_validate_json(entity["definition"])
        except ModelError as exc:
            raise ValidationError(
                f"stored {self.partition} {entity['RowKey']!r} in table {self.table.name!r} is not valid: {exc}"
            ) from exc
