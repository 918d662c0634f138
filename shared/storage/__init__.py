"""Blob and Table storage as the product uses them."""

from shared.storage.account import StorageAccount, azurite_connection_string
from shared.storage.blobs import BlobStore, TooLarge
from shared.storage.models import ModelTable, RecordStore
from shared.storage.tables import (
    EntityTable,
    Page,
    check_batch,
    check_entity,
    entity_bytes,
)

__all__ = [
    "BlobStore",
    "EntityTable",
    "ModelTable",
    "Page",
    "RecordStore",
    "StorageAccount",
    "TooLarge",
    "azurite_connection_string",
    "check_batch",
    "check_entity",
    "entity_bytes",
]
