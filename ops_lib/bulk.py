"""Building hundreds of thousands of rows at once: without the cyclic garbage collector, as ``Record``s.

Reading a million customers (or a million organisations' usage) allocates millions of dicts and
lists in a row; CPython's cyclic collector runs every few hundred allocations and, as the heap
grows, walks all of it again and again (at 100k organisations, a third of the join's time was
collections). None of these rows refers to itself: reference counting frees them all, so the
collector is paused while they are built and restored (as it was) afterwards.
"""
from __future__ import annotations

import gc
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from operator import attrgetter, itemgetter
from typing import Any, Iterator


# A pause that allocated more container objects than this ends by freezing them (below).
FREEZE_AFTER = 100_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; the collector's state as it was afterwards.

    Everything allocated while paused is in the youngest generation when the collector resumes:
    its first collection would walk all of it (~1 s for a million rows), and each older generation
    again later. A pause that built that much ends with ``gc.freeze()``: those objects leave the
    collector's sight (reference counting frees them as always; only a cycle among them would
    outlive its last reference, and bulk rows hold none). Not after an exception."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        # (not frozen: an exception's traceback is a cycle through the frames that hold the rows)
        if was:
            gc.enable()
        raise
    if was:
        if gc.get_count()[0] > FREEZE_AFTER:
            gc.freeze()
        gc.enable()


# Blocks of at least this many bytes are mapped from the system and handed back when freed.
LARGE_BLOCK_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_blocks() -> bool:
    """Have malloc give large freed blocks back to the system (glibc only; calling it again changes nothing).

    glibc maps a block above its threshold (128 KiB) and unmaps it when freed, but each such free
    raises the threshold to that block's size (up to 32 MiB): later arrays, big lists and the
    database driver's buffers then come from the heap and stay in the process when freed, holes
    that Python's small-object allocator never reuses. At a million organisations quota_audit's
    kernel kept ~200 MB so (its peak through the benchmark 1.99 → 1.75 GB, with the scan's own
    savings). A fixed threshold ends the adjustment; the page faults of mapping blocks anew cost
    nothing measurable (revenue_report at 1M: 44.7–48.7 s with, 47.1–48.3 s without). False when
    the C library has no ``mallopt``."""
    import ctypes

    try:
        # (the process's own symbols: the C library it runs on, found without a search)
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
    except (OSError, AttributeError):
        return False


class Record(Mapping):
    """A read-only row with fixed keys, for the million-row lists (quota_audit's one per
    organisation; revenue_report's trimmed Stripe objects, whose keys may be absent, are
    ``revenue.data.StripeRecord``s): read as a
    dict is (``row["used"]``, ``row.get``, ``dict(row)``, ``{**row}``, equal to a dict with the
    same items), held in slots — 40 % of a dict's memory, built in a third of its time.

    Subclasses name their keys in ``__slots__``; ``Record.of(fields)`` makes one."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except (AttributeError, TypeError):
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__slots__ else default

    def __iter__(self) -> Iterator[str]:
        return iter(self.__slots__)

    def __len__(self) -> int:
        return len(self.__slots__)

    def __contains__(self, key: object) -> bool:
        return key in self.__slots__

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self):
        return type(self), tuple(getattr(self, k) for k in self.__slots__)

    @staticmethod
    def of(name: str, fields: tuple[str, ...], doc: str = "", module: str | None = None) -> type["Record"]:
        # A generated __init__ with one positional argument per key (as namedtuple does): keyword
        # calls read as the dict literal they replace, and no loop runs per row.
        args = ", ".join(fields)
        body = "\n".join(f"    self.{f} = {f}" for f in fields) or "    pass"
        scope: dict[str, Any] = {}
        exec(f"def __init__(self, {args}):\n{body}", scope)
        return type(name, (Record,), {"__slots__": fields, "__init__": scope["__init__"], "__doc__": doc,
                                      "__module__": module or sys._getframe(1).f_globals.get("__name__", __name__)})


class Rows(Sequence):
    """Rows kept as the tuples they were read as, each seen as a ``record`` when asked for: a
    million organisations read from the database cost no object of their own until one is read
    alone, and ``columns`` reads them straight from the tuples. Read-only, like the records."""

    __slots__ = ("record", "tuples")

    def __init__(self, record: type[Record], tuples: list[tuple]):
        self.record, self.tuples = record, tuples

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Rows(self.record, self.tuples[index])
        return self.record(*self.tuples[index])

    def __iter__(self) -> Iterator[Record]:
        record = self.record
        return (record(*row) for row in self.tuples)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # (mutable-looking, like a list)

    def __repr__(self) -> str:
        return f"Rows({self.record.__name__}, {len(self)} rows)"

    def getters(self, keys: tuple[str, ...]) -> itemgetter:
        """What reads ``keys`` from each of the tuples (a KeyError for a key the record lacks)."""
        unknown = [k for k in keys if k not in self.record.__slots__]
        if unknown:
            raise KeyError(unknown[0])
        return itemgetter(*(self.record.__slots__.index(k) for k in keys))


def column(rows: Sequence[Mapping], key: str) -> list:
    """``[row[key] for row in rows]``, read by C from ``Record``s of one kind."""
    if isinstance(rows, Rows):
        return list(map(rows.getters((key,)), rows.tuples))
    if _records_of_one_kind(rows):
        return list(map(attrgetter(key), rows))
    return [row[key] for row in rows]


def columns(rows: Sequence[Mapping], *keys: str) -> Iterator[tuple]:
    """``(row[k1], row[k2], …)`` for each row, read by C: attributes of ``Record``s of one kind
    (5× quicker than their ``row[key]``) or of ``Rows``' tuples, items of anything else."""
    if isinstance(rows, Rows):
        if keys == rows.record.__slots__:
            return iter(rows.tuples)
        get, rows = rows.getters(keys), rows.tuples
        return ((value,) for value in map(get, rows)) if len(keys) == 1 else map(get, rows)
    if _records_of_one_kind(rows):
        get = attrgetter(*keys)
    else:
        get = itemgetter(*keys)
    if len(keys) == 1:
        return ((value,) for value in map(get, rows))
    return map(get, rows)


def _records_of_one_kind(rows: Sequence[Mapping]) -> bool:
    kinds = set(map(type, rows))  # (by C: a million rows in ~20 ms, where a generator took ~150 ms)
    return len(kinds) == 1 and issubclass(kinds.pop(), Record)
