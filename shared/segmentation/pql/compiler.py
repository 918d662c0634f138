"""PQL trees to DuckDB SQL, one method per node kind (as sqlglot's generator).

Many segments compile into one query: profile conditions become predicates over the unified profile
row `p`, and every event condition becomes an aggregate of ONE `GROUP BY profileId` over the events
(`a`), shared by all segments. Values from definitions are bound as parameters, never spliced into SQL.
Comparisons with a null are false, so `not (x = "a")` holds when x is null and `x != "a"` does not."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.ingestion.paths import quote_ident
from shared.segmentation.pql import ast
from shared.segmentation.pql.parser import PqlError

_UNITS = {"months": "to_months", "years": "to_years"}
_WHOLE_UNITS = set(_UNITS)
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_NUMBERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "UBIGINT")


def type_of_column(duckdb_type: str) -> str:
    """The PQL type of a schema field: string, number, boolean, date, time, or what DuckDB calls it."""
    t = duckdb_type.upper()
    if t == "VARCHAR":
        return "string"
    if t.startswith(_NUMBERS):
        return "number"
    if t == "BOOLEAN":
        return "boolean"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "time"
    return t.lower()


def type_of_value(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dt.datetime):
        return "time"
    if isinstance(value, dt.date):
        return "date"
    return "string"


def _coerces(literal: Any, to: str) -> bool:
    """A string literal that reads as the other side's type (PQL's documented coercions of numeric and
    date strings)."""
    if not isinstance(literal, str):
        return False
    try:
        if to == "number":
            float(literal)
        elif to in ("date", "time"):
            dt.datetime.fromisoformat(literal.replace("Z", "+00:00"))
        else:
            return False
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Fields:
    """The fields a definition may name: the union profile schema and the experience-event schema."""

    profile: Mapping[str, str]  # dotted path -> DuckDB type
    event: Mapping[str, str]
    profile_schema: str = "the union profile schema"
    event_schema: str = "xdm-experienceevent"


@dataclass
class Scope:
    kind: str  # profile | event
    alias: str | None = None


@dataclass
class CompiledSegments:
    """One query evaluating every segment: a boolean column per segment, per person."""

    sql: str
    params: dict[str, Any]
    columns: dict[str, str]  # segment id -> column name in the result
    failed: dict[str, str] = field(default_factory=dict)  # segment id -> why it cannot be evaluated


@dataclass
class Compiler:
    fields: Fields
    now: dt.datetime
    definitions: Mapping[str, ast.Expr] = field(default_factory=dict)  # for inSegment
    params: dict[str, Any] = field(default_factory=dict)
    aggregates: dict[str, str] = field(default_factory=dict)  # aggregate SQL -> column
    _stack: list[str] = field(default_factory=list)

    # The query ---------------------------------------------------------------------------------

    def compile_segments(
        self,
        segments: Mapping[str, ast.Expr],
        *,
        profiles: str = "unified_profiles",
        events: str = "profile_events",
        isolate: bool = False,
    ) -> CompiledSegments:
        """One query for all the segments. A definition that does not compile raises, or with `isolate` (a
        job: the schemas may have changed under a saved definition) is left out and named in `failed`."""
        columns, selects, failed = {}, [], {}
        for segment_id, expr in segments.items():
            self._stack = [segment_id]
            try:
                condition = self.condition(expr, Scope("profile"))
            except PqlError as exc:
                if not isolate:
                    raise
                failed[segment_id] = exc.message
                continue
            columns[segment_id] = f"s{len(selects)}"
            selects.append(f"{condition} AS {columns[segment_id]}")
        return CompiledSegments(self.query(selects, profiles=profiles, events=events), self.params, columns, failed)

    def query(self, selects: list[str], *, profiles: str, events: str) -> str:
        """One row per person of `profiles`: the given columns, over ONE aggregation of `events`."""
        select_list = ", ".join(["p.profileId", *selects])
        if not self.aggregates:
            return f"SELECT {select_list} FROM {profiles} p"
        self.params["now"] = self.now
        aggs = ", ".join(f"{sql} AS {name}" for sql, name in self.aggregates.items())
        # Events after `now` are never inside a window: they are left out once, here.
        return (
            f"WITH a AS (SELECT e.profileId, {aggs} FROM {events} e WHERE e.timestamp <= $now GROUP BY e.profileId) "
            f"SELECT {select_list} FROM {profiles} p LEFT JOIN a USING (profileId)"
        )

    # Conditions --------------------------------------------------------------------------------

    def condition(self, node: ast.Expr, scope: Scope) -> str:
        method = getattr(self, f"_{type(node).__name__.lower()}", None)
        if method is None:
            raise PqlError(f"{type(node).__name__} is not a condition", line=node.line, column=node.column)
        return method(node, scope)

    def _and(self, node: ast.And, scope: Scope) -> str:
        return "(" + " AND ".join(self.condition(i, scope) for i in node.items) + ")"

    def _or(self, node: ast.Or, scope: Scope) -> str:
        return "(" + " OR ".join(self.condition(i, scope) for i in node.items) + ")"

    def _not(self, node: ast.Not, scope: Scope) -> str:
        return f"(NOT {self.condition(node.item, scope)})"

    def _compare(self, node: ast.Compare, scope: Scope) -> str:
        left, right = self.operand(node.left, scope), self.operand(node.right, scope)
        self._comparable(f"`{node.op}`", node.left, node.right, scope, at=node)
        return f"coalesce({left} {_OPS[node.op]} {right}, false)"

    def _inlist(self, node: ast.InList, scope: Scope) -> str:
        subject = self.operand(node.subject, scope)
        for item in node.items.items:
            self._comparable("`in`" if not node.negated else "`notIn`", node.subject, item, scope, at=node)
        values = self.param([item.value for item in node.items.items])
        if node.negated:  # notIn excludes nulls
            return f"({subject} IS NOT NULL AND NOT coalesce(list_contains({values}, {subject}), false))"
        return f"coalesce(list_contains({values}, {subject}), false)"

    def _like(self, node: ast.Like, scope: Scope) -> str:
        subject = self.operand(node.subject, scope)
        self._expect("`like`", node.subject, ("string",), scope, at=node)
        return f"coalesce({subject} LIKE {self.param(node.pattern)}, false)"

    def _stringtest(self, node: ast.StringTest, scope: Scope) -> str:
        subject, value = self.path(node.subject, scope), self.param(node.argument)
        self._expect(f"`{node.function}`", node.subject, ("string",), scope, at=node)
        if not node.case_sensitive:
            subject, value = f"lower({subject})", f"lower({value})"
        test = {
            "startsWith": f"starts_with({subject}, {value})",
            "endsWith": f"ends_with({subject}, {value})",
            "contains": f"contains({subject}, {value})",
            "equals": f"{subject} = {value}",
        }[node.function]
        return f"coalesce({'NOT ' if node.negated else ''}{test}, false)"

    def _nulltest(self, node: ast.NullTest, scope: Scope) -> str:
        return f"({self.operand(node.subject, scope)} IS {'' if node.is_null else 'NOT '}NULL)"

    def _booleanvalue(self, node: ast.BooleanValue, scope: Scope) -> str:
        return f"coalesce({self.operand(node.value, scope)}, false)"

    def _occurs(self, node: ast.Occurs, scope: Scope) -> str:
        x = self.path(node.subject, scope)
        self._expect("`occurs`", node.subject, ("date", "time"), scope, at=node)
        if node.form == "distance":
            anchor = self.param(self._anchor_start(node.anchor) if node.anchor.kind != "now" else self.now)
            if node.unit in _WHOLE_UNITS:  # calendar months and years, whole ones
                span = f"{_UNITS[node.unit]}(CAST({self.param(int(node.amount))} AS INTEGER))"
            else:
                span = f"CAST({self.param(dt.timedelta(**{node.unit: node.amount}))} AS INTERVAL)"
            sign = "-" if node.direction == "before" else "+"
            edge = f"({anchor} {sign} {span})"
            side = f"{x} <= {anchor}" if node.direction == "before" else f"{x} >= {anchor}"
            # The distance from the anchor compared with the span: nearer is "<", farther is ">".
            near, far = (">=", "<=") if node.direction == "before" else ("<=", ">=")
            strict_near, strict_far = (">", "<") if node.direction == "before" else ("<", ">")
            test = {
                "<=": f"{side} AND {x} {near} {edge}",
                "<": f"{side} AND {x} {strict_near} {edge}",
                ">=": f"{x} {far} {edge}",
                ">": f"{x} {strict_far} {edge}",
                "=": f"date_trunc('day', {x}) = date_trunc('day', {edge})",
                "!=": f"date_trunc('day', {x}) <> date_trunc('day', {edge})",
            }[node.comparator]
            return f"coalesce({test}, false)"
        start, end = self._anchor_range(node.anchor)
        if node.form == "relative":
            test = f"{x} < {self.param(start)}" if node.direction == "before" else f"{x} >= {self.param(end)}"
        elif node.form in ("on", "in"):
            test = f"{x} >= {self.param(start)} AND {x} < {self.param(end)}"
        else:  # between A and B, both included
            test = f"{x} >= {self.param(start)} AND {x} < {self.param(self._anchor_range(node.until)[1])}"
        return f"coalesce({test}, false)"

    def _exists(self, node: ast.Exists, scope: Scope) -> str:
        self._require_profile_scope(node, scope, "exists")
        condition = self.condition(node.condition, Scope("event", alias=node.alias))
        # A person without events has no aggregate row: none exists, so `not (exists …)` holds for them.
        return f"(coalesce({self.aggregate(f'count(*) FILTER (WHERE {condition})')}, 0) > 0)"

    def _insegment(self, node: ast.InSegment, scope: Scope) -> str:
        self._require_profile_scope(node, scope, "inSegment")
        if node.segment_id in self._stack:
            cycle = " → ".join([*self._stack[self._stack.index(node.segment_id) :], node.segment_id])
            raise PqlError(f"inSegment cycle: {cycle}", line=node.line, column=node.column)
        target = self.definitions.get(node.segment_id)
        if target is None:
            raise PqlError(f'inSegment("{node.segment_id}"): no such segment', line=node.line, column=node.column)
        self._stack.append(node.segment_id)
        try:
            return self.condition(target, scope)
        finally:
            self._stack.pop()

    def _chain(self, node: ast.Chain, scope: Scope) -> str:
        """Events matching each step, in time order: the earliest match of each step after the previous one."""
        self._require_profile_scope(node, scope, "CHAIN")
        previous = None
        for step in node.steps:
            condition = self.condition(step.what, Scope("event"))
            if step.within:
                comparator, amount, unit = step.within
                window = ast.Occurs(
                    ast.Path(("timestamp",)),
                    "distance",
                    comparator=comparator,
                    amount=amount,
                    unit=unit,
                    direction="before",
                    anchor=ast.Anchor("now"),
                )
                condition = f"({condition} AND {self._occurs(window, Scope('event'))})"
            times = self.aggregate(f"list(e.timestamp ORDER BY e.timestamp) FILTER (WHERE {condition})")
            current = (
                f"list_min({times})"
                if previous is None
                else f"list_min(list_filter({times}, lambda t: t > {previous}))"
            )
            previous = current
        return f"({previous} IS NOT NULL)"

    # Operands ----------------------------------------------------------------------------------

    def operand(self, node: ast.Operand, scope: Scope) -> str:
        if isinstance(node, ast.Path):
            return self.path(node, scope)
        if isinstance(node, ast.Literal):
            return self.param(node.value)
        if isinstance(node, ast.Aggregate):
            return self._aggregate_value(node, scope)
        if isinstance(node, ast.ListLiteral):
            return self.param([i.value for i in node.items])
        raise PqlError("this is not a value", line=node.line, column=node.column)

    def _aggregate_value(self, node: ast.Aggregate, scope: Scope) -> str:
        self._require_profile_scope(node, scope, f"xEvent[...].{node.function}()")
        where = self.condition(node.events.condition, Scope("event")) if node.events.condition else "true"
        if node.function == "count":
            return f"coalesce({self.aggregate(f'count(*) FILTER (WHERE {where})')}, 0)"
        value = self.path(node.path, Scope("event"))
        if node.function in ("sum", "avg"):
            self._expect(f"`{node.function}`", node.path, ("number",), Scope("event"), at=node)
        if node.function in ("sum", "avg") and self.fields.event.get(node.path.dotted) == "DOUBLE":
            # Exact decimal sums: a double sum depends on the order threads add in, and a total sitting on
            # a threshold would then flip between runs.
            value = f"CAST({value} AS DECIMAL(38, 9))"
        column = self.aggregate(f"{node.function}({value}) FILTER (WHERE {where})")
        return f"coalesce({column}, 0)" if node.function == "sum" else column

    def path(self, node: ast.Path, scope: Scope) -> str:
        parts = node.parts
        if scope.kind == "event":
            if scope.alias and parts[0] == scope.alias:
                parts = parts[1:]
            known, table, schema = self.fields.event, "e", self.fields.event_schema
        else:
            known, table, schema = self.fields.profile, "p", self.fields.profile_schema
        dotted = ".".join(parts)
        if not parts or not (dotted in known or any(k.startswith(dotted + ".") for k in known)):
            where = "an event" if scope.kind == "event" else "a profile"
            raise PqlError(
                f"unknown field {dotted!r}: not in {schema} ({where} field is expected here)",
                line=node.line,
                column=node.column,
            )
        return ".".join([table, *(quote_ident(p) for p in parts)])

    # Types -------------------------------------------------------------------------------------

    def type_of(self, node: ast.Operand, scope: Scope) -> str:
        """The PQL type of an operand: from the schemas for fields, from the value for literals."""
        if isinstance(node, ast.Literal):
            return type_of_value(node.value)
        if isinstance(node, ast.ListLiteral):
            return "list"
        if isinstance(node, ast.Aggregate):
            if node.function in ("count", "sum", "avg"):
                return "number"
            return self.type_of(node.path, Scope("event"))
        parts = node.parts
        known = self.fields.event if scope.kind == "event" else self.fields.profile
        if scope.kind == "event" and scope.alias and parts[0] == scope.alias:
            parts = parts[1:]
        duckdb_type = known.get(".".join(parts))
        return type_of_column(duckdb_type) if duckdb_type else "object"

    def _comparable(self, what: str, left: ast.Operand, right: ast.Operand, scope: Scope, *, at: ast.Node) -> None:
        """Refuse comparing values of different types, save PQL's coercions of numeric and date strings."""
        lt, rt = self.type_of(left, scope), self.type_of(right, scope)
        if lt == rt or {lt, rt} == {"date", "time"}:
            return
        for literal, other in ((left, rt), (right, lt)):
            if isinstance(literal, ast.Literal) and _coerces(literal.value, other):
                return
        raise PqlError(
            f"{what} compares {_describe(left)} ({lt}) with {_describe(right)} ({rt})", line=at.line, column=at.column
        )

    def _expect(self, what: str, node: ast.Operand, types: tuple[str, ...], scope: Scope, *, at: ast.Node) -> None:
        found = self.type_of(node, scope)
        if found not in types:
            raise PqlError(
                f"{what} needs a {' or '.join(types)}, but {_describe(node)} is a {found}",
                line=at.line,
                column=at.column,
            )

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def aggregate(self, sql: str) -> str:
        """The column of an event aggregate; the same aggregate in several segments is computed once."""
        if sql not in self.aggregates:
            self.aggregates[sql] = f"a{len(self.aggregates)}"
        return f"a.{self.aggregates[sql]}"

    def _require_profile_scope(self, node: ast.Node, scope: Scope, what: str) -> None:
        if scope.kind != "profile":
            raise PqlError(f"{what} cannot be used inside an event condition", line=node.line, column=node.column)

    # Time --------------------------------------------------------------------------------------

    def _anchor_start(self, anchor: ast.Anchor) -> dt.datetime:
        return self._anchor_range(anchor)[0]

    def _anchor_range(self, anchor: ast.Anchor) -> tuple[dt.datetime, dt.datetime]:
        """The instants [start, end) an anchor stands for, in UTC, computed from `now`."""
        now = self.now.astimezone(dt.UTC)
        today = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
        day = dt.timedelta(days=1)
        if anchor.kind == "now":
            return now, now
        if anchor.kind == "today":
            return today, today + day
        if anchor.kind == "yesterday":
            return today - day, today
        if anchor.kind == "date":
            value = anchor.date
            if isinstance(value, dt.datetime):
                return value, value
            start = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
            return start, start + day
        which, unit = anchor.period.split()
        shift = {"this": 0, "last": -1, "next": 1}[which]
        if unit == "week":
            start = today - dt.timedelta(days=today.weekday()) + dt.timedelta(weeks=shift)
            return start, start + dt.timedelta(weeks=1)
        if unit == "month":
            month = now.year * 12 + now.month - 1 + shift
            start = dt.datetime(month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
            following = month + 1
            return start, dt.datetime(following // 12, following % 12 + 1, 1, tzinfo=dt.UTC)
        start = dt.datetime(now.year + shift, 1, 1, tzinfo=dt.UTC)
        return start, dt.datetime(now.year + shift + 1, 1, 1, tzinfo=dt.UTC)


def _describe(node: ast.Operand) -> str:
    if isinstance(node, ast.Path):
        return node.dotted
    if isinstance(node, ast.Literal):
        value = node.value
        return json.dumps(value) if isinstance(value, str | int | float | bool) else str(value)
    if isinstance(node, ast.Aggregate):
        return f"xEvent[…].{node.function}({node.path.dotted if node.path else ''})"
    return "a list"
