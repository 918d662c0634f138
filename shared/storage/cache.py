"""A worker's local copies of blobs that never change once written (their names are never reused), kept on
disk between invocations so that a warm worker does not download them again. Past a budget, the least
recently used are dropped. Files are shared with their readers by hard link, so dropping a copy never takes
a file from a reader that holds it, and a reader's scratch folder costs no second copy of it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)
ROOT = Path(tempfile.gettempdir()) / "audience-bridge-cache"
_PARTIAL = ".partial"


class FileCache:
    def __init__(self, folder: Path, *, budget_mb: int | None = None) -> None:
        """`budget_mb`: how much the cache may hold; None: half of what the cache and the free space of its
        disk come to, measured each time it is trimmed; 0: nothing (the cache is off)."""
        self.folder = folder
        self.budget_mb = budget_mb
        self.off = budget_mb == 0

    def fetch(self, name: str | None, target: Path, download: Callable[[Path], object]) -> Path:
        """`target` holding blob `name`: this worker's copy, or `download(target)`'s, then kept. Without a name
        (a blob that may still change), always downloaded and never kept."""
        if name is None or not self.take(name, target):
            download(target)
            if name is not None:
                self.keep(name, target)
        return target

    def take(self, name: str, target: Path) -> bool:
        """Put the cached copy of `name` at `target` (a hard link); False when there is none."""
        if self.off:
            return False
        cached = self._path(name)
        try:
            os.link(cached, target)
        except FileNotFoundError:
            return False
        except OSError as exc:  # another file system, or links refused: read it from storage instead
            log.debug("cannot link %s from the cache: %s", name, exc)
            return False
        with contextlib.suppress(FileNotFoundError):  # dropped meanwhile by another trim: `target` holds it
            os.utime(cached)  # used now: dropped last
        return True

    def keep(self, name: str, source: Path) -> None:
        """Keep `source`, the complete file of blob `name`, in the cache (a hard link to it)."""
        cached = self._path(name)
        if self.off or cached.exists():
            return
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{uuid.uuid4().hex}{_PARTIAL}")
        try:
            os.link(source, partial)
            os.replace(partial, cached)  # a reader sees the whole file or none
        except OSError as exc:
            partial.unlink(missing_ok=True)
            log.debug("cannot keep %s in the cache: %s", name, exc)

    def trim(self) -> int:
        """Drop the least recently used copies until the cache is within its budget; returns the bytes dropped."""
        if self.off:
            return 0
        entries = []
        # (os.walk passes over a folder removed meanwhile, as by another worker's `forget`; rglob raises.)
        for folder, _, names in os.walk(self.folder):
            for path in (Path(folder) / n for n in names if not n.endswith(_PARTIAL)):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # another worker dropped it meanwhile
                    continue
                entries.append((stat.st_mtime, stat.st_size, path))
        held = sum(size for _, size, _ in entries)
        budget = self._budget(held)
        dropped = 0
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if held - dropped <= budget:
                break
            path.unlink(missing_ok=True)
            dropped += size
        return dropped

    def forget(self) -> None:
        """Drop every copy: the next reads download again (a cold worker)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _budget(self, held: int) -> int:
        if self.budget_mb is not None:
            return self.budget_mb * 2**20
        self.folder.mkdir(parents=True, exist_ok=True)
        return (shutil.disk_usage(self.folder).free + held) // 2

    def _path(self, name: str) -> Path:
        return self.folder / name


def worker_cache(settings: Settings) -> FileCache:
    """This worker's cache (one budget for everything in it: WORKER_CACHE_MB; 0 turns it off). Names are blob
    names with their container in front."""
    budget = settings.worker_cache_mb
    return FileCache(ROOT, budget_mb=None if budget == "auto" else budget)
