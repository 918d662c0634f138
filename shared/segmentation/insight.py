"""Looking into segments: a preview of a definition not yet saved (its size now, and who would enter and
exit compared with the current membership), and an explanation of why one person is in a segment or not
(each condition, whether it held, the values and the events that decided it)."""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from shared.engine import connect, scalar
from shared.errors import NotFound
from shared.identity.store import StoreVersion, shard_of, shard_sql
from shared.segmentation.evaluation import RESULTS, evaluate, fields_of
from shared.segmentation.memberships import LocalSnapshot, MemberFile
from shared.segmentation.pql import ast, parse
from shared.segmentation.pql.compiler import Compiler, Scope
from shared.segmentation.runner import SegmentJobRunner

PREVIEW = "__preview__"


@dataclass
class ShardPreview:
    """What a preview found in the shards it evaluated: members, people read, who would enter and exit, and
    the lowest profile ids among the members (with their identities), from each shard."""

    hits: int = 0
    read: int = 0
    entering: int = 0
    exiting: int = 0
    found: list[tuple[str, Any]] = field(default_factory=list)

    def __iadd__(self, other: ShardPreview) -> ShardPreview:
        self.hits, self.read = self.hits + other.hits, self.read + other.read
        self.entering, self.exiting = self.entering + other.entering, self.exiting + other.exiting
        self.found += other.found
        return self


class SegmentInsight:
    def __init__(self, runner: SegmentJobRunner) -> None:
        self.runner = runner  # its stores and profile builder, shared rather than built again

    def preview(self, pql: str, *, now: dt.datetime, segment_id: str | None = None, samples: int = 5) -> dict[str, Any]:
        """The size an expression has now, who would enter and exit the segment it would replace, and a few
        members. Over a store of more than PREVIEW_SAMPLE_PROFILES people only enough shards for that many are
        read (each is a random sample, by the hash of the person key): the counts are scaled up, and the
        answer says it sampled and gives the size's 95% confidence interval. Shards are evaluated one after
        another, as a job's are, so that a preview holds one shard in memory whatever the store's size."""
        tree = parse(pql)
        version = self.runner.store.version(now)
        sampled = self._sample(version.people, len(version.shards))
        pointer = self.runner.memberships.current_pointers().get(segment_id) if segment_id else None
        totals = ShardPreview()
        with tempfile.TemporaryDirectory(prefix="preview-") as tmp:
            con, cache = connect(self.runner.settings, spill_dir=tmp), {}
            split = pointer is not None and pointer.split_by(len(version.shards))
            try:
                # A snapshot split by other shards (or not at all) is fetched once, and each shard filters it.
                whole = self._current(pointer.files(), Path(tmp) / "members") if pointer and not split else None
                for shard in range(len(version.shards)) if sampled is None else sampled:
                    work = Path(tmp) / f"shard-{shard}"
                    # Split by today's shards: only this shard's part.
                    current = self._current(pointer.files([shard]), work / "members") if split else whole
                    totals += self._preview_shard(con, cache, tree, now, version, shard, current, work, samples)
                    shutil.rmtree(work, ignore_errors=True)
            finally:
                con.close()
        read = totals.read
        result = _estimate(totals.hits, read, version.people if sampled is not None else read) | {"evaluatedAt": now}
        if pointer is not None:
            scale = result["totalProfiles"] / read if read else 1.0
            result |= {"entering": round(totals.entering * scale), "exiting": round(totals.exiting * scale)}
        found = sorted(totals.found)[: int(samples)]
        result["samples"] = [{"profileId": pid, "identities": ids} for pid, ids in found]
        return result

    def _current(self, files: list[MemberFile], into: Path) -> LocalSnapshot:
        """The segment's current membership (those of its files) on local disk."""
        return self.runner.memberships.download({"current": files}, into)["current"]

    def _preview_shard(
        self,
        con: duckdb.DuckDBPyConnection,
        cache: dict,
        tree: ast.Expr,
        now: dt.datetime,
        version: StoreVersion,
        shard: int,
        current: LocalSnapshot | None,
        work: Path,
        samples: int,
    ) -> ShardPreview:
        """The preview's counts in one shard, against `current` (the segment's membership there, if any)."""
        profiles = self.runner.store.open(
            con, now=now, workdir=work / "store", shards=[shard], version=version, policy=self.runner.policies.default()
        )
        compiled = evaluate(
            con,
            profiles,
            {PREVIEW: tree},
            fields=fields_of(profiles, self.runner.segments.event_schemas()),
            definitions=self.runner.segments.trees(),
            cache=cache,
        )
        column = compiled.columns[PREVIEW]
        entering = exiting = 0
        if current is not None:
            entering, exiting = _changes(con, column, current, shard, len(version.shards))
        found = con.execute(
            f"""SELECT p.profileId, p.identities FROM {profiles.profiles} p JOIN {RESULTS} r USING (profileId)
                WHERE r.{column} ORDER BY p.profileId LIMIT {int(samples)}"""
        ).fetchall()
        hits = scalar(con, f"SELECT count(*) FROM {RESULTS} WHERE {column}")
        return ShardPreview(hits, profiles.stats["profiles"], entering, exiting, found)

    def _sample(self, people: int, shards: int) -> list[int] | None:
        """The shards a preview reads: all (None) up to PREVIEW_SAMPLE_PROFILES people, else the first few."""
        limit = self.runner.settings.preview_sample_profiles
        if people <= limit or shards == 1:
            return None
        return list(range(min(shards, math.ceil(shards * limit / people))))

    def explain(self, segment_id: str, profile_id: str, *, now: dt.datetime) -> dict[str, Any]:
        definition = self.runner.segments.get(segment_id)
        text, tree = definition.expression.value, definition.tree()
        with tempfile.TemporaryDirectory(prefix="explain-") as tmp:
            con, profiles = self._profile_shard(tmp, now, profile_id)
            con.execute(
                f"CREATE TEMP TABLE one_profile AS SELECT * FROM {profiles.profiles} WHERE profileId = $pid",
                {"pid": profile_id},
            )
            if not con.execute("SELECT count(*) FROM one_profile").fetchall()[0][0]:
                raise NotFound(f"no profile {profile_id!r} as of {now.isoformat()}")
            con.execute(
                f"CREATE TEMP TABLE one_events AS SELECT * FROM {profiles.events} WHERE profileId = $pid",
                {"pid": profile_id},
            )
            compiler = Compiler(
                fields_of(profiles, self.runner.segments.event_schemas()), now, definitions=self.runner.segments.trees()
            )
            nodes = list(_conditions(tree))
            selects, extras = [], {}
            for i, node in enumerate(nodes):
                selects.append(exp.alias_(compiler.condition(node, Scope()), f"c{i}"))
                for j, (label, sql) in enumerate(_details(compiler, node)):
                    selects.append(exp.alias_(sql, f"d{i}_{j}"))
                    extras[f"d{i}_{j}"] = (i, label)
            sql = compiler.query(selects, profiles="one_profile", events="one_events")
            cursor = con.execute(sql, compiler.params)
            names = [d[0] for d in cursor.description]
            row = dict(zip(names, cursor.fetchall()[0], strict=True))
            con.close()
        conditions = []
        for i, node in enumerate(nodes):
            entry: dict[str, Any] = {"condition": node.source(text), "held": bool(row[f"c{i}"])}
            for key, (index, label) in extras.items():
                if index == i:
                    entry[label] = row[key]
            conditions.append(entry)
        return {
            "segment": segment_id,
            "profileId": profile_id,
            "evaluatedAt": now,
            "qualifies": conditions[0]["held"],
            "conditions": conditions,
        }

    def _profile_shard(self, tmp: str, now: dt.datetime, profile_id: str):
        """The store as of `now`: only the shard a profile id falls in."""
        store = self.runner.store
        version = store.version(now)
        if not re.fullmatch(r"p[0-9a-f]{8,}", profile_id):
            raise NotFound(f"no profile {profile_id!r}: profile ids look like p3f2a…")
        con = connect(self.runner.settings, spill_dir=tmp)
        profiles = store.open(
            con,
            now=now,
            workdir=Path(tmp) / "store",
            shards=[shard_of(profile_id, len(version.shards))],
            version=version,
            policy=self.runner.policies.default(),
        )
        return con, profiles


def _changes(con, column: str, current: LocalSnapshot, shard: int, shards: int) -> tuple[int, int]:
    """Who in one shard would enter and exit the segment's current membership (`current`: the shard's part, or
    the whole snapshot when it is split by another shard count)."""
    active = f"(SELECT profileId FROM {current.source} WHERE status <> 'exited' AND {shard_sql('profileId', shards)} = {shard})"
    entering = scalar(con, f"SELECT count(*) FROM {RESULTS} WHERE {column} AND profileId NOT IN {active}")
    exiting = scalar(
        con,
        f"SELECT count(*) FROM {active} m WHERE m.profileId NOT IN (SELECT profileId FROM {RESULTS} WHERE {column})",
    )
    return entering, exiting


def _estimate(hits: int, read: int, total: int, z: float = 1.96) -> dict[str, Any]:
    """The size of a segment among `total` people from `hits` among the `read` of them a preview evaluated:
    exact when it read everyone, else scaled up with a 95% Wilson interval (finite population corrected)."""
    if read == total or read == 0:
        return {"size": hits, "totalProfiles": total, "sampled": False}
    p = hits / read
    centre = (p + z * z / (2 * read)) / (1 + z * z / read)
    half = z * math.sqrt(p * (1 - p) / read + z * z / (4 * read * read)) / (1 + z * z / read)
    half *= math.sqrt((total - read) / (total - 1))
    low, high = max(0.0, centre - half) * total, min(1.0, centre + half) * total
    return {
        "size": round(p * total),
        "totalProfiles": total,
        "sampled": True,
        "sampleProfiles": read,
        "confidence": {"level": 0.95, "low": math.floor(low), "high": math.ceil(high)},
    }


def _conditions(node: ast.Expr):
    """The whole expression, then its parts through and/or/not: the conditions a person can be shown."""
    yield node
    if isinstance(node, ast.And | ast.Or):
        for item in node.items:
            yield from _conditions(item)
    elif isinstance(node, ast.Not):
        yield from _conditions(node.item)


def _details(compiler: Compiler, node: ast.Expr) -> list[tuple[str, exp.Expression]]:
    """The values that decide a leaf condition: its field values, aggregate values and matching events."""
    out: list[tuple[str, exp.Expression]] = []
    profile = Scope()
    operands = [getattr(node, name) for name in ("left", "right", "subject") if hasattr(node, name)]
    for operand in operands:
        if isinstance(operand, ast.Path):
            out.append((f"value of {operand.dotted}", compiler.operand(operand, profile)))
        elif isinstance(operand, ast.Aggregate | ast.Fold | ast.Arithmetic | ast.Call | ast.If):
            out.append(("value", compiler.operand(operand, profile)))
            if isinstance(operand, ast.Aggregate):
                out.append(("events", _matching_events(compiler, operand.events.condition, None)))
    if isinstance(node, ast.Quantifier) and node.iterations[0].source is None:
        first = node.iterations[0]
        out.append(("events", _matching_events(compiler, first.condition, first.alias)))
    return out


_EVENT_SUMMARY = sqlglot.parse_one(
    "list({'_id': e._id, 'timestamp': e.timestamp, 'eventType': e.eventType} ORDER BY e.timestamp)", read="duckdb"
)


def _matching_events(compiler: Compiler, condition: ast.Expr | None, alias: str | None) -> exp.Expression:
    where = compiler.condition(condition, Scope("event", alias=alias)) if condition else exp.true()
    return compiler.aggregate(exp.Filter(this=_EVENT_SUMMARY.copy(), expression=exp.Where(this=where)))
