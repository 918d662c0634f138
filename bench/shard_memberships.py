"""One shard's memberships, written as a segment job's shard writes them (`write_shard`), over a synthetic shard:
N people, S segments each true for about 30% of them. First a job with no previous memberships, then jobs
comparing with them (one person in twenty changes in each segment), every one timed. No Azurite, no world:
seconds to run, for measuring a change to the memberships step alone.

    python -m bench.shard_memberships --people 140000 --segments 50 --runs 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from shared.engine import connect
from shared.segmentation.memberships import LocalSnapshot, write_shard
from shared.settings import get_settings

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
RETENTION = dt.timedelta(days=30)


def _write(con, segments: list[str], previous: dict[str, LocalSnapshot], target: Path, now: dt.datetime) -> dict:
    return write_shard(
        con, segments, results="shard_results", previous=previous, target=target, now=now, retention=RETENTION
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=140_000, help="a 1M-person store's shard: about 140k")
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    segments = [f"s{i:03d}" for i in range(args.segments)]
    with tempfile.TemporaryDirectory(prefix="shard-memberships-") as tmp:
        work = Path(tmp)
        con = connect(get_settings(), spill_dir=tmp)
        columns = ", ".join(f"(hash(i * {i + 7}) % 100) < 30 AS {sid}" for i, sid in enumerate(segments))
        con.execute(
            f"""CREATE TABLE shard_results AS SELECT 'p' || md5(i::VARCHAR)[:23] AS profileId, {columns}
                FROM range({args.people}) t(i) ORDER BY profileId"""
        )
        started = time.perf_counter()
        first = _write(con, segments, {}, work / "first.parquet", NOW - dt.timedelta(days=1))
        print(
            f"first job: {time.perf_counter() - started:.3f} s, {sum(c['realized'] for c in first.values()):,} members"
        )
        changed = ", ".join(
            f"CASE WHEN hash(profileId || '{sid}') % 20 = 0 THEN NOT {sid} ELSE {sid} END AS {sid}" for sid in segments
        )
        con.execute(f"CREATE OR REPLACE TABLE shard_results AS SELECT profileId, {changed} FROM shard_results")
        previous = {sid: LocalSnapshot([(work / "first.parquet", sid)]) for sid in segments}
        seconds = []
        for run in range(args.runs):
            started = time.perf_counter()
            counts = _write(con, segments, previous, work / f"next-{run}.parquet", NOW)
            seconds.append(time.perf_counter() - started)
        totals = {k: sum(c[k] for c in counts.values()) for k in ("realized", "existing", "exited")}
        print(
            f"with previous memberships, {args.runs} runs: median {statistics.median(seconds):.3f} s, "
            f"min {min(seconds):.3f}, max {max(seconds):.3f}; {totals}"
        )


if __name__ == "__main__":
    main()
