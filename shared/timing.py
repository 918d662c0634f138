"""Phase timings of long work (profile building, export runs), reported in job metrics and benchmarks, and
pauses of background loops."""

from __future__ import annotations

import os
import threading
import time

_SLICE = 0.2
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096  # what /proc/self/statm counts in


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


class PeakRss:
    """The process's peak resident memory (MB) while a block runs, sampled every `interval` seconds from
    /proc/self/statm (Linux, where the Functions host runs the worker); None where there is no /proc. The
    kernel's own peak (`ru_maxrss`) only grows over the process's life, so it cannot tell one shard of a job
    run in one process from the next."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _sample(self) -> None:
        while not pause(self._stop, self.interval):
            self._read()

    def _read(self) -> None:
        try:
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            return
        mb = round(pages * _PAGE / 2**20, 1)
        self.mb = mb if self.mb is None else max(self.mb, mb)
