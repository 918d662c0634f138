"""Calling the app's functions as the Functions host would, for the demo and the tests (Core Tools can't be
installed here): the real function code, with real trigger inputs, against real storage."""

from __future__ import annotations

import azure.functions as func
from azure.storage.queue import QueueClient

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


def deliver_queue_messages(function, queue: QueueClient, *, limit: int = 32) -> int:
    """Deliver waiting messages to a queue-trigger function, deleting each after it succeeds (as the host
    does; a failure leaves the message to become visible again). Returns how many were delivered."""
    delivered = 0
    for message in queue.receive_messages(max_messages=limit, visibility_timeout=60):
        body = message.content.encode() if isinstance(message.content, str) else message.content
        function.build().get_user_function()(
            func.QueueMessage(id=message.id, body=body, pop_receipt=message.pop_receipt)
        )
        queue.delete_message(message)
        delivered += 1
    return delivered
