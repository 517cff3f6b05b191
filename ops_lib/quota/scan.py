"""Everything quota_audit reads from the usage events, in one pass over them.

The usage events are the biggest table the runbook reads; usage per period, the weekly trend and
the duplicates check used to read them in three grouped statements (one of them twice). Here
``scan_usage`` reads them for all three in one read-only REPEATABLE READ transaction (one
snapshot; ``SET LOCAL work_mem`` so that hash aggregates stay in memory):

* **one aggregate pass** grouped by organisation alone (few groups: the planner aggregates in
  parallel workers), with one FILTERed sum and count per need: inside the organisation's billing
  period, and in each full week (UTC Mondays). Every event is counted here. The periods travel as
  bound arrays: indexed by organisation id when the ids are dense integers (an array subscript
  per event, nothing to join), hash joined otherwise. No query per customer.
* **repeated idempotency keys**, looked for only when no unique index guarantees there are none
  (``trusted_unique_index``: valid, ready, live, not partial, on the key column itself, NOT NULL
  or NULLS NOT DISTINCT — the INVALID index a failed ``CREATE UNIQUE INDEX CONCURRENTLY`` leaves
  is not trusted). The database streams one 8-byte hash of the key per event (one bytea
  aggregate); the client keeps the hashes seen more than once (a sort of the array); the pass
  above collects the tuple ids of the events carrying them, which are then read by tuple id in
  the same snapshot. The candidates are grouped again on the keys themselves, so a hash
  collision costs a row read, never a wrong answer. Those rows are the evidence of
  ``duplicate_usage_events`` and what the recomputation takes off: a key counts once per
  organisation and period, with its largest quantity.

Grouping every key in the database (a hash aggregate over hundreds of thousands of distinct keys)
costs several plain passes; streaming 8 bytes per event costs about two, and the client a
fraction of a second per million events. Inside a caller's transaction (not the runbook's
autocommit session), the same statements run in it, and the repeated keys' rows are found by
their key hashes instead of tuple ids.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Iterable

import numpy as np
import sqlalchemy as sa
from psycopg2 import extensions
from sqlalchemy.engine import Connection

from ..db import array_literal, select_all, select_one, select_tuples, select_value, server_version_num
from ..schema_map import SchemaMap
from ..utc import as_utc
from ..bulk import Record, collector_paused
from .table import UNIX_EPOCH, Computed, Optional, Table, Through

# SET LOCAL in the scan's own read-only transaction, so that the pass's hash aggregate (one group
# per organisation, ~18 sums each) stays in memory: 64 MB, or ~200 bytes per organisation up to
# 256 MB (1M organisations spilled 114 MB to disk in 5 batches at 64 MB).
SCAN_WORK_MEM_MB = (64, 256)
WORK_MEM_BYTES_PER_ORG = 200
DEFAULT_WEEKS = 8


# --------------------------------------------------------------------------- small helpers


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week containing ``moment``."""
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def week_edges(weeks: int, now: datetime | None = None) -> list[datetime]:
    """The ``weeks + 1`` Monday boundaries of the ``weeks`` full weeks before ``now``'s week."""
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    until = week_start(now or datetime.now(timezone.utc))
    return [until - timedelta(weeks=weeks - i) for i in range(weeks + 1)]


def _iso(moment) -> str:
    return moment.isoformat() if hasattr(moment, "isoformat") else str(moment)


def _id_key(value) -> tuple:
    return (not isinstance(value, int), value if isinstance(value, int) else str(value))


class _ReadOnlyScan:
    """One read-only REPEATABLE READ transaction with a larger work_mem, when the connection is
    the runbook's (autocommit, idle); inside a caller's transaction, the caller's."""

    def __init__(self, conn: Connection, organisations: int = 0):
        self.conn = conn
        self.own = False
        low, high = SCAN_WORK_MEM_MB
        self.work_mem_mb = max(low, min(high, organisations * WORK_MEM_BYTES_PER_ORG // 2**20))

    def __enter__(self) -> "_ReadOnlyScan":
        raw = self.conn.connection.dbapi_connection
        if getattr(raw, "autocommit", False) and raw.get_transaction_status() == extensions.TRANSACTION_STATUS_IDLE:
            self.conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self.own = True
            self.conn.exec_driver_sql(f"SET LOCAL work_mem = '{int(self.work_mem_mb)}MB'")
        # UTC, so that an app storing `timestamp without time zone` in UTC is read correctly
        self.conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'" if self.own else "SET TIME ZONE 'UTC'")
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.own:
            try:
                self.conn.exec_driver_sql("ROLLBACK" if error is not None else "COMMIT")
            except Exception:
                if error is None:
                    raise


# --------------------------------------------------------------------------- the unique index


def _relation_kind(conn: Connection, schema: SchemaMap) -> str | None:
    """pg_class.relkind of the mapped usage events: r table, p partitioned, v view, m materialized…"""
    row = select_one(conn, "SELECT relkind::text AS kind FROM pg_class WHERE oid = to_regclass(:table)",
                     table=schema.table("usage_events").sql_table)
    return row["kind"] if row else None


def unique_indexes(conn: Connection, schema: SchemaMap, entity: str = "usage_events") -> list[dict]:
    """Unique indexes on the usage events (or another mapped ``entity``) that guarantee uniqueness: valid, ready, live, not
    partial, on plain columns only (no expression), each key column's collation the column's own.

    One row per index: ``name``, ``columns`` (the key columns, INCLUDE columns left out) and
    ``nulls_equal`` (every key column NOT NULL, or the index NULLS NOT DISTINCT: only then is a
    repeated NULL refused too, as GROUP BY would group it).
    """
    events = schema.table(entity)
    nulls_not_distinct = "i.indnullsnotdistinct" if server_version_num(conn) >= 150000 else "false"
    rows = select_all(
        conn,
        f"""
        SELECT i.indexrelid::regclass::text AS name,
               array_agg(a.attname::text ORDER BY k.n) AS columns,
               bool_and(a.attnotnull) OR bool_or({nulls_not_distinct}) AS nulls_equal,
               bool_and(a.attnum IS NOT NULL AND k.coll = a.attcollation) AS plain
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indcollation::oid[]) WITH ORDINALITY AS k(attnum, coll, n)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0
        WHERE i.indrelid = to_regclass(:table)
          AND i.indisunique AND i.indisvalid AND i.indisready AND i.indislive
          AND i.indpred IS NULL AND i.indexprs IS NULL
          AND k.n <= i.indnkeyatts
        GROUP BY i.indexrelid
        ORDER BY 1
        """,
        table=events.sql_table,
    )
    return [{"name": r["name"], "columns": list(r["columns"]), "nulls_equal": bool(r["nulls_equal"])}
            for r in rows if r["plain"]]


def trusted_unique_index(indexes: list[dict], columns: Iterable[str]) -> str | None:
    """The first of ``indexes`` whose key columns are all among ``columns`` (physical names):
    then no two rows share those columns' values, and a GROUP BY on them has no group of two."""
    wanted = set(columns)
    for index in indexes:
        if index["nulls_equal"] and set(index["columns"]) <= wanted:
            return index["name"]
    return None


# --------------------------------------------------------------------------- the result


@dataclass
class Duplicates:
    """Idempotency keys recorded more than once since ``since`` (``rows``: one per key), or the
    unique index that guarantees there are none (``unique_index``)."""

    since: datetime
    rows: list[dict]
    unique_index: str | None = None


@dataclass
class UsageScan:
    usage: Table                          # of UsageRow, one per organisation, as columns: its period, recomputed usage, stored counter
    weekly: "WeeklyUsage | list[dict]"     # one row per (full week, organisation) with usage (compact: WeeklyUsage)
    duplicates: Duplicates | None         # None: not asked for
    weeks: list[datetime] = field(default_factory=list)   # the full weeks' Mondays
    unique_index: str | None = None       # the index that made looking for repeated keys unnecessary


# --------------------------------------------------------------------------- the pass


def _columns(schema: SchemaMap) -> dict[str, str]:
    events = schema.table("usage_events")
    key = f"e.{events.col('idempotency_key')}"
    return {
        "table": events.sql_table,
        "org": f"e.{events.col('organisation_id')}",
        "at": f"e.{events.col('occurred_at')}",
        "key": key,
        "key_hash": f"hashtextextended(CAST({key} AS text), 0)",
        "quantity": f"e.{events.col('quantity')}" if events.has("quantity") else "1",
        "id": f"e.{events.col('id')}" if events.has("id") else "NULL",
    }


@dataclass
class _Repeated:
    """Key hashes seen more than once from ``lo`` on (and whether a NULL key was)."""

    lo: datetime
    hashes: list[int]
    null_key: bool

    def __bool__(self) -> bool:
        return bool(self.hashes) or self.null_key

    def params(self) -> dict:
        return {"rep_lo": self.lo, "rep_hashes": "{" + ",".join(str(h) for h in self.hashes) + "}",
                "rep_null": self.null_key}

    @staticmethod
    def qual(c: dict[str, str]) -> str:
        return (f"({c['at']} >= :rep_lo AND ({c['key_hash']} = ANY(CAST(:rep_hashes AS bigint[])) "
                f"OR (:rep_null AND {c['key']} IS NULL)))")


def _repeated_hashes(conn: Connection, schema: SchemaMap, lo: datetime) -> _Repeated:
    """The database streams one 8-byte hash of the key per event from ``lo`` on (one bytea
    aggregate, parallel); the client keeps the hashes seen more than once."""
    c = _columns(schema)
    streamed = select_one(
        conn,
        f"""
        SELECT string_agg(int8send({c['key_hash']}), ''::bytea) AS hashes,
               count(*) FILTER (WHERE {c['key']} IS NULL) AS null_keys
        FROM {c['table']} e
        WHERE {c['at']} >= :lo
        """,
        lo=lo,
    )
    hashes = np.frombuffer(bytes(streamed["hashes"] or b""), dtype=">i8")
    values, counts = np.unique(hashes, return_counts=True)
    return _Repeated(lo, [int(h) for h in values[counts > 1]], int(streamed["null_keys"] or 0) > 1)


def _exactly_repeated(rows: list[dict]) -> list[dict]:
    """The candidate rows whose key really was recorded more than once (a hash collision is dropped here)."""
    copies: dict[Any, int] = {}
    for row in rows:
        copies[row["idempotency_key"]] = copies.get(row["idempotency_key"], 0) + 1
    return [row for row in rows if copies[row["idempotency_key"]] > 1]


def _evidence_select(c: dict[str, str]) -> str:
    return (f"SELECT {c['id']} AS id, {c['org']} AS organisation_id, {c['key']} AS idempotency_key, "
            f"{c['quantity']} AS quantity, {c['at']} AS occurred_at FROM {c['table']} e")


def _rows_by_hash(conn: Connection, schema: SchemaMap, repeated: _Repeated) -> list[dict]:
    c = _columns(schema)
    return _exactly_repeated(select_all(conn, f"{_evidence_select(c)} WHERE {_Repeated.qual(c)}", **repeated.params()))


def _rows_by_tid(conn: Connection, schema: SchemaMap, tids: list[str]) -> list[dict]:
    """The rows at these tuple ids — read in the same snapshot as the pass that found them."""
    c = _columns(schema)
    return _exactly_repeated(select_all(conn, f"{_evidence_select(c)} WHERE e.ctid = ANY(CAST(:tids AS tid[]))",
                                        tids=array_literal(tids)))


def repeated_key_rows(conn: Connection, schema: SchemaMap, *, lo: datetime) -> list[dict]:
    """Every event from ``lo`` on whose idempotency key was recorded more than once from ``lo``
    on: ``id``, ``organisation_id``, ``idempotency_key``, ``quantity``, ``occurred_at``.

    One stream of key hashes, then the rows carrying the repeated hashes, grouped again on the
    keys themselves (a collision costs a row read, never a wrong answer). Rows without a key
    count as one key, as GROUP BY counts them."""
    repeated = _repeated_hashes(conn, schema, lo)
    return _rows_by_hash(conn, schema, repeated) if repeated else []


MAX_INT4 = 2**31 - 1


def _dense_periods(ids: list[int], starts: list[datetime], ends: list[datetime]) -> dict | None:
    """Period starts and ends as two array literals indexed by organisation id (``[lo:hi]={…}``),
    when the integer ids are dense enough (at most 4 slots per organisation); a slot no
    organisation has gets an empty period ('infinity' to 'infinity')."""
    lo, hi = min(ids), max(ids)
    if lo < 1 or hi > MAX_INT4 or hi - lo + 1 > 4 * len(ids) + 1024:
        return None
    # Elements quoted as array_literal quotes them, each distinct moment once (free organisations
    # share one calendar month, subscribers a few days' worth of period starts).
    quoted: dict[Any, str] = {}
    for moment in (*set(starts), *set(ends)):
        if moment not in quoted:
            quoted[moment] = array_literal([_iso(moment)])[1:-1]
    empty = array_literal(["infinity"])[1:-1]
    start_slots, end_slots = [empty] * (hi - lo + 1), [empty] * (hi - lo + 1)
    for org_id, start, end in zip(ids, starts, ends):
        start_slots[org_id - lo] = quoted[start]
        end_slots[org_id - lo] = quoted[end]
    return {"starts": f"[{lo}:{hi}]={{" + ",".join(start_slots) + "}",
            "ends": f"[{lo}:{hi}]={{" + ",".join(end_slots) + "}"}


def _pass(conn: Connection, schema: SchemaMap, *, periods: tuple[list, list, list] | None, edges: list[datetime],
          lo: datetime, hi: datetime | None, integer_ids: bool, repeated: _Repeated | None = None) -> "_Sums":
    """The one aggregate pass, grouped by organisation alone (few groups: the planner can
    aggregate in parallel workers): units and events inside each organisation's period
    (``periods``: organisation ids, starts, ends), in each week between ``edges``, and the tuple
    ids of the events whose key hash is in ``repeated``."""
    c = _columns(schema)
    params: dict[str, Any] = {"lo": lo}
    where = f"{c['at']} >= :lo" + (f" AND {c['at']} < :hi" if hi is not None else "")
    if hi is not None:
        params["hi"] = hi
    aggregates = []
    dense = _dense_periods(*periods) if periods and integer_ids else None
    if dense is not None:
        # Ids 1..N (or close): each event finds its organisation's period by subscript in two
        # arrays indexed by organisation id — no join, nothing to hash, in every parallel worker.
        period_cte, join = "", ""
        org_index = f"CAST({c['org']} AS integer)"
        in_period = (f"{c['at']} >= (CAST(:starts AS timestamptz[]))[{org_index}] "
                     f"AND {c['at']} < (CAST(:ends AS timestamptz[]))[{org_index}]")
        aggregates += [f"coalesce(sum({c['quantity']}) FILTER (WHERE {in_period}), 0) AS period_units",
                       f"count(*) FILTER (WHERE {in_period}) AS period_events"]
        params.update(dense)
    elif periods:
        id_type = "bigint" if integer_ids else "text"
        org_join = c["org"] if integer_ids else f"{c['org']}::text"
        # One period per organisation; grouped, so that the planner knows the ids are unique and
        # hashes these rows (not the events).
        period_cte = f"""WITH periods AS (
            SELECT p.organisation_id, min(p.period_start) AS period_start, min(p.period_end) AS period_end
            FROM unnest(CAST(:ids AS {id_type}[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]))
                 AS p(organisation_id, period_start, period_end)
            GROUP BY 1
        )"""
        join = f"LEFT JOIN periods p ON p.organisation_id = {org_join}"
        in_period = f"{c['at']} >= p.period_start AND {c['at']} < p.period_end"
        aggregates += [f"coalesce(sum({c['quantity']}) FILTER (WHERE {in_period}), 0) AS period_units",
                       f"count(*) FILTER (WHERE {in_period}) AS period_events"]
        ids, starts, ends = periods
        params.update(ids=array_literal(str(i) for i in ids), starts=array_literal(_iso(m) for m in starts),
                      ends=array_literal(_iso(m) for m in ends))
    else:
        period_cte, join = "", ""
    for i in range(len(edges) - 1):
        in_week = f"{c['at']} >= :week_{i} AND {c['at']} < :week_{i + 1}"
        aggregates += [f"coalesce(sum({c['quantity']}) FILTER (WHERE {in_week}), 0) AS week_units_{i}",
                       f"count(*) FILTER (WHERE {in_week}) AS week_events_{i}"]
    params.update({f"week_{i}": edge for i, edge in enumerate(edges)})
    if repeated:
        aggregates.append(f"CAST(array_agg(e.ctid) FILTER (WHERE {_Repeated.qual(c)}) AS text[]) AS repeated_tids")
        params.update(repeated.params())
    weeks = max(len(edges) - 1, 0)
    result = conn.execute(sa.text(
        f"""{period_cte}
        SELECT {c['org']} AS organisation_id, {", ".join(aggregates) or "count(*) AS events"}
        FROM {c['table']} e
        {join}
        WHERE {where}
        GROUP BY {c['org']}
        """), params)
    return _Sums.read(result, periods=bool(periods), weeks=weeks, tids=bool(repeated))


@dataclass
class _Sums:
    """The pass's answer, one entry per organisation with events, as arrays (a million
    organisations are a few arrays, not a million dicts of 20 keys): ``ids`` in the database's
    order, ``period_units``/``period_events`` (int64, 0 without a period), ``week_units`` and
    ``week_events`` (int64, or int32 where every count fits; one row per organisation, one column
    per week), and the tuple ids of
    the repeated keys' events."""

    ids: list | np.ndarray               # (the packed stream's: an int64 array)
    period_units: np.ndarray
    period_events: np.ndarray
    week_units: np.ndarray
    week_events: np.ndarray
    repeated_tids: list[str]
    integer_ids: bool | None = None      # True: every id is an int (the packed stream's)

    CHUNK = 65_536

    @classmethod
    def read(cls, result, *, periods: bool, weeks: int, tids: bool) -> "_Sums":
        # columns: organisation_id, [period_units, period_events], (week_units_i, week_events_i) per week, [repeated_tids]
        first = 3 if periods else 1
        numbers = (2 if periods else 0) + 2 * weeks
        ids: list = []
        blocks: list[np.ndarray] = []
        repeated: list[str] = []
        while True:
            chunk = result.fetchmany(cls.CHUNK)
            if not chunk:
                break
            ids.extend(row[0] for row in chunk)
            if numbers:
                # counts and sums (coalesced: never NULL) as int, or Decimal for a numeric quantity:
                # numpy converts them in C, truncating a fraction as int() does
                blocks.append(np.array([row[1:1 + numbers] for row in chunk], dtype=np.int64).reshape(len(chunk), numbers))
            if tids:
                for row in chunk:
                    if row[-1]:
                        repeated.extend(row[-1])
        matrix = np.concatenate(blocks) if blocks else np.zeros((len(ids), numbers), dtype=np.int64)
        zeros = np.zeros(len(ids), dtype=np.int64)
        return cls(ids, matrix[:, 0] if periods else zeros, matrix[:, 1] if periods else zeros,
                   np.ascontiguousarray(matrix[:, first - 1:first - 1 + 2 * weeks:2]),
                   np.ascontiguousarray(matrix[:, first:first + 2 * weeks:2]), repeated)


# --------------------------------------------------------------------------- the events as arrays


# timestamptz_send's wire value: microseconds since 2000-01-01 UTC (PostgreSQL's own clock, exact).
PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
PG_EPOCH_UNIX_US = (PG_EPOCH - UNIX_EPOCH) // timedelta(microseconds=1)
WEEK_US = 7 * 86_400 * 1_000_000
INTEGER_TYPES = ("smallint", "integer", "bigint")
NO_ORGANISATION = -2**63  # an event's NULL organisation id in the packed stream
# Events per packed chunk (32 bytes each): what the client holds of the events at a time.
STREAM_CHUNK_EVENTS = 1 << 19
_PACKED = np.dtype([("org", ">i8"), ("at", ">i8"), ("quantity", ">i8"), ("key_hash", ">i8")])
_PACKED_NO_HASH = np.dtype([("org", ">i8"), ("at", ">i8"), ("quantity", ">i8")])


def _us(moment: datetime) -> int:
    return (as_utc(moment) - PG_EPOCH) // timedelta(microseconds=1)


def _us_array(moments: list[datetime]) -> np.ndarray:
    """Moments as microseconds since 2000 UTC, each distinct moment converted once."""
    converted: dict = {}
    for moment in set(moments):
        converted[moment] = _us(moment)
    return np.fromiter((converted[m] for m in moments), dtype=np.int64, count=len(moments))


def _column_types(conn: Connection, schema: SchemaMap, entity: str = "usage_events") -> dict[str, str]:
    """The mapped table's (or view's) physical columns and their types."""
    rows = select_all(conn, "SELECT attname::text AS name, format_type(atttypid, NULL) AS type FROM pg_attribute "
                            "WHERE attrelid = to_regclass(:table) AND attnum > 0 AND NOT attisdropped",
                      table=schema.table(entity).sql_table)
    return {row["name"]: row["type"] for row in rows}


def streams_as_arrays(conn: Connection, schema: SchemaMap) -> bool:
    """Whether the events can travel as packed integers: integer organisation ids and an integer
    quantity (or none). Otherwise (text ids, numeric quantities) the pass aggregates in the database."""
    events = schema.table("usage_events")
    types = _column_types(conn, schema)
    wanted = [events.columns["organisation_id"]] + ([events.columns["quantity"]] if events.has("quantity") else [])
    return all(types.get(column) in INTEGER_TYPES for column in wanted)


class _IdIndex:
    """Positions of integer ids in a list, by binary search over a sorted copy (no dict of a million keys)."""

    def __init__(self, ids: list[int] | np.ndarray):
        values = ids.astype(np.int64, copy=False) if isinstance(ids, np.ndarray) else \
            np.fromiter(ids, dtype=np.int64, count=len(ids))
        self.order = np.argsort(values, kind="stable")
        self.sorted_ids = values[self.order]

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Each key's position in the ids (the first of equal ones), -1 for a key not among them."""
        if not len(self.sorted_ids):
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted_ids, keys), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[at] == keys, self.order[at], -1)


@dataclass
class _Accounts:
    """The organisations' integer ids, and each one's period in microseconds since 2000 UTC."""

    index: _IdIndex
    starts: np.ndarray
    ends: np.ndarray

    def positions(self, org_ids: np.ndarray) -> np.ndarray:
        return self.index.positions(org_ids)


class _Positions:
    """Where organisation ids sit in a list of them (-1: absent; the first of equal ids). Ids
    compare as text, as everywhere in the runbook; as numbers, by binary search, when both sides
    hold only ints (a million lookups, no dict of a million strings)."""

    def __init__(self, among: list, integers: bool | None = None):
        self.among = among
        self.integers = _all_int(among) if integers is None else integers
        self.index = _IdIndex(among) if self.integers else None
        self._by_text: dict[str, int] | None = None

    def of(self, keys: list | np.ndarray, integers: bool | None = None) -> np.ndarray:
        if isinstance(keys, np.ndarray):
            if self.index is not None:
                return self.index.positions(keys.astype(np.int64, copy=False))
            keys = keys.tolist()
        if self.index is not None and (_all_int(keys) if integers is None else integers):
            return self.index.positions(np.fromiter(keys, dtype=np.int64, count=len(keys)))
        if self._by_text is None:
            self._by_text = {}
            for n, value in enumerate(self.among):
                self._by_text.setdefault(str(value), n)
        return np.fromiter((self._by_text.get(str(k), -1) for k in keys), dtype=np.int64, count=len(keys))


def _index_of(keys: list, among: list) -> np.ndarray:
    """Each key's position in ``among`` (see ``_Positions``)."""
    return _Positions(among).of(keys)


def _all_int(values: list | np.ndarray) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "i"
    return all(type(v) is int for v in values) and (not values or (-2**63 <= min(values) and max(values) < 2**63))


def _sum_by(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Exact int64 sums of ``values`` per ``index``: bincount's float64 sums are exact while every
    partial sum stays below 2**53, which the total of the absolute values bounds."""
    if not len(values) or int(np.abs(values).sum(dtype=np.float64)) < 2**53:
        return np.bincount(index, weights=values, minlength=size).astype(np.int64)
    total = np.zeros(size, dtype=np.int64)
    np.add.at(total, index, values)
    return total


def _stream_sums(conn: Connection, schema: SchemaMap, *, accounts: _Accounts | None, edges: list[datetime],
                 lo: datetime, hi: datetime | None, hashes_from: datetime | None, own_transaction: bool = False) -> tuple["_Sums", _Repeated | None]:
    """The pass as one scan whose rows the database packs into a few binary strings (organisation
    id, moment, quantity and, with ``hashes_from``, the key's 8-byte hash: 24–32 bytes an event,
    no row and no text per event on the wire), summed here with numpy: inside each organisation's
    period, in each week, and the key hashes seen more than once from ``hashes_from`` on.

    The strings are grouped by a hash of the organisation id, so each organisation's events arrive
    in one chunk (~``STREAM_CHUNK_EVENTS``), summed as they arrive: the client never holds every
    event at once, only the key hashes (8 bytes an event). The database's work is one scan and no
    per-organisation aggregate (at 1M organisations and 5M events, 18 filtered sums per
    organisation cost 7× the scan: 14 s against 1.7 s)."""
    c = _columns(schema)
    org = f"coalesce(CAST({c['org']} AS bigint), CAST('{NO_ORGANISATION}' AS bigint))"
    parts = [f"int8send({org})", f"timestamptz_send(CAST({c['at']} AS timestamptz))",
             f"int8send(CAST(coalesce({c['quantity']}, 0) AS bigint))"]
    params: dict[str, Any] = {"lo": lo, "rep_lo": hashes_from or lo}
    if hashes_from is not None:
        parts.append(f"int8send(coalesce({c['key_hash']}, 0))")  # a NULL key is counted apart below
    where = f"{c['at']} >= :lo" + (f" AND {c['at']} < :hi" if hi is not None else "")
    if hi is not None:
        params["hi"] = hi
    # The planner's estimate of the events read (a view's or a partitioned table's too), for the chunks.
    plan = select_value(conn, f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {c['table']} e WHERE {where}", **params)
    events = float((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
    params["mask"] = (1 << min(12, max(0, math.ceil(math.log2(max(events, 1) / STREAM_CHUNK_EVENTS))))) - 1
    # The planner counts the groups as the organisations (~1M), not the few hashes, and sorts every
    # event by its group (5M events: 3.5 s in memory, against 2.0 s hashed into the few groups).
    # Only in the scan's own transaction (a caller's would keep the setting).
    if own_transaction:
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
    # A cursor of our own (the runbook's connection is in autocommit mode, with our BEGIN sent as
    # SQL: psycopg2's named cursors refuse it), read a chunk at a time.
    conn.execute(sa.text(f"""
        DECLARE opsbook_event_stream NO SCROLL CURSOR FOR
        SELECT string_agg({' || '.join(parts)}, ''::bytea) AS packed,
               count(*) FILTER (WHERE {c['key']} IS NULL AND {c['at']} >= :rep_lo) AS null_keys
        FROM {c['table']} e
        WHERE {where}
        GROUP BY hashint8({org}) & :mask
        """), params)
    layout = _PACKED if hashes_from is not None else _PACKED_NO_HASH
    weeks = max(len(edges) - 1, 0)
    first_week, last_week = (_us(edges[0]), _us(edges[-1])) if weeks else (0, 0)
    rep_lo = _us(hashes_from) if hashes_from is not None else 0
    ids, hashes, null_keys = [], [], 0
    # (each of the four sums in blocks of its own: one matrix of them would be concatenated beside
    # its blocks, then kept whole by the period columns' views: ~300 MB more at 1M organisations)
    period_units, period_events, week_units, week_events = [], [], [], []
    while (chunk := conn.exec_driver_sql("FETCH NEXT FROM opsbook_event_stream").first()) is not None:
        packed, nulls = chunk
        null_keys += int(nulls or 0)
        rows = np.frombuffer(bytes(packed or b""), dtype=layout)
        org, at, quantity = rows["org"].astype(np.int64), rows["at"].astype(np.int64), rows["quantity"].astype(np.int64)
        if hashes_from is not None:
            hashes.append(rows["key_hash"][at >= rep_lo].astype(np.int64))
        del rows
        # An event of no organisation counts nowhere, but its key may repeat another's.
        if (org == NO_ORGANISATION).any():
            keep = org != NO_ORGANISATION
            org, at, quantity = org[keep], at[keep], quantity[keep]
        chunk_ids, of = np.unique(org, return_inverse=True)
        n = len(chunk_ids)
        if accounts is not None:
            where_ = accounts.positions(chunk_ids)
            known = where_ >= 0
            starts = np.where(known, accounts.starts[where_], np.iinfo(np.int64).max)[of]
            ends = np.where(known, accounts.ends[where_], np.iinfo(np.int64).min)[of]
            inside = (at >= starts) & (at < ends)
            period_units.append(_sum_by(of[inside], quantity[inside], n))
            period_events.append(np.bincount(of[inside], minlength=n).astype(np.int64, copy=False))
        else:
            period_units.append(np.zeros(n, dtype=np.int64))
            period_events.append(np.zeros(n, dtype=np.int64))
        if weeks:
            in_weeks = (at >= first_week) & (at < last_week)
            cell = of[in_weeks] * weeks + (at[in_weeks] - first_week) // WEEK_US
            # (as int32 where they fit: a million organisations' 8 weeks are 64 MB a matrix in int64)
            week_units.append(_narrow(_sum_by(cell, quantity[in_weeks], n * weeks).reshape(n, weeks)))
            week_events.append(_narrow(np.bincount(cell, minlength=n * weeks).reshape(n, weeks)))
        else:
            week_units.append(np.zeros((n, 0), dtype=np.int64))
            week_events.append(np.zeros((n, 0), dtype=np.int64))
        ids.append(chunk_ids)
    conn.exec_driver_sql("CLOSE opsbook_event_stream")
    sums = _Sums(_joined(ids), _joined(period_units), _joined(period_events),
                 _joined(week_units, weeks), _joined(week_events, weeks), [], True)
    if hashes_from is None:
        return sums, None
    return sums, _Repeated(hashes_from, _repeated(hashes), null_keys > 1)


def _joined(blocks: list[np.ndarray], *columns: int) -> np.ndarray:
    """The blocks (of rows of ``columns``) as one int64 array; the list is emptied, so that each
    block is freed once copied."""
    if not blocks:
        return np.zeros((0, *columns), dtype=np.int64)
    joined = np.concatenate(blocks)
    blocks.clear()
    return joined


def _repeated(hashes: list[np.ndarray]) -> list[int]:
    """The hashes seen more than once, ascending: sorted in place, each compared with the next (no
    counts array nor second copy of the millions of hashes, as ``np.unique(..., return_counts)``)."""
    every = _joined(hashes)
    every.sort()
    return [int(h) for h in np.unique(every[1:][every[1:] == every[:-1]])]


def duplicate_rows(rows: list[dict], since: datetime) -> list[dict]:
    """Per idempotency key recorded more than once since ``since``: copies, organisations, event
    ids (oldest first), total quantity, first and last time; oldest first."""
    since = as_utc(since)
    by_key: dict[Any, list[dict]] = {}
    for row in rows:
        if as_utc(row["occurred_at"]) >= since:
            by_key.setdefault(row["idempotency_key"], []).append(row)
    found = []
    for key, copies in by_key.items():
        if len(copies) < 2:
            continue
        copies.sort(key=lambda r: (as_utc(r["occurred_at"]), _id_key(r["id"]) if r["id"] is not None else (False, 0)))
        ids = [r["id"] for r in copies]
        found.append({
            "idempotency_key": key,
            "copies": len(copies),
            "organisation_ids": ", ".join(sorted({str(r["organisation_id"]) for r in copies})),
            "event_ids": None if all(i is None for i in ids) else ", ".join(str(i) for i in ids),
            "total_quantity": sum(r["quantity"] for r in copies),
            "first_at": copies[0]["occurred_at"],
            "last_at": copies[-1]["occurred_at"],
        })
    found.sort(key=lambda r: (as_utc(r["first_at"]), str(r["idempotency_key"])))
    return found


def find_duplicates(conn: Connection, schema: SchemaMap, *, since: datetime) -> Duplicates:
    """``duplicate_usage_events``' evidence on its own (the runbook gets it from ``scan_usage``)."""
    with _ReadOnlyScan(conn):
        events = schema.table("usage_events")
        index = trusted_unique_index(unique_indexes(conn, schema), [events.columns["idempotency_key"]])
        if index:
            return Duplicates(since, [], index)
        return Duplicates(since, duplicate_rows(repeated_key_rows(conn, schema, lo=as_utc(since)), since))


@dataclass
class _Counters:
    """The app's stored counters per (organisation, period start) as columns: ``used`` is the
    largest value stored (``has_value`` False: only NULLs), ``rows`` how many rows the app stored."""

    ids: list | np.ndarray   # (integer ids: an int64 array)
    starts: np.ndarray       # microseconds since 2000 UTC
    used: np.ndarray
    has_value: np.ndarray
    rows: np.ndarray
    integer_ids: bool | None = None


MOMENT_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def _counters(conn: Connection, schema: SchemaMap, lo: datetime, hi: datetime, integer_ids: bool) -> _Counters:
    """The app's counters starting in [lo, hi), one per (organisation, period start): packed
    integers in one binary string when the ids are integers (a million counters), rows otherwise."""
    counters = schema.table("usage_counters")
    org = f"c.{counters.col('organisation_id')}"
    # One counter per (organisation, period start) when a unique index says so (the reference
    # app's primary key): then no grouping (a million groups hashed: ~0.7 s of the database's time).
    # (a period start stored as text may name one moment twice: only moment types are trusted)
    types = _column_types(conn, schema, "usage_counters")
    one_each = types.get(counters.columns["period_start"]) in MOMENT_TYPES \
        and trusted_unique_index(unique_indexes(conn, schema, "usage_counters"), [
            counters.columns["organisation_id"], counters.columns["period_start"]]) is not None
    grouped = f"""
        SELECT {org if integer_ids else org + '::text'} AS organisation_id,
               CAST(c.{counters.col('period_start')} AS timestamptz) AS period_start,
               {f"CAST(c.{counters.col('used')} AS bigint)" if one_each else f"max(c.{counters.col('used')})::bigint"} AS used,
               {"1" if one_each else "count(*)"} AS counter_rows
        FROM {counters.sql_table} c
        WHERE c.{counters.col('period_start')} >= :lo AND c.{counters.col('period_start')} < :hi
        {"" if one_each else "GROUP BY 1, 2"}"""
    if integer_ids and types.get(
            counters.columns["organisation_id"]) in INTEGER_TYPES:
        packed = select_value(conn, f"""
            SELECT string_agg(int8send(CAST(organisation_id AS bigint)) || timestamptz_send(period_start)
                              || int8send(coalesce(used, 0)) || int8send(counter_rows)
                              || int8send(CASE WHEN used IS NULL THEN 1 ELSE 0 END), ''::bytea)
            FROM ({grouped}) g""", lo=lo, hi=hi)
        rows = np.frombuffer(bytes(packed or b""), dtype=np.dtype([(k, ">i8") for k in ("org", "start", "used", "rows", "null")]))
        return _Counters(rows["org"].astype(np.int64), rows["start"].astype(np.int64), rows["used"].astype(np.int64),
                         rows["null"] == 0, rows["rows"].astype(np.int64), True)
    found = list(select_tuples(conn, grouped, lo=lo, hi=hi))
    used = [r[2] for r in found]
    return _Counters([r[0] for r in found], _us_array([r[1] for r in found]),
                     np.fromiter((0 if u is None else u for u in used), dtype=np.int64, count=len(used)),
                     np.fromiter((u is not None for u in used), dtype=bool, count=len(used)),
                     np.fromiter((r[3] for r in found), dtype=np.int64, count=len(found)))


# Partial aggregation in parallel workers pays when each worker's rows fold into far fewer groups
# (the default demo: ~1,300 events per organisation, 1.3× faster in parallel); with a handful of
# events per organisation (100k organisations, 5 each) the parallel plan took twice as long.
PARALLEL_MIN_EVENTS_PER_ORG = 50


def _events_per_organisation(conn: Connection, schema: SchemaMap, organisations: int) -> float:
    """The planner's own row estimate of the events table (pg_class.reltuples) per organisation."""
    rows = select_one(conn, "SELECT reltuples FROM pg_class WHERE oid = to_regclass(:table)",
                      table=schema.table("usage_events").sql_table)
    estimate = float(rows["reltuples"]) if rows and rows["reltuples"] is not None else -1.0
    return float("inf") if estimate < 0 else estimate / max(organisations, 1)


def scan_usage(conn: Connection, schema: SchemaMap, accounts, *, duplicates_since: datetime | None = None,
               weeks: int = DEFAULT_WEEKS, now: datetime | None = None) -> UsageScan:
    """Usage per organisation over its billing period, the weekly series of the ``weeks`` full
    weeks before ``now`` (0: none) and, with ``duplicates_since``, the keys recorded twice since
    then — from one pass over the usage events (and, without a unique index on the key, one
    stream of key hashes and the rows of the repeated keys).
    """
    orgs = accounts.organisations
    now = as_utc(now or accounts.now or datetime.now(timezone.utc))
    events = schema.table("usage_events")
    ids = orgs.column("organisation_id")  # (integers: an array)
    integer_ids = len(ids) > 0 and _all_int(ids)
    edges = week_edges(weeks, now) if weeks else []
    # (the accounts' periods as held: epoch microseconds, read as datetimes where one is needed)
    starts, ends = orgs.column("period_start"), orgs.column("period_end")
    since = as_utc(duplicates_since) if duplicates_since is not None else None
    if not orgs and not edges and since is None:
        return UsageScan([], [], None)
    starts_us, ends_us = starts.us - PG_EPOCH_UNIX_US, ends.us - PG_EPOCH_UNIX_US
    first_start, last_start, last_end = ([starts[int(np.argmin(starts.us))]], [starts[int(np.argmax(starts.us))]],
                                         [ends[int(np.argmax(ends.us))]]) if len(orgs) else ([], [], [])
    where = _Positions(ids, integer_ids)

    with _ReadOnlyScan(conn, len(orgs)) as scan_conn:
        indexes = unique_indexes(conn, schema)
        key_col, org_col = events.columns["idempotency_key"], events.columns["organisation_id"]
        unique_key = trusted_unique_index(indexes, [key_col])
        unique_per_org = trusted_unique_index(indexes, [key_col, org_col])
        # Repeated keys matter to the duplicates check (since ``since``) and to the recomputation (in
        # each period); a unique index on the key (or on key and organisation) rules them out.
        need_keys = (since is not None and not unique_key) or (bool(orgs) and not unique_per_org)
        repeated_from = min(first_start + ([since] if since else [])) if need_keys else None
        # With keys to look for, events after every period still count there (hence no upper bound).
        lo = min(first_start + edges[:1] + ([repeated_from] if repeated_from is not None else []))
        hi = None if repeated_from is not None else max(last_end + edges[-1:])
        found: list[dict] = []
        if (integer_ids or not orgs) and streams_as_arrays(conn, schema):
            accounts_us = _Accounts(where.index, starts_us, ends_us) if orgs else None
            sums, repeated = _stream_sums(conn, schema, accounts=accounts_us, edges=edges, lo=lo, hi=hi,
                                          hashes_from=repeated_from, own_transaction=scan_conn.own)
            if repeated:
                found = _rows_by_hash(conn, schema, repeated)
        else:
            # Tuple ids name rows only in a plain table read in our own snapshot (a view has none; a
            # partitioned table repeats them across partitions): elsewhere, rows are found by key hash.
            by_tuple_id = scan_conn.own and _relation_kind(conn, schema) in ("r", "m")
            repeated = _repeated_hashes(conn, schema, repeated_from) if repeated_from is not None else None
            if scan_conn.own and orgs and _events_per_organisation(conn, schema, len(orgs)) < PARALLEL_MIN_EVENTS_PER_ORG:
                # Each parallel worker would hold nearly every organisation's group, and the leader merge
                # them all again: with few events per organisation one process aggregates faster.
                conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            periods = (ids, starts.tolist(), ends.tolist()) if orgs else None
            sums = _pass(conn, schema, periods=periods, edges=edges, lo=lo, hi=hi, integer_ids=integer_ids,
                         repeated=repeated if by_tuple_id else None)
            if repeated:
                # In our own snapshot the tuple ids the pass collected still name the same rows.
                tids = sums.repeated_tids
                found = (_rows_by_tid(conn, schema, tids) if tids else []) if by_tuple_id else \
                    _rows_by_hash(conn, schema, repeated)
        with collector_paused():
            stored = _counters(conn, schema, first_start[0], last_start[0] + timedelta(microseconds=1), integer_ids) \
                if orgs else None

    with collector_paused():
        usage = _usage_rows(orgs, where, starts_us, ends_us, sums, found, stored)
        # (what the usage rows were made of is freed before the weekly arrays are taken: the peak)
        stored = sums.period_units = sums.period_events = None
        weekly = WeeklyUsage.of_organisations(sums, edges, where, orgs) if edges else []
    duplicates = None
    if since is not None:
        duplicates = Duplicates(duplicates_since, [] if unique_key else duplicate_rows(found, since), unique_key)
    return UsageScan(usage, weekly, duplicates, edges[:-1], unique_key)


# One per organisation (a million at a million customers): its period, limit, recomputed usage
# (``used``, ``events``; ``repeated``: copies of a key not counted) and the app's counter
# (``stored``: None without one; ``counter_rows``: how many rows the app stored for the period).
UsageRow = Record.of("UsageRow", (
    "organisation_id", "name", "plan", "usage_limit", "used", "stored", "pct", "events", "repeated",
    "counter_rows", "period_start", "period_end", "period_source", "is_blocked"))


def usage_table(usage: Sequence[Mapping]) -> Table:
    """Usage rows as columns: ``scan_usage``'s as they are, hand-built dicts read once."""
    return Table.of_rows(UsageRow, usage)


def _usage_rows(orgs: Table, where: _Positions, starts_us: np.ndarray, ends_us: np.ndarray, sums: _Sums,
                repeated: list[dict], stored: _Counters | None) -> Table:
    """One row per organisation, in the accounts' order, as columns (the accounts' own where they
    are the same): the pass's sums found by id (binary search over integer ids), the repeated keys
    taken off, the counter of the same period."""
    n = len(orgs)
    if not n:
        return Table(UsageRow, {key: [] for key in UsageRow.__slots__})
    units, events = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if len(sums.ids):
        at = where.of(sums.ids, sums.integer_ids)
        has = at >= 0
        units[at[has]], events[at[has]] = sums.period_units[has], sums.period_events[has]
    # An idempotency key counts once per organisation and period, with its largest quantity.
    extra_units, repeats = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    groups: dict[tuple, list] = {}
    for row, k in zip(repeated, where.of([r["organisation_id"] for r in repeated]).tolist()):
        if k >= 0 and starts_us[k] <= _us(row["occurred_at"]) < ends_us[k]:
            groups.setdefault((k, row["idempotency_key"]), []).append(row["quantity"])
    for (k, _), quantities in groups.items():
        if len(quantities) > 1:
            extra_units[k] += int(sum(quantities) - max(quantities))  # (a numeric quantity: as the sums, an integer)
            repeats[k] += len(quantities) - 1
    counter, has_counter = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    counter_rows = np.zeros(n, dtype=np.int64)
    if stored is not None and len(stored.ids):
        k = where.of(stored.ids, stored.integer_ids)
        same_period = np.flatnonzero((k >= 0) & (stored.starts == starts_us[k]))
        valued = same_period[stored.has_value[same_period]]
        counter[k[valued]], has_counter[k[valued]] = stored.used[valued], True
        counter_rows[k[same_period]] = stored.rows[same_period]
    used = units - extra_units
    limits = orgs.column("usage_limit")
    return Table(UsageRow, {
        "organisation_id": orgs.column("organisation_id"), "name": orgs.column("name"),
        "plan": orgs.column("app_plan"), "usage_limit": limits, "used": used, "stored": Optional(counter, has_counter),
        # (the share of the limit as Python rounds it, for the rows read)
        "pct": Computed(n, lambda i: round(100.0 * int(used[i]) / limits[i], 1) if limits[i] else None),
        "events": events - repeats, "repeated": repeats, "counter_rows": counter_rows,
        "period_start": orgs.column("period_start"), "period_end": orgs.column("period_end"),
        "period_source": orgs.column("period_source"), "is_blocked": orgs.column("is_blocked")})


class WeeklyUsage(Sequence):
    """Usage per (full week, organisation) with events, held as arrays: a list of rows to
    whoever reads it as one (``week_start``, ``organisation_id``, ``name``, ``plan``, ``usage``,
    ``events``; by week, then organisation id), built one row at a time only when read.

    ``trend.weekly_usage_by_plan`` and ``trend.usage_surge`` read the arrays themselves: a
    million organisations over 8 weeks are two 8-column integer arrays, not millions of dicts.
    ``ids``, ``names`` and ``plans`` name the organisations that had events in any of the weeks,
    ordered by id; ``units`` and ``events`` have one row per organisation, one column per week.
    """

    def __init__(self, weeks: list[datetime], ids: list, names: list, plans: list, units: np.ndarray,
                 events: np.ndarray):
        self.weeks, self.ids, self.names, self.plans = list(weeks), ids, names, plans
        self.units, self.events = units, events

    @classmethod
    def of(cls, sums: _Sums, edges: list[datetime], about: dict[str, dict]) -> "WeeklyUsage":
        """``about``: each organisation's ``name`` and ``app_plan``, by id as text."""
        def describe(ids: list) -> tuple[list, list]:
            known = [about.get(str(org_id)) or {} for org_id in ids]
            return [k.get("name") for k in known], [k.get("app_plan") for k in known]
        return cls._of(sums, edges, describe)

    @classmethod
    def of_organisations(cls, sums: _Sums, edges: list[datetime], where: "_Positions", orgs: list) -> "WeeklyUsage":
        """Names and plans from the accounts' rows (``where``: positions by their organisation ids)."""
        def describe(active: list) -> tuple[list, list]:
            at = where.of(active, sums.integer_ids)
            # (a last None: position -1, an organisation the accounts do not have, reads it; the
            # names are read from the accounts' column when a row is)
            plans = np.array([*orgs.values("app_plan"), None], dtype=object)
            return Through(at, orgs.column("name")), plans[at].tolist()
        return cls._of(sums, edges, describe)

    @classmethod
    def _of(cls, sums: _Sums, edges: list[datetime], describe) -> "WeeklyUsage":
        """The weekly columns are moved out of ``sums`` (each freed once its rows are taken: at a
        million organisations, 64 MB each)."""
        active = np.flatnonzero((sums.week_events > 0).any(axis=1)) if len(sums.ids) else np.zeros(0, dtype=np.int64)
        if isinstance(sums.ids, np.ndarray):
            ids = sums.ids[active]
            order = np.argsort(ids, kind="stable")
            rows, ids = active[order], ids[order].tolist()
        else:
            ids = [sums.ids[n] for n in active.tolist()]
            order = _id_order(ids)
            ids = [ids[n] for n in order]
            rows = active[np.asarray(order, dtype=np.int64)] if len(order) else active
        names, plans = describe(ids)
        units, sums.week_units = sums.week_units[rows], None
        events, sums.week_events = sums.week_events[rows], None
        return cls(edges[:-1], ids, names, plans, units, events)

    def __iter__(self) -> Iterator[dict]:
        for i, week in enumerate(self.weeks):
            units, events = self.units[:, i].tolist(), self.events[:, i].tolist()
            for n in np.flatnonzero(self.events[:, i] > 0).tolist():
                yield {"week_start": week, "organisation_id": self.ids[n], "name": self.names[n],
                       "plan": self.plans[n], "usage": units[n], "events": events[n]}

    def __len__(self) -> int:
        return int((self.events > 0).sum())

    def __getitem__(self, item):
        return list(self)[item]

    def __eq__(self, other) -> bool:
        if isinstance(other, (WeeklyUsage, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"<WeeklyUsage: {len(self)} row(s), {len(self.ids)} organisation(s), {len(self.weeks)} week(s)>"


def _narrow(counts: np.ndarray) -> np.ndarray:
    """Counts as int32 when every one fits (half the memory; numpy sums them in int64 still)."""
    if not counts.size or (counts.min() >= np.iinfo(np.int32).min and counts.max() <= np.iinfo(np.int32).max):
        return counts.astype(np.int32, copy=False)
    return counts


def _id_order(ids: list) -> list[int]:
    """Positions of ``ids`` in ``_id_key`` order (integers first, by value; then the rest as text)."""
    if ids and all(type(i) is int for i in ids) and -2**63 <= min(ids) and max(ids) < 2**63:
        return np.argsort(np.asarray(ids, dtype=np.int64), kind="stable").tolist()
    return sorted(range(len(ids)), key=lambda n: _id_key(ids[n]))


def weekly_rows(sums: _Sums, edges: list[datetime], about: dict[str, dict]) -> list[dict]:
    """One row per (full week, organisation) with events: the pass's weekly columns, unfolded."""
    return list(WeeklyUsage.of(sums, edges, about))


def weekly_sums(conn: Connection, schema: SchemaMap, edges: list[datetime]) -> _Sums:
    """Units and events per organisation and week between the first and last edge (the pass
    ``scan_usage`` makes, without periods): for ``trend.weekly_usage`` on its own."""
    with _ReadOnlyScan(conn):
        return _pass(conn, schema, periods=None, edges=edges, lo=edges[0], hi=edges[-1], integer_ids=True)
