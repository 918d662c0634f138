"""The Functions Blueprints, one module per area. Each trigger function is a thin adapter over `shared`."""

import datetime as dt
import logging

import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobClient

import shared.app  # noqa: F401 - the service graph: alert rules watch jobs, webhooks receive alerts
from shared.settings import get_settings


def utc_now() -> dt.datetime:
    """The time a function runs as of: now, in UTC, to the second (jobs are re-runnable as of any `now`)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def blob_source() -> func.BlobSource:
    """How the host learns of new blobs (`BLOB_TRIGGER_SOURCE`, read when the app is indexed): Event Grid on
    the Flex Consumption plan, which has no container scan; logs and container scans elsewhere."""
    return func.BlobSource(get_settings().blob_trigger_source)


def blob_version(client: BlobClient) -> str | None:
    """The ETag of the blob a trigger fired for (it is bound as a client, so nothing is read yet), or None when
    it was deleted meanwhile: then there is nothing to do, and nothing to retry."""
    try:
        return client.get_blob_properties().etag
    except ResourceNotFoundError:
        logging.getLogger(__name__).info("%s/%s is gone; nothing to do", client.container_name, client.blob_name)
        return None
