"""Row validation against a schema, in columns: every row is parsed once in DuckDB, each field is checked
by one SQL expression, and accepted rows become typed nested structs ready for the lake."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.json as pajson

from shared.engine import scalar
from shared.ingestion.records import Lines, Records, read_chunks
from shared.ingestion.schemas import SCALAR_ITEM_TYPES, FieldType, Namespace, Schema, SchemaField
from shared.sql import json_path, nest, quote_ident, quote_literal

IDENTITY_MAP_TYPE = 'MAP(VARCHAR, STRUCT(id VARCHAR, "primary" BOOLEAN)[])'

# JSON value types each field type accepts (text files bring only strings and are judged by conversion).
_JSON_TYPES = {
    FieldType.STRING: ("VARCHAR",),
    # Numeric strings in numeric fields are numbers ("1200" is 1200), as XDM ingestion coerces them.
    FieldType.INTEGER: ("BIGINT", "UBIGINT", "VARCHAR"),
    FieldType.NUMBER: ("BIGINT", "UBIGINT", "DOUBLE", "VARCHAR"),
    FieldType.BOOLEAN: ("BOOLEAN",),
    FieldType.DATE: ("VARCHAR",),
    FieldType.DATETIME: ("VARCHAR",),
    FieldType.ARRAY: ("ARRAY",),
}
# The JSON types the values of an array of values may have (no strings for numbers: they are cast as a list).
_VALUE_ITEM_TYPES = {
    FieldType.STRING: ("VARCHAR",),
    FieldType.INTEGER: ("BIGINT", "UBIGINT"),
    FieldType.NUMBER: ("BIGINT", "UBIGINT", "DOUBLE"),
    FieldType.BOOLEAN: ("BOOLEAN",),
}
# Types whose JSON kind may be right while the value is not ("2026-13-01" for a date): checked by a cast.
_CAST_CHECKED = (FieldType.INTEGER, FieldType.NUMBER, FieldType.BOOLEAN, FieldType.DATE, FieldType.DATETIME)
_NAMES = {
    FieldType.DATETIME: "date-time (ISO 8601)",
    FieldType.DATE: "date (YYYY-MM-DD)",
}


def json_kind(value: str) -> str:
    """SQL for the JSON type of a value that `json_extract` produced. Its text is minified JSON, so the first
    character tells the type without parsing again (as `json_type` would, many times per row)."""
    text = f"CAST({value} AS VARCHAR)"
    return (
        f"CASE left({text}, 1) WHEN '\"' THEN 'VARCHAR' WHEN '{{' THEN 'OBJECT' WHEN '[' THEN 'ARRAY' "
        f"WHEN 't' THEN 'BOOLEAN' WHEN 'f' THEN 'BOOLEAN' WHEN 'n' THEN 'NULL' "
        f"ELSE CASE WHEN regexp_matches({text}, '[.eE]') THEN 'DOUBLE' ELSE 'BIGINT' END END"
    )


def identities_given(values: list[str]) -> str:
    """SQL counting the identity fields (their text `values`) a record gives: those not blank."""
    return " + ".join(f"CASE WHEN nullif(trim({v}), '') IS NOT NULL THEN 1 ELSE 0 END" for v in values) or "0"


def _problem(field: str, reason_sql: str) -> str:
    return f"{{'field': {quote_literal(field)}, 'reason': {reason_sql}}}"


def _sql_list(values: tuple[str, ...] | list[str]) -> str:
    return "(" + ", ".join(quote_literal(v) for v in values) + ")"


class SchemaChecks:
    """The SQL that checks and types the fields of one schema. `v[i]` is the i-th field's raw JSON value."""

    def __init__(self, schema: Schema, *, text_values: bool) -> None:
        self.schema = schema
        self.text_values = text_values
        self.fields = list(schema.fields)
        self.identity_index = len(self.fields) + 1  # identityMap is extracted last

    def extract_paths(self) -> str:
        paths = [json_path(f.path) for f in self.fields] + ["$.identityMap"]
        return "[" + ", ".join(quote_literal(p) for p in paths) + "]"

    def _allowed(self, f: SchemaField) -> tuple[str, ...]:
        if self.text_values and f.type is not FieldType.ARRAY:
            return ("VARCHAR",)
        return _JSON_TYPES[f.type]

    def problems(self) -> str:
        """One SQL list expression: the problems of a row, empty when the row is valid."""
        checks = [
            (_problem("", "'not valid JSON'"), "NOT ok"),
            (
                _problem("", "'a record must be a JSON object, found ' || lower(rtype)"),
                "ok AND rtype <> 'OBJECT'",
            ),
        ]
        for i, f in enumerate(self.fields, start=1):
            checks.extend(self._field_checks(i, f))
        checks.extend(self._identity_checks())
        cases = [f"CASE WHEN {condition} THEN {problem} END" for problem, condition in checks]
        any_problem = " OR ".join(f"coalesce({condition}, false)" for _, condition in checks)
        # Valid rows (nearly all) only evaluate the conditions; the list of problems is built for the others.
        return f"CASE WHEN {any_problem} THEN list_filter([{', '.join(cases)}], lambda p: p IS NOT NULL) ELSE [] END"

    def _field_checks(self, i: int, f: SchemaField) -> list[tuple[str, str]]:
        x = f"v[{i}]"
        t = self.kind_column(i)
        present = f"({x} IS NOT NULL AND {t} <> 'NULL')"
        text = f"json_extract_string({x}, '$')"
        allowed = self._allowed(f)
        kind = _NAMES.get(f.type, f.type.value)
        out = [
            (
                _problem(f.path, f"'expected {kind}, found ' || lower({t}) || ' ' || left({x}::VARCHAR, 60)"),
                f"{present} AND {t} NOT IN {_sql_list(allowed)}",
            )
        ]
        if f.required:
            out.insert(0, (_problem(f.path, "'required field is missing'"), f"ok AND NOT coalesce({present}, false)"))
        if f.type in _CAST_CHECKED:
            cast_fails = f"try_cast({text} AS {f.type.duckdb}) IS NULL"
            out.append(
                (
                    _problem(f.path, f"left({text}, 60) || ' is not a valid {kind}'"),
                    f"{present} AND {t} IN {_sql_list(allowed)} AND {cast_fails}",
                )
            )
        if f.enum:
            out.append(
                (
                    _problem(f.path, f"left({text}, 60) || ' is not one of {', '.join(f.enum)}'"),
                    f"{present} AND {t} = 'VARCHAR' AND {text} NOT IN {_sql_list(f.enum)}",
                )
            )
        members = [(f"{f.path}[].{item.name}", item.name, _JSON_TYPES[item.type], item.type) for item in f.items or []]
        if f.item_type:
            members.append((f"{f.path}[]", "", _VALUE_ITEM_TYPES[f.item_type], f.item_type))
        for where, name, allowed, kind in members:
            bad = (
                f"list_filter({self.item_column(i, name)}, "
                f"lambda e: {json_kind('e')} NOT IN {_sql_list(allowed)} AND {json_kind('e')} <> 'NULL')"
            )
            out.append(
                (
                    _problem(where, f"'expected {kind.value} in every item, found ' || left({bad}::VARCHAR, 60)"),
                    f"{present} AND {t} = 'ARRAY' AND len({bad}) > 0",
                )
            )
        return out

    def _identity_checks(self) -> list[tuple[str, str]]:
        m = f"v[{self.identity_index}]"
        is_obj = "im_type = 'OBJECT'"
        namespaces = _sql_list([ns.value for ns in Namespace])
        unknown = f"list_filter(im_keys, lambda k: k NOT IN {namespaces})"
        not_lists = f"list_filter(im_lists, lambda e: {json_kind('e')} NOT IN ('ARRAY', 'NULL'))"
        entries = "im_entries"
        # Every entry is an object with an id that is a non-blank string: as many ids as entries, all strings.
        bad_entries = (
            "(len(im_ids) <> len(im_entries) OR "
            "len(list_filter(im_ids, lambda i: NOT regexp_full_match(CAST(i AS VARCHAR), '\"(.*[^\\s].*)\"'))) > 0)"
        )
        identity_fields = [i for i, f in enumerate(self.fields, start=1) if f.identity]
        field_ids = identities_given([f"json_extract_string(v[{i}], '$')" for i in identity_fields])
        named = ", ".join(["identityMap"] + [self.fields[i - 1].path for i in identity_fields])
        return [
            (
                _problem(
                    "identityMap",
                    "'must be an object of namespace: [{id, primary}], found ' || lower(json_type(" + m + "))",
                ),
                f"ok AND {m} IS NOT NULL AND im_type NOT IN ('OBJECT', 'NULL')",
            ),
            (
                _problem(
                    "identityMap",
                    f"'unknown namespaces ' || {unknown}::VARCHAR || '; known: {', '.join(ns.value for ns in Namespace)}'",
                ),
                f"ok AND {is_obj} AND len({unknown}) > 0",
            ),
            (
                _problem("identityMap", "'each namespace must hold a list of {id, primary}'"),
                f"ok AND {is_obj} AND len({not_lists}) > 0",
            ),
            (
                _problem("identityMap", "'each identity needs a non-empty string id'"),
                f"ok AND {is_obj} AND len({not_lists}) = 0 AND {bad_entries}",
            ),
            (
                _problem("identityMap", f"'the record has no identity; give one in {named}'"),
                f"ok AND rtype = 'OBJECT' AND coalesce(CASE WHEN {is_obj} THEN len({entries}) END, 0) + ({field_ids}) = 0",
            ),
        ]

    @staticmethod
    def item_column(i: int, name: str) -> str:
        return quote_ident(f"items_{i}_{name}")

    @staticmethod
    def kind_column(i: int) -> str:
        return f"kind_{i}"

    def derived_columns(self) -> list[tuple[str, str]]:
        """Values several checks need, parsed once per row: the identityMap's parts and array items."""
        m = f"v[{self.identity_index}]"
        obj = f"{json_kind(m)} = 'OBJECT'"
        cols = [(self.kind_column(i), json_kind(f"v[{i}]")) for i in range(1, len(self.fields) + 1)]
        cols += [
            ("im_type", json_kind(m)),
            ("im_keys", f"CASE WHEN {obj} THEN json_keys({m}) END"),
            ("im_lists", f"CASE WHEN {obj} THEN json_extract({m}, '$.*') END"),
            ("im_entries", f"CASE WHEN {obj} THEN json_extract({m}, '$.*[*]') END"),
            ("im_ids", f"CASE WHEN {obj} THEN json_extract({m}, '$.*[*].id') END"),
        ]
        for i, f in enumerate(self.fields, start=1):
            members = [(item.name, f"$[*].{quote_ident(item.name)}") for item in f.items or []]
            if f.item_type:
                members.append(("", "$[*]"))
            for name, path in members:
                cols.append(
                    (
                        self.item_column(i, name),
                        f"CASE WHEN {self.kind_column(i)} = 'ARRAY' THEN json_extract(v[{i}], {quote_literal(path)}) END",
                    )
                )
        return cols

    def typed_columns(self) -> list[tuple[str, str]]:
        """(column, SQL) pairs turning a valid row's raw values into typed, nested lake columns."""
        leaves: dict[str, str] = {}
        for i, f in enumerate(self.fields, start=1):
            text = f"json_extract_string(v[{i}], '$')"
            if f.type is FieldType.ARRAY:
                leaves[f.path] = f"try_cast(v[{i}] AS {f.duckdb_type})"
            elif f.type is FieldType.STRING:
                leaves[f.path] = text
            else:
                leaves[f.path] = f"try_cast({text} AS {f.type.duckdb})"
        typed_map = f"try_cast(v[{self.identity_index}] AS {IDENTITY_MAP_TYPE})"
        return lake_columns(leaves, typed_map, lambda ns: f"map_extract_value({typed_map}, {quote_literal(ns)})")


def lake_columns(
    leaves: dict[str, str], identity_map: str, identities_of: Callable[[str], str]
) -> list[tuple[str, str]]:
    """The lake's columns, in order, from each schema field's typed value (by path) and the identityMap
    (`identity_map`, NULL when the record has none; `identities_of` a namespace gives its list). The identityMap
    is kept in one form whatever the record's: its namespaces in their order, those without a list left out."""
    entries = ", ".join(f"{{'key': {quote_literal(ns.value)}, 'value': {identities_of(ns.value)}}}" for ns in Namespace)
    canonical = (
        f"CASE WHEN {identity_map} IS NOT NULL THEN CAST(map_from_entries("
        f"list_filter([{entries}], lambda e: e.value IS NOT NULL)) AS {IDENTITY_MAP_TYPE}) END"
    )
    return [*nest(leaves), ("identityMap", canonical)]


class RowCounts:
    """What a validation counted: rows read, rejected, and what follows from them."""

    rows_read: int
    rejected: int

    @property
    def accepted(self) -> int:
        return self.rows_read - self.rejected

    @property
    def rejected_ratio(self) -> float:
        return self.rejected / self.rows_read if self.rows_read else 0.0


@dataclass
class Validation(RowCounts):
    """The outcome of checking one file's records: counts, and writers for the accepted rows and the errors."""

    con: duckdb.DuckDBPyConnection
    checks: SchemaChecks
    records: Records
    rows_read: int
    rejected: int

    def accepted_sql(self, *, batch_id: str, ingested_at: dt.datetime) -> str:
        """The accepted rows, typed and nested as the lake keeps them, in row order."""
        cols = ", ".join(f"{expr} AS {quote_ident(name)}" for name, expr in self.checks.typed_columns())
        return f"""SELECT {cols},
                          {quote_literal(batch_id)} AS _batchId,
                          _row,
                          {quote_literal(ingested_at.isoformat())}::TIMESTAMPTZ AS _ingestedAt
                   FROM _checked WHERE len(problems) = 0 ORDER BY _row"""

    def write_errors(self, path: Path) -> None:
        self.con.register("_read_errors", _read_errors_table(self.records))
        self.con.register("_records", self.records.table)
        try:
            self.con.execute(
                f"""COPY (
                    SELECT "row", field, reason, record FROM (
                        SELECT _row AS "row", p.field AS field, p.reason AS reason, left(rtrim(r.record, chr(10) || chr(13)), 2000) AS record
                        FROM (SELECT _row, unnest(problems) AS p FROM _checked WHERE len(problems) > 0)
                        JOIN _records r USING (_row)
                        UNION ALL
                        SELECT "row", field, reason, NULL FROM _read_errors
                    ) ORDER BY "row", field
                ) TO {quote_literal(str(path))} (FORMAT csv, HEADER)"""
            )
        finally:
            self.con.unregister("_read_errors")
            self.con.unregister("_records")

    def release(self) -> None:
        self.con.execute("DROP TABLE IF EXISTS _checked")

    def first_errors(self, limit: int = 20) -> list[tuple[int, str, str]]:
        rows = self.con.sql(
            f"""SELECT _row, p.field, p.reason FROM
                (SELECT _row, unnest(problems) AS p FROM _checked WHERE len(problems) > 0)
                ORDER BY _row LIMIT {int(limit)}"""
        ).fetchall()
        return sorted(rows + self.records.row_errors)[:limit]


def validate(con: duckdb.DuckDBPyConnection, records: Records | Lines, schema: Schema) -> Validation | TypedLines:
    """Check a chunk's rows. NDJSON lines are read typed at once when every row is plainly valid (`typed_lines`);
    otherwise, and for every other format, each row is checked field by field and its problems named."""
    if isinstance(records, Lines):
        typed = typed_lines(con, records, schema)
        if typed is not None:
            return typed
        records = records.records()
    checks = SchemaChecks(schema, text_values=records.text_values)
    con.register("_records", records.table)
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _checked AS
            WITH parsed AS (
                SELECT _row, record, json_valid(record) AS ok FROM _records
            ), extracted AS (
                SELECT _row, record, ok,
                       -- Valid JSON starting with a brace is an object; only the rare others are parsed again.
                       CASE WHEN NOT ok THEN NULL WHEN starts_with(ltrim(record), '{{') THEN 'OBJECT'
                            ELSE json_type(record::JSON) END AS rtype,
                       CASE WHEN ok THEN json_extract(record, {checks.extract_paths()}) END AS v
                FROM parsed
            ), derived AS (
                SELECT *, {", ".join(f"{expr} AS {name}" for name, expr in checks.derived_columns())} FROM extracted
            )
            SELECT _row, v, {checks.problems()} AS problems FROM derived"""
        )
    finally:
        con.unregister("_records")
    bad = scalar(con, "SELECT count(*) FROM _checked WHERE len(problems) > 0")
    read_errors = len({r for r, _, _ in records.row_errors})
    return Validation(
        con=con,
        checks=checks,
        records=records,
        rows_read=records.rows_read,
        rejected=bad + read_errors,
    )


def _read_errors_table(records: Records):
    import pyarrow as pa

    rows = records.row_errors
    return pa.table(
        {
            "row": pa.array([r for r, _, _ in rows], pa.int64()),
            "field": pa.array([f for _, f, _ in rows], pa.string()),
            "reason": pa.array([m for _, _, m in rows], pa.string()),
        }
    )


_FIRST_ERRORS = 20


@dataclass
class CheckedFile(RowCounts):
    """A whole file's validation, added up chunk by chunk: the counts, the first errors, each chunk's accepted
    rows (in the temp table `_accepted`, which DuckDB spills to disk past its memory limit, so the Parquet is
    encoded once) and its errors (written to `work`, joined by `write_errors`)."""

    con: duckdb.DuckDBPyConnection
    work: Path
    batch_id: str
    ingested_at: dt.datetime
    rows_read: int = 0
    rejected: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    error_parts: list[Path] = field(default_factory=list)
    chunks: int = 0

    def add(self, checked: Validation | TypedLines) -> None:
        n, self.chunks = self.chunks, self.chunks + 1
        self.rows_read += checked.rows_read
        self.rejected += checked.rejected
        if len(self.errors) < _FIRST_ERRORS:
            self.errors += checked.first_errors(_FIRST_ERRORS - len(self.errors))
        if checked.rejected:
            self.error_parts.append(self.work / f"errors-{n:05d}.csv")
            checked.write_errors(self.error_parts[-1])
        rows = checked.accepted_sql(batch_id=self.batch_id, ingested_at=self.ingested_at)
        if not n:  # the first chunk makes the table, even if it accepted nothing: the file's columns
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _accepted AS {rows}")
        elif checked.accepted:
            self.con.execute(f"INSERT INTO _accepted {rows}")
        checked.release()  # before the next chunk is read: memory holds one chunk at a time

    def first_errors(self, limit: int = _FIRST_ERRORS) -> list[tuple[int, str, str]]:
        return self.errors[:limit]

    def write_accepted(self, path: Path) -> None:
        """Every chunk's accepted rows, in row order, as one Parquet file."""
        self.con.execute(f"COPY _accepted TO {quote_literal(str(path))} (FORMAT parquet, COMPRESSION zstd)")

    def write_errors(self, path: Path) -> None:
        """Every chunk's errors as one CSV file (one header)."""
        with open(path, "wb") as out:
            for n, part in enumerate(self.error_parts):
                with open(part, "rb") as fh:
                    if n:
                        fh.readline()  # the header, written once
                    shutil.copyfileobj(fh, out, 8 << 20)


def check_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    file_name: str,
    schema: Schema,
    work: Path,
    batch_id: str,
    ingested_at: dt.datetime,
    chunk_bytes: int = 64 << 20,
    whole_file_limit: int = 256 << 20,
) -> CheckedFile:
    """Validate a local file against `schema`, a chunk at a time (see `read_chunks`)."""
    checked = CheckedFile(con, work, batch_id, ingested_at)
    chunks = read_chunks(
        path, file_name=file_name, schema=schema, con=con, chunk_bytes=chunk_bytes, whole_file_limit=whole_file_limit
    )
    for records in chunks:
        checked.add(validate(con, records, schema))
    return checked


# -- the typed fast path -----------------------------------------------------------------------------------

_ARROW_TYPES = {
    FieldType.STRING: pa.string(),
    FieldType.INTEGER: pa.int64(),
    FieldType.NUMBER: pa.float64(),
    FieldType.BOOLEAN: pa.bool_(),
    FieldType.DATE: pa.string(),  # dates and date-times are cast by DuckDB, as the row checks cast them
    FieldType.DATETIME: pa.string(),
}
_IDENTITIES = pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
_TYPED_BLOCK_BYTES = 4 << 20  # pyarrow parses blocks in parallel; a longer line makes the chunk take the row checks


@dataclass
class TypedLines(RowCounts):
    """A chunk of NDJSON lines read typed at once, every row valid (the table `_typed`)."""

    con: duckdb.DuckDBPyConnection
    columns: list[tuple[str, str]]
    rows_read: int
    rejected: int = 0

    def first_errors(self, limit: int = 20) -> list[tuple[int, str, str]]:
        return []

    def release(self) -> None:
        self.con.unregister("_typed")

    def accepted_sql(self, *, batch_id: str, ingested_at: dt.datetime) -> str:
        cols = ", ".join(f"{expr} AS {quote_ident(name)}" for name, expr in self.columns)
        return f"""SELECT {cols}, {quote_literal(batch_id)} AS _batchId, _row,
                          {quote_literal(ingested_at.isoformat())}::TIMESTAMPTZ AS _ingestedAt
                   FROM _typed t ORDER BY _row"""


def typed_lines(con: duckdb.DuckDBPyConnection, lines: Lines, schema: Schema) -> TypedLines | None:
    """The chunk read by pyarrow's JSON reader with the schema's types, if every row is plainly valid: None
    otherwise, and the rows are checked one by one (which names each problem). The reader is strict where the row
    checks are lenient (a number in a string field, "12" in an integer field, a field given twice): it refuses
    the chunk, and the row checks judge it. What it accepts is checked here as the row checks would (required
    fields, enums, dates, finite numbers, identities), and any row that fails sends the chunk to them too. So a
    chunk is accepted here only if the row checks accept every row, with the same typed values. One difference:
    the identityMap's namespaces are in the namespaces' order, not the record's."""
    arrow_schema = _arrow_schema(schema)
    if arrow_schema is None:
        return None
    try:
        table = pajson.read_json(
            pa.BufferReader(lines.data),
            read_options=pajson.ReadOptions(block_size=_TYPED_BLOCK_BYTES),
            parse_options=pajson.ParseOptions(explicit_schema=arrow_schema, unexpected_field_behavior="infer"),
        )
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != lines.rows or not _read_as_declared(table.schema, arrow_schema):
        return None  # blank lines (pyarrow skips them), an unknown identity namespace, or unknown item fields
    table = table.select(arrow_schema.names).append_column(
        "_row", pa.array(range(lines.first, lines.first + table.num_rows), pa.int64())
    )
    con.register("_typed", table)  # a batch per block read, which DuckDB scans in parallel; replaced by the next
    failing = " OR ".join(f"coalesce({c}, false)" for c in _typed_checks(schema))
    if scalar(con, f"SELECT count(*) FROM _typed t WHERE {failing}"):
        return None
    return TypedLines(con=con, columns=_typed_columns(schema), rows_read=table.num_rows)


def _arrow_schema(schema: Schema) -> pa.Schema | None:
    """The schema as pyarrow reads it, nested by path; None if a field's type has no strict reading."""
    tree: dict = {}
    for f in schema.fields:
        if f.type is FieldType.ARRAY:
            if f.item_type is not None:
                kind = pa.list_(_ARROW_TYPES[f.item_type])
            elif f.items and all(i.type in SCALAR_ITEM_TYPES for i in f.items):
                kind = pa.list_(pa.struct([(i.name, _ARROW_TYPES[i.type]) for i in f.items]))
            else:
                return None
        else:
            kind = _ARROW_TYPES[f.type]
        node = tree
        *parents, last = f.path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                return None
        node[last] = kind
    if "identityMap" in tree:
        return None
    tree["identityMap"] = pa.struct([(ns.value, _IDENTITIES) for ns in Namespace])

    def render(node):
        return pa.struct([(k, render(v)) for k, v in node.items()]) if isinstance(node, dict) else node

    return pa.schema([(k, render(v)) for k, v in tree.items()])


def _read_as_declared(read: pa.Schema, declared: pa.Schema) -> bool:
    """Whether the fields pyarrow inferred beside the declared ones are harmless: an unknown identity namespace
    or an unknown field of array items is not (the row checks refuse the first and drop the second); any other
    unknown field is left out, as the row checks leave it (and so is an identity's authenticatedState)."""
    if read.field("identityMap").type.num_fields != declared.field("identityMap").type.num_fields:
        return False

    def arrays(kind: pa.DataType, read_kind: pa.DataType) -> bool:
        if pa.types.is_list(kind):
            return kind == read_kind
        if pa.types.is_struct(kind):
            fields = {read_kind.field(i).name: read_kind.field(i).type for i in range(read_kind.num_fields)}
            return all(arrays(kind.field(i).type, fields[kind.field(i).name]) for i in range(kind.num_fields))
        return True

    return all(arrays(f.type, read.field(f.name).type) for f in declared if f.name != "identityMap")


def _column(path: str) -> str:
    return "t." + ".".join(quote_ident(p) for p in path.split("."))


def _typed_checks(schema: Schema) -> list[str]:
    """Conditions any of which sends a row (and its chunk) to the row checks."""
    checks = []
    for f in schema.fields:
        x = _column(f.path)
        if f.required:
            checks.append(f"{x} IS NULL")
        if f.enum:
            checks.append(f"{x} NOT IN {_sql_list(f.enum)}")
        if f.type in (FieldType.DATE, FieldType.DATETIME):
            checks.append(f"{x} IS NOT NULL AND try_cast({x} AS {f.type.duckdb}) IS NULL")
        if f.type is FieldType.NUMBER:
            checks.append(f"NOT isfinite({x})")  # pyarrow reads NaN, which is not JSON
        if f.type is FieldType.ARRAY:
            checks.append(f"list_bool_or(list_transform({x}, lambda e: e IS NULL))")
            if f.item_type is FieldType.NUMBER:
                checks.append(f"list_bool_or(list_transform({x}, lambda e: NOT isfinite(e)))")
            for item in f.items or []:
                if item.type is FieldType.NUMBER:
                    checks.append(
                        f"list_bool_or(list_transform({x}, lambda e: NOT isfinite(e.{quote_ident(item.name)})))"
                    )
    namespaces = [f"t.identityMap.{quote_ident(ns.value)}" for ns in Namespace]
    for ns in namespaces:
        checks.append(
            f"list_bool_or(list_transform({ns}, lambda e: e IS NULL OR regexp_full_match(coalesce(e.id, ''), '\\s*')))"
        )
    entries = " + ".join(f"coalesce(len({ns}), 0)" for ns in namespaces)
    field_ids = identities_given([_column(f.path) for f in schema.fields if f.identity])
    checks.append(f"{entries} + {field_ids} = 0")
    return checks


def _typed_columns(schema: Schema) -> list[tuple[str, str]]:
    """The lake's columns from the typed table: as `SchemaChecks.typed_columns` makes them from JSON values."""
    leaves = {}
    for f in schema.fields:
        x = _column(f.path)
        leaves[f.path] = f"CAST({x} AS {f.duckdb_type})" if f.type is not FieldType.STRING else x
    return lake_columns(
        leaves,
        "t.identityMap",
        lambda ns: (
            f"list_transform(t.identityMap.{quote_ident(ns)}, lambda e: {{'id': e.id, 'primary': e.\"primary\"}})"
        ),
    )
