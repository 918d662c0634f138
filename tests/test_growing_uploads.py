"""Files staged while they are written (shared/storage/growing.py), against Azurite: what is committed is the
file as it ended, its checksum is the file's, and a file given up leaves nothing behind in the blob staged after it."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from shared.activation.runs import _DlzFiles
from shared.storage import BlobStore
from shared.storage.growing import GrowingUploads


def uncommitted(blobs: BlobStore, name: str) -> int:
    return len(blobs.container.get_blob_client(name).get_block_list("uncommitted")[1])


def test_a_file_is_staged_while_it_is_written_and_committed_as_it_ended(settings, account, tmp_path):
    blobs = BlobStore(account.container("growing"))
    path, half = tmp_path / "out.csv", threading.Event()
    path.write_bytes(b"")

    def writer() -> None:  # appends only, as DuckDB's COPY does
        with open(path, "ab") as fh:
            for i in range(400):
                fh.write(f"{i},{'x' * 40}\n".encode())
                fh.flush()
                if i == 200:
                    half.set()
                    time.sleep(0.5)

    with ThreadPoolExecutor(4) as pool, GrowingUploads(blobs, pool, block=1000, interval=0.01) as uploads:
        uploads.follow("out.csv", path)
        write = threading.Thread(target=writer)
        write.start()
        half.wait()
        time.sleep(0.3)
        staged_early = uncommitted(blobs, "out.csv")
        write.join()
        staged = uploads.finish("out.csv")()
    blobs.commit(staged)
    data = path.read_bytes()
    assert staged_early >= 5  # half of the file was staged before its writer was done
    assert blobs.get("out.csv") == data and len(staged.blocks) == -(-len(data) // 1000)
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.size == len(data)


def test_a_file_given_up_for_another_under_the_same_name_leaves_none_of_its_blocks(settings, account, tmp_path):
    blobs = BlobStore(account.container("growing"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a" * 5000)
    second.write_bytes(b"b" * 1500)
    with ThreadPoolExecutor(4) as pool, GrowingUploads(blobs, pool, block=1000, interval=0.01) as uploads:
        uploads.follow("f", first)
        time.sleep(0.2)  # its whole blocks are staged
        uploads.drop("f")
        assert uploads.following("f") is None
        uploads.follow("f", second)
        staged = uploads.finish("f")()
    blobs.commit(staged)
    assert blobs.get("f") == b"b" * 1500 and staged.sha256 == hashlib.sha256(b"b" * 1500).hexdigest()


class _Watched(_DlzFiles):
    """The run's sink, counting the blocks of each file staged before it was finished."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.early: list[int] = []

    def finished(self, w) -> None:
        self.early.append(len(self.uploads._files[self._name(w)].blocks))
        super().finished(w)


def test_what_duckdb_writes_is_what_is_staged_while_it_writes(settings, account, tmp_path):
    """The export's COPY only appends to its files: staged as they grow (blocks of 64 KiB, a flush every 500
    rows, a look every millisecond), three segments of 60,000 members each come out byte for byte as DuckDB
    left them on disk, in every format, though blocks were staged before the COPY ended."""
    import duckdb

    from shared.activation import Destination
    from shared.activation.export import Members, PersonRows, build_rows, install_transforms
    from shared.engine import connect
    from tests.test_activation import T1, destination

    blobs = BlobStore(account.container("growing"))
    people = """(SELECT 'p' || i AS profileId, [{'namespace': 'Email', 'id': 'u' || i || '@x.com'}] AS identities,
        {'name': {'firstName': 'F' || (i % 97)}} AS person, {'tier': 'gold'} AS loyalty FROM range(100000) t(i))"""
    for sid, start in (("a", 0), ("b", 20000), ("c", 40000)):
        duckdb.execute(
            f"""COPY (SELECT 'p' || i AS profileId, 'realized' AS status, TIMESTAMPTZ '{T1.isoformat()}' AS
            lastQualificationTime FROM range({start}, {start + 60000}) t(i)) TO '{tmp_path / sid}.parquet'"""
        )
    members = [Members(sid, tmp_path / f"{sid}.parquet") for sid in "abc"]
    PersonRows.FLUSH_ROWS, flush = 500, PersonRows.FLUSH_ROWS
    try:
        for fmt in ("csv", "json", "parquet"):
            d = Destination.model_validate({**destination(segments=list("abc")), "id": "dd", "format": fmt})
            con = connect(settings)
            install_transforms(con, country_code="1")
            with ThreadPoolExecutor(4) as pool, GrowingUploads(blobs, pool, block=65536, interval=0.001) as uploads:
                files = _Watched(uploads, d, T1)
                written = build_rows(con, d, people, split_rows=10**6).write(members, tmp_path / fmt, files)
                staged = [(w, get()) for w, get in files.staged]
            assert [w.rows for w in written] == [60000] * 3
            for w, s in staged:
                blobs.commit(s)
                assert blobs.get(s.name) == w.path.read_bytes(), f"{fmt} {w.segment_id}"
            assert sum(files.early) > 0, fmt  # blocks were staged while DuckDB was writing
    finally:
        PersonRows.FLUSH_ROWS = flush
