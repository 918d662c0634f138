"""SQL text for DuckDB, in one place: quoted identifiers and literals, Parquet files as sources, and dotted
field paths with the nested SQL they stand for (so flat leaves can become structs and back). Values a query
depends on go in as parameters where DuckDB takes them; these helpers are for the names and paths it does not."""

from __future__ import annotations

from pathlib import Path


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def parquet(path: str | Path) -> str:
    """A Parquet file, or a folder of them (read as one), as a FROM source."""
    if Path(path).is_dir():
        path = Path(path) / "*.parquet"
    return f"read_parquet({quote_literal(str(path))})"


def column_ref(path: str, *, table: str | None = None) -> str:
    """`person.name.firstName` as a DuckDB reference into nested struct columns."""
    parts = [quote_ident(p) for p in path.split(".")]
    return ".".join(([quote_ident(table)] if table else []) + parts)


def json_path(path: str) -> str:
    return "$." + ".".join(quote_ident(p) for p in path.split("."))


def nest(leaves: dict[str, str], *, as_json: bool = False) -> list[tuple[str, str]]:
    """Turn {dotted path: SQL expression} into top-level (column, SQL) pairs of nested struct_pack calls
    (or json_object calls, with `as_json`)."""
    tree: dict = {}
    for path, expr in leaves.items():
        node = tree
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = expr

    def render(node: dict | str) -> str:
        if isinstance(node, str):
            return node
        if as_json:
            return "json_object(" + ", ".join(f"{quote_literal(k)}, {render(v)}" for k, v in node.items()) + ")"
        return "struct_pack(" + ", ".join(f"{quote_ident(k)} := {render(v)}" for k, v in node.items()) + ")"

    return [(name, render(sub)) for name, sub in tree.items()]
