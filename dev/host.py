"""Calling the app's functions as the Functions host would, for the demo and the tests (Core Tools can't be
installed here): the real function code, with real trigger inputs, against real storage."""

from __future__ import annotations

import azure.functions as func

from shared.storage import BlobStore


def fire_blob_trigger(function, blobs: BlobStore, path: str) -> None:
    """Run a blob-trigger function on the blob at `path`, with the name, data and ETag the host passes."""
    data = blobs.get(path)
    stream = func.blob.InputStream(
        data=data,
        name=f"{blobs.name}/{path}",
        uri=f"{blobs.container.url}/{path}",
        length=len(data),
        blob_properties={"ETag": blobs.etag(path)},
    )
    function.build().get_user_function()(stream)
