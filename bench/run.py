"""`make bench SIZE=10k|100k|1M`: every stage against its baseline in one run, on this machine.

1. ingestion: the NDJSON blob trigger into the lake vs DuckDB converting the same file to Parquet locally
   (one event row per person);
2. segment job, 50 segments over N people and 20 events each, vs one fused DuckDB query over local Parquet
   (the floor) and vs PostgreSQL 15 running the same SQL (skipped, with the reason, when not installed);
   member counts must match;
3. full export of those segments to the DLZ vs DuckDB writing the same rows to local CSV;
4. Campaign audience load of an N-row file (and a profile sync of min(N, 100k) rows) vs Azurite's raw
   transfer time for the same bytes.

Each stage runs in its own process (`bench/<stage>.py`, which can be run alone) and reports its peak RSS.
From 10M people up, the ingestion stage times a file of 1M rows (10M rows would be 2.9 GB, over the 2 GiB
file limit; its own 2 GiB row is `python -m bench.ingest --rows 7400000`), and the export and Campaign stages
run only when asked (`--stages all`): their targets are set at 1M, and at 10M the export alone would write
128M rows (12 GB of CSV) twice. For the same reason the segment stage leaves out PostgreSQL there.
Writes `bench/results/<date>-<size>.json`, prints a Markdown table, and redraws `bench/results/scaling.png`
(time against size, log-log) from the latest summary of every size."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LIMIT_MB = 1536  # the Consumption plan's memory per instance
TARGETS = {
    "ingestion": ("≤ 1.5× the floor", lambda r: r <= 1.5),
    "segment job": ("≤ 1.5× the stitched floor", lambda r: r <= 1.5),
    "segment job again on a warm worker": ("≤ 1.5× the stitched floor", lambda r: r <= 1.5),
    "segment job vs the floor writing the members": ("none: for reference", None),
    "segment job on one instance per shard (estimated)": ("none: for reference", None),
    "batch into the profile store": ("≤ 4× read_json", lambda r: r <= 4),
    "streaming tick (10k events)": ("≤ 5 s", lambda r: r <= 1),
    "preview": ("≤ 3 s", lambda r: r <= 1),
    "explain": ("≤ 1 s", lambda r: r <= 1),
    "segment job vs PostgreSQL": ("≥ 3× faster", lambda r: r >= 3),
    "export": ("≤ 1.3× the floor (each person hashed once)", lambda r: r <= 1.3),
    "audience load": ("≥ 0.8× Azurite's throughput", lambda r: r >= 0.8),
    "profile sync": ("≥ 0.8× Azurite's throughput", lambda r: r >= 0.8),
}


def people_of(size: str) -> int:
    text = size.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip("km")) * scale)
    except ValueError:
        raise SystemExit(f"SIZE={size!r} is not a size such as 10k, 100k or 1M") from None


def label_of(people: int) -> str:
    return (
        f"{people // 1_000_000}M"
        if people % 1_000_000 == 0
        else f"{people // 1000}k"
        if people % 1000 == 0
        else str(people)
    )


def _run(module: str, *args: str) -> None:
    print(f"\n$ python -m {module} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", module, *args], check=True)


STAGES = ("ingest", "segments", "export", "campaign")
BIG = 10_000_000  # from here on: a 1M-row ingestion file, and only the stages issue 13 measures at this size


def ingest_rows(people: int) -> int:
    return min(people, 1_000_000) if people >= BIG else people


def default_stages(people: int) -> tuple[str, ...]:
    return STAGES[:2] if people >= BIG else STAGES


def _load(kind: str, n: int) -> dict | None:
    path = RESULTS / f"{dt.date.today().isoformat()}-{kind}-{n}.json"
    return json.loads(path.read_text()) if path.exists() else None


def collect(people: int) -> list[dict]:
    """One row per comparison: ours, the baseline, the ratio as the target states it, peak RSS. The export and
    Campaign rows are left out when their stages did not run today."""
    ingest, seg, export, campaign = (
        _load("ingest", ingest_rows(people)),
        _load("segments", people),
        _load("export", people),
        _load("campaign", people),
    )
    with_members = seg["floor"]["seconds"] + seg["floor"].get("members_seconds", 0)  # older results lack it
    rows = _ingestion_rows(ingest) + [
        *(
            {
                "stage": stage,
                "baseline": baseline,
                "ours_s": seg[run]["seconds"],
                "baseline_s": seg["floor"]["seconds"],
                "ratio": seg[run]["seconds"] / seg["floor"]["seconds"],
                "peak_mb": seg[run]["peak_rss_mb"],
            }
            for stage, run, baseline in (
                ("segment job", "ours", "stitched floor: fused DuckDB query over the store's files, local"),
                (
                    "segment job again on a warm worker",
                    "warm",
                    "the same floor (the store files in the worker's cache, the previous memberships there)",
                ),
            )
        ),
        {
            "stage": "segment job vs the floor writing the members",
            "baseline": "the stitched floor, then each segment's members written to local Parquet (the job must)",
            "ours_s": seg["ours"]["seconds"],
            "baseline_s": with_members,
            "ratio": seg["ours"]["seconds"] / with_members,
            "peak_mb": seg["ours"]["peak_rss_mb"],
        },
        *(
            {
                "stage": "segment job on one instance per shard (estimated)",
                "baseline": "the stitched floor; the job's time less its shards', plus the slowest shard",
                "ours_s": estimate,
                "baseline_s": seg["floor"]["seconds"],
                "ratio": estimate / seg["floor"]["seconds"],
                "peak_mb": seg["ours"]["peak_rss_mb"],
            }
            # the most instances give the least time; older results have no estimate
            for estimate in [min(seg["ours"].get("wall_estimate", {}).values(), default=None)]
            if estimate is not None
        ),
        {
            "stage": "batch into the profile store",
            "baseline": "DuckDB read_json → local Parquet, the same file",
            "ours_s": seg["setup"]["last_batch"]["seconds"],
            "baseline_s": seg["read_json"]["seconds"],
            "ratio": seg["setup"]["last_batch"]["seconds"] / seg["read_json"]["seconds"],
            "peak_mb": None,  # not its own: it runs inside the setup process (the 2 GiB row of bench.ingest has one)
        },
    ]
    live = seg["live"]
    for stage, key, limit in (
        ("streaming tick (10k events)", "seconds", 5.0),
        ("preview", "preview_seconds", 3.0),
        ("explain", "explain_seconds", 1.0),
    ):
        rows.append(
            {
                "stage": stage,
                "baseline": f"the target time, {limit:g} s",
                "ours_s": live[key],
                "baseline_s": limit,
                "ratio": live[key] / limit,
                "peak_mb": live["peak_rss_mb"],
            }
        )
    pg = seg.get("postgres", {"skipped": "not measured"})
    rows.append(
        {
            "stage": "segment job vs PostgreSQL",
            "baseline": "PostgreSQL 15, the stitched floor's SQL over the same rows"
            + (f" (skipped: {pg['skipped']})" if "skipped" in pg else ""),
            "ours_s": seg["ours"]["seconds"],
            "baseline_s": pg.get("seconds"),
            "ratio": pg["seconds"] / seg["ours"]["seconds"] if "seconds" in pg else None,
            "peak_mb": seg["ours"]["peak_rss_mb"],
        }
    )
    rows += _activation_rows(export, campaign)
    for r in rows:
        text, check = TARGETS[r["stage"]]
        r["target"] = text
        if r["ratio"] is None or check is None:
            r["met"] = None
        else:
            r["met"] = bool(check(r["ratio"])) and (r["peak_mb"] or 0) < LIMIT_MB
    return rows


def _ingestion_rows(ingest: dict | None) -> list[dict]:
    if not ingest:
        return []
    ours, floor = ingest["stages"]["function"], ingest["stages"]["floor"]
    return [
        {
            "stage": "ingestion",
            "baseline": "DuckDB read_json → local Parquet",
            "ours_s": ours["seconds"],
            "baseline_s": floor["seconds"],
            "ratio": ours["seconds"] / floor["seconds"],
            "peak_mb": ours["peak_rss_mb"],
        }
    ]


def _activation_rows(export: dict | None, campaign: dict | None) -> list[dict]:
    rows = []
    if export:
        rows.append(
            {
                "stage": "export",
                "baseline": "DuckDB → local CSV",
                "ours_s": export["ours"]["seconds"],
                "baseline_s": export["floor"]["seconds"],
                "ratio": export["ours"]["seconds"] / export["floor"]["seconds"],
                "peak_mb": export["ours"]["peak_rss_mb"],
            }
        )
    for kind, stage in (("audience", "audience load"), ("profile", "profile sync")) if campaign else ():
        c = campaign[kind]
        rows.append(
            {
                "stage": stage,
                "baseline": "Azurite raw transfers of the same bytes",
                "ours_s": c["ours"]["seconds"],
                "baseline_s": c["ceiling"]["seconds"],
                "ratio": c["ceiling"]["seconds"] / c["ours"]["seconds"],
                "peak_mb": c["ours"]["peak_rss_mb"],
            }
        )
    return rows


def markdown(people: int, rows: list[dict]) -> str:
    lines = [
        f"| stage ({label_of(people)} people) | ours (s) | baseline | baseline (s) | ratio | target | peak RSS | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = f"{r['baseline_s']:.2f}" if r["baseline_s"] is not None else "—"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "—"
        met = {True: "yes", False: "no", None: "skipped" if r["ratio"] is None else "—"}[r["met"]]
        peak = f"{r['peak_mb']:,} MB" if r["peak_mb"] is not None else "n/a"
        lines.append(
            f"| {r['stage']} | {r['ours_s']:.2f} | {r['baseline']} | {base} | {ratio} | {r['target']} | "
            f"{peak} | {met} |"
        )
    return "\n".join(lines)


def growth(summaries: dict[int, dict]) -> dict[str, float]:
    """How each stage's time grows from 100k to 1M people: the exponent k in time ∝ people^k (1 = linear)."""
    if 100_000 not in summaries or 1_000_000 not in summaries:
        return {}
    small = {r["stage"]: r["ours_s"] for r in summaries[100_000]["rows"]}
    big = {r["stage"]: r["ours_s"] for r in summaries[1_000_000]["rows"]}
    return {s: round(math.log(big[s] / small[s]) / math.log(10), 2) for s in big if s in small and small[s] > 0}


def latest_summaries() -> dict[int, dict]:
    out: dict[int, dict] = {}
    for path in sorted(RESULTS.glob("*-*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("kind") == "summary":
            out[data["people"]] = data  # sorted by date: the latest wins
    return out


def plot(summaries: dict[int, dict], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    sizes = sorted(summaries)
    stages = ["ingestion", "segment job", "export", "audience load", "profile sync"]
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        for key, name, style in (("ours_s", "ours", "o-"), ("baseline_s", "baseline", "s--")):
            points = [(n, r[key]) for n in sizes for r in summaries[n]["rows"] if r["stage"] == stage and r[key]]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=name)
        pg = [
            (n, r["baseline_s"]) for n in sizes for r in summaries[n]["rows"]
            if r["stage"] == "segment job vs PostgreSQL" and r["baseline_s"]
        ]  # fmt: skip
        if stage == "segment job" and pg:
            ax.plot(*zip(*pg, strict=True), "^:", label="PostgreSQL 15")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(stage)
        ax.set_xlabel("people")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10k", help="people: 10k (default), 100k, 1M, or any number")
    parser.add_argument("--rebuild", action="store_true", help="also time the from-scratch rebuild at 1M and above")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plot from saved results")
    parser.add_argument(
        "--stages",
        help=f"comma-separated, of {', '.join(STAGES)}, or all (default: all below 10M people, else the first two)",
    )
    args = parser.parse_args()
    people = people_of(args.size)
    stages = default_stages(people) if not args.stages else STAGES if args.stages == "all" else args.stages.split(",")
    if unknown := [s for s in stages if s not in STAGES]:
        parser.error(f"--stages: no stage {', '.join(unknown)} (stages: {', '.join(STAGES)}, or all)")
    if not args.report_only:
        for left_out in (s for s in STAGES if s not in stages):
            print(f"left out: {left_out} (--stages all runs it)")
        if "ingest" in stages:
            _run("bench.ingest", "--rows", str(ingest_rows(people)))
        # The from-scratch rebuild takes as long as ingesting the world (half an hour at 1M): from 1M people up
        # it runs only when asked (`make bench SIZE=1M REBUILD=1`, or `python -m bench.segments` alone).
        rebuild = args.rebuild or people < 1_000_000
        if "segments" in stages:
            _run(
                "bench.segments",
                "--people",
                str(people),
                *([] if rebuild else ["--skip-rebuild"]),
                *(["--skip-postgres"] if people >= BIG else []),  # its target is set at 1M
            )
        for stage in ("export", "campaign"):
            if stage in stages:
                _run(f"bench.{stage}", "--people", str(people))
    rows = collect(people)
    summary = {"kind": "summary", "people": people, "date": dt.date.today().isoformat(), "rows": rows}
    out = RESULTS / f"{dt.date.today().isoformat()}-{label_of(people)}.json"
    out.write_text(json.dumps(summary, indent=2))
    summaries = latest_summaries()
    summary["growth_100k_to_1M"] = growth(summaries)
    out.write_text(json.dumps(summary, indent=2))
    print()
    print(markdown(people, rows))
    if summary["growth_100k_to_1M"]:
        print("\nGrowth from 100k to 1M people (time ∝ people^k; 1 is linear): " + ", ".join(
            f"{s} {k:.2f}" for s, k in summary["growth_100k_to_1M"].items()
        ))  # fmt: skip
    print(f"\nPeak RSS line: {LIMIT_MB:,} MB (the Consumption plan). Results: {out}")
    png = plot(summaries, RESULTS / "scaling.png")
    if png:
        print(f"Plot (time against size, log-log, {len(summaries)} size(s)): {png}")


if __name__ == "__main__":
    main()
