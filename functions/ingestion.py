"""Ingestion: a blob landing in `landing/{dataset}/` becomes a batch in the lake."""

from __future__ import annotations

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from functions import blob_source, blob_version, utc_now
from shared.ingestion import BatchIngestion
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest_landing_file")
@bp.blob_trigger(
    arg_name="client",
    path="%LANDING_CONTAINER%/{dataset}/{name}",
    connection="AzureWebJobsStorage",
    source=blob_source(),
)
def ingest_landing_file(client: blob.BlobClient) -> None:
    """The trigger binds a client (an SDK type), not the content: the host never reads the file, and the
    ingestion streams it to local disk, so a file of gigabytes fits an instance's memory."""
    etag = blob_version(client)
    if etag is None:
        return
    job = BatchIngestion.from_settings(get_settings()).ingest(client.blob_name, etag=etag, now=utc_now())
    log.info("ingestion batch %s: %s %s", job.id, job.status.value, job.metrics)
