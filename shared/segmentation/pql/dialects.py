"""Where SQL dialects differ, in one place: how a field path becomes a column, whether definition values are
parameters or literals, and the generation of SQL text from the compiler's sqlglot trees. DuckDB is the
product's engine; PostgreSQL runs the benchmark's comparison from the same trees (and a distributed engine,
Spark SQL say, would be one more `Dialect`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp


@dataclass(frozen=True)
class Dialect:
    name: str  # a sqlglot dialect
    inline: bool = False  # values as literals (for a client without parameters, such as psql)
    # A flat layout: field path -> column name. Without it, a path is a struct access on the row
    # (`p.homeAddress.stateProvince`), as in the profile store's Parquet files.
    columns: Mapping[str, str] = field(default_factory=dict)

    def column(self, table: str, parts: tuple[str, ...]) -> exp.Expression:
        dotted = ".".join(parts)
        if self.columns:
            if dotted not in self.columns:
                raise KeyError(f"{dotted!r} has no column in the {self.name} layout")
            return exp.column(self.columns[dotted], table=table)
        column = exp.column(parts[0], table=table)
        if len(parts) == 1:
            return column
        return exp.Dot.build([column, *(exp.to_identifier(p) for p in parts[1:])])

    def literal(self, value: Any) -> exp.Expression:
        if value is None:
            return exp.null()
        if isinstance(value, bool):
            return exp.Boolean(this=value)
        if isinstance(value, int | float):
            return exp.Literal.number(value)
        if isinstance(value, dt.datetime):
            return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("TIMESTAMPTZ"))
        if isinstance(value, dt.date):
            return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("DATE"))
        if isinstance(value, list | tuple):
            return exp.Array(expressions=[self.literal(v) for v in value])
        return exp.Literal.string(str(value))

    def sql(self, tree: exp.Expression) -> str:
        return tree.sql(dialect=self.name, identify=True)


DUCKDB = Dialect("duckdb")


def postgres(columns: Mapping[str, str]) -> Dialect:
    """PostgreSQL over flat tables (the benchmark's), with values inlined for psql."""
    return Dialect("postgres", inline=True, columns=columns)
