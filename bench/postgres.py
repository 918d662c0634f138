"""The PostgreSQL 15 peer of the segment benchmark: a throwaway server (initdb + pg_ctl, Unix socket only),
the profile store's stitched rows loaded with COPY, and the 50 segments as one statement compiled from their PQL
by the product's compiler, in PostgreSQL's dialect (the same sqlglot trees the job runs on DuckDB). Driven with the `psql` client, so no Python driver is needed. `make bench-setup` installs the
server from Debian's packages; without it the stage is skipped with the reason."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb

from shared.identity.profiles import profile_leaves
from shared.ingestion.schemas import PROFILE_SCHEMA
from shared.segmentation.evaluation import event_fields
from shared.segmentation.pql import parse
from shared.segmentation.pql.compiler import Compiler, Fields
from shared.segmentation.pql.dialects import postgres
from shared.sql import quote_literal

BIN = Path("/usr/lib/postgresql/15/bin")


def missing() -> str | None:
    """Why the PostgreSQL stage cannot run here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (BIN / tool).exists() and not shutil.which(tool):
            return f"PostgreSQL 15's {tool} is not installed (run `make bench-setup`)"
    if not shutil.which("psql"):
        return "the psql client is not installed (run `make bench-setup`)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def _tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name) or name


def _as_server_user(args: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Server:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.dir / "data"
        self.port = "54329"

    def __enter__(self) -> Server:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        run = subprocess.run
        run(_as_server_user([_tool("initdb"), "-D", str(self.data), "-U", "bench", "--auth=trust", "-E", "UTF8"]),
            check=True, capture_output=True)  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -c listen_addresses='' -c shared_buffers=512MB -c work_mem=256MB"
        options += " -c max_parallel_workers_per_gather=2 -c fsync=off -c synchronous_commit=off"
        run(_as_server_user([_tool("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"]),
            check=True, capture_output=True)  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(
            _as_server_user([_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str) -> str:
        args = [
            "psql",
            "-h",
            str(self.dir),
            "-p",
            self.port,
            "-U",
            "bench",
            "-d",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        proc = subprocess.run([*args, "-c", sql], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()[:2000]}")
        return proc.stdout


TABLES = {
    "prof": "person text, state text, gender text, birthdate date, firstname text, tier text, points bigint",
    "ev": "person text, ts timestamptz, eventtype text, price numeric",
}


def export_tables(stitched: str, out: Path) -> dict[str, Path]:
    """The stitched rows the floor reads (`stitched`: CTEs `prof` and `events` over the profile store's files),
    flattened to CSV for COPY."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    queries = {"prof": "SELECT * FROM prof", "ev": "SELECT * FROM events"}
    paths = {}
    for name, sql in queries.items():
        paths[name] = out / f"{name}.csv"
        con.execute(f"COPY (WITH {stitched} {sql}) TO {quote_literal(str(paths[name]))} (FORMAT csv, HEADER false)")
    con.close()
    return paths


# Where each field the segments read lives in the flat tables (`TABLES`).
LAYOUT = {
    "profileId": "person",
    "homeAddress.stateProvince": "state",
    "person.gender": "gender",
    "person.birthDate": "birthdate",
    "person.name.firstName": "firstname",
    "loyalty.tier": "tier",
    "loyalty.points": "points",
    "timestamp": "ts",
    "eventType": "eventtype",
    "commerce.order.priceTotal": "price",
}


def segment_sql(segments: dict[str, str], now: dt.datetime) -> str:
    """The segments' PQL compiled for PostgreSQL over the flat tables: one GROUP BY over events, a count per
    segment."""
    fields = Fields(profile=dict(profile_leaves([PROFILE_SCHEMA])), event=event_fields())
    compiler = Compiler(fields, now, dialect=postgres(LAYOUT))
    compiled = compiler.compile_segments(
        {sid: parse(pql) for sid, pql in segments.items()}, profiles="prof", events="ev"
    )
    counts = ", ".join(f'count(*) FILTER (WHERE r."{compiled.columns[sid]}")' for sid in segments)
    return f"SET TIME ZONE 'UTC'; SELECT count(*), {counts} FROM ({compiled.sql}) AS r"


def stage_postgres(stitched: str, segments: dict[str, str], now: dt.datetime) -> dict:
    reason = missing()
    if reason:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="bench-pg-csv-") as tmp, Server() as server:
        paths = export_tables(stitched, Path(tmp))
        started = time.perf_counter()
        for name, columns in TABLES.items():
            server.psql(f"CREATE UNLOGGED TABLE {name} ({columns})")
            server.psql(f"\\copy {name} FROM '{paths[name]}' WITH (FORMAT csv)")
        server.psql("ANALYZE")
        load = time.perf_counter() - started
        started = time.perf_counter()
        row = server.psql(segment_sql(segments, now)).strip().splitlines()[-1].split("|")  # after SET
        seconds = time.perf_counter() - started
    values = [int(v) for v in row]
    return {
        "seconds": seconds,
        "load_seconds": load,
        "profiles": values[0],
        "counts": dict(zip(segments, values[1:], strict=True)),
    }
