"""Phase timings of long work (profile building, export runs), reported in job metrics and benchmarks, and
pauses of background loops."""

from __future__ import annotations

import threading
import time

_SLICE = 0.2


def pause(stop: threading.Event, seconds: float) -> bool:
    """Wait `seconds`, or until `stop` is set; True when stopped. Sleeps in short slices instead of a timed
    wait on the event: timed lock waits never return under libfaketime, which runs the year-ahead tests."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(_SLICE, left))
    return True


class Laps(dict[str, float]):
    """Seconds per phase: `lap(name)` records the time since the previous lap (or since creation)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self[name], self._clock = round(now - self._clock, 3), now
