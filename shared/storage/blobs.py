"""A blob container seen as a store of named files. A single upload is atomic: nobody sees half a blob."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient

from shared.errors import NotFound

_CONCURRENCY = 4


class BlobStore:
    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self.name = container.container_name

    def put(self, name: str, data: bytes, *, metadata: dict[str, str] | None = None) -> str:
        """Write (or overwrite) a blob; returns its ETag."""
        client = self.container.get_blob_client(name)
        return client.upload_blob(data, overwrite=True, metadata=metadata, max_concurrency=_CONCURRENCY)["etag"]

    def put_file(self, name: str, path: Path, *, metadata: dict[str, str] | None = None) -> str:
        client = self.container.get_blob_client(name)
        with open(path, "rb") as fh:
            return client.upload_blob(fh, overwrite=True, metadata=metadata, max_concurrency=_CONCURRENCY)["etag"]

    def get(self, name: str) -> bytes:
        try:
            return self.container.download_blob(name, max_concurrency=_CONCURRENCY).readall()
        except ResourceNotFoundError as exc:
            raise NotFound(f"no blob {name!r} in container {self.name!r}") from exc

    def download(self, name: str, path: Path) -> Path:
        with open(path, "wb") as fh:
            self.container.download_blob(name, max_concurrency=_CONCURRENCY).readinto(fh)
        return path

    def etag(self, name: str) -> str:
        try:
            return self.container.get_blob_client(name).get_blob_properties().etag
        except ResourceNotFoundError as exc:
            raise NotFound(f"no blob {name!r} in container {self.name!r}") from exc

    def names(self, prefix: str = "") -> Iterator[str]:
        for blob in self.container.list_blobs(name_starts_with=prefix or None):
            yield blob.name

    def exists(self, name: str) -> bool:
        return self.container.get_blob_client(name).exists()
