"""Phase timings of long work (profile building, export runs), reported in job metrics and benchmarks, and
pauses of background loops."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

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


class Every:
    """Run `step` every `seconds` in a daemon thread, from `start()` until `stop()`. `stop` waits for a step
    under way, and no step starts after it; it does not wait for the thread's pause to end (up to a slice: a
    join took 0.1 s on average from every job and 10 ms from every shard)."""

    def __init__(self, seconds: float, step: Callable[[], object], *, name: str) -> None:
        self.seconds, self.step = seconds, step
        self._stop, self._busy = threading.Event(), threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Every:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._busy:  # a step under way ends first
            pass

    def _run(self) -> None:
        while not pause(self._stop, self.seconds):
            with self._busy:
                if self._stop.is_set():
                    return
                self.step()


class Laps(dict[str, float]):
    """Seconds per phase: `lap(name)` records the time since the previous lap (or since creation)."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self[name], self._clock = round(now - self._clock, 3), now


def rss_mb() -> float | None:
    """The process's resident memory now (MB), from /proc/self/statm; None where there is no /proc."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * _PAGE / 2**20, 1)


class PeakRss:
    """The process's peak resident memory (MB) while a block runs, sampled every `interval` seconds from
    /proc/self/statm (Linux, where the Functions host runs the worker); None where there is no /proc. The
    kernel's own peak (`ru_maxrss`) only grows over the process's life, so it cannot tell one shard of a job
    run in one process from the next."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.mb: float | None = None
        self._sampler = Every(interval, self._read, name="peak-rss")

    def __enter__(self) -> PeakRss:
        self._read()
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sampler.stop()
        self._read()

    def _read(self) -> None:
        mb = rss_mb()
        if mb is not None:
            self.mb = mb if self.mb is None else max(self.mb, mb)
