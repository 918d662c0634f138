"""Segment job benchmark: 50 segments (25 profile rules, 25 event windows) over N people and 20 events each,
ingested into the lake on Azurite, evaluated by our segment job; against the floor, one hand-written fused
DuckDB query over the same lake files as local Parquet. Both run in one `make bench-segments` run, each in
its own process (its own time and peak RSS); the member counts of every segment must match."""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import duckdb

from bench.postgres import stage_postgres
from bench.stages import report, run_stage, save_results, use_azurite
from dev.sample import write_sample
from shared.ingestion import BatchIngestion, Dataset, DatasetStore, LakeStore
from shared.ingestion.paths import quote_literal
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.storage import StorageAccount

INGESTED = dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 11, 20, 6, 0, tzinfo=dt.UTC)  # events span the 30 days before INGESTED


def segments() -> dict[str, tuple[str, str]]:
    """Segment id -> (PQL, the same condition by hand over the floor's columns)."""
    out: dict[str, tuple[str, str]] = {}
    for st in ["CA", "TX", "NY", "WA", "FL", "CO", "MA", "OR"]:
        out[f"state-{st}"] = (f'homeAddress.stateProvince = "{st}"', f"state = '{st}'")
    for tier in ["bronze", "silver", "gold", "platinum"]:
        out[f"tier-{tier}"] = (f'loyalty.tier = "{tier}"', f"tier = '{tier}'")
    for g in ["female", "male", "non_specific"]:
        out[f"ca-{g}"] = (
            f'person.gender = "{g}" and homeAddress.stateProvince = "CA"',
            f"gender = '{g}' AND state = 'CA'",
        )
    for y in [1950, 1960, 1970, 1980]:
        out[f"born-{y}s"] = (
            f"person.birthDate occurs between date({y}, 1, 1) and date({y + 9}, 12, 31)",
            f"birthDate >= DATE '{y}-01-01' AND birthDate <= DATE '{y + 9}-12-31'",
        )
    for x in ["A", "Jo", "K"]:
        out[f"name-{x}"] = (f'person.name.firstName.startsWith("{x}")', f"starts_with(firstName, '{x}')")
    for n in [1000, 2500, 4000]:
        out[f"points-{n}"] = (f"loyalty.points > {n}", f"points > {n}")
    kinds = [
        "web.webpagedetails.pageViews",
        "commerce.productViews",
        "commerce.productListAdds",
        "commerce.purchases",
        "message.open",
    ]
    for kind in kinds:
        for days, k in [(1, 1), (7, 1), (14, 2), (30, 3)]:
            out[f"{kind.split('.')[-1]}-{days}d-{k}"] = (
                f'xEvent[eventType = "{kind}" and timestamp occurs <= {days} days before now].count() >= {k}',
                f"count(*) FILTER (WHERE eventType = '{kind}' AND ts >= now_ - INTERVAL {days} DAY) >= {k}",
            )
    for days, amount in [(3, 50), (7, 100), (14, 200), (30, 300), (30, 1000)]:
        out[f"spend-{days}d-{amount}"] = (
            f'xEvent[eventType = "commerce.purchases" and timestamp occurs <= {days} days before now]'
            f".sum(commerce.order.priceTotal) > {amount}",
            "coalesce(sum(CAST(price AS DECIMAL(38, 9))) FILTER "
            f"(WHERE eventType = 'commerce.purchases' AND ts >= now_ - INTERVAL {days} DAY), 0)"
            f" > {amount}",
        )
    return out


def floor_sql(lake: Path) -> str:
    """The fused query: the generator's identities joined by hand (a device belongs to the CRM id it ever
    logged in with; loyalty rows join CRM by email), one GROUP BY over events, every segment as a column."""
    defs = segments()
    event_ids = [sid for sid, (pql, _) in defs.items() if pql.startswith("xEvent")]
    aggs = ", ".join(f"{defs[sid][1]} AS {_col(sid)}" for sid in event_ids)
    conds = ", ".join(
        f"coalesce(a.{_col(sid)}, false) AS {_col(sid)}"
        if sid in event_ids
        else f"coalesce({sql}, false) AS {_col(sid)}"
        for sid, (_, sql) in defs.items()
    )

    def files(ds: str) -> str:
        return quote_literal(str(lake / ds / "*.parquet"))

    now = quote_literal(NOW.isoformat())
    return f"""
    WITH crm AS (
        SELECT identityMap['CRMID'][1].id AS crm, lower(trim(identityMap['Email'][1].id)) AS email,
               homeAddress.stateProvince AS state, person.gender AS gender, person.birthDate AS birthDate,
               person.name.firstName AS firstName
        FROM read_parquet({files("crm")})),
    loy AS (
        SELECT lower(trim(identityMap['Email'][1].id)) AS email, loyalty.tier AS tier, loyalty.points AS points
        FROM read_parquet({files("loyalty")})),
    prof AS (
        SELECT coalesce('crm:' || c.crm, 'email:' || l.email) AS person, state, gender, birthDate, firstName, tier, points
        FROM crm c FULL JOIN loy l USING (email)),
    ev AS (
        SELECT identityMap['ECID'][1].id AS ecid, identityMap['CRMID'][1].id AS crm, timestamp AS ts, eventType,
               commerce.order.priceTotal AS price, {now}::TIMESTAMPTZ AS now_
        FROM read_parquet({files("web")})),
    dev AS (SELECT ecid, max(crm) AS crm FROM ev GROUP BY ecid),
    a AS (
        SELECT coalesce('crm:' || d.crm, 'ecid:' || e.ecid) AS person, {aggs}
        FROM ev e JOIN dev d USING (ecid) WHERE ts <= now_ GROUP BY 1)
    SELECT person, {conds} FROM prof FULL JOIN a USING (person)"""


def _col(sid: str) -> str:
    return '"' + sid + '"'


# Stages, each in its own process -------------------------------------------------------------------


def stage_ours() -> dict:
    started = time.perf_counter()
    job = SegmentJobRunner.from_settings(get_settings()).run(now=NOW)
    seconds = time.perf_counter() - started
    assert job.status.value == "SUCCEEDED", job.errors
    return {
        "seconds": seconds,
        "segmentation_seconds": job.metrics["segmentationSeconds"],
        "phases": {
            k: v
            for k, v in {**job.metrics, **job.metrics["profileStats"]}.items()
            if k.endswith("Seconds") and k != "durationSeconds"
        },
        "counts": job.metrics["segmentedProfileCounter"],
        "profiles": job.metrics["totalProfiles"],
    }


def stage_floor(lake: Path) -> dict:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{get_settings().duckdb_memory_limit}'")
    con.execute(f"SET threads = {get_settings().duckdb_threads}")
    started = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE result AS {floor_sql(lake)}")
    ids = list(segments())
    sums = con.execute(
        "SELECT count(*), " + ", ".join(f"count_if({_col(s)})" for s in ids) + " FROM result"
    ).fetchall()[0]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "profiles": sums[0], "counts": dict(zip(ids, sums[1:], strict=True))}


def _setup(people: int, work: Path) -> None:
    settings = get_settings()
    account = StorageAccount.from_settings(settings)
    datasets = DatasetStore.from_settings(settings, account)
    for ds, schema in [("crm", "xdm-profile"), ("loyalty", "xdm-profile"), ("web", "xdm-experienceevent")]:
        datasets.save(Dataset(id=ds, name=ds, schema_id=schema), now=INGESTED)
    sample = write_sample(work / "sample", people=people, events_per_person=20, now=INGESTED, events_per_file=400_000)
    ingestion = BatchIngestion.from_settings(settings, account)
    files = [
        *(("crm", f) for f in _split_ndjson(sample.profiles, 200 << 20)),
        ("loyalty", sample.loyalty),
        *(("web", f) for f in sample.event_files),
    ]
    started = time.perf_counter()
    for ds, file in files:
        path = f"{ds}/{file.name}"
        etag = ingestion.landing.put(path, file.read_bytes())
        job = ingestion.ingest(path, ingestion.landing.get(path), etag=etag, now=INGESTED)
        assert job.status.value == "SUCCEEDED", (path, job.errors)
        file.unlink()
    print(f"ingested {len(files)} files ({sample.events_count:,} events) in {time.perf_counter() - started:.0f} s")
    store = SegmentStore.from_settings(settings, account)
    for sid, (pql, _) in segments().items():
        store.save(SegmentDefinition(id=sid, name=sid, expression={"value": pql}), now=INGESTED)
    lake = LakeStore.from_settings(settings, account)
    for ds in ("crm", "loyalty", "web"):
        lake.download_dataset(ds, work / "lake" / ds)


def _split_ndjson(path: Path, max_bytes: int) -> list[Path]:
    """Split an NDJSON file into parts under the ingestion file limit, as a user would before landing it."""
    if path.stat().st_size <= max_bytes:
        return [path]
    parts, out, size = [], None, 0
    with open(path, "rb") as src:
        for line in src:
            if out is None or size + len(line) > max_bytes:
                if out:
                    out.close()
                parts.append(path.with_name(f"{path.stem}-{len(parts):03d}.ndjson"))
                out, size = open(parts[-1], "wb"), 0  # noqa: SIM115 (closed when the next part starts)
            out.write(line)
            size += len(line)
    out.close()
    path.unlink()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--stage", choices=["ours", "floor", "postgres"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stages = {
            "ours": stage_ours,
            "floor": lambda: stage_floor(args.work / "lake"),
            "postgres": lambda: stage_postgres(args.work / "lake", segments(), NOW.isoformat()),
        }
        report(stages[args.stage]())
        return
    work = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    azurite = use_azurite(location=work / "azurite")
    try:
        _setup(args.people, work)
        floor = run_stage("bench.segments", "floor", "--work", str(work))
        postgres = run_stage("bench.segments", "postgres", "--work", str(work))
        ours = run_stage("bench.segments", "ours", "--work", str(work))
    finally:
        azurite.stop()
    mismatched = {
        s: (ours["counts"][s], floor["counts"][s]) for s in segments() if ours["counts"][s] != floor["counts"][s]
    }
    print(f"{args.people:,} people, {args.people * 20:,} events, 50 segments; each stage in its own process")
    print(f"{'stage':52s} {'seconds':>8s} {'ratio':>6s} {'peak RSS':>9s}")
    print(
        f"{'floor: fused DuckDB query over local Parquet':52s} {floor['seconds']:8.2f} {1:5.2f}x {floor['peak_rss_mb']:6,d} MB"
    )
    print(
        f"{'ours: segment job (lake on Azurite → memberships)':52s} {ours['seconds']:8.2f} "
        f"{ours['seconds'] / floor['seconds']:5.2f}x {ours['peak_rss_mb']:6,d} MB"
    )
    print(
        f"{'  of which: evaluating the 50 segments':52s} {ours['segmentation_seconds']:8.2f} "
        f"{ours['segmentation_seconds'] / floor['seconds']:5.2f}x"
    )
    print("  phases of ours: " + ", ".join(f"{k.removesuffix('Seconds')} {v:.2f} s" for k, v in ours["phases"].items()))
    print(f"people: ours {ours['profiles']:,}, floor {floor['profiles']:,}")
    if "skipped" in postgres:
        print(f"PostgreSQL 15: skipped: {postgres['skipped']}")
    else:
        print(
            f"{'PostgreSQL 15: the same SQL over the same rows':52s} {postgres['seconds']:8.2f} "
            f"{postgres['seconds'] / floor['seconds']:5.2f}x  (loading took {postgres['load_seconds']:.1f} s; "
            f"ours is {postgres['seconds'] / ours['seconds']:.1f}x faster)"
        )
        mismatched.update(
            {f"postgres:{s}": (postgres["counts"][s], floor["counts"][s])
             for s in segments() if postgres["counts"][s] != floor["counts"][s]}
        )  # fmt: skip
    save_results(
        "segments",
        args.people,
        {"people": args.people, "floor": floor, "ours": ours, "postgres": postgres, "mismatched": mismatched},
    )
    if mismatched:
        raise SystemExit(f"member counts differ from the floor: {mismatched}")


if __name__ == "__main__":
    main()
