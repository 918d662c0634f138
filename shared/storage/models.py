"""Configuration records (schemas, datasets, merge policies, …): one pydantic model per entity, stored as
its JSON in one property, so the model is the single definition of the record; `RecordStore` is the store
every kind of record shares."""

from __future__ import annotations

from typing import ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as ModelError

from shared.errors import NotFound, ValidationError
from shared.settings import Settings
from shared.storage.account import StorageAccount
from shared.storage.tables import EntityTable

M = TypeVar("M", bound=BaseModel)


class ModelTable(Generic[M]):
    def __init__(self, table: EntityTable, model: type[M], *, partition: str) -> None:
        self.table = table
        self.model = model
        self.partition = partition

    def put(self, key: str, record: M) -> M:
        self.table.upsert(self._entity(key, record))
        return record

    def put_many(self, records: dict[str, M]) -> None:
        """Upsert many records in transactions of up to 100 (one partition): a round trip per 100, not per record."""
        self.table.upsert_many(self._entity(key, record) for key, record in records.items())

    def _entity(self, key: str, record: M) -> dict:
        return {"PartitionKey": self.partition, "RowKey": key, "definition": record.model_dump_json(by_alias=True)}

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


class RecordStore(Generic[M]):
    """Configuration records of one model, keyed by their `id`, in one partition of one table: what every
    configuration store shares. Built-in records (`builtins`) are answered unless a stored one has their id."""

    model: ClassVar[type]
    table_name: ClassVar[str]  # the table's base name (settings add the prefix)
    partition: ClassVar[str]
    noun: ClassVar[str]  # how errors name a record: "no {noun} 'x'"
    hint: ClassVar[str] = ""  # what to do about a missing one: "; define it first (PUT …)"
    builtins: ClassVar[tuple[BaseModel, ...]] = ()

    def __init__(self, table: EntityTable) -> None:
        self.records: ModelTable[M] = ModelTable(table, self.model, partition=self.partition)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> Self:
        return cls(EntityTable(account.table(settings.table_name(cls.table_name))))

    def find(self, record_id: str) -> M | None:
        found = self.records.find(record_id)
        return found or next((b for b in self.builtins if b.id == record_id), None)  # type: ignore[return-value]

    def get(self, record_id: str) -> M:
        found = self.find(record_id)
        if found is None:
            raise NotFound(f"no {self.noun} {record_id!r}" + self.hint.format(id=record_id))
        return found

    def list(self) -> list[M]:
        stored = self.records.all()
        ids = {r.id for r in stored}
        return [b for b in self.builtins if b.id not in ids] + stored  # type: ignore[misc]

    def put(self, record: M) -> M:
        return self.records.put(record.id, record)  # type: ignore[attr-defined]

    def delete(self, record_id: str) -> None:
        self.get(record_id)
        self.records.delete(record_id)
