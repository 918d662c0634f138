"""Phase timings of long work (profile building, export runs), reported in job metrics and benchmarks."""

from __future__ import annotations

import time


class Laps(dict[str, float]):
    """Seconds per phase: `lap(name)` records the time since the previous lap (or since creation)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self[name], self._clock = round(now - self._clock, 3), now
