"""PQL text to a typed tree (`pql.ast`). Syntax errors name the line, the column and what was expected."""

from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from pathlib import Path as FilePath

from lark import (
    Lark,
    Token,
    Transformer,
    Tree,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)
from lark.exceptions import VisitError

from shared.errors import ValidationError
from shared.segmentation.pql import ast

STRING_FUNCTIONS = {
    "startsWith": ("startsWith", False),
    "doesNotStartWith": ("startsWith", True),
    "endsWith": ("endsWith", False),
    "doesNotEndWith": ("endsWith", True),
    "contains": ("contains", False),
    "doesNotContain": ("contains", True),
    "equals": ("equals", False),
    "notEqualTo": ("equals", True),
}
AGGREGATES = {"count", "sum", "avg", "average", "min", "max"}
# Methods on values (arrays, lists, dates, strings) beyond the string tests: the compiler types them.
METHODS = {
    "includes", "intersects", "intersection", "subsetOf", "supersetOf", "distinct",
    "count", "sum", "avg", "average", "min", "max",
    "getYear", "getMonth", "getDayOfMonth", "matches", "regexGroup",
}  # fmt: skip
FUNCTIONS = {"currentYear", "currentMonth", "currentDayOfMonth"}
_READABLE = {
    "COMPARATOR": "a comparison (=, !=, <, <=, >, >=)",
    "NAME": "a field name",
    "STRING": 'a string ("...")',
    "SIGNED_NUMBER": "a number",
    "NUMBER": "a number",
    "UNIT": "a unit (seconds … years)",
    "DIRECTION": "before or after",
    "PERIOD": "this/last/next week|month|year",
    "LPAR": "(",
    "RPAR": ")",
    "LSQB": "[",
    "RSQB": "]",
    "COMMA": ",",
    "DOT": ".",
    "COLON": ":",
    "BANG": "!",
    "XEVENT": "xEvent",
    "ADD_OP": "+ or -",
    "MUL_OP": "*, / or %",
    "ITER_SEP": ",",
    "FOLD": "sum, avg, min, max or count",
    "MINUS": "-",
    "$END": "the end of the expression",
}


class PqlError(ValidationError):
    """A PQL expression that cannot be parsed or compiled, with where it went wrong."""

    code = "pql"

    def __init__(self, message: str, *, line: int = 0, column: int = 0, start: int = -1, end: int = -1) -> None:
        where = f"line {line}, column {column}: " if line else ""
        super().__init__(f"PQL {where}{message}", details=[{"line": line, "column": column, "message": message}])
        self.line = line
        self.column = column


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = (FilePath(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


MAX_CHARS = 20_000
MAX_DEPTH = 64  # parentheses and brackets inside one another
MAX_TREE_DEPTH = 150  # rules inside one another, well within Python's recursion limit
MAX_INTEGER = 2**63 - 1
# The longest span a time condition may name, per unit: two hundred years.
MAX_SPAN = {"seconds": 6_311_390_400, "minutes": 105_189_840, "hours": 1_753_164, "days": 73_049}
MAX_SPAN |= {"weeks": 10_435, "months": 2_400, "years": 200}


@lru_cache(maxsize=4096)
def parse(text: str) -> ast.Expr:
    """Parse PQL text (`{"type": "PQL", "format": "pql/text", "value": ...}`'s value) into a tree. Trees are
    immutable, so a text parsed once (a job's shards each read every definition) is not parsed again."""
    if not text or not text.strip():
        raise PqlError("the expression is empty", line=1, column=1)
    _check_bounds(text)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text) from None
    _check_depth(tree)
    try:
        result = _ToAst().transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, PqlError):
            raise exc.orig_exc from None
        raise
    return _as_condition(result)


def _check_bounds(text: str) -> None:
    """Refuse, before parsing, what no definition needs and what would exhaust the parser: very long text,
    control characters, and nesting past MAX_DEPTH."""
    if len(text) > MAX_CHARS:
        raise PqlError(f"the expression is {len(text):,} characters; the limit is {MAX_CHARS:,}", line=1, column=1)
    depth, line, column, quoted, escaped = 0, 1, 0, False, False
    for char in text:
        column += 1
        if char == "\n":
            line, column = line + 1, 0
        elif ord(char) < 32 and char not in "\t\r" or char == "\x7f":
            raise PqlError(f"control character {char!r} is not allowed", line=line, column=column)
        elif quoted:
            escaped, quoted = (not escaped and char == "\\"), quoted and (escaped or char != '"')
        elif char == '"':
            quoted = True
        elif char in "([":
            depth += 1
            if depth > MAX_DEPTH:
                raise PqlError(
                    f"parentheses and brackets nest deeper than {MAX_DEPTH} levels", line=line, column=column
                )
        elif char in ")]":
            depth -= 1


def _check_depth(tree: Tree) -> None:
    """Refuse a tree deeper than MAX_TREE_DEPTH (a long chain of `not`, say) before anything recurses on it."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise PqlError(f"the expression nests deeper than {MAX_TREE_DEPTH} levels", **_pos(node.meta))
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def _amount(token: Token, unit: str) -> float:
    """A time span's amount, within what a date can hold."""
    amount = float(token)
    if amount > MAX_SPAN[unit]:
        raise PqlError(f"{token} {unit} is out of range; at most {MAX_SPAN[unit]:,} {unit}", **_pos(token))
    return amount


def _syntax_error(exc: UnexpectedInput, text: str) -> PqlError:
    line, column = getattr(exc, "line", 0) or 0, getattr(exc, "column", 0) or 0
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = getattr(exc, "expected", None) or getattr(exc, "accepts", None) or []
        lines = text.splitlines() or [""]
        return PqlError(
            f"the expression ends too soon; expected {_expected(expected)}",
            line=len(lines),
            column=len(lines[-1]) + 1,
        )
    if isinstance(exc, UnexpectedToken):
        return PqlError(
            f"unexpected {exc.token.value!r}; expected {_expected(exc.accepts or exc.expected)}",
            line=line,
            column=column,
        )
    if isinstance(exc, UnexpectedCharacters):
        return PqlError(f"unexpected character {text[exc.pos_in_stream]!r}", line=line, column=column)
    return PqlError(str(exc).splitlines()[0], line=line, column=column)


def _expected(names) -> str:
    readable = sorted({_READABLE.get(n, n.strip("_").lower().replace("_", " ")) for n in names})
    if len(readable) > 8:
        readable = readable[:8] + ["…"]
    return ", ".join(readable) if readable else "something else"


def _pos(meta_or_token) -> dict:
    pos = {"line": getattr(meta_or_token, "line", 0) or 0, "column": getattr(meta_or_token, "column", 0) or 0}
    start, end = getattr(meta_or_token, "start_pos", None), getattr(meta_or_token, "end_pos", None)
    if start is not None and end is not None:
        pos.update(start=start, end=end)
    return pos


_VALUES = (
    ast.Path, ast.Literal, ast.Call, ast.If, ast.Let, ast.Function, ast.Arithmetic, ast.Negate, ast.Fold
)  # fmt: skip


def _as_condition(node) -> ast.Expr:
    """A value used where a condition is expected: the compiler checks that it is a boolean."""
    if isinstance(node, _VALUES):
        return ast.BooleanValue(node, line=node.line, column=node.column, start=node.start, end=node.end)
    if isinstance(node, ast.Aggregate | ast.ListLiteral | ast.EventFilter):
        raise PqlError(
            "a number or list is not a condition; compare it with something", line=node.line, column=node.column
        )
    return node


def _literal_value(node) -> object:
    if not isinstance(node, ast.Literal):
        raise PqlError("expected a literal value here", line=node.line, column=node.column)
    return node.value


_XEVENT = "xEvent"


@v_args(meta=True)
class _ToAst(Transformer):
    # Conditions ---------------------------------------------------------------------------------

    def or_(self, meta, items):
        return ast.Or(tuple(_as_condition(i) for i in items), **_pos(meta))

    def and_(self, meta, items):
        return ast.And(tuple(_as_condition(i) for i in items), **_pos(meta))

    def not_(self, meta, items):
        return ast.Not(_as_condition(items[0]), **_pos(meta))

    def compare(self, meta, items):
        left, op, right = items
        # Errors point at the operator; the node's span stays the whole comparison (explain shows it).
        return ast.Compare(left, str(op), right, **{**_pos(meta), "line": op.line, "column": op.column})

    def in_(self, meta, items):
        return ast.InList(items[0], items[1], **_pos(meta))

    def not_in(self, meta, items):
        return ast.InList(items[0], items[1], negated=True, **_pos(meta))

    def let_(self, meta, items):
        *bindings, body = items
        names = [name for name, _ in bindings]
        if len(set(names)) != len(names):
            raise PqlError(f"let names {sorted({n for n in names if names.count(n) > 1})} twice", **_pos(meta))
        return ast.Let(tuple(bindings), body, **_pos(meta))

    def binding(self, meta, items):
        name, sign, value = items
        if str(sign) != "=":
            raise PqlError(f"let {name} takes `=`, not `{sign}`", **_pos(sign))
        return (str(name), value)

    def exists(self, meta, items):
        return ast.Quantifier("exists", items[0], **_pos(meta))

    def forall(self, meta, items):
        return ast.Quantifier("forall", items[0], **_pos(meta))

    def iterations(self, meta, items):
        return tuple(i for i in items if isinstance(i, ast.Iteration))

    def iteration(self, meta, items):
        name, source, *conditions = items
        condition = next((c for c in conditions if c is not None), None)
        source = None if source == _XEVENT else source
        if condition is not None:
            condition = _as_condition(condition)
        return ast.Iteration(str(name), source, condition, **_pos(meta))

    def xevent(self, meta, items):
        return _XEVENT

    def fold(self, meta, items):
        function, value, iterations = items
        name = str(function).lower()
        return ast.Fold("avg" if name == "average" else name, value, iterations, **_pos(meta))

    def if_(self, meta, items):
        condition, then, otherwise = items
        return ast.If(_as_condition(condition), then, otherwise, **_pos(meta))

    def arithmetic(self, meta, items):
        left, op, right = items
        return ast.Arithmetic(left, str(op), right, **{**_pos(meta), "line": op.line, "column": op.column})

    def negate(self, meta, items):
        (item,) = items
        if isinstance(item, ast.Literal) and isinstance(item.value, int | float) and not isinstance(item.value, bool):
            return ast.Literal(-item.value, **_pos(meta))
        return ast.Negate(item, **_pos(meta))

    def function(self, meta, items):
        token, args = items
        if str(token) not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise PqlError(f"unknown function {str(token)!r}; the functions are {known}", **_pos(token))
        if args:
            raise PqlError(f"{token}() takes no argument", **_pos(token))
        return ast.Function(str(token), **_pos(meta))

    def like(self, meta, items):
        return ast.Like(items[0], json.loads(items[1]), **_pos(meta))

    def chain(self, meta, items):
        _xevent, order_by, *steps = items
        if str(order_by) != "timestamp":
            raise PqlError("CHAIN orders events by timestamp only", **_pos(order_by))
        return ast.Chain(tuple(steps), **_pos(meta))

    def step(self, meta, items):
        name, what, comparator, amount, unit = items
        within = (str(comparator), _amount(amount, _unit(unit)), _unit(unit)) if comparator is not None else None
        return ast.ChainStep(str(name), _as_condition(what), within, **_pos(meta))

    # Operands ------------------------------------------------------------------------------------

    def name(self, meta, items):
        return ast.Path((str(items[0]),), **_pos(meta))

    def attr(self, meta, items):
        target, name = items
        if not isinstance(target, ast.Path):
            raise PqlError(f"'.{name}' must be followed by '(' here: only fields have fields", **_pos(name))
        return ast.Path((*target.parts, str(name)), **_pos(meta))

    def event_filter(self, meta, items):
        return ast.EventFilter(_as_condition(items[1]) if items[1] is not None else None, **_pos(meta))

    def in_segment(self, meta, items):
        return ast.InSegment(json.loads(items[0]), **_pos(meta))

    def args(self, meta, items):
        return list(items)

    def call(self, meta, items):
        target, token, args = items
        name, args, where = str(token), args or [], _pos(token)
        if isinstance(target, ast.EventFilter):
            if name not in AGGREGATES:
                raise PqlError(f"unknown event function {name!r}; use count, sum, avg, min or max", **where)
            if name == "count":
                if args:
                    raise PqlError("count() takes no argument", **where)
                return ast.Aggregate("count", target, **_pos(meta))
            if len(args) != 1 or not isinstance(args[0], ast.Path):
                raise PqlError(f"{name}() takes one event field, such as {name}(commerce.order.priceTotal)", **where)
            return ast.Aggregate("avg" if name == "average" else name, target, args[0], **_pos(meta))
        if name in ("isNull", "isNotNull"):
            if args:
                raise PqlError(f"{name}() takes no argument", **where)
            return ast.NullTest(target, is_null=name == "isNull", **_pos(meta))
        if name in STRING_FUNCTIONS:
            function, negated = STRING_FUNCTIONS[name]
            if not 1 <= len(args) <= 2 or not isinstance(args[0], ast.Literal) or not isinstance(args[0].value, str):
                raise PqlError(f'{name}() takes a string and an optional case flag: {name}("x", false)', **where)
            case = True
            if len(args) == 2:
                flag = args[1]
                if not isinstance(flag, ast.Literal) or not isinstance(flag.value, bool):
                    raise PqlError(f"the second argument of {name}() is true or false (case-sensitive)", **where)
                case = flag.value
            return ast.StringTest(target, function, args[0].value, case, negated, **_pos(meta))
        if name in METHODS:
            return ast.Call(target, name, tuple(args), **{**_pos(meta), "line": token.line, "column": token.column})
        raise PqlError(f"unknown function {name!r}", **where)

    # Literals ------------------------------------------------------------------------------------

    def string(self, meta, items):
        return ast.Literal(json.loads(items[0]), **_pos(meta))

    def number(self, meta, items):
        text = str(items[0])
        value = float(text) if any(c in text for c in ".eE") else int(text)
        if abs(value) > MAX_INTEGER:  # DuckDB's BIGINT and DOUBLE both hold what fits here
            raise PqlError(f"the number {text} is out of range (at most {MAX_INTEGER:,} either way)", **_pos(meta))
        return ast.Literal(value, **_pos(meta))

    def true(self, meta, items):
        return ast.Literal(True, **_pos(meta))

    def false(self, meta, items):
        return ast.Literal(False, **_pos(meta))

    def negative_number(self, meta, items):
        return self.negate(meta, [self.number(meta, items)])

    def list(self, meta, items):
        return ast.ListLiteral(tuple(i for i in items if i is not None), **_pos(meta))

    def date(self, meta, items):
        parts = [int(str(i)) for i in items if i is not None]
        try:
            value = dt.date(*parts[:3]) if len(parts) == 3 else dt.datetime(*parts, tzinfo=dt.UTC)
        except ValueError as exc:
            raise PqlError(f"date({', '.join(map(str, parts))}) is not a valid date: {exc}", **_pos(meta)) from None
        return ast.Literal(value, **_pos(meta))

    # Time ----------------------------------------------------------------------------------------

    def now(self, meta, items):
        return ast.Anchor("now", **_pos(meta))

    def today(self, meta, items):
        return ast.Anchor("today", **_pos(meta))

    def yesterday(self, meta, items):
        return ast.Anchor("yesterday", **_pos(meta))

    def period(self, meta, items):
        return ast.Anchor("period", period=_period(items[0]), **_pos(meta))

    def occurs(self, meta, items):
        subject, form = items
        if not isinstance(subject, ast.Path):
            raise PqlError("'occurs' applies to a date or time field", **_pos(meta))
        return ast.Occurs(subject, **form, **_pos(meta))

    def occurs_distance(self, meta, items):
        comparator, amount, unit, direction, anchor = items
        return {
            "form": "distance",
            "comparator": str(comparator),
            "amount": _amount(amount, _unit(unit)),
            "unit": _unit(unit),
            "direction": str(direction).lower(),
            "anchor": _anchor(anchor),
        }

    def occurs_relative(self, meta, items):
        return {"form": "relative", "direction": str(items[0]).lower(), "anchor": _anchor(items[1])}

    def occurs_on(self, meta, items):  # `occurs on today`, `occurs today`, `occurs this month`
        return {"form": "on", "anchor": _anchor(items[-1])}

    def occurs_between(self, meta, items):
        return {"form": "between", "anchor": _anchor(items[0]), "until": _anchor(items[1])}


def _anchor(node) -> ast.Anchor:
    if isinstance(node, ast.Anchor):
        return node
    if isinstance(node, ast.Literal) and isinstance(node.value, dt.date):
        return ast.Anchor("date", date=node.value, line=node.line, column=node.column)
    raise PqlError("expected now, today, yesterday, a period or a date", line=node.line, column=node.column)


def _unit(token: Token) -> str:
    unit = str(token).lower()
    return unit if unit.endswith("s") else unit + "s"


def _period(token: Token) -> str:
    return " ".join(str(token).lower().split())
