"""Monitoring over HTTP: health, and the jobs of every kind, filtered and paged newest first."""

from __future__ import annotations

import datetime as dt

import pytest

from functions.monitoring import health, jobs
from shared.jobs import Job, JobStatus, JobStore, JobType, index_entity
from shared.storage import EntityTable
from tests.conftest import NOW
from tests.test_http import body, call


@pytest.fixture
def store(settings, account) -> JobStore:
    """Twelve jobs of three kinds an hour apart, every third one FAILED."""
    store = JobStore.from_settings(settings, account)
    kinds = [JobType.INGESTION, JobType.SEGMENT, JobType.EXPORT]
    for i in range(12):
        status = JobStatus.FAILED if i % 3 == 2 else JobStatus.SUCCEEDED
        store.create(Job(id=f"job-{i:02d}", type=kinds[i % 3], status=status, created=NOW + dt.timedelta(hours=i)))
    return store


def test_health_reports_storage_and_versions(settings):
    response = call(health, "GET", "health")
    assert response.status_code == 200
    answer = body(response)
    assert answer["status"] == "ok" and answer["storage"] == "reachable"
    assert set(answer["versions"]) >= {"audienceBridge", "python", "duckdb", "azure-functions"}


def test_jobs_page_newest_first_with_a_continuation_token(store):
    seen, token, pages = [], None, 0
    while True:
        route = "jobs?limit=5" + (f"&continuationToken={token}" if token else "")
        page = body(call(jobs, "GET", route))
        seen += [j["id"] for j in page["items"]]
        pages += 1
        token = page["continuationToken"]
        if token is None:
            break
        # A job created meanwhile does not shift the pages.
        store.create(Job(id=f"late-{pages}", type=JobType.FEEDBACK, created=NOW + dt.timedelta(days=9)))
    assert pages == 3 and seen == [f"job-{i:02d}" for i in reversed(range(12))]


def test_jobs_filter_by_type_status_and_time(store):
    failed = body(call(jobs, "GET", "jobs?status=FAILED"))["items"]
    assert [j["id"] for j in failed] == ["job-11", "job-08", "job-05", "job-02"]
    exports = body(call(jobs, "GET", "jobs?type=export,segment&since=2026-11-20T16:00:00Z&until=2026-11-20T20:00:00Z"))
    assert [j["id"] for j in exports["items"]] == ["job-07", "job-05", "job-04"]
    one = body(call(jobs, "GET", "jobs/job-05", {"id": "job-05"}))
    assert (one["id"], one["type"], one["status"]) == ("job-05", "export", "FAILED")


@pytest.mark.parametrize(
    ("route", "params", "status", "detail"),
    [
        ("jobs/nope", {"id": "nope"}, 404, "no job 'nope'"),
        ("jobs?type=exports", {}, 400, "'exports' is not one of"),
        ("jobs?status=DONE", {}, 400, "'DONE' is not one of"),
        ("jobs?since=yesterday", {}, 400, "'yesterday' is not an ISO 8601 time"),
        ("jobs?since=2026-11-20T10:00:00", {}, 400, "needs a time zone"),
        ("jobs?limit=0", {}, 400, "from 1 to 1000"),
        ("jobs?continuationToken=garbage", {}, 400, "not one this service issued"),
    ],
)
def test_bad_job_queries_are_problems_that_say_what_to_fix(store, route, params, status, detail):
    response = call(jobs, "GET", route, params)
    assert response.status_code == status and response.mimetype == "application/problem+json"
    assert detail in body(response)["detail"]


class CountingTable(EntityTable):
    """The jobs table, counting the entities it reads (real storage underneath)."""

    read = 0

    def query(self, *args, **kwargs):
        page = super().query(*args, **kwargs)
        self.read += len(page.items)
        return page

    def get(self, *args, **kwargs):
        self.read += 1
        return super().get(*args, **kwargs)

    def all(self, *args, **kwargs):
        for entity in super().all(*args, **kwargs):
            self.read += 1
            yield entity


def test_a_page_of_a_long_history_reads_a_page_of_entities(settings, account):
    store = JobStore.from_settings(settings, account)
    kinds = list(JobType)
    history = [
        Job(
            id=f"j{i:05d}",
            type=kinds[i % len(kinds)],
            status=JobStatus.SUCCEEDED,
            created=NOW + dt.timedelta(minutes=i),
        )
        for i in range(5_000)
    ]
    store.table.upsert_many([job.to_entity() for job in history] + [index_entity(job) for job in history])
    counting = CountingTable(store.table.client)
    reader = JobStore(counting)

    first = reader.page(limit=50)
    assert [j.id for j in first.items] == [f"j{i:05d}" for i in range(4_999, 4_949, -1)]
    assert counting.read <= 2 * 51
    counting.read = 0
    second = reader.page(limit=50, token=first.continuation_token, types=[JobType.EXPORT])
    assert len(second.items) == 50 and all(j.type is JobType.EXPORT for j in second.items)
    assert second.items[0].created < first.items[-1].created and counting.read <= 2 * 51
