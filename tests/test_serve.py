"""`make serve`: the HTTP functions served locally against Azurite, reachable with any HTTP client."""

from __future__ import annotations

from tests.helpers import get_json, serving


def test_serve_answers_health_openapi_jobs_and_404s(tmp_path):
    with serving(tmp_path / "azurite") as base:
        status, health = get_json(f"{base}/health")
        assert status == 200 and health["storage"] == "reachable"
        assert get_json(f"{base}/openapi.json")[1]["openapi"] == "3.1.0"
        assert get_json(f"{base}/jobs?type=export") == (200, {"items": [], "continuationToken": None})
        status, problem = get_json(f"{base}/jobs/nope")
        assert status == 404 and "no job 'nope'" in problem["detail"]
        assert get_json(f"{base}/nowhere")[0] == 404
