"""Running a benchmark stage in a child process, so that its time and peak memory are its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_stage(module: str, name: str, *args: str) -> dict:
    """Run `python -m <module> --stage <name> <args>`, which prints a JSON result; add its peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", module, "--stage", name, *args], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {name} failed ({code})")
    return {**json.loads(out), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
