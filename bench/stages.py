"""Running a benchmark stage in a child process, so that its time and peak memory are its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def report(result: dict) -> None:
    """What a stage prints: its result and its own peak RSS. The kernel's VmHWM starts afresh at exec,
    whereas `ru_maxrss` of a forked child starts at its parent's size (the parent that generated the data)."""
    status = Path("/proc/self/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({**result, "peak_rss_mb": round(hwm_kb / 1024)}))


def run_stage(module: str, name: str, *args: str) -> dict:
    """Run `python -m <module> --stage <name> <args>`, which prints its result with `report`."""
    proc = subprocess.run([sys.executable, "-m", module, "--stage", name, *args], stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed ({proc.returncode})")
    return json.loads(proc.stdout)
