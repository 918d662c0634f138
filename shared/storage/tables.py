"""Table storage with the rules Azure enforces and Azurite does not: entity size, property count, string
length, one-partition batches of at most 100 entities and 4 MiB. Updates of shared records use ETags."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from shared.errors import Conflict, GuardrailError, NotFound

MAX_ENTITY_BYTES = 1024 * 1024
MAX_PROPERTIES = 252  # user properties; PartitionKey, RowKey and Timestamp make Azure's 255
MAX_STRING_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024
MAX_BATCH_ENTITIES = 100
MAX_BATCH_BYTES = 4 * 1024 * 1024
_SYSTEM = {"PartitionKey", "RowKey", "Timestamp", "etag"}
_FORBIDDEN_KEY_CHARS = set("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


def _value_bytes(value: Any) -> int:
    # Sizes from Azure's "Understanding the Table service data model": strings are UTF-16.
    if isinstance(value, str):
        return 4 + len(value.encode("utf-16-le"))
    if isinstance(value, bytes):
        return 4 + len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 8 if value > 2**31 - 1 or value < -(2**31) else 4
    if isinstance(value, float | dt.datetime):
        return 8
    if isinstance(value, uuid.UUID):
        return 16
    return 4 + len(str(value).encode("utf-16-le"))


def entity_bytes(entity: dict[str, Any]) -> int:
    """The stored size of an entity as Azure counts it."""
    size = 4 + 2 * (len(str(entity["PartitionKey"])) + len(str(entity["RowKey"])))
    for name, value in entity.items():
        if name in _SYSTEM or value is None:
            continue
        size += 8 + 2 * len(name) + _value_bytes(value)
    return size


def check_entity(entity: dict[str, Any], *, table: str = "") -> None:
    """Refuse, with the rule and the value, an entity Azure Table storage would refuse."""
    where = f"table {table!r}, " if table else ""
    for key in ("PartitionKey", "RowKey"):
        if key not in entity:
            raise GuardrailError(f"{where}entity has no {key}")
        value = str(entity[key])
        if len(value.encode("utf-16-le")) > MAX_KEY_BYTES:
            raise GuardrailError(f"{where}{key} {value[:40]!r}… is over Azure's 1 KiB key limit")
        bad = set(value) & _FORBIDDEN_KEY_CHARS
        if bad:
            raise GuardrailError(f"{where}{key} {value!r} contains characters Azure forbids in keys: {sorted(bad)}")
    ident = f"{where}entity ({entity['PartitionKey']!r}, {entity['RowKey']!r})"
    props = [n for n in entity if n not in _SYSTEM]
    if len(props) > MAX_PROPERTIES:
        raise GuardrailError(f"{ident} has {len(props)} properties; Azure allows {MAX_PROPERTIES}")
    for name in props:
        value = entity[name]
        if isinstance(value, str) and len(value.encode("utf-16-le")) > MAX_STRING_BYTES:
            raise GuardrailError(
                f"{ident}: property {name!r} is {len(value.encode('utf-16-le'))} bytes as UTF-16; "
                f"Azure allows {MAX_STRING_BYTES} bytes per string"
            )
        if isinstance(value, bytes) and len(value) > MAX_STRING_BYTES:
            raise GuardrailError(f"{ident}: binary property {name!r} is over {MAX_STRING_BYTES} bytes")
    size = entity_bytes(entity)
    if size > MAX_ENTITY_BYTES:
        raise GuardrailError(f"{ident} is {size} bytes; Azure allows {MAX_ENTITY_BYTES} bytes per entity")


def check_batch(entities: list[dict[str, Any]], *, table: str = "") -> None:
    """Refuse a transaction Azure would refuse: one PartitionKey, at most 100 entities, under 4 MiB."""
    if not entities:
        return
    if len(entities) > MAX_BATCH_ENTITIES:
        raise GuardrailError(f"a batch of {len(entities)} entities; Azure allows {MAX_BATCH_ENTITIES} per batch")
    partitions = {str(e["PartitionKey"]) for e in entities}
    if len(partitions) > 1:
        raise GuardrailError(f"a batch spans PartitionKeys {sorted(partitions)[:5]}; Azure requires one")
    for e in entities:
        check_entity(e, table=table)
    total = sum(entity_bytes(e) for e in entities)
    if total >= MAX_BATCH_BYTES:
        raise GuardrailError(f"a batch of {total} bytes; Azure requires under {MAX_BATCH_BYTES} bytes")


def _chunks(entities: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Split one partition's entities into batches within both limits."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for e in entities:
        n = entity_bytes(e)
        if chunk and (len(chunk) == MAX_BATCH_ENTITIES or size + n >= MAX_BATCH_BYTES * 0.95):
            yield chunk
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Page:
    """One page of a listing and the token for the next one (None at the end)."""

    items: list[dict[str, Any]]
    continuation_token: str | None


def encode_token(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token, sort_keys=True).encode()).decode()


def decode_token(token: str | None) -> Any:
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise GuardrailError(f"continuation token {token[:20]!r} is not one this service issued") from exc


class EntityTable:
    """One table. Every write goes through `check_entity`/`check_batch`; listings page."""

    def __init__(self, client: TableClient) -> None:
        self.client = client
        self.name = client.table_name

    def get(self, partition_key: str, row_key: str) -> dict[str, Any]:
        try:
            entity = self.client.get_entity(partition_key, row_key)
        except ResourceNotFoundError as exc:
            raise NotFound(f"no entity ({partition_key!r}, {row_key!r}) in table {self.name!r}") from exc
        return _plain(entity)

    def find(self, partition_key: str, row_key: str) -> dict[str, Any] | None:
        try:
            return self.get(partition_key, row_key)
        except NotFound:
            return None

    def insert(self, entity: dict[str, Any]) -> dict[str, Any]:
        """Create the entity; Conflict if it exists (the idempotency check of a first writer)."""
        check_entity(entity, table=self.name)
        try:
            meta = self.client.create_entity(entity)
        except ResourceExistsError as exc:
            raise Conflict(
                f"entity ({entity['PartitionKey']!r}, {entity['RowKey']!r}) already exists in {self.name!r}"
            ) from exc
        return {**entity, "etag": meta["etag"]}

    def upsert(self, entity: dict[str, Any]) -> dict[str, Any]:
        check_entity(entity, table=self.name)
        meta = self.client.upsert_entity(entity, mode=UpdateMode.REPLACE)
        return {**entity, "etag": meta["etag"]}

    def update(self, entity: dict[str, Any], *, etag: str, merge: bool = False) -> dict[str, Any]:
        """Replace the entity (or with `merge`, set only the given properties) only if it is unchanged since
        it was read with `etag`."""
        check_entity(entity, table=self.name)
        body = {k: v for k, v in entity.items() if k != "etag"}
        try:
            meta = self.client.update_entity(
                body,
                mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, HttpResponseError) as exc:
            if getattr(exc, "status_code", None) in (409, 412):
                raise Conflict(
                    f"entity ({entity['PartitionKey']!r}, {entity['RowKey']!r}) in {self.name!r} "
                    "was changed by someone else; read it again and retry"
                ) from exc
            raise
        return {**body, "etag": meta["etag"]}

    def delete(self, partition_key: str, row_key: str) -> None:
        self.client.delete_entity(partition_key, row_key)

    def upsert_many(self, entities: Iterable[dict[str, Any]]) -> int:
        """Upsert any number of entities as transactions of one partition, each within Azure's limits."""
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for e in entities:
            check_entity(e, table=self.name)
            by_partition.setdefault(str(e["PartitionKey"]), []).append(e)
        count = 0
        for group in by_partition.values():
            for chunk in _chunks(group):
                self.transact([("upsert", e, {"mode": UpdateMode.REPLACE}) for e in chunk])
                count += len(chunk)
        return count

    def transact(self, operations: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
        """Submit one transaction after checking it as Azure would."""
        check_batch([op[1] for op in operations], table=self.name)
        try:
            self.client.submit_transaction(operations)
        except TableTransactionError as exc:
            raise Conflict(f"transaction on {self.name!r} failed: {exc.message}") from exc

    def query(
        self,
        filter: str | None = None,
        *,
        parameters: dict[str, Any] | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        select: list[str] | None = None,
    ) -> Page:
        """One page of entities matching an OData filter (values bound as parameters)."""
        if filter:
            pages = self.client.query_entities(
                filter, parameters=parameters, results_per_page=page_size, select=select
            ).by_page(continuation_token=decode_token(continuation_token))
        else:
            pages = self.client.list_entities(results_per_page=page_size, select=select).by_page(
                continuation_token=decode_token(continuation_token)
            )
        items = [_plain(e) for e in next(pages, [])]
        return Page(items=items, continuation_token=encode_token(pages.continuation_token))

    def first(self, filter: str, *, parameters: dict[str, Any], count: int) -> list[dict[str, Any]]:
        """The first `count` entities matching, in key order, reading no more than that (a server page may
        hold fewer, so it follows continuation tokens until it has them or there are no more)."""
        found: list[dict[str, Any]] = []
        token = None
        while len(found) < count:
            page = self.query(filter, parameters=parameters, page_size=count - len(found), continuation_token=token)
            found += page.items
            token = page.continuation_token
            if token is None:
                break
        return found

    def all(self, filter: str | None = None, *, parameters: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        source = self.client.query_entities(filter, parameters=parameters) if filter else self.client.list_entities()
        for e in source:
            yield _plain(e)


def _plain(entity: Any) -> dict[str, Any]:
    out = dict(entity)
    out["etag"] = entity.metadata.get("etag")
    return out


NEWEST_FIRST_DIGITS = 17


def newest_first(at: dt.datetime) -> str:
    """A RowKey prefix that sorts later times first (microseconds before the year 5000, zero-padded), for the
    index partitions that list jobs and alerts newest first a page at a time."""
    return f"{95_617_584_000_000_000 - int(at.timestamp() * 1_000_000):0{NEWEST_FIRST_DIGITS}d}"


def newer_than_bound(at: dt.datetime) -> str:
    """The smallest newest-first prefix of anything created strictly before `at`: keys below it are at `at` or
    later (`RowKey lt` it), keys from it on are earlier (`RowKey ge` it)."""
    return f"{int(newest_first(at)) + 1:0{NEWEST_FIRST_DIGITS}d}"
