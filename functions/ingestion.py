"""Ingestion: a blob landing in `landing/{dataset}/` becomes a batch in the lake."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import blob_source, utc_now
from shared.ingestion import BatchIngestion
from shared.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest_landing_file")
@bp.blob_trigger(
    arg_name="blob", path="%LANDING_CONTAINER%/{dataset}/{name}", connection="AzureWebJobsStorage", source=blob_source()
)
def ingest_landing_file(blob: func.InputStream) -> None:
    settings = get_settings()
    path = (blob.name or "").split("/", 1)[1]  # the host names the blob with its container first
    etag = (blob.blob_properties or {}).get("ETag")
    job = BatchIngestion.from_settings(settings).ingest(path, blob.read(), etag=etag, now=utc_now())
    log.info("ingestion batch %s: %s %s", job.id, job.status.value, job.metrics)
