"""DuckDB connections configured the one way the product uses them: UTC, bounded memory, spilling to disk."""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile

import duckdb

from shared.settings import Settings
from shared.sql import quote_literal

_SESSION = "SET TimeZone = 'UTC'"  # per connection; the other settings are the database's
log = logging.getLogger(__name__)

# glibc serves a large allocation (128 KiB and up) with a mapping of its own, until one is freed: then it raises that
# threshold to the freed size (up to 32 MiB) and serves later ones from its heaps, which keep what is freed. A batch's
# buffers of 16-32 MiB (DuckDB's, Arrow's, the SDKs') thus stayed resident beside the next statement's: at 10M
# people a 2M-event batch peaked at 1,447-1,526 MB in six runs (600MB limit) and held 800 MB with its connection
# closed. With the threshold fixed, those go back when freed: 964-1,005 MB (`python -m bench.memory`). Fixed at 16
# MiB: the same peak as at 128 KiB, 512 KiB or 4 MiB, with the fewest mappings (at 128 KiB, every allocation past
# it is a mapping of its own). Set once, at import, before any connection; MALLOC_MMAP_THRESHOLD_ in the
# environment overrides it.
_MMAP_THRESHOLD = 16 * 2**20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)


def _fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold (see above), unless the environment sets it or the C library is not glibc
    (macOS, musl)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # glibc read it at start-up: the operator's choice stands
        return
    try:  # the process's own symbols, which hold the C library's (no search for it on disk)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in this process's C library: freed memory is given back as the allocator chooses")
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


_fix_mmap_threshold()


def connect(settings: Settings, *, spill_dir: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
        }
    )
    con.execute(_SESSION)
    con.execute(f"SET memory_limit = '{_memory(settings.duckdb_memory_limit)}'")
    con.execute(f"SET threads = {int(settings.duckdb_threads)}")
    con.execute(f"SET temp_directory = {quote_literal(spill_dir or tempfile.gettempdir())}")
    return con


def beside(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to `con`'s database, to run a statement in a thread beside `con`'s: it sees the
    database's tables (not `con`'s temp tables) and its settings, with the session's time zone set again."""
    other = con.cursor()
    other.execute(_SESSION)
    return other


def _memory(value: str) -> str:
    if not value.replace(" ", "").rstrip("BKMGTIbkmgti").replace(".", "").isdigit():
        raise ValueError(f"DUCKDB_MEMORY_LIMIT {value!r} is not a size such as '1GB'")
    return value


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The single value a query returns (fetched completely, as DuckDB 2 requires before the next query)."""
    return con.execute(sql, params or []).fetchall()[0][0]
