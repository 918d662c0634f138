"""Test fixtures: one real Azurite per test session, and fresh containers and tables for every test."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import time_machine

import shared.app  # noqa: F401 - wired as in the app: alert rules watch jobs, webhooks receive alerts
from dev.azurite import start_azurite
from dev.host import fire_blob_trigger
from functions.http import OPERATIONS
from shared.ingestion import BatchIngestion, batch_id_for
from shared.jobs import Job, JobType
from shared.settings import Settings, get_settings
from shared.storage import BlobStore, StorageAccount
from tests.api_contract import OBSERVED

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test `azurite` when it uses the session's Azurite, `fast` when it needs neither it nor a
    browser: `make test-fast` runs the fast ones in seconds."""
    for item in items:
        if "azurite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.azurite)
        elif not (item.get_closest_marker("browser") or item.get_closest_marker("azurite")):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def clock() -> Iterator[time_machine.Traveller]:
    """The clock the trigger adapters read (`functions.utc_now`) starts at NOW in every test and ticks from
    there; a test that needs a trigger to run later moves it (`clock.move_to(...)`). So no test depends on
    today's date: CI runs the suite again with the machine's clock a year ahead to prove it."""
    with time_machine.travel(NOW, tick=True) as traveller:
        yield traveller


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    server = start_azurite(in_memory=True)
    try:
        yield server.connection_string
    finally:
        server.stop()


@pytest.fixture
def settings(azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings naming this test's own containers, tables and queues, also set as app settings for the functions."""
    tag = uuid.uuid4().hex[:10]
    values = {
        "AzureWebJobsStorage": azurite,
        "LANDING_CONTAINER": f"landing-{tag}",
        "LAKE_CONTAINER": f"lake-{tag}",
        "SEGMENTS_CONTAINER": f"segments-{tag}",
        "PROFILES_CONTAINER": f"profiles-{tag}",
        "DLZ_CONTAINER": f"dlz-{tag}",
        "CAMPAIGN_CONTAINER": f"campaign-{tag}",
        "TABLE_PREFIX": f"t{tag}",
        "ALERT_DELIVERIES_QUEUE": f"alerts-{tag}",
        "SEGMENT_JOBS_QUEUE": f"segment-jobs-{tag}",
        "PROFILE_JOBS_QUEUE": f"profile-jobs-{tag}",
        "SEGMENT_SHARDS_QUEUE": f"segment-shards-{tag}",
        "EXPORT_RUNS_QUEUE": f"export-runs-{tag}",
        "DUCKDB_MEMORY_LIMIT": "512MB",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def account(settings: Settings) -> StorageAccount:
    return StorageAccount.from_settings(settings)


@pytest.fixture
def landing(settings: Settings, account: StorageAccount) -> BlobStore:
    return BlobStore(account.container(settings.landing_container))


class Landing:
    """Drops files into the landing container and runs the blob-trigger function on them, as the host would."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.settings = settings
        self.blobs = blobs

    def drop(self, path: str, data: bytes | str) -> str:
        return self.blobs.put(path, data.encode() if isinstance(data, str) else data)

    def trigger(self, path: str) -> Job:
        """Call the function the host would call, then read back the batch it produced."""
        from functions.ingestion import ingest_landing_file

        fire_blob_trigger(ingest_landing_file, self.blobs, path)
        etag = self.blobs.etag(path)
        return BatchIngestion.from_settings(self.settings).jobs.get(JobType.INGESTION, batch_id_for(path, etag))

    def ingest(self, path: str, data: bytes | str) -> Job:
        self.drop(path, data)
        return self.trigger(path)

    def ingest_at(self, path: str, data: bytes | str, *, now: dt.datetime) -> Job:
        """Ingest through the service as of `now`, for tests where the order of ingestion matters."""
        etag = self.drop(path, data)
        return BatchIngestion.from_settings(self.settings).ingest(path, etag=etag, now=now)


@pytest.fixture
def landing_zone(settings: Settings, landing: BlobStore) -> Landing:
    return Landing(settings, landing)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many declared HTTP operations the suite's responses were checked against (tests/api_contract.py)."""
    if OBSERVED:
        missed = sorted(f"{op.method.upper()} {op.path}" for op in OPERATIONS if (op.method, op.path) not in OBSERVED)
        terminalreporter.write_line(
            f"API contract: responses of {len(OBSERVED)} of {len(OPERATIONS)} operations checked"
            + (f"; not exercised: {', '.join(missed)}" if missed else "")
        )
