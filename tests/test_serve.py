"""`make serve`: the HTTP functions served locally against Azurite, reachable with any HTTP client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import get_json, serving
from tests.test_activation import destination

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.azurite  # make serve starts an Azurite of its own


def test_serve_answers_health_openapi_jobs_and_404s(tmp_path):
    with serving(tmp_path / "azurite") as served:
        base = served.api
        status, health = get_json(f"{base}/health")
        assert status == 200 and health["storage"] == "reachable"
        assert get_json(f"{base}/openapi.json")[1]["openapi"] == "3.1.0"
        assert get_json(f"{base}/jobs?type=export") == (200, {"items": [], "continuationToken": None})
        status, problem = get_json(f"{base}/jobs/nope")
        assert status == 404 and "no job 'nope'" in problem["detail"]
        assert get_json(f"{base}/nowhere")[0] == 404


def send(method: str, url: str, body: object = None, *, raw: bytes | None = None) -> tuple[int, dict, object]:
    """An HTTP call to the served app: status, headers and the JSON answer (None when empty)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, dict(response.headers), json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def wait_for(what: str, check, *, seconds: float = 90):
    deadline = time.monotonic() + seconds
    while (found := check()) is None:
        assert time.monotonic() < deadline, f"{what} did not happen in {seconds} s"
        time.sleep(0.5)
    return found


def finished(base: str, job_type: str, prefix: str = ""):
    """The finished jobs of a type (ids starting with `prefix`): a timer such as the 5-minute streaming job
    may also fire while a test runs, as it would under the host."""

    def check():
        items = get_json(f"{base}/jobs?type={job_type}")[1]["items"]
        done = [j for j in items if j["status"] in ("SUCCEEDED", "FAILED") and j["id"].startswith(prefix)]
        return done or None

    return check


def test_a_landed_file_flows_to_a_campaign_list_with_only_the_admin_call_in_between(tmp_path):
    with serving(tmp_path / "azurite") as served:
        base = served.api
        assert send("PUT", f"{base}/datasets/crm", {"name": "CRM", "schemaId": "xdm-profile"})[0] == 200
        gold = {"name": "Gold", "expression": {"value": 'loyalty.tier = "gold"'}}
        assert send("PUT", f"{base}/segments/gold", gold)[0] == 200
        seed = b"email,firstName\nann@example.com,Ann\nbob@example.com,Bob\n"
        assert send("POST", f"{base}/campaign/recipients", raw=seed)[0] == 200
        after = {"frequency": "afterSegmentEvaluation"}
        status, _, saved = send("PUT", f"{base}/destinations/gold-email", destination(schedule=after))
        assert status == 200, saved

        crm = tmp_path / "crm.csv"
        crm.write_text(
            "identityMap.Email,person.name.firstName,loyalty.tier\n"
            "ann@example.com,Ann,gold\nbob@example.com,Bob,silver\ncy@example.com,Cy,gold\n"
        )
        put = subprocess.run(
            [sys.executable, "-m", "shared.cli", "landing", "put", str(crm), "--dataset", "crm"],
            cwd=ROOT,
            env={**os.environ, "AzureWebJobsStorage": served.connection_string},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert put.returncode == 0, put.stderr
        [batch] = wait_for("the ingestion batch", finished(base, "ingestion"))
        assert batch["status"] == "SUCCEEDED" and batch["metrics"]["rowsAccepted"] == 3, batch

        status, _, _ = send("POST", f"{served.admin}/segment_job_daily", {})
        assert status == 202
        [segment_job] = wait_for("the segment job", finished(base, "segment", "seg-"))
        assert segment_job["metrics"]["segmentedProfileCounter"] == {"gold": 2}, segment_job
        export = wait_for("the export run", finished(base, "export", f"exp-gold-email-after-{segment_job['id']}"))
        assert export[0]["status"] == "SUCCEEDED", export
        load = wait_for("the audience load", finished(base, "audience-load"))[-1]  # the oldest: the first run's
        assert load["status"] == "SUCCEEDED" and load["metrics"]["added"] == 1, load  # cy is not a recipient
        members = get_json(f"{base}/campaign/lists/gold")[1]["items"]
        assert [m["email"] for m in members] == ["ann@example.com"]

        assert send("POST", f"{served.admin}/nope", {})[0] == 404


def test_every_route_that_answers_201_or_202_sends_its_location_and_the_secret_arrives(tmp_path):
    with serving(tmp_path / "azurite") as served:
        base = served.api
        status, headers, created = send("POST", f"{base}/subscriptions", {"url": "http://127.0.0.1:9/hook"})
        assert status == 201 and created["secret"].startswith("whsec_") and "Location" in headers
        status, headers, job = send("POST", f"{base}/segment-jobs", {})
        assert status == 202 and headers["Location"] == f"/api/segment-jobs/{job['id']}"
        assert send("PUT", f"{base}/datasets/crm", {"name": "CRM", "schemaId": "xdm-profile"})[0] == 200
        assert send("PUT", f"{base}/segments/gold", {"name": "G", "expression": {"value": "true"}})[0] == 200
        assert send("PUT", f"{base}/destinations/dest", destination())[0] == 200
        status, headers, run = send("POST", f"{base}/destinations/dest/run")
        assert status == 202 and headers["Location"] == "/api/dataflows/dest/runs"
        status, headers, delivery = send("POST", f"{base}/campaign/deliveries", {"listId": "nope"})
        assert status == 404
