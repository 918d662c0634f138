"""Reading a landed file into records: one JSON text per row with its row number, whatever the format.
NDJSON lines are taken as they are; CSV rows (dotted column names) and Parquet rows are turned into JSON,
so one validator serves every format."""

from __future__ import annotations

import csv
import io
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shared.errors import ValidationError, listed
from shared.ingestion.schemas import FieldType, Namespace, Schema
from shared.sql import nest, quote_ident, quote_literal


class FileFormat(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"
    JSON = "json"
    PARQUET = "parquet"

    @classmethod
    def of(cls, file_name: str) -> FileFormat:
        """The format a file's name says, looking through a `.gz` (`crm.csv.gz` is CSV)."""
        inner = file_name[:-3] if file_name.lower().endswith(".gz") else file_name
        ext = inner.rsplit(".", 1)[-1].lower() if "." in inner else ""
        fmt = {
            "csv": cls.CSV,
            "ndjson": cls.NDJSON,
            "jsonl": cls.NDJSON,
            "json": cls.JSON,
            "parquet": cls.PARQUET,
        }.get(ext)
        if fmt is None:
            raise ValidationError(
                f"{file_name}: unsupported file type {('.' + ext) if ext else '(no extension)'}; "
                "use .csv, .ndjson/.jsonl, .json or .parquet, each optionally gzipped (.csv.gz)"
            )
        return fmt


@dataclass
class Records:
    """Rows of one file: `table` has `_row` (1-based, as a person would count them) and `record` (JSON text)."""

    table: pa.Table
    text_values: bool  # CSV: every value arrives as text and is judged by whether it converts
    row_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (row, field, reason) found while reading

    @property
    def rows_read(self) -> int:
        return self.table.num_rows + len({r for r, _, _ in self.row_errors})


@dataclass
class Lines:
    """A chunk of NDJSON lines as they were read: whole lines, the first numbered `first`. Validation reads them
    typed at once when it can (`validation.typed_lines`), and as `records()` otherwise."""

    data: bytes | bytearray
    file_name: str
    first: int

    @cached_property  # counting a 64 MB chunk's line breaks takes about 25 ms; the reader and validation both ask
    def rows(self) -> int:
        """How many lines (rows) the chunk has: a last line may lack its line break."""
        return self.data.count(b"\n") + (0 if self.data.endswith(b"\n") else 1)

    def records(self) -> Records:
        return _lines(self.data, self.file_name, self.first)


def inflated(path: Path, file_name: str, *, limit: int, into: Path) -> Path:
    """A `.gz` file's content (every member of it, as `gzip` writes and `cat` joins them) inflated to `into`, 8 MB
    at a time; any other file as it is. The content may be at most `limit` bytes (INGESTION_MAX_FILE_BYTES),
    which is checked as it inflates: a small file can hold a very large one."""
    if not file_name.lower().endswith(".gz"):
        return path
    with open(path, "rb") as src, open(into, "wb") as out:
        head = src.read(4)
        if head[:2] != b"\x1f\x8b":
            raise ValidationError(f"{file_name}: named .gz but not gzip data (it starts with {head!r})")
        src.seek(0)
        inflater, written = zlib.decompressobj(wbits=31), 0  # the gzip container
        while block := src.read(8 << 20):
            while block:
                if inflater.eof:  # the next member, after any padding
                    block = block.lstrip(b"\x00")
                    if not block:
                        break
                    inflater = zlib.decompressobj(wbits=31)
                try:
                    content = inflater.decompress(block, limit + 1 - written)
                except zlib.error as exc:
                    raise ValidationError(f"{file_name}: the gzip data is damaged ({exc})") from exc
                written += len(content)
                if written > limit:
                    raise ValidationError(
                        f"{file_name}: it inflates to over {limit:,} bytes, the limit (INGESTION_MAX_FILE_BYTES); "
                        "split the file"
                    )
                out.write(content)
                block = inflater.unused_data
        if not inflater.eof:
            raise ValidationError(f"{file_name}: the gzip data ends early (a cut-off upload?)")
    return into


def read_chunks(
    path: Path,
    *,
    file_name: str,
    schema: Schema,
    con: duckdb.DuckDBPyConnection,
    chunk_bytes: int,
    whole_file_limit: int,
) -> Iterator[Records | Lines]:
    """The file's records, about `chunk_bytes` of them at a time (rows numbered across the whole file), so
    memory follows the chunk and not the file. NDJSON, CSV and Parquet are read in chunks; a JSON array is read
    whole, so it may be at most `whole_file_limit` bytes (INGESTION_MAX_WHOLE_FILE_BYTES)."""
    fmt = FileFormat.of(file_name)
    head = _first_content(path)
    if head is None:
        raise ValidationError(f"{file_name}: the file is empty")
    if fmt is FileFormat.PARQUET:
        yield from _read_parquet(path, file_name, con, chunk_bytes)
    elif fmt is FileFormat.CSV:
        yield from _read_csv(path, file_name, schema, con, chunk_bytes)
    elif fmt is FileFormat.JSON and head == b"[":
        size = path.stat().st_size
        if size > whole_file_limit:
            raise ValidationError(
                f"{file_name}: {size:,} bytes is over the limit of {whole_file_limit:,} for a JSON array, which is "
                "read whole (INGESTION_MAX_WHOLE_FILE_BYTES); land it as NDJSON (one record per line), or split it"
            )
        yield _read_json_array(path.read_bytes(), file_name, con)
    else:
        yield from _read_lines(path, file_name, chunk_bytes)


def _first_content(path: Path) -> bytes | None:
    """The file's first byte that is not white space, or None when there is none."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            stripped = block.lstrip()
            if stripped:
                return stripped[:1]
    return None


def _numbered(records: pa.Array | pa.ChunkedArray, first: int = 1) -> pa.Table:
    """The records with their row numbers, in batches (see `_batched`)."""
    rows = pa.array(range(first, first + len(records)), pa.int64())
    return _batched(pa.table({"_row": rows, "record": records}))


def _batched(table: pa.Table) -> pa.Table:
    """The table in batches of DuckDB's row-group size (zero-copy slices): DuckDB scans an Arrow table a batch
    per thread, so a 64 MiB chunk in one batch was validated on one core (0.94 s against 0.51 s)."""
    return pa.Table.from_batches(table.to_batches(max_chunksize=_SCAN_BATCH_ROWS), table.schema)


_SCAN_BATCH_ROWS = 122_880
_NEWLINE = pa.scalar(10, pa.uint8())  # a uint8 scalar: an int one made `equal` widen every byte (1.3 s per 64 MiB)


def _read_lines(path: Path, file_name: str, chunk_bytes: int) -> Iterator[Lines]:
    """The file's lines, whole lines of about `chunk_bytes` at a time (a longer line is read whole). Each chunk is
    read into a buffer of its own, behind the part line the chunk before left over: only that part is copied
    (joining and cutting the chunks as bytes copied each twice: a 289 MB file's lines took 0.55-0.73 s to read,
    now 0.38-0.41 s)."""
    first, carry = 1, b""
    with open(path, "rb") as fh:
        while True:
            data = bytearray(len(carry) + chunk_bytes)
            data[: len(carry)] = carry
            read = fh.readinto(memoryview(data)[len(carry) :])
            end = len(carry) + read
            cut = end if not read else data.rfind(b"\n", 0, end) + 1
            if not end:
                return
            if cut == 0:  # no line ends in this chunk yet: read on
                carry = bytes(data[:end])
                continue
            carry = bytes(data[cut:end])
            del data[cut:]  # the last whole line's end: a shrink in place (what follows it was copied above)
            lines = Lines(data, file_name, first)
            first += lines.rows
            yield lines
            if not read:
                return


def _lines(data: bytes, file_name: str, first: int) -> Records:
    """Lines as Arrow strings over the chunk's own bytes: only the line offsets are new (found in C++, ~32 MB at
    a time), nothing is copied. Each line keeps its line break, which JSON reads as space."""
    buffer = pa.py_buffer(data)
    ends = []
    for start in range(0, len(data), 32 << 20):
        size = min(32 << 20, len(data) - start)
        chunk = pa.Array.from_buffers(pa.uint8(), size, [None, buffer.slice(start, size)])
        ends.append(pc.add(pc.indices_nonzero(pc.equal(chunk, _NEWLINE)).cast(pa.int64()), start + 1))
    last = [] if data.endswith(b"\n") else [pa.array([len(data)], pa.int64())]  # a last line without a break
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), *ends, *last])
    lines = pa.LargeStringArray.from_buffers(len(offsets) - 1, offsets.buffers()[1], buffer)
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise ValidationError(f"{file_name}: not UTF-8 text (in the lines from row {first})") from exc
    return Records(table=_numbered(lines, first), text_values=False)


def _read_json_array(data: bytes, file_name: str, con: duckdb.DuckDBPyConnection) -> Records:
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _doc AS SELECT ?::JSON AS doc",
            [data.decode("utf-8")],
        )
        rel = con.sql("SELECT unnest(json_extract(doc, '$[*]'))::VARCHAR AS record FROM _doc")
        records = rel.to_arrow_table().column("record").combine_chunks()
    except (duckdb.Error, UnicodeDecodeError) as exc:
        raise ValidationError(f"{file_name}: not a JSON array of records: {_first_line(exc)}") from exc
    return Records(table=_numbered(records), text_values=False)


def _json_records(con: duckdb.DuckDBPyConnection, rows: pa.RecordBatch, select: str) -> pa.Array:
    """The `record` column (JSON text) that `select`, a query over `_source`, makes of a batch of rows."""
    con.register("_source", pa.Table.from_batches([rows]))
    try:
        return con.sql(select).to_arrow_table().column("record").combine_chunks()
    finally:
        con.unregister("_source")


def _read_parquet(path: Path, file_name: str, con: duckdb.DuckDBPyConnection, chunk_bytes: int) -> Iterator[Records]:
    """Each row as a JSON object, a batch of rows at a time (about `chunk_bytes` of decoded data per batch)."""
    try:
        source = pq.ParquetFile(path)
        meta = source.metadata
        decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        per_batch = max(1, meta.num_rows * chunk_bytes // max(decoded, 1))
        batches = source.iter_batches(batch_size=per_batch)
        first = 1
        for batch in batches:
            records = _json_records(con, batch, "SELECT to_json(t)::VARCHAR AS record FROM _source AS t")
            yield Records(table=_numbered(records, first), text_values=False)
            first += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ValidationError(f"{file_name}: not a readable Parquet file: {_first_line(exc)}") from exc


# A CSV chunk is read at 1/_CSV_GROWTH of INGESTION_CHUNK_BYTES: its rows become JSON objects and take the row
# checks, several times the memory of NDJSON lines read typed. A 5M-row CSV (270 MB) into a 10M-person store
# peaked at 1,816 MB in validation with 64 MB chunks and DUCKDB_MEMORY_LIMIT=600MB; alone, 1,667 MB against
# 1,139 MB with 16 MB chunks, in as much time.
_CSV_GROWTH = 4


def _read_csv(
    path: Path, file_name: str, schema: Schema, con: duckdb.DuckDBPyConnection, chunk_bytes: int
) -> Iterator[Records]:
    """The rows as JSON objects, a block of about `chunk_bytes` ÷ _CSV_GROWTH at a time (pyarrow's streaming
    reader). A row with the wrong number of columns is skipped and reported with its data row number, in its
    chunk."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 24)  # the whole header line, however many columns it names
    try:
        newline = head.find(b"\n")
        text_head = head[: max(newline + 1, 1 << 16)].decode("utf-8", errors="strict").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{file_name}: not UTF-8 text (byte {exc.start})") from exc
    header = next(csv.reader(io.StringIO(text_head)), [])
    columns = _check_header(header, file_name, schema)
    bad_rows: list[tuple[int, str, str]] = []  # reported by the parser, which reads ahead of the batches

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # pyarrow counts the header as row 1; people count data rows.
        bad_rows.append((row.number - 1, "", f"expected {row.expected_columns} columns, found {row.actual_columns}"))
        return "skip"

    to_json = f"SELECT {_csv_to_json(columns, schema)}::VARCHAR AS record FROM _source"
    numbering = _RowNumbers()
    block = max(1, min(chunk_bytes // _CSV_GROWTH, (1 << 31) - 1))
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
        for batch in reader:
            records = _json_records(con, batch.rename_columns([f"c{i}" for i in range(batch.num_columns)]), to_json)
            rows, errors = numbering.take(len(records), bad_rows)
            yield Records(
                table=_batched(pa.table({"_row": rows, "record": records})), text_values=True, row_errors=errors
            )
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc):  # pyarrow: "straddling object straddles two block boundaries"
            raise ValidationError(
                f"{file_name}: a row is longer than a CSV chunk ({block:,} bytes, a quarter of "
                "INGESTION_CHUNK_BYTES); raise INGESTION_CHUNK_BYTES or shorten the row"
            ) from exc
        raise ValidationError(f"{file_name}: not readable as CSV: {_first_line(exc)}") from exc
    if bad_rows or not numbering.next_row > 1:  # bad rows after the last good one; or a header alone
        yield Records(table=_numbered(pa.array([], pa.large_string())), text_values=True, row_errors=bad_rows)


def _check_header(header: list[str], file_name: str, schema: Schema) -> list[tuple[int, str]]:
    if not header or all(not h.strip() for h in header):
        raise ValidationError(f"{file_name}: no header row; the first row must name the columns")
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes:
        raise ValidationError(f"{file_name}: columns named more than once: {listed(dupes)}")
    known = {f.path for f in schema.fields} | {f"identityMap.{ns.value}" for ns in Namespace}
    unknown = [h for h in header if h not in known]
    if unknown:
        raise ValidationError(
            f"{file_name}: columns {listed(unknown)} are not fields of schema {schema.id!r} "
            f"(expected dotted paths such as 'person.name.firstName' or 'identityMap.Email')"
        )
    return list(enumerate(header))


def _csv_to_json(columns: list[tuple[int, str]], schema: Schema) -> str:
    """SQL building one JSON object per CSV row: dotted names become nesting, identityMap.NS a one-id list."""
    leaves: dict[str, str] = {}
    identities: list[str] = []
    for i, name in columns:
        col = quote_ident(f"c{i}")
        if name.startswith("identityMap."):
            ns = name.split(".", 1)[1]
            identities.append(
                f"{quote_literal(ns)}, CASE WHEN {col} IS NULL THEN NULL "
                f"ELSE json_array(json_object('id', {col}, 'primary', {'true' if not identities else 'false'})) END"
            )
        elif schema.field(name).type is FieldType.ARRAY:
            leaves[name] = f"CASE WHEN json_valid({col}) THEN json({col}) ELSE to_json({col}) END"
        else:
            leaves[name] = col
    parts = [f"{quote_literal(top)}, {expr}" for top, expr in nest(leaves, as_json=True)]
    if identities:
        parts.append(f"'identityMap', json_object({', '.join(identities)})")
    return f"json_object({', '.join(parts)})"


class _RowNumbers:
    """Data row numbers for rows read in order, around the ones skipped as malformed."""

    def __init__(self) -> None:
        self.next_row = 1

    def take(self, count: int, skipped: list[tuple[int, str, str]]) -> tuple[pa.Array, list[tuple[int, str, str]]]:
        """The numbers of the next `count` rows, and the skipped rows among them (taken out of `skipped`, which
        is sorted and may already hold rows further on)."""
        if not skipped or skipped[0][0] >= self.next_row + count:  # none among them (nearly always)
            self.next_row += count
            return pa.array(range(self.next_row - count, self.next_row), pa.int64()), []
        skip = {r for r, _, _ in skipped}
        out, row = [], self.next_row
        for _ in range(count):
            while row in skip:
                row += 1
            out.append(row)
            row += 1
        self.next_row = row
        mine = [e for e in skipped if e[0] < row]
        del skipped[: len(mine)]
        return pa.array(out, pa.int64()), mine


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
