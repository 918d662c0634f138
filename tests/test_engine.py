"""The process the product runs in gives its large freed buffers back to the system (shared.engine)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: a 24 MiB buffer is allocated and freed, then another; prints 1 when the second one is a
# mapping of its own (given back to the system when freed), 0 when glibc served it from a heap it keeps.
_PROBE = """
import ctypes, sys
if sys.argv[1] == "product":
    import shared.engine  # noqa: F401

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)  # the process's own symbols, as shared.engine reads them
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 24 * 2**20
libc.free(libc.malloc(size))
before = libc.mallinfo2().hblks
block = libc.malloc(size)
print(libc.mallinfo2().hblks - before)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except (OSError, TypeError):
        return False


def _mapped(mode: str, **malloc: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | malloc
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc 2.33 or later only (mallinfo2)")
def test_a_large_freed_buffer_is_given_back_to_the_system_once_the_product_is_imported():
    # Without the product, glibc raises its mmap threshold when the first buffer is freed, and keeps the next
    # ones in its heaps (at 10M people a batch peaked 450-550 MB higher that way).
    assert _mapped("plain") == 0
    assert _mapped("product") == 1
    # An operator's own threshold (glibc's environment variable) stands: at 30 MiB, a 24 MiB buffer stays in the heaps.
    assert _mapped("product", MALLOC_MMAP_THRESHOLD_=str(30 * 2**20)) == 0
