"""A property: random well-typed PQL (arithmetic, if, comparisons, in/notIn, string tests, null tests, boolean
fields, exists/forall/count/sum/includes over an array of objects, and/or/not) over random profiles with nulls gives, compiled to SQL and run on DuckDB, exactly the people
a small independent Python evaluator of the documented semantics selects."""

from __future__ import annotations

import datetime as dt
import math

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.segmentation.pql import parse
from shared.segmentation.pql.compiler import Compiler, Fields

TAGS = 'STRUCT("k" VARCHAR, "v" BIGINT)[]'
FIELDS = Fields(profile={"n1": "BIGINT", "n2": "BIGINT", "s": "VARCHAR", "flag": "BOOLEAN", "tags": TAGS}, event={})
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)

# An expression is a (PQL text, evaluator) pair; an evaluator maps a profile to a value (None for null).
numbers_ = st.one_of(
    st.sampled_from(["n1", "n2"]).map(lambda f: (f, lambda p, f=f: p[f])),
    st.integers(-5, 12).map(lambda n: (str(n), lambda p, n=n: n)),
)


def _arith(op: str, a, b):
    def run(p):
        x, y = a[1](p), b[1](p)
        if x is None or y is None:
            return None
        if op in "/%" and y == 0:
            return None  # division by zero has no value
        if op == "/":
            return x / y
        if op == "%":
            return math.fmod(x, y)  # the sign of the dividend, as SQL's remainder
        return {"+": x + y, "-": x - y, "*": x * y}[op]

    return f"({a[0]} {op} {b[0]})", run


def _negate(a):
    return f"-({a[0]})", lambda p: None if a[1](p) is None else -a[1](p)


numbers = st.recursive(
    numbers_,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from("+-*/%"), inner, inner).map(lambda t: _arith(*t)),
        inner.map(_negate),
    ),
    max_leaves=4,
)

OPS = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def _compare(op, a, b):
    def run(p):
        x, y = a[1](p), b[1](p)
        return x is not None and y is not None and OPS[op](x, y)  # a comparison with a null is false

    return f"{a[0]} {op} {b[0]}", run


def _if_number(c, a, b):
    return f"if({c[0]}, {a[0]}, {b[0]})", lambda p: a[1](p) if c[1](p) else b[1](p)


def _in(negated: bool, values: list[str]):
    items = ", ".join(f'"{v}"' for v in values)
    if negated:  # notIn: neither side may be null
        return f"s notIn [{items}]", lambda p: p["s"] is not None and p["s"] not in values
    return f"s in [{items}]", lambda p: p["s"] in values


def _starts(prefix: str, case: bool):
    def run(p):
        if p["s"] is None:
            return False
        return p["s"].startswith(prefix) if case else p["s"].lower().startswith(prefix.lower())

    return f's.startsWith("{prefix}", {str(case).lower()})', run


def _tags_exist(n: int):
    return f"exists T from tags where T.v > {n}", lambda p: any(
        t["v"] is not None and t["v"] > n for t in p["tags"] or []
    )


def _tags_all(key: str):
    return f'forall T from tags : T.k = "{key}"', lambda p: all(t["k"] == key for t in p["tags"] or [])


def _tags_count(n: int):
    return f"tags.count() > {n}", lambda p: len(p["tags"] or []) > n


def _tags_sum(n: int):
    # A sum skips nulls, and a missing or empty array sums to 0.
    return f"tags.sum(v) >= {n}", lambda p: sum(t["v"] for t in p["tags"] or [] if t["v"] is not None) >= n


def _tags_include(key: str):
    return f'tags.k.includes("{key}")', lambda p: any(t["k"] == key for t in p["tags"] or [])


leaf_conditions = st.one_of(
    st.integers(-2, 4).map(_tags_exist),
    st.sampled_from(["a", "b"]).map(_tags_all),
    st.integers(0, 2).map(_tags_count),
    st.integers(-3, 6).map(_tags_sum),
    st.sampled_from(["a", "b"]).map(_tags_include),
    st.tuples(st.sampled_from(list(OPS)), numbers, numbers).map(lambda t: _compare(*t)),
    st.tuples(st.booleans(), st.lists(st.sampled_from(["a", "b", "ab", "B"]), min_size=1, max_size=3)).map(
        lambda t: _in(*t)
    ),
    st.tuples(st.sampled_from(["a", "A", "ab"]), st.booleans()).map(lambda t: _starts(*t)),
    st.just(("flag", lambda p: p["flag"] is True)),
    st.sampled_from(["n1", "s", "flag"]).map(lambda f: (f"{f}.isNull()", lambda p, f=f: p[f] is None)),
)


def _and(a, b):
    return f"({a[0]} and {b[0]})", lambda p: a[1](p) and b[1](p)


def _or(a, b):
    return f"({a[0]} or {b[0]})", lambda p: a[1](p) or b[1](p)


def _not(a):
    return f"not ({a[0]})", lambda p: not a[1](p)


conditions = st.recursive(
    leaf_conditions,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda t: _and(*t)),
        st.tuples(inner, inner).map(lambda t: _or(*t)),
        inner.map(_not),
        st.tuples(
            st.sampled_from(list(OPS)), st.tuples(inner, numbers, numbers).map(lambda t: _if_number(*t)), numbers
        ).map(lambda t: _compare(*t)),
    ),
    max_leaves=5,
)

profiles = st.lists(
    st.fixed_dictionaries(
        {
            "n1": st.one_of(st.none(), st.integers(-4, 10)),
            "n2": st.one_of(st.none(), st.integers(-4, 10)),
            "s": st.one_of(st.none(), st.sampled_from(["a", "ab", "B", "ba", ""])),
            "flag": st.one_of(st.none(), st.booleans()),
            "tags": st.one_of(
                st.none(),
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "k": st.one_of(st.none(), st.sampled_from(["a", "b"])),
                            "v": st.one_of(st.none(), st.integers(-2, 5)),
                        }
                    ),
                    max_size=3,
                ),
            ),
        }
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(people=profiles, condition=conditions)
def test_compiled_pql_agrees_with_an_independent_evaluator(people, condition):
    text, model = condition
    compiled = Compiler(FIELDS, NOW).compile_segments({"x": parse(text)})
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE unified_profiles (profileId VARCHAR, n1 BIGINT, n2 BIGINT, s VARCHAR, flag BOOLEAN, tags {TAGS})"
    )
    con.executemany(
        "INSERT INTO unified_profiles VALUES (?, ?, ?, ?, ?, ?)",
        [(f"p{i}", p["n1"], p["n2"], p["s"], p["flag"], p["tags"]) for i, p in enumerate(people)],
    )
    rows = con.execute(compiled.sql, compiled.params).fetchall()
    ours = {pid for pid, held in rows if held}
    expected = {f"p{i}" for i, p in enumerate(people) if model(p)}
    assert ours == expected, (text, compiled.sql)
