"""Campaign's recipients: its own profile table, the source of truth for who exists. Created and updated
only by Campaign's own import of a seed/CRM file; exports from the platform may update attributes of
recipients that exist (profile sync) and never create one. Opt-out, blocklist and quarantine flags are
Campaign's: an import may set them, never clear them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from shared.engine import scalar
from shared.errors import ValidationError
from shared.sql import parquet, quote_ident, quote_literal

RECIPIENTS_ID = "recipients"
FLAGS = ("optOut", "blocklisted", "quarantined")
# Columns that only Campaign writes: never updated from an export file.
PROTECTED = {"id", *FLAGS, "quarantineReason", "created", "updated"}
OPT_OUT_VALUES = "('n', 'no', 'false', '0', 'dn', 'out')"
EMPTY = (
    "SELECT NULL::BIGINT AS id, NULL::BOOLEAN AS optOut, NULL::BOOLEAN AS blocklisted, "
    "NULL::BOOLEAN AS quarantined, NULL::VARCHAR AS quarantineReason, NULL::TIMESTAMPTZ AS created, "
    "NULL::TIMESTAMPTZ AS updated WHERE false"
)


def source_of(path: Path | None) -> str:
    """The recipients snapshot as a FROM source (an empty table when Campaign has none yet)."""
    return f"{parquet(path)}" if path else f"({EMPTY})"


def columns_of(con: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]


def seed(
    con: duckdb.DuckDBPyConnection,
    file: Path,
    current: str,
    *,
    key: str,
    allowed: list[str],
    now: dt.datetime,
    last_id: int = 0,
) -> tuple[str, dict[str, int]]:
    """Merge a seed file into the recipients (`current`, a FROM source) as the temp table `recipients_next`:
    rows are matched on `key` (computed from `email`/`phone` when the file has them and not the hashes); new
    keys get new ids, above `last_id` (the highest ever given). Every current recipient stays: an import
    never deletes.
    Returns the SQL source of the result and the counts."""
    attrs = _read_seed(con, file, allowed)
    _check_keys(con, file.name, key, attrs)
    return _merge_seed(con, current, key=key, attrs=attrs, allowed=allowed, now=now, last_id=last_id)


def _read_seed(con: duckdb.DuckDBPyConnection, file: Path, allowed: list[str]) -> list[str]:
    """The seed file as the temp table `seed` (text attributes, hashes computed, flags as booleans), and
    the attributes it gives."""
    name = file.name
    if file.suffix == ".csv":
        source = f"read_csv({quote_literal(str(file))}, header = true, all_varchar = true)"
    elif file.suffix in (".json", ".ndjson"):
        source = f"read_json_auto({quote_literal(str(file))}, format = 'newline_delimited')"
    else:
        raise ValidationError(f"{name}: a recipient seed is a .csv or .ndjson file")
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE seed_raw AS SELECT row_number() OVER () AS _row, * FROM {source}")
    except duckdb.Error as exc:
        raise ValidationError(f"{name}: cannot be read: {str(exc).splitlines()[0]}") from exc
    given = [c for c in columns_of(con, "seed_raw") if c != "_row"]
    unknown = [c for c in given if c not in allowed and c not in FLAGS and c != "quarantineReason"]
    if unknown:
        raise ValidationError(f"{name}: unknown columns {unknown}; recipient columns are {allowed + list(FLAGS)}")
    derived = {"email_lc_sha256": ("email_sha256", "email"), "phone_sha256": ("phone_sha256", "phone")}
    attrs = [c for c in allowed if c in given or (c in derived and derived[c][1] in given)]
    select = [
        f"CAST({quote_ident(c)} AS VARCHAR) AS {quote_ident(c)}"
        if c in given
        else f"{derived[c][0]}(CAST({quote_ident(derived[c][1])} AS VARCHAR)) AS {quote_ident(c)}"
        for c in attrs
    ]
    flags = [
        f"coalesce(lower(CAST({f} AS VARCHAR)) IN ('true', '1', 'y', 'yes'), false) AS {f}"
        if f in given
        else f"false AS {f}"
        for f in FLAGS
    ]
    reason = "CAST(quarantineReason AS VARCHAR)" if "quarantineReason" in given else "NULL::VARCHAR"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE seed AS
        SELECT _row, {", ".join(select + flags)}, {reason} AS quarantineReason FROM seed_raw"""
    )
    return attrs


def _check_keys(con: duckdb.DuckDBPyConnection, name: str, key: str, attrs: list[str]) -> None:
    """Every row of the seed has its key, and no two rows the same one."""
    if key not in attrs:
        raise ValidationError(
            f"{name}: every recipient needs {key!r} (or what it is computed from); the file has neither"
        )
    k = quote_ident(key)
    missing = [r[0] for r in con.execute(f"SELECT _row FROM seed WHERE {k} IS NULL ORDER BY 1 LIMIT 5").fetchall()]
    if missing:
        raise ValidationError(f"{name}: rows {missing} have no {key!r}")
    dupes = con.execute(
        f"SELECT {k}, list(_row ORDER BY _row) FROM seed GROUP BY 1 HAVING count(*) > 1 LIMIT 3"
    ).fetchall()
    if dupes:
        raise ValidationError(f"{name}: rows {[rows for _, rows in dupes]} have the same {key!r}")


def _merge_seed(
    con: duckdb.DuckDBPyConnection,
    current: str,
    *,
    key: str,
    attrs: list[str],
    allowed: list[str],
    now: dt.datetime,
    last_id: int,
) -> tuple[str, dict[str, int]]:
    """The recipients with the seed merged in, as `recipients_next`: matched rows updated, new ones given ids."""
    k = quote_ident(key)
    con.execute(f"CREATE OR REPLACE TEMP TABLE recipients_cur AS SELECT * FROM {current}")
    have = columns_of(con, "recipients_cur")
    for c in allowed:
        if c not in have:
            con.execute(f"ALTER TABLE recipients_cur ADD COLUMN {quote_ident(c)} VARCHAR")
    have = columns_of(con, "recipients_cur")
    top = max(scalar(con, "SELECT coalesce(max(id), 0) FROM recipients_cur"), last_id)
    ts = quote_literal(now.isoformat())
    merged = []
    for c in have:
        q = quote_ident(c)
        if c == "id":
            merged.append(
                f"coalesce(c.id, {int(top)} + row_number() OVER (PARTITION BY c.id IS NULL ORDER BY s._row)) AS id"
            )
        elif c in FLAGS:
            merged.append(f"coalesce(c.{c}, false) OR s.{c} AS {c}")
        elif c == "quarantineReason":
            merged.append("coalesce(c.quarantineReason, s.quarantineReason) AS quarantineReason")
        elif c == "created":
            merged.append(f"coalesce(c.created, {ts}::TIMESTAMPTZ) AS created")
        elif c == "updated":
            merged.append(f"{ts}::TIMESTAMPTZ AS updated")
        elif c in attrs:
            merged.append(f"coalesce(s.{q}, c.{q}) AS {q}")
        else:
            merged.append(f"c.{q}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE recipients_next AS
        SELECT {", ".join(merged)} FROM seed s LEFT JOIN recipients_cur c ON c.{k} = s.{k}
        UNION ALL BY NAME
        SELECT * FROM recipients_cur c WHERE NOT EXISTS (SELECT 1 FROM seed s WHERE s.{k} = c.{k})
        ORDER BY id"""
    )
    created, updated = con.execute(
        f"SELECT count(*) FILTER (WHERE c.id IS NULL), count(c.id) FROM seed s LEFT JOIN recipients_cur c ON c.{k} = s.{k}"
    ).fetchall()[0]
    return "recipients_next", {"rows": created + updated, "created": created, "updated": updated}
