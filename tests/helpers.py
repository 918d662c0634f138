"""Small builders of test data: datasets and records in the shapes of DESIGN.md."""

from __future__ import annotations

import json

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
