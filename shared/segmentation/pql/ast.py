"""The typed tree of a PQL expression: one small frozen class per construct, as the parser builds it and
the compiler reads it. Every node keeps the line and column where it starts, for error messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Node:
    line: int = field(default=0, kw_only=True, compare=False)
    column: int = field(default=0, kw_only=True, compare=False)
    start: int = field(default=-1, kw_only=True, compare=False)  # offsets into the source text
    end: int = field(default=-1, kw_only=True, compare=False)

    def source(self, text: str) -> str:
        return text[self.start : self.end] if 0 <= self.start < self.end else type(self).__name__


# Values -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal(Node):
    value: str | float | int | bool | dt.date | dt.datetime


@dataclass(frozen=True)
class ListLiteral(Node):
    items: tuple[Literal, ...]


@dataclass(frozen=True)
class Path(Node):
    """A dotted field path; `alias` is the event variable of `exists E from xEvent`, if any."""

    parts: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class EventFilter(Node):
    """`xEvent[condition]`: the person's events that satisfy the condition."""

    condition: Expr | None


@dataclass(frozen=True)
class Aggregate(Node):
    """`xEvent[...].count()` or `.sum(path)`, `.avg`, `.min`, `.max`: a number per person."""

    function: str
    events: EventFilter
    path: Path | None = None


# Time -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor(Node):
    """A point or period of time: `now`, `today`, `yesterday`, `this/last/next week|month|year`, a date."""

    kind: str  # now | today | yesterday | period | date
    period: str | None = None  # e.g. "last month"
    date: dt.date | dt.datetime | None = None


@dataclass(frozen=True)
class Occurs(Node):
    """`x occurs <= 30 days before now`, `x occurs before today`, `x occurs on date(...)`,
    `x occurs between A and B`, `x occurs this month`."""

    subject: Path
    form: str  # distance | relative | on | between | in
    comparator: str | None = None
    amount: float | None = None
    unit: str | None = None
    direction: str | None = None  # before | after
    anchor: Anchor | None = None
    until: Anchor | None = None


# Conditions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare(Node):
    left: Operand
    op: str
    right: Operand


@dataclass(frozen=True)
class InList(Node):
    subject: Operand
    items: ListLiteral
    negated: bool = False


@dataclass(frozen=True)
class Like(Node):
    subject: Operand
    pattern: str


@dataclass(frozen=True)
class StringTest(Node):
    """`x.startsWith("Jo")`, `.endsWith`, `.contains`, `.equals` and their negations, with the case flag."""

    subject: Path
    function: str
    argument: str
    case_sensitive: bool = True
    negated: bool = False


@dataclass(frozen=True)
class NullTest(Node):
    subject: Operand
    is_null: bool


@dataclass(frozen=True)
class BooleanValue(Node):
    """A boolean field or literal used as a condition on its own."""

    value: Operand


@dataclass(frozen=True)
class And(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not(Node):
    item: Expr


@dataclass(frozen=True)
class Iteration(Node):
    """`E from xEvent where (condition)` or `I from E.productListItems: condition`: a variable over the person's
    events or over an array, with an optional condition."""

    alias: str
    source: Operand | None  # None: the person's events (xEvent)
    condition: Expr | None = None


@dataclass(frozen=True)
class Quantifier(Node):
    """`exists …` / `forall …` over one iteration, or nested ones (`E from xEvent where …, I from
    E.productListItems where …`): some (every) item satisfies its condition and the nested quantifier."""

    kind: str  # exists | forall
    iterations: tuple[Iteration, ...]


@dataclass(frozen=True)
class Fold(Node):
    """`sum X.commerce.order.priceTotal over X from xEvent where …` (also avg/average, min, max, count): a value
    aggregated over the items the iterations select."""

    function: str  # sum | avg | min | max | count
    value: Operand
    iterations: tuple[Iteration, ...]


@dataclass(frozen=True)
class Arithmetic(Node):
    left: Operand
    op: str  # + - * / %
    right: Operand


@dataclass(frozen=True)
class Negate(Node):
    item: Operand


@dataclass(frozen=True)
class If(Node):
    """`if(condition, a, b)`."""

    condition: Expr
    then: Operand
    otherwise: Operand


@dataclass(frozen=True)
class Let(Node):
    """`let S = (…) in (…)`: names for values, used in the body."""

    bindings: tuple[tuple[str, Operand], ...]
    body: Expr


@dataclass(frozen=True)
class Call(Node):
    """`target.name(args)`: the array, set, date and regular-expression functions (`includes`, `intersects`,
    `distinct`, `count`, `sum`, `getYear`, `matches`, `regexGroup`, …)."""

    target: Operand
    name: str
    args: tuple[Operand, ...] = ()


@dataclass(frozen=True)
class Function(Node):
    """`currentYear()`, `currentMonth()`, `currentDayOfMonth()`."""

    name: str


@dataclass(frozen=True)
class InSegment(Node):
    segment_id: str


@dataclass(frozen=True)
class ChainStep(Node):
    name: str
    what: Expr
    within: tuple[str, float, str] | None = None  # (comparator, amount, unit) before now


@dataclass(frozen=True)
class Chain(Node):
    """`CHAIN(xEvent, timestamp, [C0: WHAT(...) WHEN(...), C1: ...])`: events matching each step in order."""

    steps: tuple[ChainStep, ...]


Operand = Literal | ListLiteral | Path | Aggregate | Arithmetic | Negate | If | Let | Call | Function | Fold
Expr = (
    Compare
    | InList
    | Like
    | StringTest
    | NullTest
    | BooleanValue
    | And
    | Or
    | Not
    | Quantifier
    | InSegment
    | Chain
    | Occurs
)


def walk(node: object):
    """Every node of a tree, depth first."""
    if isinstance(node, Node):
        yield node
        for f in fields(node):
            yield from walk(getattr(node, f.name))
    elif isinstance(node, tuple):
        for item in node:
            yield from walk(item)


def segment_references(node: Expr) -> set[str]:
    """The segments an expression names with inSegment."""
    return {n.segment_id for n in walk(node) if isinstance(n, InSegment)}


def event_conditions(node: Expr) -> list[Node]:
    """The parts of an expression that read the person's events (`xEvent[…]`, exists/forall/folds over
    xEvent, CHAIN)."""
    return [
        n
        for n in walk(node)
        if isinstance(n, Aggregate | Chain) or isinstance(n, Quantifier | Fold) and n.iterations[0].source is None
    ]
