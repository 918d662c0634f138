"""Table storage refuses what Azure refuses, even though Azurite would accept it."""

from __future__ import annotations

import threading

import pytest

from shared.errors import Conflict, GuardrailError
from shared.settings import Settings
from shared.storage import EntityTable, StorageAccount


@pytest.fixture
def table(settings: Settings, account: StorageAccount) -> EntityTable:
    return EntityTable(account.table(settings.table_name("limits")))


def entity(pk: str = "p", rk: str = "r", **props) -> dict:
    return {"PartitionKey": pk, "RowKey": rk, **props}


def test_a_string_over_64_kib_is_refused_with_the_property_named(table):
    with pytest.raises(GuardrailError, match=r"property 'body' is 65538 bytes as UTF-16"):
        table.upsert(entity(body="x" * 32769))
    table.upsert(entity(body="x" * 32768))


def test_more_than_252_properties_is_refused(table):
    with pytest.raises(GuardrailError, match="253 properties; Azure allows 252"):
        table.upsert(entity(**{f"p{i}": i for i in range(253)}))


def test_an_entity_over_1_mib_is_refused(table):
    props = {f"s{i}": "y" * 30000 for i in range(20)}  # each string is fine, the entity is not
    with pytest.raises(GuardrailError, match="Azure allows 1048576 bytes per entity"):
        table.upsert(entity(**props))


def test_keys_with_forbidden_characters_are_refused(table):
    with pytest.raises(GuardrailError, match="characters Azure forbids"):
        table.upsert(entity(rk="a/b"))


def test_a_batch_over_100_entities_or_across_partitions_is_refused(table):
    with pytest.raises(GuardrailError, match="101 entities; Azure allows 100"):
        table.transact([("upsert", entity(rk=str(i)), {}) for i in range(101)])
    with pytest.raises(GuardrailError, match="spans PartitionKeys"):
        table.transact([("upsert", entity(pk="a"), {}), ("upsert", entity(pk="b"), {})])


def test_a_batch_of_4_mib_or_more_is_refused(table):
    big = [entity(rk=str(i), body="z" * 32000) for i in range(70)]  # ~4.5 MB as UTF-16
    with pytest.raises(GuardrailError, match="Azure requires under 4194304 bytes"):
        table.transact([("upsert", e, {}) for e in big])


def test_upsert_many_splits_into_valid_batches_per_partition(table):
    rows = [entity(pk=f"p{i % 3}", rk=f"{i:04d}", body="z" * 20000) for i in range(450)]
    assert table.upsert_many(rows) == 450
    for pk in ("p0", "p1", "p2"):
        assert len(list(table.all("PartitionKey eq @pk", parameters={"pk": pk}))) == 150


def test_listings_page_with_a_continuation_token(table):
    table.upsert_many(entity(rk=f"{i:03d}") for i in range(25))
    seen, token, pages = [], None, 0
    while True:
        page = table.query("PartitionKey eq @pk", parameters={"pk": "p"}, page_size=10, continuation_token=token)
        seen += [e["RowKey"] for e in page.items]
        pages += 1
        token = page.continuation_token
        if not token:
            break
    assert seen == [f"{i:03d}" for i in range(25)] and pages == 3


def test_a_stale_etag_loses_the_update(table):
    first = table.upsert(entity(count=1))
    table.update(entity(count=2), etag=first["etag"])
    with pytest.raises(Conflict, match="changed by someone else"):
        table.update(entity(count=3), etag=first["etag"])
    assert table.get("p", "r")["count"] == 2


def test_concurrent_creators_of_one_record_get_one_winner(table):
    results: list[str] = []

    def create():
        try:
            table.insert(entity(rk="once"))
            results.append("won")
        except Conflict:
            results.append("lost")

    threads = [threading.Thread(target=create) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 4 + ["won"]
