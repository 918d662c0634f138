"""The rows and files of one export run, all in DuckDB: members of each segment (full, or the changes since
the previous run), their attributes from the unified profiles, the identity transformed, exclusions with
a reason, deduplication, and files split every N rows. Storage is the caller's business."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb

from shared.activation.destinations import MEMBERSHIP_STATUS, Destination, FileFormat
from shared.sql import column_ref, parquet, parquet_glob, quote_ident, quote_literal

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
    current: Path
    previous: Path | None = None
    incremental: bool = False


def members_sql(m: Members, index: int) -> str:
    cur = f"{parquet(m.current)}"
    head = f"SELECT {index} AS seg, profileId"
    if not m.incremental or m.previous is None:
        return f"{head}, status, lastQualificationTime AS qualifiedAt FROM {cur} WHERE status IN {ACTIVE}"
    prev = f"{parquet(m.previous)}"
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
    """A file written. Its rows are known once the run is counted, which may be after it is handed on for
    upload (`PersonRows` counts while the last files upload)."""

    segment_id: str
    part: int
    path: Path
    rows: int = 0


class FileSink(Protocol):
    """Where a run's files go as they are written (the run uploads them)."""

    def growing(self, w: Written) -> None:
        """A file about to be written by a writer that only appends to it; `finished` follows when it is done."""

    def finished(self, w: Written) -> None:
        """A complete file: the one announced as growing for its segment and part, or another one."""


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
    """The rows of one export run in DuckDB: made once per run from the profiles (`build_rows`), then `write`
    takes the segments' members and writes the files, one per segment and part (every segment gets at least
    one: a header only, for CSV, when nobody is exported), and counts them per segment (received, activated,
    excluded by reason). Two ways to get there, chosen by `build_rows`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, d: Destination, split_rows: int):
        self.con, self.d, self.split_rows = con, d, split_rows
        self.members: list[Members] = []
        self.counts: dict[str, SegmentCounts] = {}

    def write(self, members: list[Members], out: Path, files: FileSink | None = None) -> list[Written]:
        raise NotImplementedError

    def _take(self, members: list[Members]) -> None:
        self.members, self.counts = members, {m.segment_id: SegmentCounts() for m in members}

    def _count(self, sql: str) -> None:
        """Fill the counts from `sql`, rows of (segment index, reason or NULL, rows)."""
        for seg, why, n in self.con.execute(sql).fetchall():
            c = self.counts[self.members[seg].segment_id]
            c.received += n
            if why is None:
                c.activated += n
            else:
                c.excluded[why] = n

    def _parts(self, seg: int) -> list[tuple[int, int]]:
        """(part, rows) of a segment's files: parts of `split_rows` rows by profileId, at least one."""
        activated, size = self.counts[self.members[seg].segment_id].activated, int(self.split_rows)
        return [(k + 1, min(size, activated - k * size)) for k in range(max(1, -(-activated // size)))]

    def _target(self, out: Path, seg: int, part: int) -> Path:
        return out / f"{seg:03d}-{part:03d}.{self.d.extension}"

    def _finished(self, seg: int, part: int, path: Path, rows: int, files: FileSink | None) -> Written:
        """A file written: handed to `files` (to upload while the next is written)."""
        w = Written(self.members[seg].segment_id, part, path, rows)
        if files:
            files.finished(w)
        return w


class PersonRows(ExportRows):
    """Without a deduplication key, whether a member is exported depends on the person alone, so each
    person's exported values and reason are computed once, before the members are known (`export_people`, a
    row per person: a person in 20 segments is hashed once; a run does it while its memberships download).
    The files are written straight from the join of the members with the people by one partitioned COPY,
    which DuckDB is told to flush often, so that every segment's file grows from the start and is uploaded as
    it grows (`FileSink.growing`); the counts come last, from one aggregate, while the last blocks upload."""

    FLUSH_ROWS = 20_000  # DuckDB's default, 524,288 rows per thread, holds most files back until the end

    def __init__(self, con, d, split_rows, profiles: str) -> None:
        super().__init__(con, d, split_rows)
        raw, exported = _identity_sql(d)
        ident = quote_ident(d.identity.target)
        mandatory = [c for c in d.mandatory if c not in _status_columns(d)]  # a member always has a status
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE export_people AS
            WITH p AS (SELECT p.profileId, {raw} AS _raw{_attributes(d)} FROM {profiles} p),
            t AS (SELECT *, {exported} AS {ident} FROM p)
            SELECT * EXCLUDE (_raw), {_reason_sql(ident, mandatory, [])} AS _reason FROM t"""
        )

    def write(self, members: list[Members], out: Path, files: FileSink | None = None) -> list[Written]:
        self._take(members)
        columns = ", ".join(quote_ident(c) for c in self.d.columns())
        status = "".join(f", m.status AS {quote_ident(c)}" for c in _status_columns(self.d))
        numbered = f"""SELECT m.seg, m.profileId{status}, p.* EXCLUDE (profileId, _reason), {self._part()} AS _part
            FROM ({_union(members)}) m JOIN export_people p USING (profileId) WHERE p._reason IS NULL"""
        partitions = _Partitions(self, out, numbered, columns)
        for seg, m in enumerate(members) if files else []:
            files.growing(Written(m.segment_id, 1, partitions.duckdb_file(seg, 1)))
        # A file's rows have no order (part numbers follow profileId, not the file's order): let DuckDB write
        # them from every thread.
        self.con.execute(
            f"SET preserve_insertion_order = false; SET partitioned_write_flush_threshold = {self.FLUSH_ROWS}"
        )
        try:
            partitions.write()
        finally:
            self.con.execute("RESET preserve_insertion_order; RESET partitioned_write_flush_threshold")
        written = [
            self._finished(seg, part, partitions.whole(seg, part), 0, files)
            for seg in range(len(members))
            for part in partitions.parts(seg)
        ]
        # A member whose person the store does not have has no identity either.
        self._count(
            f"""SELECT m.seg, CASE WHEN e.profileId IS NULL THEN 'missingIdentity' ELSE e._reason END, count(*)
            FROM ({_union(members)}) m LEFT JOIN (SELECT profileId, _reason FROM export_people) e USING (profileId)
            GROUP BY ALL ORDER BY ALL"""
        )
        return self._numbered(written)

    def _sizes(self) -> list[int]:
        """Each segment's most rows: its snapshots' rows (the previous one's too, for changes), read from their
        footers."""
        files = " UNION ALL ".join(
            f"SELECT {seg} AS seg, num_rows FROM parquet_file_metadata({quote_literal(parquet_glob(path))})"
            for seg, m in enumerate(self.members)
            for path in ([m.current, m.previous] if m.incremental and m.previous else [m.current])
        )
        found = dict(self.con.execute(f"SELECT seg, sum(num_rows) FROM ({files}) GROUP BY seg").fetchall())
        return [int(found.get(seg) or 0) for seg in range(len(self.members))]

    def _part(self) -> str:
        """Each row's part: 1, unless a segment may have more rows than a file may hold, when the rows are
        numbered into parts of `split_rows` by profileId."""
        if max(self._sizes(), default=0) <= self.split_rows:
            return "1"
        return f"(row_number() OVER (PARTITION BY seg ORDER BY profileId) - 1) // {int(self.split_rows)} + 1"

    def _numbered(self, written: list[Written]) -> list[Written]:
        """The written files with their rows, from the counts; every part the counts call for was written."""
        expected = {(m.segment_id, p): n for seg, m in enumerate(self.members) for p, n in self._parts(seg)}
        for w in written:
            w.rows = expected.pop((w.segment_id, w.part))
        if expected:
            raise RuntimeError(f"the export wrote no file for {sorted(expected)}")
        return written


@dataclass
class _Partitions:
    """The files of a partitioned COPY of every segment's rows: a file per segment and part that has rows."""

    rows: PersonRows
    out: Path
    numbered: str  # the rows to export, each with its segment (`seg`) and `_part`
    columns: str

    @property
    def folder(self) -> Path:
        return self.out / "partitions"

    def write(self) -> None:
        options, extension = _copy_options(self.rows.d), quote_literal(self.rows.d.extension)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows.con.execute(
            f"""COPY (SELECT seg, _part, {self.columns} FROM ({self.numbered})) TO {quote_literal(str(self.folder))}
            ({options}, PARTITION_BY (seg, _part), FILENAME_PATTERN 'data_{{i}}', FILE_EXTENSION {extension},
             OVERWRITE_OR_IGNORE true)"""
        )

    def duckdb_file(self, seg: int, part: int) -> Path:
        """Where DuckDB writes a part, when it writes it in one piece."""
        return self.folder / f"seg={seg}" / f"_part={part}" / f"data_0.{self.rows.d.extension}"

    def parts(self, seg: int) -> list[int]:
        """The parts DuckDB wrote, or [1] when nobody is exported: that file is still written, a header only
        for CSV."""
        found = sorted(int(p.name.removeprefix("_part=")) for p in (self.folder / f"seg={seg}").glob("_part=*"))
        return found or [1]

    def whole(self, seg: int, part: int) -> Path:
        """The part's file: DuckDB's, or written again whole when DuckDB wrote the partition in pieces (past its
        open-file limit) or wrote none (nobody to export)."""
        found = sorted(self.duckdb_file(seg, part).parent.glob("*"))
        if found == [self.duckdb_file(seg, part)]:
            return found[0]
        target = self.rows._target(self.out, seg, part)
        which = f"seg = {seg} AND _part = {part}" if found else "false"
        self.rows.con.execute(
            f"""COPY (SELECT {self.columns} FROM ({self.numbered}) WHERE {which})
            TO {quote_literal(str(target))} ({_copy_options(self.rows.d)})"""
        )
        return target


class MemberRows(ExportRows):
    """With a deduplication key, members of one segment compete for a key, so every member's row is built
    (`export_rows`, with its reason and its part) and counted before any file is written from it."""

    def __init__(self, con, d, split_rows, profiles: str) -> None:
        super().__init__(con, d, split_rows)
        self.profiles = profiles

    def write(self, members: list[Members], out: Path, files: FileSink | None = None) -> list[Written]:
        self._take(members)
        self._build_rows()
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
                written.append(self._finished(seg, part, target, n, files))
        return written

    def _build_rows(self) -> None:
        d, con = self.d, self.con
        raw, exported = _identity_sql(d)
        ident = quote_ident(d.identity.target)
        status = "".join(f", m.status AS {quote_ident(c)}" for c in _status_columns(d))
        reason = _reason_sql(ident, d.mandatory, d.dedup_key)
        keys = ", ".join(quote_ident(c) for c in d.dedup_key)
        # Among rows still exported, the most recently qualified member keeps the key.
        rank = f"row_number() OVER (PARTITION BY seg, _reason IS NULL, {keys} ORDER BY qualifiedAt DESC, profileId)"
        dedup = f"CASE WHEN _reason IS NULL AND {rank} > 1 THEN 'duplicateDedupKey' ELSE _reason END"
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE export_rows AS
            WITH p AS (
                SELECT p.profileId, {raw} AS _raw{_attributes(d)} FROM {self.profiles} p
            ), t AS (SELECT *, {exported} AS {ident} FROM p),
            j AS (
                SELECT m.seg, m.profileId, m.qualifiedAt{status}, t.* EXCLUDE (profileId)
                FROM ({_union(self.members)}) m LEFT JOIN t USING (profileId)
            ),
            r AS (SELECT *, {reason} AS _reason FROM j)
            SELECT * EXCLUDE (_reason), {dedup} AS _reason FROM r"""
        )
        self._count("SELECT seg, _reason, count(*) FROM export_rows GROUP BY ALL ORDER BY ALL")
        if any(c.activated > self.split_rows for c in self.counts.values()):
            # only a run with a segment past the file limit pays for numbering rows into parts
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE export_rows AS SELECT *, CASE WHEN _reason IS NULL THEN
                    (row_number() OVER (PARTITION BY seg, _reason IS NULL ORDER BY profileId) - 1)
                    // {int(self.split_rows)} + 1 END AS _part FROM export_rows"""
            )
        else:
            con.execute("ALTER TABLE export_rows ADD COLUMN _part INTEGER DEFAULT 1")


def build_rows(con: duckdb.DuckDBPyConnection, d: Destination, profiles: str, *, split_rows: int) -> ExportRows:
    """The rows of one export run of `d`, with attributes from `profiles` (a relation of merged profiles):
    what can be done per person is done now; `.write(members, …)` writes the files and counts them."""
    kind = MemberRows if d.dedup_key else PersonRows
    return kind(con, d, split_rows, profiles)


def _union(members: list[Members]) -> str:
    """The members of every segment, each row with its segment's index."""
    return " UNION ALL ".join(f"({members_sql(m, i)})" for i, m in enumerate(members))


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


__all__ = [
    "ExportRows",
    "FileSink",
    "Members",
    "SegmentCounts",
    "Written",
    "build_rows",
    "install_transforms",
    "members_sql",
]
