"""PQL, the Profile Query Language: grammar → typed tree → DuckDB SQL, laid out like sqlglot."""

from shared.segmentation.pql.parser import PqlError, parse

__all__ = ["PqlError", "parse"]
