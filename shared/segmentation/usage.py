"""Who uses which segment, as one record per sandbox: each segment's inSegment references and each
destination's segments. Every save and delete changes it with an ETag-guarded write and checks the rules on
the version it changes, so two concurrent saves cannot form an inSegment cycle between them, and a segment
cannot be deleted while a segment or a destination that uses it is being saved."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from shared.errors import Conflict, ValidationError
from shared.models import ApiModel
from shared.storage import EntityTable

_KEY = ("graph", "sandbox")
_ATTEMPTS = 8


class UsageGraph(ApiModel):
    segments: dict[str, list[str]] = Field(default_factory=dict, description="segment -> segments it names")
    destinations: dict[str, list[str]] = Field(default_factory=dict, description="destination -> its segments")

    def users(self, segment_id: str) -> tuple[list[str], list[str]]:
        """The segments and the destinations that use a segment."""
        segments = sorted(s for s, refs in self.segments.items() if segment_id in refs and s != segment_id)
        return segments, sorted(d for d, used in self.destinations.items() if segment_id in used)

    def cycle_through(self, segment_id: str) -> list[str] | None:
        """A path of inSegment references from the segment back to itself, if there is one."""
        stack = [(ref, [segment_id, ref]) for ref in self.segments.get(segment_id, [])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == segment_id:
                return path
            if node not in seen:
                seen.add(node)
                stack.extend((ref, [*path, ref]) for ref in self.segments.get(node, []))
        return None

    def missing(self, segment_ids: list[str]) -> list[str]:
        return sorted(set(segment_ids) - set(self.segments))


class SegmentUsage:
    """The usage record of a sandbox, changed only by `change`."""

    def __init__(self, table: EntityTable, *, bootstrap: Callable[[], UsageGraph]) -> None:
        self.table = table
        self.bootstrap = bootstrap  # what the record starts as where it does not exist yet: the stored segments

    def read(self) -> UsageGraph:
        entity = self.table.find(*_KEY)
        return UsageGraph.model_validate_json(entity["graph"]) if entity else self.bootstrap()

    def change(self, edit: Callable[[UsageGraph], UsageGraph]) -> UsageGraph:
        """Apply `edit` (which refuses by raising) to the current record and store the result, only if nobody
        changed the record meanwhile; otherwise read it again and apply `edit` again."""
        for _ in range(_ATTEMPTS):
            entity = self.table.find(*_KEY)
            graph = UsageGraph.model_validate_json(entity["graph"]) if entity else self.bootstrap()
            changed = edit(graph.model_copy(deep=True))
            record = {"PartitionKey": _KEY[0], "RowKey": _KEY[1], "graph": changed.model_dump_json()}
            try:
                if entity is None:
                    self.table.insert(record)
                else:
                    self.table.update(record, etag=entity["etag"])
                return changed
            except Conflict:
                continue
        raise Conflict("segments and destinations kept changing while saving; try again")


def referencing(segment_id: str, refs: set[str], *, keep: set[str] = frozenset()) -> Callable[[UsageGraph], UsageGraph]:
    """The edit that records a segment naming `refs` (and, while its save is under way, `keep` too), refusing
    a reference to a segment that does not exist and one that closes a cycle."""

    def edit(graph: UsageGraph) -> UsageGraph:
        missing = graph.missing([r for r in refs if r != segment_id])
        if missing:
            raise ValidationError(f"segment {segment_id!r}: inSegment names segments that do not exist: {missing}")
        graph.segments[segment_id] = sorted(refs | keep)
        cycle = graph.cycle_through(segment_id)
        if cycle:
            raise ValidationError(f"segment {segment_id!r}: inSegment cycle: {' → '.join(cycle)}")
        return graph

    return edit


def unused(segment_id: str) -> Callable[[UsageGraph], UsageGraph]:
    """The edit that forgets a segment, refusing (409) while a segment or a destination uses it."""

    def edit(graph: UsageGraph) -> UsageGraph:
        segments, destinations = graph.users(segment_id)
        if segments or destinations:
            users = [f"segments {segments}"] * bool(segments) + [f"destinations {destinations}"] * bool(destinations)
            raise Conflict(f"segment {segment_id!r} is used by {' and '.join(users)}; change those first")
        graph.segments.pop(segment_id, None)
        return graph

    return edit


def used_by_destination(destination_id: str, segment_ids: set[str], *, keep: set[str] = frozenset()):
    """The edit that records a destination's segments, refusing segments that do not exist."""

    def edit(graph: UsageGraph) -> UsageGraph:
        missing = graph.missing(list(segment_ids))
        if missing:
            raise ValidationError(f"destination {destination_id!r}: segments {missing} do not exist")
        if segment_ids or keep:
            graph.destinations[destination_id] = sorted(segment_ids | keep)
        else:
            graph.destinations.pop(destination_id, None)
        return graph

    return edit
