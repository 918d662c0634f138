"""The rows and files of one export run, all in DuckDB: members of each segment (full, or the changes since
the previous run), their attributes from the unified profiles, the identity transformed, exclusions with
a reason, deduplication, and files split every N rows. Storage is the caller's business."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from shared.activation.destinations import MEMBERSHIP_STATUS, Destination, FileFormat
from shared.segmentation.memberships import LocalSnapshot
from shared.sql import column_ref, quote_ident, quote_literal

ACTIVE = "('realized', 'existing')"
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
_E164 = r"^\+[1-9][0-9]{6,14}$"


def install_transforms(con: duckdb.DuckDBPyConnection, *, country_code: str) -> None:
    """SQL macros for "Apply transformation": `email_sha256` (trim, lowercase, SHA-256 lowercase hex) and
    `e164` (a phone number as +<country><number>, or NULL when it cannot be one) then `phone_sha256`.
    Numbers without an international prefix (+ or 00) are national numbers of `country_code`, whose
    trunk prefix (0, or 1 in the North American plan) is dropped."""
    cc = quote_literal(country_code)
    trunk = "'^1'" if country_code == "1" else "'^0'"
    con.execute(
        """CREATE OR REPLACE TEMP MACRO email_sha256(v) AS
            CASE WHEN trim(v) = '' THEN NULL ELSE sha256(lower(trim(v))) END"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP MACRO e164(v) AS (
            CASE WHEN v IS NULL OR regexp_matches(v, '[^0-9 +().\\-/]') THEN NULL
            ELSE (SELECT CASE WHEN regexp_matches(e, {quote_literal(_E164)}) THEN e END FROM (
                SELECT CASE
                    WHEN starts_with(trim(v), '+') THEN '+' || d
                    WHEN starts_with(d, '00') THEN '+' || d[3:]
                    WHEN length(d) = 11 AND {cc} = '1' AND starts_with(d, '1') THEN '+' || d
                    ELSE '+' || {cc} || regexp_replace(d, {trunk}, '')
                END AS e FROM (SELECT regexp_replace(v, '[^0-9]', '', 'g') AS d)))
            END)"""
    )
    con.execute("CREATE OR REPLACE TEMP MACRO phone_sha256(v) AS sha256(e164(v))")


@dataclass
class Members:
    """Where one segment's members come from: its current snapshot, and for incremental exports the
    snapshot the previous successful run exported (None: a full backfill)."""

    segment_id: str
    current: LocalSnapshot
    previous: LocalSnapshot | None = None
    incremental: bool = False


def members_sql(m: Members, index: int) -> str:
    cur = m.current.source
    head = f"SELECT {index} AS seg, profileId"
    if not m.incremental or m.previous is None:
        return f"{head}, status, lastQualificationTime AS qualifiedAt FROM {cur} WHERE status IN {ACTIVE}"
    prev = m.previous.source
    return f"""
        {head}, status, lastQualificationTime AS qualifiedAt FROM {cur}
        WHERE status IN {ACTIVE} AND profileId NOT IN (SELECT profileId FROM {prev} WHERE status IN {ACTIVE})
        UNION ALL
        SELECT {index}, p.profileId, 'exited', coalesce(c.exitedAt, p.lastQualificationTime)
        FROM (SELECT * FROM {prev} WHERE status IN {ACTIVE}) p
        LEFT JOIN {cur} c USING (profileId)
        WHERE c.profileId IS NULL OR c.status = 'exited'"""


@dataclass
class Written:
    segment_id: str
    part: int
    path: Path
    rows: int


@dataclass
class SegmentCounts:
    received: int = 0
    activated: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


def _identity_sql(d: Destination) -> tuple[str, str]:
    """(the raw identity from the profile `p`, the exported one computed from that raw value `_raw`)."""
    ns = d.identity.namespace
    if ns:
        raw = f"list_filter(p.identities, lambda x: x.namespace = {quote_literal(ns)})[1].id"
    else:
        raw = column_ref(d.identity.source, table="p")
    transform = {"email_lc_sha256": "email_sha256", "phone_sha256": "phone_sha256"}.get(d.identity.target)
    if not d.identity.apply_transformation or not transform:
        return raw, "_raw"
    return raw, f"{transform}(_raw)"


class ExportRows:
    """The rows of one export run in DuckDB: their counts per segment (received, activated, excluded by
    reason), and `write` for the files, one per segment and part (every segment gets at least one: a header
    only, for CSV, when nobody is exported). Two ways to get there, chosen by `build_rows`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, d: Destination, members: list[Members], split_rows: int):
        self.con, self.d, self.members, self.split_rows = con, d, members, split_rows
        self.counts = {m.segment_id: SegmentCounts() for m in members}

    def _people(self, profiles: list[str], select: str) -> None:
        """`export_people`: `select` over each person's profile id, raw identity (`_raw`), mapped attributes and
        exported identity, a statement per relation of `profiles` (a shard's), so that one shard's files are
        read at a time (at 10M people, one statement over all 32 shards ran out of 600MB)."""
        raw, exported = _identity_sql(self.d)
        for i, shard in enumerate(profiles):
            sql = f"""WITH p AS (SELECT p.profileId, {raw} AS _raw{_attributes(self.d)} FROM {shard} p),
                t AS (SELECT *, {exported} AS {quote_ident(self.d.identity.target)} FROM p)
                SELECT {select} FROM t"""
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE export_people AS {sql}" if i == 0 else f"INSERT INTO export_people {sql}"
            )

    def _count(self, sql: str) -> None:
        """Fill the counts from `sql`, rows of (segment index, reason or NULL, rows)."""
        for seg, why, n in self.con.execute(sql).fetchall():
            c = self.counts[self.members[seg].segment_id]
            c.received += n
            if why is None:
                c.activated += n
            else:
                c.excluded[why] = n

    @property
    def split(self) -> bool:
        """Whether some segment is past the file limit, so that its rows are numbered into parts."""
        return any(c.activated > self.split_rows for c in self.counts.values())

    def _part(self) -> str:
        if not self.split:
            return "1"
        return f"(row_number() OVER (PARTITION BY seg ORDER BY profileId) - 1) // {int(self.split_rows)} + 1"

    def _parts(self, seg: int) -> list[tuple[int, int]]:
        """(part, rows) of a segment's files: parts of `split_rows` rows by profileId, at least one."""
        activated, size = self.counts[self.members[seg].segment_id].activated, int(self.split_rows)
        return [(k + 1, min(size, activated - k * size)) for k in range(max(1, -(-activated // size)))]

    def write(self, out: Path, *, on_file: Callable[[Written], None] | None = None) -> list[Written]:
        raise NotImplementedError

    def _target(self, out: Path, seg: int, part: int) -> Path:
        return out / f"{seg:03d}-{part:03d}.{self.d.extension}"

    def _finished(self, seg: int, part: int, target: Path, rows: int, on_file) -> Written:
        """A file written: handed to `on_file` (to upload while the next is written)."""
        w = Written(self.members[seg].segment_id, part, target, rows)
        if on_file:
            on_file(w)
        return w


class PersonRows(ExportRows):
    """Without a deduplication key, whether a member is exported depends on the person alone: each person's
    exported values and reason are computed once (`export_people`, a row per person, so a person in 20
    segments is hashed once), the counts come from one aggregate, and the files are written straight from
    the join of the members with the people, in a few partitioned COPY statements (about a quarter of the
    segments each), each group's files uploaded while the next group is written."""

    GROUPS = 4

    def __init__(self, con, d, members, split_rows, profiles: list[str]) -> None:
        super().__init__(con, d, members, split_rows)
        mandatory = [c for c in d.mandatory if c not in _status_columns(d)]  # a member always has a status
        reason = _reason_sql(quote_ident(d.identity.target), mandatory, [])
        self._people(profiles, f"* EXCLUDE (_raw), {reason} AS _reason")
        # A member whose person the store does not have has no identity either.
        self._count(
            f"""SELECT m.seg, CASE WHEN e.profileId IS NULL THEN 'missingIdentity' ELSE e._reason END, count(*)
            FROM ({_union(members)}) m LEFT JOIN (SELECT profileId, _reason FROM export_people) e USING (profileId)
            GROUP BY ALL ORDER BY ALL"""
        )

    def write(self, out: Path, *, on_file: Callable[[Written], None] | None = None) -> list[Written]:
        columns = ", ".join(quote_ident(c) for c in self.d.columns())
        status = ", ".join(f"m.status AS {quote_ident(c)}" for c in _status_columns(self.d))
        options = _copy_options(self.d)
        out.mkdir(parents=True, exist_ok=True)
        # A file's rows have no order (part numbers follow profileId, not the file's order): let DuckDB write
        # them from every thread.
        self.con.execute("SET preserve_insertion_order = false")
        written: list[Written] = []
        size = -(-len(self.members) // self.GROUPS)
        for g, first in enumerate(range(0, len(self.members), size)):
            group = list(range(first, min(first + size, len(self.members))))
            folder = out / f"group-{g}"
            rows = f"""SELECT m.seg, m.profileId{", " + status if status else ""}, p.* EXCLUDE (profileId, _reason)
                FROM ({_union(self.members, group)}) m JOIN export_people p USING (profileId) WHERE p._reason IS NULL"""
            if any(self.counts[self.members[i].segment_id].activated for i in group):
                self.con.execute(
                    f"""COPY (SELECT seg, {self._part()} AS _part, {columns} FROM ({rows}))
                    TO {quote_literal(str(folder))} ({options}, PARTITION_BY (seg, _part), OVERWRITE_OR_IGNORE true)"""
                )
            for seg in group:
                for part, n in self._parts(seg):
                    target = self._target(out, seg, part)
                    found = sorted((folder / f"seg={seg}" / f"_part={part}").glob("*")) if n else []
                    if len(found) == 1:
                        found[0].rename(target)
                    elif not n:  # nobody to export: the file still exists, with a header only for CSV
                        self.con.execute(
                            f"COPY (SELECT {columns} FROM ({rows}) WHERE false) TO {quote_literal(str(target))} ({options})"
                        )
                    else:  # DuckDB wrote the partition in pieces (past its open-file limit): write it whole
                        self.con.execute(
                            f"""COPY (SELECT {columns} FROM (SELECT *, {self._part()} AS _part FROM ({rows}))
                                WHERE seg = {seg} AND _part = {part}) TO {quote_literal(str(target))} ({options})"""
                        )
                    written.append(self._finished(seg, part, target, n, on_file))
        return written


class MemberRows(ExportRows):
    """With a deduplication key, members of one segment compete for a key, so every member's row is built
    (`export_rows`, with its reason and its part) before any file is written from it."""

    def __init__(self, con, d, members, split_rows, profiles: list[str]) -> None:
        super().__init__(con, d, members, split_rows)
        ident = quote_ident(d.identity.target)
        status = "".join(f", m.status AS {quote_ident(c)}" for c in _status_columns(d))
        reason = _reason_sql(ident, d.mandatory, d.dedup_key)
        keys = ", ".join(quote_ident(c) for c in d.dedup_key)
        # Among rows still exported, the most recently qualified member keeps the key.
        rank = f"row_number() OVER (PARTITION BY seg, _reason IS NULL, {keys} ORDER BY qualifiedAt DESC, profileId)"
        dedup = f"CASE WHEN _reason IS NULL AND {rank} > 1 THEN 'duplicateDedupKey' ELSE _reason END"
        self._people(profiles, "*")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE export_rows AS
            WITH j AS (
                SELECT m.seg, m.profileId, m.qualifiedAt{status}, t.* EXCLUDE (profileId)
                FROM ({_union(members)}) m LEFT JOIN export_people t USING (profileId)
            ),
            r AS (SELECT *, {reason} AS _reason FROM j)
            SELECT * EXCLUDE (_reason), {dedup} AS _reason FROM r"""
        )
        self._count("SELECT seg, _reason, count(*) FROM export_rows GROUP BY ALL ORDER BY ALL")
        if self.split:  # only a run with a segment past the file limit pays for numbering rows into parts
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE export_rows AS SELECT *, CASE WHEN _reason IS NULL THEN
                    (row_number() OVER (PARTITION BY seg, _reason IS NULL ORDER BY profileId) - 1)
                    // {int(split_rows)} + 1 END AS _part FROM export_rows"""
            )
        else:
            con.execute("ALTER TABLE export_rows ADD COLUMN _part INTEGER DEFAULT 1")

    def write(self, out: Path, *, on_file: Callable[[Written], None] | None = None) -> list[Written]:
        columns = ", ".join(quote_ident(c) for c in self.d.columns())
        options = _copy_options(self.d)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Written] = []
        for seg in range(len(self.members)):
            for part, n in self._parts(seg):
                target = self._target(out, seg, part)
                self.con.execute(
                    f"""COPY (SELECT {columns} FROM export_rows WHERE seg = {seg} AND _part = {part} AND _reason IS NULL)
                        TO {quote_literal(str(target))} ({options})"""
                )
                written.append(self._finished(seg, part, target, n, on_file))
        return written


def build_rows(
    con: duckdb.DuckDBPyConnection, d: Destination, members: list[Members], profiles: list[str], *, split_rows: int
) -> ExportRows:
    """Every member of every segment with its exported columns and, when it is excluded, why; with
    attributes from `profiles` (relations of merged profiles, one a shard). Counted now, written by `.write`."""
    kind = MemberRows if d.dedup_key else PersonRows
    return kind(con, d, members, split_rows, profiles)


def _union(members: list[Members], indexes: list[int] | None = None) -> str:
    """The members of the segments at `indexes` (all of them by default), each row with its segment's index."""
    chosen = range(len(members)) if indexes is None else indexes
    return " UNION ALL ".join(f"({members_sql(members[i], i)})" for i in chosen)


def _status_columns(d: Destination) -> list[str]:
    return [m.target for m in d.mapping if m.source == MEMBERSHIP_STATUS]


def _attributes(d: Destination) -> str:
    return "".join(
        f", {column_ref(m.source, table='p')} AS {quote_ident(m.target)}"
        for m in d.mapping
        if m.source != MEMBERSHIP_STATUS
    )


def _reason_sql(ident: str, mandatory: list[str], dedup_key: list[str]) -> str:
    """Why a row is excluded (the first reason that applies), NULL when it is exported."""
    reasons = ["WHEN _raw IS NULL THEN 'missingIdentity'", f"WHEN {ident} IS NULL THEN 'invalidIdentity'"]
    reasons += [f"WHEN {quote_ident(c)} IS NULL THEN {quote_literal('missingMandatory:' + c)}" for c in mandatory]
    reasons += [f"WHEN {quote_ident(c)} IS NULL THEN 'missingDedupKey'" for c in dedup_key]
    return "CASE " + " ".join(reasons) + " END"


def _copy_options(d: Destination) -> str:
    if d.format is FileFormat.PARQUET:
        return "FORMAT parquet"
    if d.format is FileFormat.JSON:
        return "FORMAT json"
    c = d.csv
    options = (
        f"FORMAT csv, HEADER true, DELIMITER {quote_literal(c.delimiter)}, QUOTE {quote_literal(c.quote)}, "
        f"ESCAPE {quote_literal(c.escape)}, NULLSTR {quote_literal(c.null_value)}"
    )
    return options + (", COMPRESSION gzip" if c.gzip else "")


__all__ = ["ExportRows", "Members", "SegmentCounts", "Written", "build_rows", "install_transforms", "members_sql"]
