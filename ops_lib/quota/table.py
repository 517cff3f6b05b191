"""Rows held as columns: a million organisations as a few lists of shared objects and numpy
arrays, each row built as its ``Record`` only when read alone.

A ``Table`` reads as the list of records it replaces (``len``, ``table[i]``, iteration, ``==``);
the checks read its columns (``table.column(key)`` as held, ``table.values(key)`` as a list of
plain values) and build a row only for the organisations they report. A column is a list, a
numpy array (read as plain Python values), or one of the lazy columns below, which compute a
row's value from arrays when it is read.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import numpy as np

from ..bulk import Record

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NO_MOMENT = np.iinfo(np.int64).min  # a missing moment in a column of epoch microseconds


def epoch_us(moment: datetime) -> int:
    """An aware datetime as microseconds since 1970-01-01 UTC (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - UNIX_EPOCH) // timedelta(microseconds=1)


class Moments:
    """A column of moments held as int64 epoch microseconds (``NO_MOMENT``: None), read as UTC
    datetimes, one object per distinct moment read."""

    __slots__ = ("us", "_seen")

    def __init__(self, us: np.ndarray):
        self.us = us
        self._seen: dict[int, datetime] = {}

    def __len__(self) -> int:
        return len(self.us)

    def __getitem__(self, i: int) -> datetime | None:
        return self._moment(int(self.us[i]))

    def _moment(self, us: int) -> datetime | None:
        if us == NO_MOMENT:
            return None
        moment = self._seen.get(us)
        if moment is None:
            moment = self._seen[us] = UNIX_EPOCH + timedelta(microseconds=us)
        return moment

    def tolist(self) -> list:
        return list(map(self._moment, self.us.tolist()))

    def take(self, positions: np.ndarray) -> "Moments":
        return Moments(self.us[positions])


class Labels:
    """A column of a few texts held as one small integer each."""

    __slots__ = ("codes", "labels")

    def __init__(self, codes: np.ndarray, labels: Sequence):
        self.codes, self.labels = codes, tuple(labels)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int):
        return self.labels[self.codes[i]]

    def tolist(self) -> list:
        return list(map(self.labels.__getitem__, self.codes.tolist()))

    def take(self, positions: np.ndarray) -> "Labels":
        return Labels(self.codes[positions], self.labels)


class Texts:
    """A column of texts held as one string, with NUL between them, and where each ends: a
    million short ids or names take ~15 bytes each instead of ~65 as objects. None where absent.
    ``Texts.of`` keeps a list as it is when its values are not all texts free of NUL."""

    __slots__ = ("text", "ends", "present")

    def __init__(self, text: str, ends: np.ndarray, present: np.ndarray):
        self.text, self.ends, self.present = text, ends, present

    @classmethod
    def of(cls, values: list) -> "Texts | list":
        # (the checks by C: a million values in milliseconds)
        if None in values:
            present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
            texts = [v if v is not None else "" for v in values]
        else:
            present, texts = np.ones(len(values), dtype=bool), values
        if texts and set(map(type, texts)) != {str}:
            return values
        text = "\0".join(texts)
        if text.count("\0") != max(len(texts) - 1, 0):
            return values
        # (each text ends its length, plus one separator per text before it, after the last one's end)
        ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))) + np.arange(len(texts))
        return cls(text, ends, present)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str | None:
        if not self.present[i]:
            return None
        end = int(self.ends[i])
        return self.text[int(self.ends[i - 1]) + 1 if i else 0:end]

    def tolist(self) -> list:
        values = self.text.split("\0") if len(self.ends) else []
        for n in np.flatnonzero(~self.present).tolist():
            values[n] = None
        return values

    def take(self, positions: np.ndarray) -> "Texts | list":
        return Texts.of([self[i] for i in positions.tolist()])


def joined_texts(parts: list[Texts]) -> Texts:
    """``Texts`` read a chunk at a time, as one."""
    if not parts:
        return Texts("", np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    starts = np.cumsum([0] + [len(part.text) + 1 for part in parts[:-1]])
    return Texts("\0".join(part.text for part in parts),
                 np.concatenate([part.ends + start for part, start in zip(parts, starts.tolist())]),
                 np.concatenate([part.present for part in parts]))


class Optional:
    """An integer column with gaps: ``values`` where ``present``, None elsewhere."""

    __slots__ = ("values", "present")

    def __init__(self, values: np.ndarray, present: np.ndarray):
        self.values, self.present = values, present

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int):
        return int(self.values[i]) if self.present[i] else None

    def tolist(self) -> list:
        values = self.values.tolist()
        for n in np.flatnonzero(~self.present).tolist():
            values[n] = None
        return values

    def take(self, positions: np.ndarray) -> "Optional":
        return Optional(self.values[positions], self.present[positions])


class Through:
    """A column read through an index into another column (``-1``: ``default``), e.g. each
    organisation's primary subscription's status."""

    __slots__ = ("index", "source", "default")

    def __init__(self, index: np.ndarray, source: Sequence, default: Any = None):
        self.index, self.source, self.default = index, source, default

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        j = int(self.index[i])
        return self.source[j] if j >= 0 else self.default

    def tolist(self) -> list:
        every = np.empty(len(self.source) + 1, dtype=object)
        every[:-1] = plain(self.source)
        every[-1] = self.default
        return every[self.index].tolist()

    def take(self, positions: np.ndarray) -> "Through":
        return Through(self.index[positions], self.source, self.default)


class Computed:
    """A column computed per row when read (``of(i)``), for the few rows a check reports."""

    __slots__ = ("size", "of")

    def __init__(self, size: int, of: Callable[[int], Any]):
        self.size, self.of = size, of

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        return self.of(i)

    def tolist(self) -> list:
        return [self.of(i) for i in range(self.size)]

    def take(self, positions: np.ndarray) -> "Computed":
        at = positions.tolist()
        return Computed(len(at), lambda i: self.of(at[i]))


def plain(column: Sequence) -> list:
    """A column's values as a list of plain Python values (the column itself when a list)."""
    if isinstance(column, list):
        return column
    if hasattr(column, "tolist"):
        return column.tolist()
    return list(column)


def value_at(column, i: int) -> Any:
    """A column's plain value at ``i``."""
    return column.item(i) if isinstance(column, np.ndarray) else column[i]


def _reader(column) -> Callable[[int], Any]:
    if isinstance(column, np.ndarray):
        return column.item
    return column.__getitem__


def _take(column, positions: np.ndarray):
    if isinstance(column, list):
        return [column[n] for n in positions.tolist()]
    return column.take(positions) if hasattr(column, "take") else column[positions]


class Table(Sequence):
    """Rows of ``record`` held as columns (``columns``: key -> column, one per record key)."""

    def __init__(self, record: type[Record], columns: Mapping[str, Any]):
        self.record = record
        self.columns = {key: columns[key] for key in record.__slots__}
        self._readers = [_reader(c) for c in self.columns.values()]
        self._size = len(next(iter(self.columns.values()))) if self.columns else 0

    @classmethod
    def of_rows(cls, record: type[Record], rows: Sequence[Mapping]) -> "Table":
        """Rows given as mappings (hand-built dicts may leave keys out: None)."""
        if isinstance(rows, Table):
            return rows
        return cls(record, {key: [row.get(key) for row in rows] for key in record.__slots__})

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(np.arange(self._size)[index])
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(index)
        return self.record(*[read(index) for read in self._readers])

    def __iter__(self) -> Iterator[Record]:
        readers, record = self._readers, self.record
        for i in range(self._size):
            yield record(*[read(i) for read in readers])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # (mutable-looking, like a list)

    def __repr__(self) -> str:
        return f"Table({self.record.__name__}, {len(self)} rows)"

    def column(self, key: str):
        """The column as held (a list, an array or a lazy column)."""
        return self.columns[key]

    def values(self, key: str) -> list:
        """The column as a list of plain Python values."""
        return plain(self.columns[key])

    def take(self, positions: np.ndarray) -> "Table":
        """The rows at ``positions``, as a table of their own."""
        positions = np.asarray(positions, dtype=np.int64)
        return Table(self.record, {k: _take(c, positions) for k, c in self.columns.items()})


def holds(column: Sequence, predicate: Callable[[Any], bool]) -> np.ndarray:
    """Where ``predicate`` holds of a column's values, tested once per distinct value where the
    column has few (labels; values read through an index, e.g. Stripe's statuses and plans)."""
    if isinstance(column, Labels):
        return np.fromiter(map(predicate, column.labels), dtype=bool, count=len(column.labels))[column.codes]
    if isinstance(column, Through):
        values = plain(column.source)
        tested = {value: predicate(value) for value in set(values)}
        on_source = np.fromiter(map(tested.__getitem__, values), dtype=bool, count=len(values))
        if not len(on_source):
            return np.full(len(column), predicate(column.default), dtype=bool)
        return np.where(column.index >= 0, on_source[np.maximum(column.index, 0)], predicate(column.default))
    values = plain(column)
    return np.fromiter(map(predicate, values), dtype=bool, count=len(values))


def integers(column: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """An integer column as (int64 values, where present): None is absent (0 in the values)."""
    if isinstance(column, Optional):
        return column.values, column.present
    if isinstance(column, Labels):
        values, present = integers(list(column.labels))
        return values[column.codes], present[column.codes]
    if isinstance(column, np.ndarray):
        return column.astype(np.int64, copy=False), np.ones(len(column), dtype=bool)
    values = plain(column)
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    if present.all():
        return np.fromiter(values, dtype=np.int64, count=len(values)), present
    return np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=len(values)), present
