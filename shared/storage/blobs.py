"""A blob container seen as a store of named files. A single upload is atomic: nobody sees half a blob."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobProperties, ContainerClient

from shared.errors import Conflict, NotFound

_CONCURRENCY = 4
_BLOCK = 8 * 1024 * 1024


class TooLarge(Exception):
    """A blob bigger than the caller would read: its size, nothing read."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


@dataclass
class Staged:
    """A file uploaded as uncommitted blocks: invisible to every reader until committed."""

    name: str
    blocks: list[str]
    size: int
    sha256: str


class BlobStore:
    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self.name = container.container_name

    def put(self, name: str, data: bytes, *, metadata: dict[str, str] | None = None) -> str:
        """Write (or overwrite) a blob; returns its ETag."""
        client = self.container.get_blob_client(name)
        return client.upload_blob(data, overwrite=True, metadata=metadata, max_concurrency=_CONCURRENCY)["etag"]

    def put_file(self, name: str, path: Path, *, metadata: dict[str, str] | None = None, overwrite: bool = True) -> str:
        """Write a blob from a file; returns its ETag. With `overwrite=False` a blob that exists is left as it
        is (a rerun of work that writes a deterministic file must not make it look new to a blob trigger)."""
        client = self.container.get_blob_client(name)
        try:
            with open(path, "rb") as fh:
                return client.upload_blob(fh, overwrite=overwrite, metadata=metadata, max_concurrency=_CONCURRENCY)[
                    "etag"
                ]
        except ResourceExistsError:
            return self.etag(name)

    def get_versioned(self, name: str) -> tuple[bytes, str] | None:
        """A blob's bytes and ETag, or None when there is no such blob."""
        try:
            downloader = self.container.download_blob(name)
        except ResourceNotFoundError:
            return None
        return downloader.readall(), downloader.properties.etag

    def replace(self, name: str, data: bytes, *, etag: str | None) -> str:
        """Write a blob only if it is still the version read (`etag`), or, with no etag, only if there is none
        yet; `Conflict` otherwise. Returns the new ETag."""
        client = self.container.get_blob_client(name)
        condition = (
            {"etag": etag, "match_condition": MatchConditions.IfNotModified}
            if etag
            else {"match_condition": MatchConditions.IfMissing}
        )
        try:
            return client.upload_blob(data, overwrite=True, **condition)["etag"]
        except (ResourceModifiedError, ResourceExistsError) as exc:
            raise Conflict(f"blob {name!r} in {self.name!r} was changed by someone else; read it again") from exc

    def get(self, name: str) -> bytes:
        try:
            return self.container.download_blob(name, max_concurrency=_CONCURRENCY).readall()
        except ResourceNotFoundError as exc:
            raise NotFound(f"no blob {name!r} in container {self.name!r}") from exc

    def download(self, name: str, path: Path) -> Path:
        with open(path, "wb") as fh:
            self.container.download_blob(name, max_concurrency=_CONCURRENCY).readinto(fh)
        return path

    def download_version(self, name: str, etag: str, path: Path, *, max_bytes: int) -> int:
        """Stream the version `etag` of a blob to `path`, a few blocks in memory at a time; returns its size.
        `NotFound` when the blob is gone, `Conflict` when it was replaced, `TooLarge` past `max_bytes` (checked
        before anything is read)."""
        try:
            downloader = self.container.download_blob(
                name, etag=etag, match_condition=MatchConditions.IfNotModified, max_concurrency=_CONCURRENCY
            )
        except ResourceNotFoundError as exc:
            raise NotFound(f"no blob {name!r} in container {self.name!r}") from exc
        except ResourceModifiedError as exc:
            raise Conflict(f"blob {name!r} in {self.name!r} was replaced since version {etag}") from exc
        if downloader.size > max_bytes:
            raise TooLarge(downloader.size)
        with open(path, "wb") as fh:
            downloader.readinto(fh)
        return downloader.size

    def etag(self, name: str) -> str:
        return self.properties(name).etag

    def names(self, prefix: str = "") -> Iterator[str]:
        for blob in self.listing(prefix):
            yield blob.name

    def exists(self, name: str) -> bool:
        return self.container.get_blob_client(name).exists()

    def stage_file(self, name: str, path: Path) -> Staged:
        """Upload a file's blocks without committing them, hashing it on the way (SHA-256)."""
        client = self.container.get_blob_client(name)
        digest, blocks, size = hashlib.sha256(), [], 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_BLOCK):
                block_id = f"{len(blocks):08d}"
                client.stage_block(block_id, chunk)
                digest.update(chunk)
                blocks.append(block_id)
                size += len(chunk)
        return Staged(name, blocks, size, digest.hexdigest())

    def commit(self, staged: Staged, *, metadata: dict[str, str] | None = None) -> str:
        """Make a staged file visible, all at once; returns its ETag."""
        client = self.container.get_blob_client(staged.name)
        return client.commit_block_list([BlobBlock(block_id=b) for b in staged.blocks], metadata=metadata)["etag"]

    def properties(self, name: str) -> BlobProperties:
        """A blob's ETag, size and metadata."""
        try:
            return self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError as exc:
            raise NotFound(f"no blob {name!r} in container {self.name!r}") from exc

    def listing(self, prefix: str = "", *, metadata: bool = False) -> Iterator[BlobProperties]:
        """The blobs with their properties (size, last modified) and, if asked, their metadata."""
        yield from self.container.list_blobs(
            name_starts_with=prefix or None, include=["metadata"] if metadata else None
        )

    def delete(self, name: str) -> None:
        self.container.delete_blob(name, delete_snapshots="include")
