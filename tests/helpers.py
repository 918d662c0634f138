"""Small builders of test data: datasets and records in the shapes of DESIGN.md."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dev.azurite import free_port
from shared.ingestion import Dataset, DatasetStore
from shared.settings import Settings
from shared.storage import StorageAccount
from tests.conftest import NOW


def create_dataset(settings: Settings, dataset_id: str, schema_id: str = "xdm-profile", **kw) -> Dataset:
    store = DatasetStore.from_settings(settings, StorageAccount.from_settings(settings))
    return store.save(Dataset(id=dataset_id, name=dataset_id.title(), schema_id=schema_id, **kw), now=NOW)


def profile(crm: str | None = None, email: str | None = None, ecid: str | None = None, **attrs) -> dict:
    ids: dict[str, list] = {}
    if crm:
        ids["CRMID"] = [{"id": crm, "primary": True}]
    if email:
        ids["Email"] = [{"id": email}]
    if ecid:
        ids["ECID"] = [{"id": ecid}]
    return {"identityMap": ids, **attrs}


def event(event_id: str, ts: str, event_type: str, **ids) -> dict:
    return {
        "_id": event_id,
        "timestamp": ts,
        "eventType": event_type,
        "identityMap": {ns: [{"id": v}] for ns, v in ids.items()},
    }


def ndjson(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def get_json(url: str) -> tuple[int, Any]:
    """GET a URL: its status and JSON body (error answers included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def serving(data_dir: Path) -> Iterator[str]:
    """`make serve` on a free port over Azurite data in `data_dir`, up and answering; yields the API's base URL."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "dev.serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "make serve did not answer in 60 s"
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
