"""`make serve`: the HTTP functions served locally against Azurite, reachable with any HTTP client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_health_openapi_jobs_and_404s(tmp_path):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dev.serve", "--port", str(port), "--data-dir", str(tmp_path / "azurite")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = _get(f"{base}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "make serve did not answer in 60 s"
                time.sleep(0.5)
        assert status == 200 and health["storage"] == "reachable"
        assert _get(f"{base}/openapi.json")[1]["openapi"] == "3.1.0"
        assert _get(f"{base}/jobs?type=export") == (200, {"items": [], "continuationToken": None})
        status, problem = _get(f"{base}/jobs/nope")
        assert status == 404 and "no job 'nope'" in problem["detail"]
        assert _get(f"{base}/nowhere")[0] == 404
    finally:
        process.terminate()
        process.wait(timeout=30)
