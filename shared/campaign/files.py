"""Reading an export file the way Campaign's audience load does: the manifest says what the file must be
(checksum, size, rows, format, columns), and a file that is anything else is refused with the reason, before
any list or profile is touched."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from shared.activation.destinations import CsvOptions
from shared.activation.manifest import ExportManifest, ManifestFile
from shared.engine import scalar
from shared.errors import Conflict, NotFound, ValidationError
from shared.sql import parquet, quote_ident, quote_literal
from shared.storage import BlobStore, TooLarge
from shared.timing import Laps

_DELIMITERS = ",;|\t"


def receive_export(
    con: duckdb.DuckDBPyConnection,
    dlz: BlobStore,
    etag: str,
    path: Path,
    manifest: ExportManifest,
    entry: ManifestFile,
    *,
    allowed: set[str],
    phases: Laps,
) -> None:
    """Download the version `etag` of an export file to `path` and check it against its manifest, its size
    first, then its SHA-256 while DuckDB fills `incoming` from it (`read_export`). The checksum is decided
    before what reading found: a file that is not what its manifest says is refused for that, whatever else
    is wrong with it. Its phases: `receive` (the download) and `read` (reading and hashing side by side)."""
    name = entry.name
    try:
        size = dlz.download_version(name, etag, path, max_bytes=entry.bytes)
    except TooLarge as exc:  # nothing of it is read
        size = exc.size
    except (NotFound, Conflict) as exc:
        raise ValidationError(
            f"{name}: listed in its manifest but not in the DLZ as version {etag} (deleted or replaced since)"
        ) from exc
    if size != entry.bytes:
        raise ValidationError(
            f"{name}: the file has {size} bytes but its manifest says {entry.bytes}; "
            "it was truncated or replaced, so it is not loaded"
        )
    phases.lap("receive")
    with ThreadPoolExecutor(max_workers=1) as pool, open(path, "rb") as fh:
        digest = pool.submit(hashlib.file_digest, fh, "sha256")  # hashlib lets go of the GIL: a core of its own
        try:
            read_export(con, path, manifest, entry, allowed=allowed)
        finally:
            found = digest.result().hexdigest()
            if found != entry.sha256:
                raise ValidationError(
                    f"{name}: its SHA-256 is {found} but its manifest says {entry.sha256}; "
                    "it was changed after export, so it is not loaded"
                )
    phases.lap("read")


def read_export(
    con: duckdb.DuckDBPyConnection, path: Path, manifest: ExportManifest, entry: ManifestFile, *, allowed: set[str]
) -> None:
    """Fill the temp table `incoming` (every column VARCHAR, plus `_row`, the 1-based data row) from the file,
    after checking its columns against the manifest and the target mapping and its row count."""
    name = entry.name
    columns = manifest.columns
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ValidationError(
            f"{name}: columns {unknown} are not columns of target mapping {manifest.target_mapping!r}; "
            "map them to its columns in the destination"
        )
    fmt = manifest.format.value
    typed = "{" + ", ".join(f"{quote_literal(c)}: 'VARCHAR'" for c in columns) + "}"
    if fmt == "csv":
        opts = manifest.csv or CsvOptions()
        _check_header(path, name, columns, opts)
        source = (
            f"read_csv({quote_literal(str(path))}, header = true, auto_detect = false, columns = {typed}, "
            f"delim = {quote_literal(opts.delimiter)}, quote = {quote_literal(opts.quote)}, "
            f"escape = {quote_literal(opts.escape)}, nullstr = {quote_literal(opts.null_value)}, "
            f"compression = {quote_literal('gzip' if opts.gzip else 'none')}, strict_mode = true)"
        )
    elif fmt == "json":
        keys = _json_keys(con, path, name)
        if keys - set(columns):
            raise ValidationError(f"{name}: unknown keys {sorted(keys - set(columns))}; its manifest says {columns}")
        source = f"read_json({quote_literal(str(path))}, format = 'newline_delimited', columns = {typed})"
    else:
        found = [r[0] for r in con.execute(f"SELECT name FROM parquet_schema({quote_literal(str(path))})").fetchall()]
        if found[1:] != columns:  # the first row is the schema's root
            raise ValidationError(f"{name}: its columns are {found[1:]} but its manifest says {columns}")
        source = f"{parquet(path)}"
    select = ", ".join(f"CAST({quote_ident(c)} AS VARCHAR) AS {quote_ident(c)}" for c in columns)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE incoming AS SELECT row_number() OVER () AS _row, {select} FROM {source}"
        )
    except duckdb.Error as exc:
        raise ValidationError(f"{name}: cannot be read as {fmt}: {str(exc).splitlines()[0]}") from exc
    rows = scalar(con, "SELECT count(*) FROM incoming")
    if rows != entry.rows:
        raise ValidationError(f"{name}: the file has {rows} rows but its manifest says {entry.rows}")


def _check_header(path: Path, name: str, columns: list[str], opts: CsvOptions) -> None:
    opener = gzip.open if opts.gzip else open
    try:
        with opener(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            quote, escape = opts.quote, opts.escape
            reader = csv.reader(
                text,
                delimiter=opts.delimiter,
                quotechar=quote,
                doublequote=escape == quote,
                escapechar=None if escape == quote else escape,
            )
            header = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{name}: cannot read its header: {exc}") from exc
    if header is None:
        raise ValidationError(f"{name}: the file is empty; a CSV export always has a header row")
    if header != columns:
        hint = ""
        others = [d for d in _DELIMITERS if d != opts.delimiter and len(header) == 1 and d in header[0]]
        if others:
            hint = f" (it looks delimited by {others[0]!r}, the manifest says {opts.delimiter!r})"
        raise ValidationError(f"{name}: the header is {header} but its manifest says {columns}{hint}")


def _json_keys(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> set[str]:
    try:
        rows = con.execute(
            "SELECT DISTINCT unnest(json_keys(json)) FROM read_json_objects(?, format = 'newline_delimited')",
            [str(path)],
        ).fetchall()
    except duckdb.Error as exc:
        raise ValidationError(f"{name}: not JSON lines: {str(exc).splitlines()[0]}") from exc
    return {r[0] for r in rows}
