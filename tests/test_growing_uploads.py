"""Files staged while they are written (shared/storage/growing.py), against Azurite: what is committed is the
file as it ended, its checksum is the file's, and a file given up leaves nothing behind in the blob staged after it."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

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
