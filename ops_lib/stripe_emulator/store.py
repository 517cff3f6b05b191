"""A state that does not fit a JSON document: the account's objects in one SQLite file.

The JSON state (state.py) is read whole into memory, which is what a test wants (small, readable,
rewritten between requests) and what a benchmark's million-customer account cannot afford: at
100k organisations it was a 3.1 GB document the emulator could not load within a health check.
A SQLite state holds the same thing, one row per object, and is read in place:

    objects(id PRIMARY KEY, type, created, customer, parent, body)   body: the object's JSON
    meta(key PRIMARY KEY, value)                                      api_keys, faults, counts

A listing is one index range, `(type, created, id)` walked newest first from the cursor, read in
small batches until the page is full; `customer=` and the parent filters (`subscription=` on
invoices, `charge=` on refunds and disputes, `source=` on balance transactions) walk their own
index. Every object read is still tested against the request's filters in Python (api.py), so
the answers are exactly the JSON state's; a page costs the objects it reads, at any size.

The emulator tells the two formats apart by the file's first bytes (SQLite's header), so the same
``--state FILE`` takes either. ``SqliteStateWriter`` builds one in a temporary file and moves it
into place when done (a running emulator never sees half a file); ``write_sqlite_state`` writes
an in-memory state.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .api import PARENT_KEY, Account, Obj
from .state import OBJECT_TYPES

SQLITE_HEADER = b"SQLite format 3\x00"
_BATCH = 20_000  # rows per executemany while writing


def is_sqlite_state(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _row(obj: Mapping[str, Any]) -> tuple:
    object_type = obj["object"]
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"the emulator does not serve {object_type} objects")
    parent_key = PARENT_KEY.get(object_type)
    return (obj["id"], object_type, obj.get("created") or 0, _ref(obj.get("customer")),
            _ref(obj.get(parent_key)) if parent_key else None,
            json.dumps(obj, separators=(",", ":")))


class SqliteStateWriter:
    """Objects streamed into a new SQLite state; ``finish`` adds the rest and moves it into place.

    ``add`` replaces an object of the same id (a charge refunded after it was written).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.tmp.unlink(missing_ok=True)
        self.conn = sqlite3.connect(self.tmp, isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -65536",
                       "temp_store = MEMORY", "page_size = 8192"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute("CREATE TABLE objects (id TEXT PRIMARY KEY, type TEXT NOT NULL, "
                          "created INTEGER NOT NULL, customer TEXT, parent TEXT, body TEXT NOT NULL)")
        self.conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.conn.execute("BEGIN")
        self._rows: list[tuple] = []
        self.added = 0

    def add(self, *objects: Mapping[str, Any]) -> None:
        for obj in objects:
            self._rows.append(_row(obj))
        if len(self._rows) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.conn.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)", self._rows)
            self.added += len(self._rows)
            self._rows.clear()

    def get(self, object_id: str) -> Obj | None:
        self.flush()
        row = self.conn.execute("SELECT body FROM objects WHERE id = ?", (object_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def finish(self, state: Mapping[str, Any] | None = None) -> Path:
        """Add ``state``'s objects, api keys and faults; index; move the file into place."""
        state = state or {}
        for items in (state.get("objects") or {}).values():
            for obj in items:
                self.add(obj)
        self.flush()
        conn = self.conn
        # Indexes after the rows: one sort each instead of a million random inserts.
        conn.execute("CREATE INDEX objects_listing ON objects (type, created, id)")
        conn.execute("CREATE INDEX objects_customer ON objects (type, customer, created, id) "
                     "WHERE customer IS NOT NULL")
        conn.execute("CREATE INDEX objects_parent ON objects (type, parent, created, id) "
                     "WHERE parent IS NOT NULL")
        counts = dict(conn.execute("SELECT type, count(*) FROM objects GROUP BY type").fetchall())
        meta = {"api_keys": list(state.get("api_keys") or []), "faults": list(state.get("faults") or []),
                "counts": {t: counts.get(t, 0) for t in OBJECT_TYPES}}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.conn.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_sqlite_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """An in-memory state (new_state/add_objects) as a SQLite state, written atomically."""
    writer = SqliteStateWriter(path)
    try:
        return writer.finish(state)
    except BaseException:
        writer.abort()
        raise


def read_sqlite_meta(path: str | os.PathLike) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path}: not an emulator state ({exc})") from exc
    finally:
        conn.close()


class SqliteAccount(Account):
    """An account read from a SQLite state, in place: each object is read when a request needs it."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None):
        self.path = Path(path).resolve()
        self.meta = dict(meta) if meta is not None else read_sqlite_meta(self.path)
        self._counts = {t: n for t, n in (self.meta.get("counts") or {}).items()}
        self._local = threading.local()  # sqlite3 connections are per thread

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # immutable: the file is never changed in place (writers replace it), so no locking
            conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def get(self, object_id: str) -> Obj | None:
        row = self._db().execute("SELECT body FROM objects WHERE id = ?", (object_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def scan(self, object_type: str, *, created: tuple[int | None, int | None] | None = None,
             after: Obj | None = None, before: Obj | None = None,
             where: Mapping[str, str] | None = None, batch: int = 32) -> Iterator[Obj]:
        conds, args = ["type = ?"], [object_type]
        for column, value in (where or {}).items():
            if column not in ("customer", "parent"):
                raise ValueError(f"no index on {column}")
            conds.append(f"{column} = ?")
            args.append(value)
        low, high = created if created is not None else (None, None)
        if low is not None:
            conds.append("created >= ?")
            args.append(low)
        if high is not None:
            conds.append("created <= ?")
            args.append(high)
        if before is not None:
            cursor: tuple | None = (before.get("created") or 0, before["id"])
            op, order = ">", "ASC"
        else:
            cursor = (after.get("created") or 0, after["id"]) if after is not None else None
            op, order = "<", "DESC"
        base = " AND ".join(conds)
        batch = max(1, min(batch, 2048))
        db = self._db()
        while True:
            sql = f"SELECT created, id, body FROM objects WHERE {base}"
            params = list(args)
            if cursor is not None:
                sql += f" AND (created, id) {op} (?, ?)"
                params += list(cursor)
            sql += f" ORDER BY created {order}, id {order} LIMIT ?"
            rows = db.execute(sql, (*params, batch)).fetchall()
            for _, _, body in rows:
                yield json.loads(body)
            if len(rows) < batch:
                return
            cursor = rows[-1][:2]
            batch = min(batch * 4, 2048)

    def children(self, object_type: str, key: str, parent_id: str) -> list[Obj]:
        if key == "customer":
            where = {"customer": parent_id}
        elif PARENT_KEY.get(object_type) == key:
            where = {"parent": parent_id}
        else:
            return [obj for obj in self.scan(object_type) if obj.get(key) == parent_id]
        return list(self.scan(object_type, where=where))

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def _copy(self, obj: Obj) -> Obj:
        return obj  # read from the file for this request: nobody else holds it

    def object_ids(self, object_type: str) -> Iterable[str]:
        return (row[0] for row in self._db().execute("SELECT id FROM objects WHERE type = ?", (object_type,)))
