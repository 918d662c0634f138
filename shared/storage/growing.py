"""Uploads that start before their files are finished. A writer that only appends (DuckDB's COPY to CSV, JSON
or Parquet) leaves every byte where it first wrote it, so each whole block of a file can be staged as soon as it
is on disk, and only the rest once the writer is done: the upload ends soon after the writing instead of
starting then. Blocks are staged uncommitted (`BlobStore.commit` makes a file visible) and hashed on the way."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from shared.storage.blobs import BlobStore, Staged

BLOCK = 4 * 1024 * 1024
AHEAD = 16  # blocks read and not yet staged, over all files: at most AHEAD × BLOCK bytes in memory


@dataclass
class _File:
    name: str
    path: Path
    handle: BinaryIO | None = None
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    blocks: list[Future[None]] = field(default_factory=list)
    finished: bool = False  # the writer is done: read to the end
    read: threading.Event = field(default_factory=threading.Event)  # every byte read (or an error)
    error: BaseException | None = None


class GrowingUploads:
    """Stages files as they grow, on a thread of its own, with the stage requests on `pool`. Use it as a
    context manager: `follow(name, path)` a file (it need not exist yet), `finish(name)` when its writer is
    done, then call what `finish` returned for the staged file; `drop(name)` gives a file up."""

    def __init__(
        self, store: BlobStore, pool: ThreadPoolExecutor, *, block: int | None = None, interval: float = 0.05
    ) -> None:
        self.store, self.pool, self.interval = store, pool, interval
        self.block = block or BLOCK
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()  # held by the thread while it reads: follow and drop wait for it
        self._flying = 0
        self._flying_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="growing-uploads", daemon=True)

    def __enter__(self) -> GrowingUploads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        for f in self._files.values():
            if f.handle:
                f.handle.close()

    def following(self, name: str) -> Path | None:
        """The file followed for blob `name`, if any."""
        f = self._files.get(name)
        return f.path if f else None

    def follow(self, name: str, path: Path) -> None:
        """Stage `path` as blob `name`, block by block as it is written."""
        with self._lock:
            self._files[name] = _File(name, path)
        self._wake.set()

    def finish(self, name: str) -> Callable[[], Staged]:
        """The file's writer is done: its last blocks are staged next. Returns what waits for the staged file
        (raising what failed on the way)."""
        f = self._files[name]
        f.finished = True
        self._wake.set()

        def staged() -> Staged:
            f.read.wait()
            if f.error:
                raise f.error
            for block in f.blocks:
                block.result()
            return Staged(f.name, [_block_id(n) for n in range(len(f.blocks))], f.size, f.digest.hexdigest())

        return staged

    def drop(self, name: str) -> None:
        """Stop staging blob `name`'s file and wait for its blocks in flight, so that a file staged under the
        same name afterwards is not overwritten by a late block of this one."""
        with self._lock:  # once it is out of the list, the thread starts no block of it
            f = self._files.pop(name, None)
        for block in f.blocks if f else []:
            block.exception()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                for f in list(self._files.values()):
                    if not f.read.is_set():
                        try:
                            self._stage_ready(f)
                        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the file
                            f.error = exc
                            f.read.set()

    def _stage_ready(self, f: _File) -> None:
        """Stage the file's whole blocks written so far (and, once finished, the rest), as many as fit in
        what may be in flight."""
        if f.handle is None:
            if not f.path.exists():
                if f.finished:
                    raise FileNotFoundError(f"{f.path} was finished but never written")
                return
            f.handle = open(f.path, "rb")  # noqa: SIM115 - closed on exit
        while self._flying < AHEAD:
            available = os.fstat(f.handle.fileno()).st_size - f.size
            if available < self.block and not f.finished:
                return
            data = f.handle.read(self.block)
            if not data:
                f.read.set()
                return
            f.digest.update(data)
            f.size += len(data)
            with self._flying_lock:
                self._flying += 1
            block = self.pool.submit(self.store.stage_block, f.name, _block_id(len(f.blocks)), data)
            block.add_done_callback(self._landed)
            f.blocks.append(block)

    def _landed(self, _: Future[None]) -> None:
        """A block was sent (or failed): room for the next."""
        with self._flying_lock:
            self._flying -= 1
        self._wake.set()


def _block_id(n: int) -> str:
    return f"{n:08d}"
