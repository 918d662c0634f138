"""`make demo` runs end to end (the newcomer's first command must not break), and the dashboard shows what
it did in a real headless Chromium."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import time_machine

from tests.helpers import get_json, serving

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.azurite  # the demo starts an Azurite of its own
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """One demo run (400 people) whose Azurite data the tests below read."""
    data = tmp_path_factory.mktemp("demo") / "azurite"
    result = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--people", "400", "--data-dir", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "140"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return data, result.stdout


def test_the_demo_runs_end_to_end_and_prints_its_summary(demo):
    _, out = demo
    assert "Ingestion batches" in out and "SUCCEEDED" in out
    assert "Profile store" in out and "Segment job" in out and "vip-ca" in out
    assert "Export run exp-campaign-email-" in out and "SUCCEEDED" in out
    assert "refused destination third-party (governance)" in out and "refused destination too-often (guardrail)" in out
    assert "audience load jobs" in out and "AEP audiences / Gold and platinum members" in out
    assert "Delivery dlv-gold-platinum-" in out and "ingested by ingest_landing_file: SUCCEEDED" in out
    assert "Day 2: segment job" in out and "Incremental export exp-campaign-email-" in out
    assert "Jobs by type and status" in out and "Alerts raised:" in out
    assert " forged" in out and ", 0 forged" in out and "signatures verified with standardwebhooks" in out
    assert "/api/dashboard" in out


def test_the_demos_day_1_is_yesterday_and_day_2_is_today(demo):
    data, _ = demo
    today = time_machine.escape_hatch.datetime.datetime.now(dt.UTC)  # the machine's clock, as the demo saw it
    with serving(data) as served:
        base = served.api
        jobs = get_json(f"{base}/jobs?limit=1000")[1]["items"]
    created = sorted(dt.datetime.fromisoformat(j["created"]) for j in jobs)
    assert today - dt.timedelta(days=1, hours=2) < created[0] < today - dt.timedelta(hours=20)
    assert today - dt.timedelta(minutes=10) < created[-1] <= today


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian's chromium; .ci/run installs it)")
def test_the_dashboard_shows_the_demo_in_a_real_browser_without_console_errors(demo, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev requirement")
    data, _ = demo
    with serving(data) as served:
        base = served.api
        jobs = get_json(f"{base}/jobs?limit=200")[1]["items"]
        lists = get_json(f"{base}/campaign/lists")[1]
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/dashboard")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            tiles = {
                el.get_attribute("data-status"): int(el.inner_text().split()[0].replace(",", ""))
                for el in page.query_selector_all("#tiles .tile")
            }
            expected: dict[str, int] = {}
            for j in jobs:
                expected[j["status"]] = expected.get(j["status"], 0) + 1
            assert tiles == expected
            store = {
                el.get_attribute("data-store"): int(el.inner_text().split()[0].replace(",", ""))
                for el in page.query_selector_all("#store .tile[data-store]")
            }
            assert store["people"] > 0 and store["events"] > 0 and store["shards"] > 0
            rows = page.query_selector_all("#lists tr")[1:]
            shown = {
                r.query_selector_all("td")[0].inner_text(): r.query_selector_all("td")[1].inner_text() for r in rows
            }
            assert shown == {lst["name"]: f"{lst['count']:,}" for lst in lists}
            assert page.query_selector_all("#chart polyline"), "the segment size chart is drawn"
            assert len(page.query_selector_all("#runs tr")) > 1 and len(page.query_selector_all("#alerts tr")) > 1
            page.screenshot(
                path=str(os.environ.get("DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png")), full_page=True
            )
            browser.close()
        assert problems == []
