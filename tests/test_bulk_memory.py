"""bulk.return_large_blocks: large blocks freed by a run go back to the system, not into a heap that
Python's allocator never reuses (glibc's malloc, in a process of its own)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ops_lib import bulk

# Raise glibc's moving threshold with one freed 30 MiB block, fill 50 blocks of 2 MiB each followed by
# a small block still in use (a freed block cannot merge into the heap's top), free the 50: how many
# MiB the process's resident set lost.
FREE_AFTER_A_BIG_BLOCK = r"""
import ctypes, sys
from ops_lib import bulk
if sys.argv[1] == "on" and not bulk.return_large_blocks():
    print("no mallopt"); sys.exit(0)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
big = libc.malloc(30 << 20); ctypes.memset(big, 1, 30 << 20); libc.free(big)
blocks, pins = [], []
for _ in range(50):
    blocks.append(libc.malloc(2 << 20))
    ctypes.memset(blocks[-1], 1, 2 << 20)
    pins.append(libc.malloc(256 << 10))  # (larger than any free chunk below: carved after the block)
before = rss_mib()
for b in blocks:
    libc.free(b)
print(round(before - rss_mib()))
"""


def returned_mib(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", FREE_AFTER_A_BIG_BLOCK, mode], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's mallopt")
def test_freed_large_blocks_leave_the_process_once_asked():
    returned = returned_mib("on")
    if returned == "no mallopt":
        pytest.skip("this C library has no mallopt")
    assert int(returned) >= 90, "the 100 MiB freed went back to the system"
    # (without it, glibc kept them: what the call is for)
    assert int(returned_mib("off")) < 20


def test_asking_twice_is_harmless():
    assert bulk.return_large_blocks() == bulk.return_large_blocks()
