"""Faults injected into the real Azure SDK pipeline: a transport under every client's retry policy that fails
the calls it is told to (a connection reset before the request reaches storage, a timeout, a 503 after
storage has done the work, or a hang to kill the worker in), so tests see what a storage outage does to
the product. (The storage SDKs build their own policy lists, so the transport is where one fault reaches
blobs, tables and queues alike.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from azure.core.exceptions import ServiceRequestError, ServiceRequestTimeoutError
from azure.core.pipeline.transport import HttpTransport, RequestsTransport

from shared.storage import account

Match = Callable[[str, str], bool]  # (method, url) -> whether the fault applies


def anything(method: str, url: str) -> bool:
    return True


def put_to(container: str) -> Match:
    return lambda method, url: method == "PUT" and f"/{container}/" in url


class Fault(HttpTransport):
    """Fails the requests `where` matches, `times` times, once `after` has matched a request (at once if no
    `after`). `kind` is "reset", "timeout", "503" (the request is done, its answer lost) or "hang" (the
    worker stops there for `seconds`, to be killed)."""

    def __init__(
        self,
        where: Match = anything,
        *,
        kind: str = "reset",
        times: int = 10**9,
        after: Match | None = None,
        seconds: float = 3600,
    ) -> None:
        self.inner = RequestsTransport()
        self.where, self.kind, self.times, self.after, self.seconds = where, kind, times, after, seconds
        self.armed = after is None
        self.fired = 0

    def send(self, request, **kwargs):
        if self.armed and self.fired < self.times and self.where(request.method, request.url):
            self.fired += 1
            if self.kind == "503":
                response = self.inner.send(request, **kwargs)
                response.status_code = 503
                return response
            if self.kind == "timeout":
                raise ServiceRequestTimeoutError(f"injected: {request.method} {request.url} timed out")
            if self.kind == "hang":
                time.sleep(self.seconds)
            raise ServiceRequestError(f"injected: connection reset on {request.method} {request.url}")
        response = self.inner.send(request, **kwargs)
        if not self.armed and self.after(request.method, request.url):
            self.armed = True
        return response

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        pass  # shared by every client: it lives as long as the fault

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *args) -> None:
        pass


@contextmanager
def injected(fault: Fault) -> Iterator[Fault]:
    """Every storage client made while the block runs carries the fault; the clients made before do not."""
    # The SDKs still retry every failed call as they do in Azure, only sooner (blobs and queues: initial_backoff
    # and increment_base; tables: retry_backoff_factor).
    account.CLIENT_OPTIONS.update(
        transport=fault, retry_backoff_factor=0.02, initial_backoff=0.05, increment_base=0.1, random_jitter_range=0.05
    )
    account._account.cache_clear()
    try:
        yield fault
    finally:
        account.CLIENT_OPTIONS.clear()
        account._account.cache_clear()
        fault.inner.close()
