"""One storage account: its blob, table and queue clients, with containers, tables and queues created on first use."""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.settings import Settings

# Options every storage client gets: none in the app; the fault-injection tests give a transport that fails
# chosen calls, and a shorter retry backoff (then `_account.cache_clear()`).
CLIENT_OPTIONS: dict = {}
# Downloads past the first 32 MiB come in 8 MiB ranges instead of the SDK's 4 MiB: each range is a request, and
# a 250 MB blob came down from Azurite in 0.60 s instead of 1.05 s (57 MB: 0.14 s instead of 0.23 s), with as
# much less CPU, four ranges at a time either way. Uploads were the same with 4, 8 or 16 MiB blocks.
BLOB_OPTIONS = {"max_chunk_get_size": 8 << 20}

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(
    host: str = "127.0.0.1",
    *,
    blob: int = 10000,
    queue: int = 10001,
    table: int = 10002,
) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob}/devstoreaccount1;"
        f"QueueEndpoint=http://{host}:{queue}/devstoreaccount1;"
        f"TableEndpoint=http://{host}:{table}/devstoreaccount1;"
    )


def expand_connection_string(value: str) -> str:
    """`UseDevelopmentStorage=true` (what Functions tooling writes) spelled out, since not every SDK reads it."""
    if value.replace(" ", "").lower().startswith("usedevelopmentstorage=true"):
        return azurite_connection_string()
    return value


class StorageAccount:
    """Clients for one account; `container()`, `table()` and `queue()` create what they name the first time."""

    def __init__(
        self, blob_service: BlobServiceClient, table_service: TableServiceClient, queue_service: QueueServiceClient
    ) -> None:
        self.blob_service = blob_service
        self.table_service = table_service
        self.queue_service = queue_service
        self._ready: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str) -> StorageAccount:
        conn = expand_connection_string(connection_string)
        return cls(
            BlobServiceClient.from_connection_string(conn, **BLOB_OPTIONS, **CLIENT_OPTIONS),
            TableServiceClient.from_connection_string(conn, **CLIENT_OPTIONS),
            QueueServiceClient.from_connection_string(conn, **CLIENT_OPTIONS),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageAccount:
        """The account of these settings, shared by every call in the process (clients are thread-safe):
        by the app's managed identity when `AzureWebJobsStorage__accountName` is set, as in Azure, else by
        the `AzureWebJobsStorage` connection string."""
        if settings.storage_account_name:
            return _identity_account(settings.storage_account_name, settings.storage_client_id)
        return _account(settings.storage_connection)

    @classmethod
    def with_identity(cls, account_name: str, client_id: str = "") -> StorageAccount:
        """The account reached with a managed identity (the user-assigned one when `client_id` is given)."""
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
        url = f"https://{account_name}.{{}}.core.windows.net".format
        return cls(
            BlobServiceClient(url("blob"), credential=credential, **BLOB_OPTIONS, **CLIENT_OPTIONS),
            TableServiceClient(url("table"), credential=credential, **CLIENT_OPTIONS),
            QueueServiceClient(url("queue"), credential=credential, **CLIENT_OPTIONS),
        )

    def _first_use(self, kind: str, name: str, create) -> None:
        key = (kind, name)
        if key in self._ready:
            return
        with self._lock:
            if key in self._ready:
                return
            with contextlib.suppress(ResourceExistsError):
                create()
            self._ready.add(key)

    def container(self, name: str) -> ContainerClient:
        client = self.blob_service.get_container_client(name)
        self._first_use("container", name, client.create_container)
        return client

    def table(self, name: str) -> TableClient:
        self._first_use("table", name, lambda: self.table_service.create_table_if_not_exists(name))
        return self.table_service.get_table_client(name)

    def queue(self, name: str) -> QueueClient:
        # Base64, as the Functions queue trigger expects messages by default.
        client = self.queue_service.get_queue_client(
            name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
        )
        self._first_use("queue", name, client.create_queue)
        return client


@lru_cache(maxsize=8)
def _account(connection_string: str) -> StorageAccount:
    return StorageAccount.from_connection_string(connection_string)


@lru_cache(maxsize=8)
def _identity_account(account_name: str, client_id: str) -> StorageAccount:
    return StorageAccount.with_identity(account_name, client_id)
