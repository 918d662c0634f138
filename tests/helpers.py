"""Small builders of test data: datasets and records in the shapes of DESIGN.md."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class Served:
    """A `make serve` running for a test: its API's base URL, its storage, and what it printed so far."""

    api: str
    connection_string: str
    output: list[str]

    @property
    def admin(self) -> str:
        return self.api.removesuffix("/api") + "/admin/functions"


@contextmanager
def serving(data_dir: Path, *, poll_seconds: float = 0.5) -> Iterator[Served]:
    """`make serve` on free ports over Azurite data in `data_dir`, up and answering."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "dev.serve", "--port", str(port), "--data-dir", str(data_dir)]
        + ["--azurite-ports", "free", "--poll-seconds", str(poll_seconds)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()  # never let the pipe fill
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, "".join(output)[-2000:]
                assert time.monotonic() < deadline, "make serve did not answer in 60 s"
                time.sleep(0.5)
        [connection] = [line.split("=", 1)[1].strip() for line in output if line.startswith("AzureWebJobsStorage=")]
        yield Served(base, connection, output)
    finally:
        process.terminate()
        process.wait(timeout=30)
