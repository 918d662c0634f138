"""`make demo` runs end to end: the newcomer's first command must not break."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_end_to_end_and_prints_its_summary(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--people", "400", "--data-dir", str(tmp_path / "azurite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "140"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Ingestion batches" in out and "SUCCEEDED" in out
    assert "Unified profiles" in out and "Segment job" in out and "vip-ca" in out
    assert "Export run exp-campaign-email-" in out and "SUCCEEDED" in out
    assert "refused destination third-party (governance)" in out and "refused destination too-often (guardrail)" in out
    assert "audience load jobs" in out and "AEP audiences / Gold and platinum members" in out
    assert "Delivery dlv-gold-platinum-" in out and "ingested by ingest_landing_file: SUCCEEDED" in out
