"""Which segments can be evaluated as data streams in (Adobe's streaming segmentation): rules on profile
attributes only, or on a single event condition whose window is at most 24 hours before now."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from shared.segmentation.pql import ast

WINDOW = dt.timedelta(hours=24)
_SPANS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}


def streaming_eligible(
    tree: ast.Expr, definitions: Mapping[str, ast.Expr], _seen: frozenset[str] = frozenset()
) -> bool:
    event_conditions = ast.event_conditions(tree)
    for ref in ast.segment_references(tree):
        target = definitions.get(ref)
        if target is None or ref in _seen or not streaming_eligible(target, definitions, _seen | {ref}):
            return False
        event_conditions += ast.event_conditions(target)
    if not event_conditions:
        return True
    node = event_conditions[0]
    if len(event_conditions) > 1 or isinstance(node, ast.Chain):
        return False
    if isinstance(node, ast.Quantifier) and node.kind == "forall":  # every event, not one recent enough
        return False
    condition = node.events.condition if isinstance(node, ast.Aggregate) else node.iterations[0].condition
    return condition is not None and _within_a_day(condition)


def _within_a_day(condition: ast.Expr) -> bool:
    """The event condition requires `timestamp occurs <(=) N units before now` with N units ≤ 24 hours."""
    required = [condition] if not isinstance(condition, ast.And) else list(condition.items)
    for item in required:
        if (
            isinstance(item, ast.Occurs)
            and item.subject.parts[-1] == "timestamp"
            and item.form == "distance"
            and item.direction == "before"
            and item.anchor.kind == "now"
            and item.comparator in ("<", "<=")
            and item.unit in _SPANS
            and dt.timedelta(seconds=item.amount * _SPANS[item.unit]) <= WINDOW
        ):
            return True
    return False
