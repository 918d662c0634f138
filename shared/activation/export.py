"""The rows and files of one export run, all in DuckDB: members of each segment (full, or the changes since
the previous run), their attributes from the unified profiles, the identity transformed, exclusions with
a reason, deduplication, and files split every N rows. Storage is the caller's business."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from shared.activation.destinations import MEMBERSHIP_STATUS, Destination, FileFormat
from shared.sql import column_ref, parquet, quote_ident, quote_literal

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


def build_rows(
    con: duckdb.DuckDBPyConnection, d: Destination, members: list[Members], profiles: str, *, split_rows: int
) -> dict[str, SegmentCounts]:
    """Fill `export_rows`: every member of every segment with its exported columns, `_reason` (why it is
        excluded, NULL when exported) and `_part` (its file), with attributes from `profiles` (a relation of
    merged profiles). Returns the counts per segment."""
    union = " UNION ALL ".join(f"({members_sql(m, i)})" for i, m in enumerate(members))
    raw, exported = _identity_sql(d)
    ident = quote_ident(d.identity.target)
    attrs = "".join(
        f", {column_ref(m.source, table='p')} AS {quote_ident(m.target)}"
        for m in d.mapping
        if m.source != MEMBERSHIP_STATUS
    )
    status = "".join(f", m.status AS {quote_ident(m.target)}" for m in d.mapping if m.source == MEMBERSHIP_STATUS)
    reasons = ["WHEN _raw IS NULL THEN 'missingIdentity'", f"WHEN {ident} IS NULL THEN 'invalidIdentity'"]
    reasons += [f"WHEN {quote_ident(c)} IS NULL THEN {quote_literal('missingMandatory:' + c)}" for c in d.mandatory]
    reasons += [f"WHEN {quote_ident(c)} IS NULL THEN 'missingDedupKey'" for c in d.dedup_key]
    reason = "CASE " + " ".join(reasons) + " END"
    if d.dedup_key:
        keys = ", ".join(quote_ident(c) for c in d.dedup_key)
        # Among rows still exported, the most recently qualified member keeps the key.
        rank = f"row_number() OVER (PARTITION BY seg, _reason IS NULL, {keys} ORDER BY qualifiedAt DESC, profileId)"
        dedup = f"CASE WHEN _reason IS NULL AND {rank} > 1 THEN 'duplicateDedupKey' ELSE _reason END"
    else:
        dedup = "_reason"
    # Each person's exported values (the identity hashed, the attributes) are computed once, then joined to
    # every segment they are in: a person in 20 segments is hashed once, not 20 times.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE export_rows AS
        WITH p AS (
            SELECT p.profileId, {raw} AS _raw{attrs} FROM {profiles} p
        ), t AS (SELECT *, {exported} AS {ident} FROM p),
        j AS (
            SELECT m.seg, m.profileId, m.qualifiedAt{status}, t.* EXCLUDE (profileId)
            FROM ({union}) m LEFT JOIN t USING (profileId)
        ),
        r AS (SELECT *, {reason} AS _reason FROM j)
        SELECT * EXCLUDE (_reason), {dedup} AS _reason, 1 AS _part FROM r"""
    )
    counts = {m.segment_id: SegmentCounts() for m in members}
    rows = con.execute("SELECT seg, _reason, count(*) FROM export_rows GROUP BY ALL ORDER BY ALL").fetchall()
    for seg, why, n in rows:
        c = counts[members[seg].segment_id]
        c.received += n
        if why is None:
            c.activated += n
        else:
            c.excluded[why] = n
    if any(c.activated > split_rows for c in counts.values()):
        # Only a segment past the file limit pays for numbering its rows into parts.
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE export_rows AS
            SELECT * EXCLUDE (_part), CASE WHEN _reason IS NULL THEN
                (row_number() OVER (PARTITION BY seg, _reason IS NULL ORDER BY profileId) - 1) // {int(split_rows)} + 1
            END AS _part FROM export_rows"""
        )
    return counts


def write_files(
    con: duckdb.DuckDBPyConnection,
    d: Destination,
    members: list[Members],
    out: Path,
    *,
    on_file: Callable[[Written], None] | None = None,
) -> list[Written]:
    """Write `export_rows` as files, one per segment and part; a segment with nobody to export still gets
    one file (with only the header for CSV), so every run has a file per segment. `on_file` is called as
    each file is finished, so the caller can upload it while the next one is written."""
    columns = ", ".join(quote_ident(c) for c in d.columns())
    options = _copy_options(d)
    out.mkdir(parents=True, exist_ok=True)
    parts = con.execute(
        "SELECT seg, _part, count(*) FROM export_rows WHERE _reason IS NULL GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    found = {(seg, part): rows for seg, part, rows in parts}
    written: list[Written] = []
    for seg, m in enumerate(members):
        for part in sorted(p for s, p in found if s == seg) or [1]:
            target = out / f"{seg:03d}-{part:03d}.{d.extension}"
            con.execute(
                f"""COPY (SELECT {columns} FROM export_rows WHERE seg = {seg} AND _part = {part} AND _reason IS NULL)
                    TO {quote_literal(str(target))} ({options})"""
            )
            w = Written(m.segment_id, part, target, found.get((seg, part), 0))
            written.append(w)
            if on_file:
                on_file(w)
    return written


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


__all__ = ["Members", "SegmentCounts", "Written", "build_rows", "install_transforms", "members_sql", "write_files"]
