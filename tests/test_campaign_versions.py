"""Campaign's snapshot tables keep their versions: an import never deletes, ids are never reused, two
writers racing for one version cannot break the record, any kept version can be restored, and only the
retention timer deletes old versions."""

from __future__ import annotations

import datetime as dt

import duckdb
from azure.functions.timer import TimerRequest

from functions.campaign import (
    campaign_list_versions,
    campaign_recipient_restore,
    campaign_recipient_versions,
    campaign_recipients,
    snapshot_retention,
)
from shared.campaign.service import Campaign
from shared.campaign.snapshots import SnapshotRecord, Snapshots
from shared.errors import Conflict
from tests.conftest import NOW
from tests.test_http import body, call


def post(seed: str) -> dict:
    response = call(campaign_recipients, "POST", "campaign/recipients", {}, seed.encode())
    assert response.status_code == 200, body(response)
    return body(response)


def recipients() -> dict[str, int]:
    rows = body(call(campaign_recipients, "GET", "campaign/recipients", {}))
    return {r["email"]: r["id"] for r in rows}


def versions() -> list[tuple[int, int, int | None]]:
    return [
        (v["version"], v["count"], v["restoredFrom"])
        for v in body(call(campaign_recipient_versions, "GET", "campaign/recipients/versions"))
    ]


def test_an_import_adds_and_updates_never_deletes_and_a_deleted_id_is_never_given_again(settings):
    post("email,firstName\nann@example.com,Ann\nbob@example.com,Bob\ncy@example.com,Cy\n")
    assert post("email,firstName\nann@example.com,Annie\ndee@example.com,Dee\n") == {
        "rows": 2,
        "created": 1,
        "updated": 1,
        "recipients": 4,
    }
    assert recipients() == {"ann@example.com": 1, "bob@example.com": 2, "cy@example.com": 3, "dee@example.com": 4}

    deleted = call(campaign_recipients, "DELETE", "campaign/recipients?ids=4,3")
    assert body(deleted) == {"deleted": 2, "recipients": 2}
    post("email\neve@example.com\n")
    assert recipients() == {"ann@example.com": 1, "bob@example.com": 2, "eve@example.com": 5}

    for query, status in (("", 400), ("?ids=x", 400), ("?ids=99", 404)):
        assert call(campaign_recipients, "DELETE", f"campaign/recipients{query}").status_code == status
    assert len(recipients()) == 3


def test_two_writers_racing_for_one_version_leave_the_winner_readable(settings, tmp_path):
    table = Campaign.from_settings(settings).tables.recipients
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    duckdb.sql(f"COPY (SELECT range + 1 AS id FROM range(3)) TO '{first}' (FORMAT parquet)")
    duckdb.sql(f"COPY (SELECT range + 1 AS id FROM range(5)) TO '{second}' (FORMAT parquet)")
    record = SnapshotRecord(id="recipients", name="Recipients")
    current = table.publish(record.model_copy(update={"count": 1}), first, previous=None, now=NOW)

    # Both read version 1; the first to swap the record wins, the other is refused and changes nothing.
    table.publish(record.model_copy(update={"count": 3}), first, previous=current, now=NOW)
    try:
        table.publish(record.model_copy(update={"count": 5}), second, previous=current, now=NOW)
        raise AssertionError("the second writer should have been refused")
    except Conflict:
        pass
    Snapshots.forget_local()  # another worker, with nothing cached, reads what the record points at
    winner = table.get("recipients")
    assert (winner.version, winner.count) == (2, 3)
    assert duckdb.sql(f"SELECT count(*) FROM '{table.local(winner)}'").fetchall() == [(3,)]


def test_a_kept_version_is_restored_and_only_the_retention_timer_deletes_old_ones(settings, account, clock):
    post("email\nann@example.com\nbob@example.com\n")
    post("email\ncy@example.com\n")
    call(campaign_recipients, "DELETE", "campaign/recipients?ids=1")
    assert versions() == [(3, 2, None), (2, 3, None), (1, 2, None)]

    restored = call(campaign_recipient_restore, "POST", "campaign/recipients/restore", {}, {"version": 1})
    assert body(restored)["version"] == 4 and body(restored)["count"] == 2
    assert recipients() == {"ann@example.com": 1, "bob@example.com": 2}
    post("email\ndee@example.com\n")  # ids above every id ever given, restored tables included
    assert recipients()["dee@example.com"] == 4

    for bad, status in (({"version": 9}, 404), ({"version": "one"}, 400), ([], 400), (None, 400)):
        answer = call(campaign_recipient_restore, "POST", "campaign/recipients/restore", {}, bad)
        assert answer.status_code == status, body(answer)
    assert call(campaign_list_versions, "GET", "campaign/lists/nope/versions", {"id": "nope"}).status_code == 404

    blobs = Campaign.from_settings(settings).tables.blobs
    assert len(list(blobs.names("recipients/"))) == 4  # versions 1, 2, 3 and 5 (4 is 1 again)
    snapshot_retention.build().get_user_function()(TimerRequest(past_due=False))
    assert len(list(blobs.names("recipients/"))) == 4  # nothing is old yet

    clock.move_to(NOW + dt.timedelta(hours=settings.snapshot_retention_hours, minutes=1))
    snapshot_retention.build().get_user_function()(TimerRequest(past_due=False))
    assert versions() == [(5, 3, None)]
    assert len(list(blobs.names("recipients/"))) == 1
    Snapshots.forget_local()
    assert set(recipients()) == {"ann@example.com", "bob@example.com", "dee@example.com"}
