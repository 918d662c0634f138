"""Running a benchmark stage in a child process, so that its time and peak memory are its own."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb

from dev.azurite import Azurite, start_azurite
from shared.settings import get_settings
from shared.sql import quote_literal


def peak_rss_mb() -> int:
    """This process's peak RSS (the kernel's VmHWM) since it started or since `reset_peak_rss`."""
    status = Path("/proc/self/status").read_text()
    return round(next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024)


def reset_peak_rss() -> None:
    """Start the peak afresh from the current RSS (`5` to clear_refs resets VmHWM, Linux 4.0 and later)."""
    Path("/proc/self/clear_refs").write_text("5")


def report(result: dict) -> None:
    """What a stage prints: its result and its own peak RSS. The kernel's VmHWM starts afresh at exec,
    whereas `ru_maxrss` of a forked child starts at its parent's size (the parent that generated the data)."""
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))


def run_stage(module: str, name: str, *args: str) -> dict:
    """Run `python -m <module> --stage <name> <args>`, which prints its result with `report`."""
    proc = subprocess.run([sys.executable, "-m", module, "--stage", name, *args], stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed ({proc.returncode})")
    return json.loads(proc.stdout)


def use_azurite(**options) -> Azurite:
    """Start Azurite and point the app's settings at it (as the Functions host's AzureWebJobsStorage)."""
    server = start_azurite(**options)
    os.environ["AzureWebJobsStorage"] = server.connection_string  # noqa: SIM112 (the Functions name)
    get_settings.cache_clear()
    return server


def save_results(kind: str, size: int, payload: dict) -> Path:
    """Write `bench/results/<date>-<kind>-<size>.json`, print and return its path."""
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{dt.date.today().isoformat()}-{kind}-{size}.json"
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"results: {out}")
    return out


def copy_profiles(store, version, into: Path, work: Path) -> None:
    """Every merged profile of a store version as one local Parquet file in `into` (its compacted profiles
    with the profile updates over them, as the product reads them), for a floor to read."""
    into.mkdir(parents=True, exist_ok=True)
    shards = " UNION ALL BY NAME ".join(f"SELECT * FROM {p}" for p in store.profiles_by_shard(version, work))
    duckdb.execute(f"COPY ({shards}) TO {quote_literal(str(into / 'all.parquet'))} (FORMAT parquet)")
