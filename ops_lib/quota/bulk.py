"""Building hundreds of thousands of rows at once, without the cyclic garbage collector.

Reading a million customers (or a million organisations' usage) allocates millions of dicts and
lists in a row; CPython's cyclic collector runs every few hundred allocations and, as the heap
grows, walks all of it again and again (at 100k organisations, a third of the join's time was
collections). None of these rows refers to itself: reference counting frees them all, so the
collector is paused while they are built and restored (as it was) afterwards.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; the collector's state as it was afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
