"""The DLZ's retention: exported files are deleted once older than DLZ_RETENTION_DAYS (by the run's own `now`,
stamped on each file)."""

from __future__ import annotations

import datetime as dt

from azure.storage.blob import BlobProperties

from shared.settings import Settings
from shared.storage import BlobStore, StorageAccount

EXPORTED = "exported"  # blob metadata: the export run's `now`, which retention counts from


class DlzRetention:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.dlz = BlobStore(account.container(settings.dlz_container))

    def cleanup(self, *, now: dt.datetime) -> list[str]:
        """Delete DLZ files exported longer ago than the retention period (a blob we did not write counts from
        when it was last modified); returns their names."""
        oldest = now - dt.timedelta(days=self.settings.dlz_retention_days)
        old = [b.name for b in self.dlz.listing(metadata=True) if _exported_at(b) < oldest]
        for name in old:
            self.dlz.delete(name)
        return old


def _exported_at(blob: BlobProperties) -> dt.datetime:
    stamp = (blob.metadata or {}).get(EXPORTED)
    return dt.datetime.fromisoformat(stamp) if stamp else blob.last_modified
