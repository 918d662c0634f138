"""The lake: validated data as Parquet, one blob per dataset and batch, and each batch's rejected rows.
A batch is a single blob upload, so a reader sees all of a batch or none of it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.settings import Settings
from shared.storage import BlobStore, StorageAccount

DATA_FILE = "data.parquet"


class LakeStore:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> LakeStore:
        return cls(BlobStore(account.container(settings.lake_container)))

    @staticmethod
    def data_path(dataset_id: str, batch_id: str) -> str:
        return f"{dataset_id}/batch={batch_id}/{DATA_FILE}"

    @staticmethod
    def errors_path(dataset_id: str, batch_id: str) -> str:
        return f"_rejected/{dataset_id}/batch={batch_id}/errors.csv"

    def write_batch(self, dataset_id: str, batch_id: str, parquet: Path) -> str:
        return self.blobs.put_file(self.data_path(dataset_id, batch_id), parquet)

    def write_errors(self, dataset_id: str, batch_id: str, errors_csv: Path) -> str:
        return self.blobs.put_file(self.errors_path(dataset_id, batch_id), errors_csv)

    def batch_files(self, dataset_id: str) -> list[str]:
        return sorted(n for n in self.blobs.names(f"{dataset_id}/batch=") if n.endswith("/" + DATA_FILE))

    def download_dataset(self, dataset_id: str, into: Path) -> list[Path]:
        """Copy every batch of a dataset to local files (in parallel) for DuckDB to scan."""
        names = self.batch_files(dataset_id)
        into.mkdir(parents=True, exist_ok=True)

        def fetch(name: str) -> Path:
            return self.blobs.download(name, into / name.replace("/", "__"))

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(fetch, names))
