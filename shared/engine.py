"""DuckDB connections configured the one way the product uses them: UTC, bounded memory, spilling to disk."""

from __future__ import annotations

import tempfile

import duckdb

from shared.settings import Settings
from shared.sql import quote_literal

_SESSION = "SET TimeZone = 'UTC'"  # per connection; the other settings are the database's


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
