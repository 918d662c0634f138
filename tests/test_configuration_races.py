"""Configuration invariants hold under concurrency: two saves at once cannot store an inSegment cycle, and a
segment cannot be deleted while a segment or a destination uses it, even when the save and the delete race."""

from __future__ import annotations

import threading

from functions.activation import destinations
from functions.segmentation import segments
from shared.segmentation.definitions import SegmentStore
from shared.segmentation.pql import ast
from shared.storage import StorageAccount
from tests import test_activation
from tests.test_activation import put_destination
from tests.test_http import body, call
from tests.test_segment_jobs import put_segment

crm = test_activation.crm


def at_once(*calls):
    """Run the calls in threads released together; their answers in order."""
    start, answers = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, fn):
        start.wait()
        answers[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def stored_cycle(settings) -> bool:
    store = SegmentStore.from_settings(settings, StorageAccount.from_settings(settings))
    refs = {d.id: ast.segment_references(d.tree()) for d in store.list()}

    def reaches(start, goal, seen=()):
        return any(r == goal or (r not in seen and reaches(r, goal, (*seen, r))) for r in refs.get(start, ()))

    return any(reaches(s, s) for s in refs)


def test_two_saves_at_once_never_store_an_in_segment_cycle(settings, crm):
    for i in range(10):
        a, b = f"a{i}", f"b{i}"
        assert put_segment(a, 'loyalty.tier = "gold"').status_code == 200
        assert put_segment(b, 'loyalty.tier = "gold"').status_code == 200
        answers = at_once(
            lambda a=a, b=b: put_segment(a, f'inSegment("{b}")'),
            lambda a=a, b=b: put_segment(b, f'inSegment("{a}")'),
        )
        assert sorted(r.status_code for r in answers) in ([200, 400], [400, 400]), [body(r) for r in answers]
        assert not stored_cycle(settings)


def test_a_segment_a_destination_uses_cannot_be_deleted(settings, crm):
    assert put_destination(segments=["gold"]).status_code == 200
    refused = call(segments, "DELETE", "segments/gold", {"id": "gold"})
    assert refused.status_code == 409 and "used by destinations ['gold-email']" in body(refused)["detail"]
    assert call(destinations, "DELETE", "destinations/gold-email", {"id": "gold-email"}).status_code == 204
    assert call(segments, "DELETE", "segments/gold", {"id": "gold"}).status_code == 204


def test_a_delete_racing_a_save_that_uses_the_segment_leaves_no_dangling_reference(settings, crm):
    for i in range(5):
        sid = f"s{i}"
        assert put_segment(sid, 'loyalty.tier = "gold"').status_code == 200
        saved, deleted = at_once(
            lambda sid=sid, i=i: put_destination(f"d{i}", segments=[sid], name=f"Campaign_{i}"),
            lambda sid=sid: call(segments, "DELETE", f"segments/{sid}", {"id": sid}),
        )
        assert (saved.status_code, deleted.status_code) in ((200, 409), (400, 204)), (body(saved), deleted)
        segment_exists = call(segments, "GET", f"segments/{sid}", {"id": sid}).status_code == 200
        destination_exists = call(destinations, "GET", f"destinations/d{i}", {"id": f"d{i}"}).status_code == 200
        assert segment_exists or not destination_exists
