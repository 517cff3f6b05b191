"""A local mirror of the Stripe objects the runbooks read, kept current from the events API.

Real Stripe answers some 25–100 requests a second: listing a million customers alone is about
10,000 pages, minutes before any check runs. The mirror lists each kind once, then follows
Stripe's event stream, so a later run asks Stripe only for what changed.

**Where.** One SQLite file per Stripe account and API address:
``<OPSBOOK_HOME>/stripe-mirror/<sha256(key, API base)[:24]>.sqlite`` (mode 0600, folder 0700).
It holds the fields the checks read (``PROJECTIONS``), the events as Stripe sent them (a replay
signs their JSON), and per kind what is covered (created since when, listed when, with which
fields). It never holds the key, the API address or anything else that names the account.

**Cold** (a kind not mirrored yet, or not back to the ``created`` asked for): the newest event is
noted first (one request: ``/v1/events?limit=1``; when the events themselves are listed first,
their first page notes it for free), then the kind is listed once, 100 a page, with only
``created[gte]`` pushed (every status, every customer; subscriptions with their customers
expanded, kept as customer rows), so a change made while it is being listed is replayed from the
events afterwards. Requests: ⌈N/100⌉ per kind, plus one for the first kind.

**Warm** (at most once every ``FRESH_S`` seconds per client): ``/v1/events?created[gte]=<cursor>``,
newest first, every page; the events not yet applied are applied oldest first (their
``data.object`` upserted, a deleted customer kept as a tombstone, a deleted invoice removed) and
stored; the cursor moves to the newest (its second, and every event id seen in that second).
Then listings are answered from SQLite with the same filters Stripe applies (``created`` range,
status, customer, charge, type… in SQL; the rest in Python), newest first as Stripe orders them,
streamed 1,000 rows at a time from a read transaction of their own (**Serving**, below). With
nothing changed, a warm run makes one request, to ``/v1/events``. A listing the mirror cannot
answer exactly (fields it does not keep, ``delivery_success``, expanded balance-transaction
sources) goes to Stripe.

**Kinds without events of their own** — balance transactions (Stripe sends none) and refunds
(2023-08-16 announces a new refund as ``charge.refunded``, a charge) — are re-listed from their
newest ``created`` (minus ``OVERLAP_S``) when the event stream moved since they were last listed:
each of them comes with an event of its charge, refund, dispute or payout.

**Events' delivery state.** ``pending_webhooks`` changes after an event is created (Stripe's
retries). Events served from the mirror that were stored as undelivered before this sync are
refreshed with one ``delivery_success=false`` listing over the window asked for.

**Gaps** (the kind is listed again, cold):
* the mirror was last synced more than ``RETENTION_S`` − ``MARGIN_S`` ago (Stripe lists 30 days of
  events: what happened before that cannot be replayed);
* the cursor's event is no longer listed although it should be (younger than the retention, or
  any age on the emulator, which keeps everything): the stream cannot reach back to the cursor;
* the fields kept for a kind (``PROJECTIONS``) differ from the ones it was listed with (another
  opsbook version), or the file's ``FORMAT`` does;
* the file cannot be read as a mirror (corrupt, truncated, not SQLite): it is rebuilt;
* ``OPSBOOK_STRIPE_MIRROR=refresh``.

**Two runs at once.** Syncing and listing into the mirror take an exclusive ``flock`` on
``<hash>.lock``, waited for at most ``LOCK_WAIT_S`` (the other run's listing is then reused);
past that, the run reads Stripe directly. SQLite runs in WAL mode with a ``BUSY_TIMEOUT_S`` busy
timeout; each listing is served from one read transaction begun under the lock (one consistent
snapshot, never a kind half re-listed by another run).

**Control**: ``OPSBOOK_STRIPE_MIRROR`` = ``auto`` (default: on for Stripe itself, off for an API
on this machine — the demo's emulator or a test double, which promise no event per change and
have no rate limit) | ``on`` | ``off`` (read Stripe directly) | ``refresh`` (discard this
account's mirror, list again) | a folder (keep mirrors there). On for Stripe because a warm sync
makes the data current as of the run, which is what an operator reading it during an incident
needs, for one request instead of minutes. A key that may not read
events cannot keep a mirror: its runs read Stripe directly (and say so).

Each sync prints one line on stdout (``Stripe: mirror synced, N events applied, M requests``),
each cold listing one more; listings and syncs longer than ``PROGRESS_EVERY_S`` print progress on
stderr (pages, objects, elapsed) — in JupyterLab and in a headless run's log alike.

**Serving.** At a million objects, turning rows into dicts is most of a warm run, so: when a
caller asks for some ``fields`` and has no filter of its own (``keep``, which may read any field),
SQLite removes the other keys (``json_remove``; a row holds only ``PROJECTIONS`` keys, so what is
left is exactly the projection: JSON nulls kept, absent keys absent, numbers and strings as
written); a listing is read in pages of 1,000 rows, each page one step of SQLite's that joins the
rows' texts into one string (so the thread reading the next pages ahead holds the GIL once a page,
not once a row, and overlaps the caller's decoding instead of taking turns with it), decoded by
one ``json.loads`` (the expanded customers by a second), with the garbage collector paused during that call — it
would otherwise rescan the batch every 700 new objects, and every so often all the objects the
caller already holds, which cost more than the decoding itself. A row SQLite's JSON parser
refuses (NaN or Infinity, which Python writes) turns the rest of the listing to whole objects
projected in Python, from the same snapshot; a row that is not JSON fails where it is, after the
objects before it, as one decoded at a time would. A caller that reads a few columns of every
object asks for ``rows``: tuples of SQL expressions over the stored row (a customer's id from its
column: the ids of a million customers read from the index ``objects_in_order`` (type, created,
id, deleted), which also orders every listing; built once on a mirror made before it: ~5 s at a
million objects). A caller that reads many values of every object of a kind asks for a
``RowForm``: the mirror keeps each object's row in that form (made once, from the stored JSON,
and again only when the object or its customer is written), in the listing's order, and serves
the rows in place of the objects, a page decoded by one ``json.loads`` (revenue_report's
``revenue.rows``: at a million customers its fetch took 30 s decoding objects, 14–18 s from the
rows; quota_audit's subscriptions, ``stripe_api.list_subscription_rows``).

**What bounds it.** Cold: ⌈N/100⌉ + 1 requests per kind, at Stripe's pace (a million customers:
~10k requests, minutes, once). Warm: ⌈events since the last run / 100⌉ requests (≥ 1), plus one
per event-less kind when anything changed, plus the events' delivery refresh when undelivered
events are served; the webhook endpoints, prices and checkout sessions are still read directly
(few, and without events of their own). A sync holds the events since the last sync in memory
(a day of a busy account: ~100k events, a few hundred MB); a mirror older than 30 days costs a
cold run. Serving decodes the kind's rows in the created range asked for
(``benchmarks/bench_mirror_serve.py``, one core of a busy machine): ~5 µs a customer with
quota_audit's fields, ~19 µs a subscription (its items are most of it), ~30 µs one with its
customer expanded; a million customers and half a million subscriptions are ~14 s (what a runbook
that holds them all as dicts pays anyway), not 100–400 s of requests. Correctness rests on Stripe
sending an event for every change of the kinds it mirrors (true of customers, subscriptions,
invoices, charges and disputes; refunds and balance transactions are caught up as above).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import stripe

from . import paths
from .errors import StripeAccessError, first_line
from .bulk import collector_paused

MIRROR_VARIABLE = "OPSBOOK_STRIPE_MIRROR"
FORMAT = "1"                   # the file's layout; another value rebuilds the file
RETENTION_S = 30 * 86400       # Stripe lists events for 30 days
MARGIN_S = 86400               # ... and a day's margin for clocks and slow runs
FRESH_S = 30.0                 # a client syncs again before serving when its last sync is older
LOCK_WAIT_S = 120.0            # the longest wait for another run's sync or listing
LOCK_POLL_S = 0.02             # ... tried again this often
LOCK_YIELD_S = 0.05            # a long fill's pause between two batches: a waiting run takes the lock
BUSY_TIMEOUT_S = 10.0          # SQLite's busy timeout (each write transaction is short)
PROGRESS_EVERY_S = 2.0         # at most one progress line this often
OVERLAP_S = 300                # event-less kinds are re-listed from their newest created minus this
PAGE_SIZE = 100
SERVE_BATCH = 1000             # rows in memory at a time, decoded in one json.loads

# The fields kept per kind: what the runbooks' checks read (ops_lib/revenue, quota, webhooks), and
# a little more. A caller asking for a field not kept is served by Stripe directly. Changing a
# tuple re-lists that kind on the next run (its signature is stored with it).
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "customer": ("id", "object", "created", "email", "name", "description", "phone", "currency",
                 "balance", "delinquent", "discount", "metadata", "livemode", "deleted"),
    "subscription": ("id", "object", "customer", "status", "items", "currency", "created",
                     "start_date", "current_period_start", "current_period_end", "ended_at",
                     "canceled_at", "cancel_at", "cancel_at_period_end", "trial_start", "trial_end",
                     "discount", "pause_collection", "latest_invoice", "collection_method",
                     "metadata", "livemode"),
    "invoice": ("id", "object", "customer", "customer_email", "customer_name", "subscription",
                "status", "status_transitions", "created", "currency", "lines", "discount",
                "discounts", "total_discount_amounts", "amount_due", "amount_paid", "subtotal",
                "total", "charge", "payment_intent", "paid", "period_start", "period_end",
                "billing_reason", "number", "metadata", "livemode"),
    "charge": ("id", "object", "amount", "amount_captured", "amount_refunded", "currency",
               "created", "status", "paid", "captured", "refunded", "disputed", "customer",
               "invoice", "payment_intent", "balance_transaction", "failure_code",
               "failure_message", "outcome", "receipt_email", "description", "metadata",
               "livemode"),
    "refund": ("id", "object", "amount", "currency", "charge", "payment_intent", "created",
               "status", "reason", "balance_transaction", "transfer_reversal", "metadata"),
    "dispute": ("id", "object", "amount", "currency", "charge", "payment_intent", "created",
                "status", "reason", "balance_transactions", "metadata", "livemode"),
    "balance_transaction": ("id", "object", "amount", "fee", "net", "currency", "type", "source",
                            "created", "available_on", "status", "reporting_category",
                            "description", "fee_details", "exchange_rate"),
    "event": (),  # whole: a replay signs the event's JSON as Stripe sent it
}
# Inside a subscription's items, what the runbooks read of each item and of its price (a whole
# item also holds the legacy plan object and a price of ~20 fields, repeated on every subscription
# that sells it: half of a stored subscription). Part of the subscription's signature.
ITEM_PROJECTION = ("id", "object", "price", "quantity")
PRICE_PROJECTION = ("id", "object", "active", "billing_scheme", "currency", "lookup_key", "metadata",
                    "nickname", "product", "recurring", "tiers_mode", "type", "unit_amount",
                    "unit_amount_decimal")
# ... and of each invoice line: what revenue_report's MRR reads (type, proration, amount, quantity,
# period, price), with the references that name it.
LINE_PROJECTION = ("id", "object", "type", "proration", "amount", "currency", "quantity", "period",
                   "price", "subscription", "subscription_item", "invoice_item", "discount_amounts",
                   "discountable")
LIST_PATHS = {
    "customer": "/v1/customers", "subscription": "/v1/subscriptions", "invoice": "/v1/invoices",
    "charge": "/v1/charges", "refund": "/v1/refunds", "dispute": "/v1/disputes",
    "balance_transaction": "/v1/balance_transactions", "event": "/v1/events",
}
LABELS = {"customer": "customers", "subscription": "subscriptions", "invoice": "invoices",
          "charge": "charges", "refund": "refunds", "dispute": "disputes",
          "balance_transaction": "balance transactions", "event": "events"}
WITHOUT_EVENTS = ("balance_transaction", "refund")  # re-listed from their newest when events arrived
DELETED_BY_EVENT = {"customer.deleted": "customer", "invoice.deleted": "invoice"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS coverage (
    type TEXT PRIMARY KEY,     -- customer, subscription, ..., event
    since INTEGER NOT NULL,    -- every object created at or after this is here
    listed_at REAL NOT NULL,   -- when it was listed (epoch s)
    projection TEXT NOT NULL,  -- the fields' signature it was listed with
    events_seen INTEGER NOT NULL DEFAULT 0  -- events applied when it was last listed
);
CREATE TABLE IF NOT EXISTS objects (
    type TEXT NOT NULL, id TEXT NOT NULL, created INTEGER NOT NULL,
    customer TEXT, status TEXT, kind TEXT, ref TEXT,
    deleted INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 0,
    seen_at REAL NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (type, id)
);
-- listings' order (created, then id, newest first) read from the index, and whether deleted:
-- the ids of a million customers without reading their rows
CREATE INDEX IF NOT EXISTS objects_in_order ON objects (type, created, id, deleted);
DROP INDEX IF EXISTS objects_by_created;
CREATE INDEX IF NOT EXISTS objects_by_customer ON objects (type, customer);
-- each object in a runbook's own form (RowForm), in a listing's order: made once from its stored
-- JSON (and its customer's), dropped when the object or its customer is written or deleted (the
-- triggers); row NULL: not in the form (served as the object)
CREATE TABLE IF NOT EXISTS object_rows (
    type TEXT NOT NULL, form TEXT NOT NULL, created INTEGER NOT NULL, id TEXT NOT NULL, row TEXT,
    PRIMARY KEY (type, form, created, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS object_rows_by_id ON object_rows (type, id);
-- the forms whose rows are all made (a run need not count them); forgotten on any write of the kind
CREATE TABLE IF NOT EXISTS row_forms (type TEXT NOT NULL, form TEXT NOT NULL, PRIMARY KEY (type, form))
    WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS row_forms_inserted AFTER INSERT ON objects BEGIN
    DELETE FROM row_forms WHERE type IN (new.type, CASE new.type WHEN 'customer' THEN 'subscription' END); END;
CREATE TRIGGER IF NOT EXISTS row_forms_updated AFTER UPDATE ON objects BEGIN
    DELETE FROM row_forms WHERE type IN (old.type, CASE old.type WHEN 'customer' THEN 'subscription' END); END;
CREATE TRIGGER IF NOT EXISTS row_forms_deleted AFTER DELETE ON objects BEGIN
    DELETE FROM row_forms WHERE type IN (old.type, CASE old.type WHEN 'customer' THEN 'subscription' END); END;
CREATE TRIGGER IF NOT EXISTS object_rows_inserted AFTER INSERT ON objects BEGIN
    DELETE FROM object_rows WHERE type = new.type AND id = new.id;
    DELETE FROM object_rows WHERE new.type = 'customer' AND type = 'subscription' AND id IN
        (SELECT id FROM objects WHERE type = 'subscription' AND customer = new.id); END;
CREATE TRIGGER IF NOT EXISTS object_rows_updated AFTER UPDATE ON objects BEGIN
    DELETE FROM object_rows WHERE type = old.type AND id = old.id;
    DELETE FROM object_rows WHERE old.type = 'customer' AND type = 'subscription' AND id IN
        (SELECT id FROM objects WHERE type = 'subscription' AND customer = old.id); END;
CREATE TRIGGER IF NOT EXISTS object_rows_deleted AFTER DELETE ON objects BEGIN
    DELETE FROM object_rows WHERE type = old.type AND id = old.id;
    DELETE FROM object_rows WHERE old.type = 'customer' AND type = 'subscription' AND id IN
        (SELECT id FROM objects WHERE type = 'subscription' AND customer = old.id); END;
"""


@dataclass(frozen=True)
class RowForm:
    """A runbook's own form of a kind's objects: ``make(obj)`` — ``make(obj, customer)`` with
    ``expands_customer``, the stored customer or None — turns a stored object (its
    ``PROJECTIONS`` fields, as a listing would serve it) into a list the runbook reads by
    position, or returns None for an object the form does not describe (served as the object).

    A listing asked for a form serves each object's row in place of its JSON: a runbook that holds
    every object of a kind decodes a short array instead of the object, and fills its record by
    position. The mirror makes each row once and keeps it until the object (or, for a
    subscription, the customer it expands: the only kind a form may expand it for) changes, in
    the listing's order (``object_rows``: a page is one range of one table, no lookup per
    object). ``name`` is ``<form>.<version>``: rows of another version of the form are
    dropped when this one's are made (each runbook's forms are kept side by side). Stripe itself
    serves objects."""

    name: str
    make: Callable[..., "list | None"]
    expands_customer: bool = False

    def __post_init__(self):
        if not _FORM_NAME.fullmatch(self.name):  # (written into the listing's SQL as a literal)
            raise ValueError(f"a row form's name is <form>.<version>, letters, digits and ._-: {self.name!r}")

    @property
    def family(self) -> str:
        """The form without its version: ``revenue.invoice`` of ``revenue.invoice.1``."""
        return self.name.rsplit(".", 1)[0]


_FORM_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}\.[A-Za-z0-9_-]+")
FILL_BATCH = 20_000  # rows made per write transaction (another run waits at most one of them)


def _row_maker(form: RowForm, stopped: list) -> Callable[..., "str | None"]:
    """The form's ``make`` as the SQL function that fills ``object_rows`` from the stored JSON
    (and the customer's, when it expands it). An interrupt (KeyboardInterrupt, the runner's
    signals) stops the statement and is kept in `stopped`: SQLite reports it as its own error."""
    def row(data: str, *customer: str | None) -> str | None:
        try:
            args = [json.loads(data)]
            if form.expands_customer:
                args.append(json.loads(customer[0]) if customer[0] is not None else None)
            made = form.make(*args)
            return None if made is None else json.dumps(made, separators=(",", ":"))
        except Exception:  # (an object the form cannot describe, whatever it holds: served as the object)
            return None
        except BaseException as exc:
            stopped.append(exc)
            raise
    return row


def signature(object_type: str) -> str:
    kept: list = [FORMAT, PROJECTIONS[object_type]]
    if object_type == "subscription":
        kept += [ITEM_PROJECTION, PRICE_PROJECTION]
    elif object_type == "invoice":
        kept += [LINE_PROJECTION, PRICE_PROJECTION]
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def setting() -> str:
    return (os.environ.get(MIRROR_VARIABLE) or "auto").strip() or "auto"


def mirror_path(api_key: str, api_base: str | None, folder: str | os.PathLike | None = None) -> Path:
    """The account's mirror file: named by a hash of the key and the API address, never by them."""
    digest = hashlib.sha256(f"opsbook-stripe-mirror\n{api_key}\n{api_base or 'https://api.stripe.com'}"
                            .encode()).hexdigest()[:24]
    return Path(folder or paths.home() / "stripe-mirror") / f"{digest}.sqlite"


def attach(client: Any, api_key: str, api_base: str | None, *, emulator: bool, asked: bool = False) -> None:
    """Give a client its account's mirror, as OPSBOOK_STRIPE_MIRROR says (off: none).

    ``auto`` (the default) mirrors Stripe itself, not an API on this machine (the emulator, a
    test double): the mirror's correctness rests on an event for every change, which only Stripe
    promises, and a local API has no rate limit to spare. ``asked``: the caller wants the mirror
    (``make_client(mirror=True)``), unless the variable says off."""
    mode = setting()
    if mode.lower() == "off" or (mode.lower() == "auto" and emulator and not asked):
        client._opsbook_mirror = None
        return
    folder = None if mode.lower() in ("on", "auto", "refresh") else mode
    client._opsbook_mirror = Mirror(mirror_path(api_key, api_base, folder), client,
                                    emulator=emulator, refresh=mode.lower() == "refresh")


def of(client: Any) -> "Mirror | None":
    return getattr(client, "_opsbook_mirror", None)


class Unavailable(Exception):
    """The mirror cannot answer this listing: read Stripe directly."""


class _NoEventAccess(Exception):
    pass


def _now() -> float:
    return time.time()


def _digest(event: Mapping[str, Any]) -> str:
    """What an event says, its delivery state aside (that changes as Stripe retries)."""
    stable = {k: v for k, v in event.items() if k != "pending_webhooks"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def _cursor(events: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The cursor at the newest of `events` (all of one second): its second, ids and digests."""
    return {"created": events[0]["created"], "ids": [e["id"] for e in events],
            "digests": {e["id"]: _digest(e) for e in events}}


def _project(obj: Mapping[str, Any], object_type: str) -> dict[str, Any]:
    keep = PROJECTIONS[object_type]
    kept = dict(obj) if not keep else {k: obj[k] for k in keep if k in obj}
    if object_type == "subscription":
        return project_items(kept)
    return project_lines(kept) if object_type == "invoice" else kept


def project_items(subscription: dict) -> dict:
    """The subscription (changed in place) with its items' ``ITEM_PROJECTION`` and their prices'
    ``PRICE_PROJECTION``: what a subscription listing serves, from Stripe or from the mirror."""
    items = subscription.get("items")
    if isinstance(items, Mapping) and isinstance(items.get("data"), list):
        subscription["items"] = {**items, "data": [_project_item(item) for item in items["data"]]}
    return subscription


def project_lines(invoice: dict) -> dict:
    """The invoice (changed in place) with its lines' ``LINE_PROJECTION`` and their prices'
    ``PRICE_PROJECTION``: what an invoice listing serves, from Stripe or from the mirror."""
    lines = invoice.get("lines")
    if isinstance(lines, Mapping) and isinstance(lines.get("data"), list):
        invoice["lines"] = {**lines, "data": [_project_item(line, LINE_PROJECTION) for line in lines["data"]]}
    return invoice


def _project_item(item: Any, fields: tuple[str, ...] = ITEM_PROJECTION) -> Any:
    if not isinstance(item, Mapping):
        return item
    kept = {k: item[k] for k in fields if k in item}
    price = kept.get("price")
    if isinstance(price, Mapping):
        kept["price"] = {k: price[k] for k in PRICE_PROJECTION if k in price}
    return kept


def _id(ref: Any) -> Any:
    return ref.get("id") if isinstance(ref, Mapping) else ref


def _columns(object_type: str, obj: Mapping[str, Any]) -> tuple:
    """customer, status, kind, ref: the columns listings filter on in SQL."""
    if object_type == "event":
        return None, None, obj.get("type"), None
    if object_type == "balance_transaction":
        return None, obj.get("status"), obj.get("type"), _id(obj.get("source"))
    if object_type in ("refund", "dispute"):
        return None, obj.get("status"), None, _id(obj.get("charge"))
    return _id(obj.get("customer")), obj.get("status"), None, None


class Progress:
    """One stderr line at most every PROGRESS_EVERY_S: what, pages, objects, elapsed."""

    def __init__(self, what: str):
        self.what = what
        self.started = self.last = time.monotonic()
        self.pages = self.objects = 0
        self.printed = False

    def page(self, objects: int) -> None:
        self.pages += 1
        self.objects += objects
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.printed = True
            print(f"Stripe: {self.what}: {self.pages:,} pages, {self.objects:,} objects, "
                  f"{now - self.started:.0f} s", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class _Sync:
    started: float = 0.0          # epoch s
    at: float = float("-inf")     # monotonic
    applied: int = 0
    requests: int = 0
    notes: list[str] = field(default_factory=list)


class Mirror:
    """One account's mirror, as one client uses it (see the module's docstring)."""

    def __init__(self, path: Path, client: Any, *, emulator: bool = False, refresh: bool = False):
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")
        self.client = client
        self.emulator = emulator
        self.refresh = refresh
        self.disabled: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._sync = _Sync()
        self._checked = False
        self._reading: str | None = None

    # ------------------------------------------------------------------ the file

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(OSError):
                os.chmod(self.path.parent, 0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(_SCHEMA)
                with self._write(conn):
                    found = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                    if found is None:
                        conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                    elif found[0] != FORMAT:
                        raise sqlite3.DatabaseError(f"format {found[0]}, not {FORMAT}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = conn or self._open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _rebuild(self, why: str) -> None:
        """Start the file again (under the lock): it could not be read as a mirror."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        self._sync = _Sync()
        self._checked = False
        print(f"Stripe: the mirror file could not be read ({why}): rebuilding it", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The account's sync lock (flock), waited for at most LOCK_WAIT_S."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            said = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                if time.monotonic() >= deadline:
                    raise Unavailable(f"another run kept the mirror busy for {LOCK_WAIT_S:.0f} s")
                if not said:
                    said = True
                    print("Stripe: waiting for another run's mirror sync", file=sys.stderr, flush=True)
                time.sleep(LOCK_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ state

    def _meta(self, key: str, default: Any = None) -> Any:
        row = self._open().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @staticmethod
    def _set(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def _coverage(self, object_type: str) -> sqlite3.Row | None:
        return self._open().execute(
            "SELECT since, listed_at, projection, events_seen FROM coverage WHERE type = ?",
            (object_type,)).fetchone()

    def _discard(self, why: str, types: Iterable[str] | None = None) -> None:
        """Forget kinds (all, with the cursor, when `types` is None): they are listed again."""
        with self._write() as conn:
            if types is None:
                conn.execute("DELETE FROM objects")
                conn.execute("DELETE FROM coverage")
                conn.execute("DELETE FROM meta WHERE key != 'format'")
            else:
                for t in types:
                    conn.execute("DELETE FROM objects WHERE type = ?", (t,))
                    conn.execute("DELETE FROM coverage WHERE type = ?", (t,))
        self._sync.notes.append(why)
        print(f"Stripe: mirror: {why}: listing again", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ requests

    def _get(self, object_type: str, params: Mapping[str, Any], path: str | None = None) -> dict:
        from .stripe_api import _page, stripe_errors

        path = path or LIST_PATHS[object_type]
        self._sync.requests += 1
        # Named as what the runbook asked for: the events read to keep it current are part of it.
        with stripe_errors(self._reading or LABELS.get(object_type, object_type)):
            try:
                return _page(self.client.v1.events, path, params)
            except stripe.PermissionError:
                if object_type == "event":
                    raise _NoEventAccess() from None
                raise

    def _pages(self, object_type: str, params: Mapping[str, Any], what: str) -> Iterator[list[dict]]:
        params = {"limit": PAGE_SIZE, **params}
        progress = Progress(what)
        while True:
            page = self._get(object_type, params)
            data = page.get("data") or []
            progress.page(len(data))
            yield data
            if not page.get("has_more") or not data:
                return
            params = {**params, "starting_after": data[-1]["id"]}

    # ------------------------------------------------------------------ writing

    def _store(self, conn: sqlite3.Connection, object_type: str, obj: Mapping[str, Any],
               seen_at: float) -> None:
        kept = _project(obj, object_type)
        deleted = 1 if obj.get("deleted") else 0
        customer, status, kind, ref = _columns(object_type, kept)
        conn.execute(
            "INSERT OR REPLACE INTO objects (type, id, created, customer, status, kind, ref, deleted,"
            " pending, seen_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (object_type, kept["id"], int(kept.get("created") or 0), customer, status, kind, ref,
             deleted, int(kept.get("pending_webhooks") or 0), seen_at,
             json.dumps(kept, separators=(",", ":"))))

    def _tombstone(self, conn: sqlite3.Connection, object_type: str, object_id: str,
                   created: int | None) -> None:
        if object_type == "customer":  # kept: subscriptions still name it (expanded as deleted)
            stone = {"id": object_id, "object": "customer", "deleted": True}
            conn.execute("INSERT OR REPLACE INTO objects (type, id, created, deleted, seen_at, data)"
                         " VALUES ('customer', ?, ?, 1, ?, ?)",
                         (object_id, int(created or 0), _now(), json.dumps(stone)))
        else:
            conn.execute("DELETE FROM objects WHERE type = ? AND id = ?", (object_type, object_id))

    def _apply(self, conn: sqlite3.Connection, event: Mapping[str, Any], seen_at: float) -> None:
        self._store(conn, "event", event, seen_at)
        obj = (event.get("data") or {}).get("object") or {}
        object_type = obj.get("object")
        if object_type not in PROJECTIONS or object_type == "event" or not obj.get("id"):
            return
        if event.get("type") in DELETED_BY_EVENT or obj.get("deleted"):
            self._tombstone(conn, object_type, obj["id"], obj.get("created"))
        else:
            self._store(conn, object_type, obj, seen_at)

    # ------------------------------------------------------------------ sync

    def _bootstrap(self) -> None:
        """No cursor yet: the newest event now is where the stream will be followed from."""
        page = self._get("event", {"limit": 1})
        newest = (page.get("data") or [None])[0]
        now = _now()
        with self._write() as conn:
            if newest is None:  # no event at all (in Stripe's 30 days): follow from the start
                self._set(conn, "cursor", {"created": 0, "ids": []})
                since = 0
            else:
                self._set(conn, "cursor", _cursor([newest]))
                self._store(conn, "event", newest, now)
                since = newest["created"] + 1  # others of that second come with the next sync
            self._set(conn, "synced_at", now)
            self._set(conn, "events_applied", 0)
            conn.execute("INSERT OR REPLACE INTO coverage VALUES ('event', ?, ?, ?, 0)",
                         (since, now, signature("event")))

    def _follow(self) -> None:
        """Apply the events since the cursor (under the lock)."""
        cursor = self._meta("cursor")
        if cursor is None:
            return
        synced_at = self._meta("synced_at", 0)
        now = _now()
        if now - synced_at > RETENTION_S - MARGIN_S:
            days = (now - synced_at) / 86400
            self._discard(f"last synced {days:.0f} days ago, beyond Stripe's 30 days of events")
            return
        events: list[dict] = []
        seen = set(cursor["ids"])
        digests = cursor.get("digests") or {}
        found = False
        for data in self._pages("event", {"created": {"gte": cursor["created"]}},
                                "mirror: reading events"):
            for event in data:
                # The same event: its id, at its second, saying the same (an account rebuilt
                # with the same ids, as an emulator's can be, is not the one mirrored).
                found = found or (event["id"] in seen and event["created"] == cursor["created"]
                                  and digests.get(event["id"], _digest(event)) == _digest(event))
                events.append(event)
        listable = self.emulator or now - cursor["created"] < RETENTION_S - MARGIN_S
        if cursor["ids"] and listable and not found:
            self._discard(f"the newest event applied ({cursor['ids'][0]}) is no longer listed: "
                          "events were missed")
            return
        new = [e for e in reversed(events) if e["id"] not in seen]  # oldest first
        with self._write() as conn:
            for event in new:
                self._apply(conn, event, now)
            if events:
                newest = events[0]["created"]
                self._set(conn, "cursor", _cursor([e for e in events if e["created"] == newest]))
            self._set(conn, "synced_at", now)
            self._set(conn, "events_applied", self._meta("events_applied", 0) + len(new))
        self._sync.applied += len(new)

    def _check_projections(self) -> None:
        rows = self._open().execute("SELECT type, projection FROM coverage").fetchall()
        stale = [t for t, sig in rows if t not in PROJECTIONS or sig != signature(t)]
        if stale:
            self._discard(f"the fields kept for {', '.join(LABELS.get(t, t) for t in stale)} "
                          "changed", stale)

    def ensure(self, object_type: str, since: int) -> None:
        """Make the mirror current (a sync, at most every FRESH_S) and cover `object_type`
        from `since` (listing what is missing)."""
        with self._lock, self._exclusive(), self._asked_for(object_type):
            first = not self._checked
            if first and self.refresh:
                self._discard("OPSBOOK_STRIPE_MIRROR=refresh")
                self.refresh = False
            if first:
                self._check_projections()
                self._checked = True
            fresh = time.monotonic() - self._sync.at < FRESH_S
            if not fresh:
                requests_before = self._sync.requests
                self._sync.started, self._sync.applied = _now(), 0
                progress_started = time.monotonic()
                self._follow()
                self._sync.at = time.monotonic()
                if self._meta("cursor") is not None:
                    made = self._sync.requests - requests_before
                    print(f"Stripe: mirror synced, {self._sync.applied:,} events applied, "
                          f"{made} request{'s' * (made != 1)} "
                          f"({time.monotonic() - progress_started:.1f} s)", flush=True)
            self._cover(object_type, since)
            if object_type in WITHOUT_EVENTS:
                self._catch_up(object_type)

    @contextlib.contextmanager
    def _asked_for(self, object_type: str) -> Iterator[None]:
        self._reading = LABELS[object_type]
        try:
            yield
        finally:
            self._reading = None

    def _cover(self, object_type: str, since: int) -> None:
        since = max(int(since), 0)
        row = self._coverage(object_type)
        if row is not None and row[0] <= since:
            return
        started, requests_before = time.monotonic(), self._sync.requests
        # No cursor yet: the newest event is noted first; listing the events themselves from
        # `since` (no upper bound) notes it on its first page, for no extra request.
        cursor_from_listing = self._meta("cursor") is None and object_type == "event"
        if self._meta("cursor") is None and not cursor_from_listing:
            self._bootstrap()
            self._sync.at = time.monotonic()
            row = self._coverage(object_type)
            if row is not None and row[0] <= since:
                return
        params: dict[str, Any] = {"created": {"gte": since}}
        if row is not None:
            params["created"]["lt"] = row[0]
        if object_type == "subscription":  # every status; customers come along (for expansion)
            params.update(status="all", expand=["data.customer"])
        count, now = 0, _now()
        what = f"mirror: listing {LABELS[object_type]}"
        newest: list[dict] = []  # the events of the newest second listed (cursor_from_listing)
        for data in self._pages(object_type, params, what):
            if cursor_from_listing and data:
                newest = newest or [data[0]]
                newest += [e for e in data if e["created"] == newest[0]["created"] and e is not newest[0]]
            with self._write() as conn:
                for obj in data:
                    if object_type == "subscription" and isinstance(obj.get("customer"), Mapping):
                        customer = obj["customer"]
                        if customer.get("deleted"):
                            self._tombstone(conn, "customer", customer["id"], customer.get("created"))
                        else:
                            self._store(conn, "customer", customer, now)
                        obj = {**obj, "customer": customer["id"]}  # served expanded from its row
                    self._store(conn, object_type, obj, now)
            count += len(data)
        with self._write() as conn:
            if cursor_from_listing:
                cursor = (_cursor(newest) if newest
                          else {"created": min(since, int(now) - OVERLAP_S), "ids": []})
                self._set(conn, "cursor", cursor)
                self._set(conn, "synced_at", now)
                self._set(conn, "events_applied", 0)
                self._sync.at = time.monotonic()
            conn.execute("INSERT OR REPLACE INTO coverage VALUES (?, ?, ?, ?, ?)",
                         (object_type, since, now, signature(object_type),
                          self._meta("events_applied", 0)))
        made = self._sync.requests - requests_before
        print(f"Stripe: mirror listed {count:,} {LABELS[object_type]}, {made} request"
              f"{'s' * (made != 1)} ({time.monotonic() - started:.1f} s)", flush=True)

    def _catch_up(self, object_type: str) -> None:
        """An event-less kind: list what is new since its newest, when events arrived since."""
        since, _listed, _sig, events_seen = self._coverage(object_type)
        applied = self._meta("events_applied", 0)
        if applied == events_seen:
            return
        newest = self._open().execute("SELECT max(created) FROM objects WHERE type = ?",
                                      (object_type,)).fetchone()[0]
        start = max(since, (newest or since) - OVERLAP_S)
        now = _now()
        for data in self._pages(object_type, {"created": {"gte": start}},
                                f"mirror: new {LABELS[object_type]}"):
            with self._write() as conn:
                for obj in data:
                    self._store(conn, object_type, obj, now)
        with self._write() as conn:
            conn.execute("UPDATE coverage SET events_seen = ? WHERE type = ?", (applied, object_type))

    def _refresh_delivery(self, gte: int, lt: int | None) -> None:
        """Events stored as undelivered before this sync: their delivery state now."""
        conn = self._open()
        sql = ("SELECT min(created) FROM objects WHERE type = 'event' AND pending > 0 "
               "AND seen_at < ? AND created >= ?" + (" AND created < ?" if lt is not None else ""))
        args = [self._sync.started, gte] + ([lt] if lt is not None else [])
        oldest = conn.execute(sql, args).fetchone()[0]
        if oldest is None:
            return
        created: dict[str, int] = {"gte": oldest}
        if lt is not None:
            created["lt"] = lt
        now = _now()
        undelivered: dict[str, dict] = {}
        for data in self._pages("event", {"created": created, "delivery_success": False},
                                "mirror: events' delivery"):
            undelivered.update((e["id"], e) for e in data)
        stale = conn.execute(sql.replace("min(created)", "id"), args).fetchall()
        with self._write() as conn:
            for (event_id,) in stale:
                if event_id in undelivered:
                    continue
                data = json.loads(conn.execute("SELECT data FROM objects WHERE type = 'event' AND id = ?",
                                               (event_id,)).fetchone()[0])
                data["pending_webhooks"] = 0
                conn.execute("UPDATE objects SET pending = 0, seen_at = ?, data = ? WHERE type = 'event'"
                             " AND id = ?", (now, json.dumps(data, separators=(",", ":")), event_id))
            for event in undelivered.values():
                self._store(conn, "event", event, now)

    # ------------------------------------------------------------------ serving

    def listing(self, object_type: str, *, gte: int | None = None, lt: int | None = None,
                where: Mapping[str, Any] | None = None,
                keep: Callable[[dict], bool] | None = None,
                fields: Iterable[str] | None = None,
                expand_customer: bool = False,
                customer_fields: Iterable[str] | None = None,
                form: RowForm | None = None) -> Iterator[dict | list]:
        """The kind's objects created in [gte, lt), newest first (ties: id descending), with
        `where` (SQL columns: customer, status, kind, ref, deleted) and `keep` applied; an expanded
        customer keeps `customer_fields` when given. With `form` (and `fields`, no `where` or
        `keep`), each object the form describes is served as its row (a list, its customer in it
        when the form expands it), the others as objects."""
        if self.disabled:
            raise Unavailable(self.disabled)
        wanted = tuple(fields) if fields is not None else None
        if wanted is not None and PROJECTIONS[object_type] and not set(wanted) <= set(PROJECTIONS[object_type]):
            raise Unavailable("fields not kept")

        def queries() -> tuple["_Query", "_Query | None"]:
            # Projected by SQLite when nothing in Python needs the whole object (`keep` may read
            # any field); the whole objects' query stays the fallback.
            if object_type == "event":
                self._refresh_delivery(gte or 0, lt)
            drop = _dropped(object_type, wanted) if keep is None else None
            query = self._query(object_type, gte, lt, where or {}, expand_customer)
            customer_drop = _dropped("customer", tuple(customer_fields)) \
                if expand_customer and customer_fields is not None else None
            projected = (self._query(object_type, gte, lt, where or {}, expand_customer, drop=drop,
                                     ids_only=wanted == ("id",), customer_drop=customer_drop,
                                     form=rows)
                         if drop is not None else None)
            return query, projected

        # A form serves a listing with no filter but its created range (its rows are not joined
        # to the objects' columns), when SQLite projects it; one that expands the customer, only
        # subscriptions (the rows the triggers drop when their customer is written)
        rows = form if form is not None and keep is None and not where and wanted not in (None, ("id",)) \
            and _dropped(object_type, wanted) is not None \
            and form.expands_customer == (expand_customer and "customer" in wanted) \
            and (not form.expands_customer or object_type == "subscription") else None

        def made() -> "_Query | None":  # (None: the rows are there; else the objects' query)
            if self._fill_rows(object_type, rows):
                return None
            return self._query(object_type, gte, lt, {}, expand_customer, drop=_dropped(object_type, wanted),
                               customer_drop=_dropped("customer", tuple(customer_fields))
                               if expand_customer and customer_fields is not None else None)

        snapshot = self._prepared(object_type, gte, queries, paged=True, before=made if rows else None,
                                  ahead=(lambda: self._fill_rows(object_type, rows, locked=False)) if rows else None)
        return self._serve(snapshot, keep, wanted, expand_customer,
                           tuple(customer_fields) if customer_fields is not None else None)

    def _prepared(self, object_type: str, gte: int | None,
                  queries: Callable[[], tuple["_Query", "_Query | None"]],
                  paged: bool = False, before: Callable[[], "_Query | None"] | None = None,
                  ahead: Callable[[], object] | None = None) -> "_Snapshot":
        """The kind covered from `gte` and synced, then the snapshot of `queries()` (whole,
        projected), read in pages (`_Page`) or in rows; `ahead`: run after the sync, before the
        snapshot's lock is taken; `before`: see `_snapshot`."""
        for attempt in (1, 2):
            try:
                self.ensure(object_type, gte or 0)
                if ahead is not None:  # (a form's rows made, most of them, without holding other runs)
                    ahead()
                return self._snapshot(*queries(), paged=paged, before=before)
            except _NoEventAccess:
                self.disabled = "the key may not read events, which keep the mirror current"
                print(f"Stripe: mirror off: {self.disabled}; reading Stripe directly", file=sys.stderr,
                      flush=True)
                raise Unavailable(self.disabled) from None
            except sqlite3.DatabaseError as exc:
                if attempt == 2:
                    raise
                with self._lock, self._exclusive():
                    self._rebuild(str(exc) or type(exc).__name__)
        raise AssertionError("unreachable")

    def rows(self, object_type: str, selected: Mapping[str, str], whole_to_row: Callable[[dict], tuple], *,
             where: Mapping[str, Any] | None = None) -> Iterator[tuple]:
        """The kind's objects as tuples of `selected` SQL expressions over ``o`` (its row; ``o.data``
        its JSON), newest first as `listing` orders them, never decoded in Python: for a caller
        that reads a few values of every object (half a million subscriptions: ~2 s in SQLite
        instead of ~7 s decoding them). A row SQLite's JSON functions refuse turns the rest of the
        listing to whole objects, made rows by `whole_to_row`, from the same snapshot."""
        if self.disabled:
            raise Unavailable(self.disabled)
        columns = ", ".join(selected.values())
        snapshot = self._prepared(object_type, None, lambda: (
            self._query(object_type, None, None, where or {}, False),
            self._query(object_type, None, None, where or {}, False, select=columns)))
        return self._serve_rows(snapshot, whole_to_row)

    @staticmethod
    def _serve_rows(snapshot: "_Snapshot", whole_to_row: Callable[[dict], tuple]) -> Iterator[tuple]:
        with contextlib.closing(_batches(snapshot)) as batches:
            for rows, projected in batches:
                if projected:
                    yield from rows
                else:
                    for obj in _decoded(rows, False):
                        yield whole_to_row(obj)

    def _query(self, object_type: str, gte: int | None, lt: int | None, where: Mapping[str, Any],
               expand_customer: bool, drop: tuple[str, ...] | None = None,
               ids_only: bool = False, customer_drop: tuple[str, ...] | None = None,
               select: str | None = None, form: RowForm | None = None) -> "_Query":
        """The SQL of a listing; with `expand_customer`, customers the mirror lacks are fetched
        first (one request each: a subscription created since the customers were listed).
        `drop`: the top-level keys SQLite removes from each object before Python decodes it (the
        customer's expansion is selected only when ``customer`` is not dropped); `ids_only`: only
        the ``id`` asked for, served from the row's id column; `select`: the select list instead
        of the objects (`rows`); `form`: each object's row in that form where it has one (and its
        customer's, when its own row is served)."""
        conds, args = ["o.type = ?"], [object_type]
        upper = None
        if gte is not None:
            conds.append("o.created >= ?")
            args.append(gte)
        if lt is not None:
            upper = len(conds)
            conds.append("o.created < ?")
            args.append(lt)
        for column, value in where.items():
            if isinstance(value, (list, tuple, set, frozenset)):
                conds.append(f"o.{column} IN ({', '.join('?' * len(value))})")
                args += list(value)
            else:
                conds.append(f"o.{column} = ?")
                args.append(value)
        join = " LEFT JOIN objects c ON c.type = 'customer' AND c.id = o.customer" if expand_customer else ""
        if expand_customer and drop is None and select is None:  # (`rows` asks with the whole query first)
            missing = [cid for (cid,) in self._open().execute(
                f"SELECT DISTINCT o.customer FROM objects o{join} WHERE {' AND '.join(conds)} "
                "AND o.customer IS NOT NULL AND c.id IS NULL", args)]
            if missing:
                self._fetch_customers(missing)
        data, selected = "o.data", []  # (the select list's parameters come before the WHERE's)
        if ids_only:  # (the row's own id column: the object's JSON is not read at all)
            data = "json_object('id', o.id)"
        elif drop:
            data = f"json_remove(o.data, {', '.join('?' * len(drop))})"
            selected += [f'$."{key}"' for key in drop]
        if drop is not None and "customer" in drop:
            join = ""
        if select is not None:
            return _Query((select,), "", tuple(conds), (), tuple(args), upper)
        columns = [data]
        if join:
            if customer_drop:
                columns.append(f"json_remove(c.data, {', '.join('?' * len(customer_drop))})")
                selected += [f'$."{key}"' for key in customer_drop]
            else:
                columns.append("c.data")
        if form is not None:
            return self._form_query(form, columns, join, conds, selected, args, upper)
        return _Query(tuple(columns), join, tuple(conds), tuple(selected), tuple(args), upper)

    @staticmethod
    def _form_query(form: RowForm, columns: list[str], join: str, conds: list[str], selected: list,
                    args: list, upper: int | None) -> "_Query":
        """The listing over ``object_rows`` (as ``o``: its type, created and id are the objects'):
        each row, or for an object without one its projected JSON (and customer), read then."""
        of_object = f" FROM objects o{join} WHERE o.type = x.type AND o.id = x.id"
        served = [f"coalesce(x.row, (SELECT {columns[0]}{of_object}))"]
        served += [f"CASE WHEN x.row IS NULL THEN (SELECT {column}{of_object}) END" for column in columns[1:]]
        conds = [cond.replace("o.", "x.") for cond in conds]
        conds.insert(1, f"x.form = '{form.name}'")
        return _Query(tuple(served), "", tuple(conds), tuple(selected), tuple(args),
                      upper + 1 if upper is not None else None, source="object_rows x")

    def _fill_rows(self, object_type: str, form: RowForm, locked: bool = True) -> bool:
        """Every stored object of the kind with its row in `form` (True), or not (False: the
        rows could not be made): made for those that lack one (all of them the first time, then
        the ones written since), FILL_BATCH a transaction, in id order; rows of the form's other
        versions dropped then. `locked`: the caller holds the sync lock (`_snapshot`, just before
        the listing's snapshot begins: no other run writes in between); else each step takes it,
        and another run may sync or list between two (a first fill at a million objects takes
        minutes). An interrupt stops it, and is raised."""
        step = contextlib.nullcontext if locked else self._locked
        conn = self._open()
        with step():
            if conn.execute("SELECT 1 FROM row_forms WHERE type = ? AND form = ?", (object_type, form.name)).fetchone():
                return True  # (all made, nothing of the kind written since)
            have = conn.execute("SELECT count(*) FROM object_rows WHERE type = ? AND form = ?",
                                (object_type, form.name)).fetchone()[0]
            stored = conn.execute("SELECT count(*) FROM objects WHERE type = ?", (object_type,)).fetchone()[0]
            if have == stored and locked:
                with self._write(conn):
                    conn.execute("INSERT OR IGNORE INTO row_forms VALUES (?, ?)", (object_type, form.name))
        if have == stored:
            return True
        stopped: list[BaseException] = []
        conn.create_function("opsbook_row", 2 if form.expands_customer else 1, _row_maker(form, stopped),
                             deterministic=True)
        customer = (", c.data", " LEFT JOIN objects c ON c.type = 'customer' AND c.id = o.customer") \
            if form.expands_customer else ("", "")
        progress = Progress(f"making the {LABELS.get(object_type, object_type)}' rows for this runbook")
        try:
            with step(), self._write(conn):  # (the form's other versions: another opsbook's)
                conn.execute("DELETE FROM object_rows WHERE type = ? AND substr(form, 1, ?) = ? AND form <> ?",
                             (object_type, len(form.family) + 1, form.family + ".", form.name))
            after = ""
            while True:
                with step():
                    ids = [i for (i,) in conn.execute("SELECT id FROM objects WHERE type = ? AND id > ? ORDER BY "
                                                      "id LIMIT ?", (object_type, after, FILL_BATCH))]
                    if not ids:
                        if locked:  # (all made, no write in between: the next run need not count)
                            with self._write(conn):
                                conn.execute("INSERT OR IGNORE INTO row_forms VALUES (?, ?)", (object_type, form.name))
                        return True
                    with self._write(conn):
                        conn.execute(
                            f"INSERT INTO object_rows (type, form, created, id, row) SELECT o.type, ?, o.created, "
                            f"o.id, opsbook_row(o.data{customer[0]}) FROM objects o{customer[1]} WHERE o.type = ? "
                            "AND o.id > ? AND o.id <= ? AND NOT EXISTS (SELECT 1 FROM object_rows r WHERE "
                            "r.type = o.type AND r.id = o.id AND r.form = ?)",
                            (form.name, object_type, after, ids[-1], form.name))
                progress.page(len(ids))
                after = ids[-1]
                if not locked:
                    time.sleep(LOCK_YIELD_S)
        except sqlite3.DatabaseError as exc:
            if stopped:  # (interrupted: the batch rolled back, the rows made so far kept)
                raise stopped[0] from None
            # A full disk, a file another process locks too long: the objects are served instead
            # (the rows made so far are kept; a corrupt file is found by the listing's own read)
            print(f"Stripe: mirror: the {LABELS.get(object_type, object_type)}' rows could not be made "
                  f"({first_line(str(exc)) or type(exc).__name__}): serving the objects", file=sys.stderr, flush=True)
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, self._exclusive():
            yield

    def _fetch_customers(self, missing: list[str]) -> None:
        with self._lock, self._exclusive(), self._asked_for("subscription"):
            now = _now()
            for customer_id in missing:
                obj = self._get("customer", {}, path=f"/v1/customers/{customer_id}")
                with self._write() as conn:
                    if obj.get("deleted"):
                        self._tombstone(conn, "customer", customer_id, obj.get("created"))
                    else:
                        self._store(conn, "customer", obj, now)

    def _snapshot(self, query: "_Query", projected: "_Query | None" = None,
                  paged: bool = False, before: Callable[[], "_Query | None"] | None = None) -> "_Snapshot":
        """The listing's read transaction on a connection of its own, begun under the sync lock:
        no other run is half-way through re-listing the kind then, and WAL keeps the snapshot
        consistent whatever is written after. Read with `projected` when given (`query` is its
        fallback, from the same snapshot); `paged`: in pages (`_Page`), else in rows. `before`:
        run under the lock before the snapshot begins; a query it returns replaces `projected`."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            with self._lock, self._exclusive():
                if before is not None:  # (a form's rows made: no other run writes until BEGIN)
                    projected = before() or projected
                conn.execute("BEGIN")
                if projected is not None:
                    try:
                        return _Snapshot.begun(conn, projected, query, True, paged)  # (taken by its first read)
                    except sqlite3.OperationalError as exc:
                        if not _json_refused(exc):
                            raise
                return _Snapshot.begun(conn, query, query, False, paged)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _serve(snapshot: "_Snapshot", keep: Callable[[dict], bool] | None,
               wanted: tuple[str, ...] | None, expand_customer: bool,
               customer_fields: tuple[str, ...] | None = None) -> Iterator[dict]:
        """The snapshot's rows, SERVE_BATCH at a time in memory, decoded and filtered as they go."""
        with contextlib.closing(_pages(snapshot)) as pages:
            for page, projected in pages:
                expand = expand_customer and (not projected or "customer" in (wanted or ()))
                if projected and keep is None:  # (as decoded: no Python step per object here)
                    yield from page.objects(expand)
                    continue
                for obj in page.objects(expand):
                    if keep is not None and not keep(obj):
                        continue
                    if not projected:
                        if wanted is not None:
                            obj = {k: obj[k] for k in wanted if k in obj}
                        if customer_fields is not None and isinstance(obj.get("customer"), dict):
                            obj["customer"] = {k: v for k, v in obj["customer"].items() if k in customer_fields}
                    yield obj


def _pages(snapshot: "_Snapshot") -> Iterator[tuple["_Page", bool]]:
    """The snapshot's pages (the next ones read ahead by a thread), each with whether it is
    projected; the snapshot's connection closed at the end or when left early.

    A page SQLite's JSON functions refuse (NaN, Infinity: Python wrote them) turns the rest to the
    whole objects' query, from the last page served on, in the same read transaction."""
    conn, page, projected = snapshot.conn, snapshot.rows, snapshot.projected
    ahead = _PagesAhead(conn, page) if page.full else None
    try:
        while page.count:
            yield page, projected
            if ahead is None:
                return
            served = page
            try:
                page = ahead.next()
            except sqlite3.OperationalError as exc:
                if not projected or not _json_refused(exc):
                    raise
                ahead.close()
                projected = False
                page = _Page.read(conn, snapshot.whole, served.last)
                ahead = _PagesAhead(conn, page) if page.full else None
    finally:
        if ahead is not None:
            ahead.close(interrupt=True)
        conn.close()


def _batches(snapshot: "_Snapshot") -> Iterator[tuple[list, bool]]:
    """The snapshot's rows, SERVE_BATCH at a time (the next ones read ahead by a thread), each batch
    with whether it is projected; the snapshot's connection closed at the end or when left early.

    A row SQLite's JSON functions refuse (NaN, Infinity: Python wrote them) turns the rest to the
    whole objects' query, from the same read transaction."""
    conn, rows, projected = snapshot.conn, snapshot.rows, snapshot.projected
    served = 0
    ahead = _ReadAhead(snapshot.cursor) if rows else None
    try:
        while rows:
            yield rows, projected
            served += len(rows)
            try:
                rows = ahead.next()
            except sqlite3.OperationalError as exc:
                if not projected or not _json_refused(exc):
                    raise
                ahead.close()
                sql, args = snapshot.whole.plain()
                cursor = conn.execute(f"{sql} LIMIT -1 OFFSET ?", [*args, served])
                projected = False
                rows = cursor.fetchmany(SERVE_BATCH)
                ahead = _ReadAhead(cursor) if rows else ahead
    finally:
        if ahead is not None:
            ahead.close()
        conn.close()


class _Ahead:
    """What a thread of its own reads next (`_read`'s items) while the caller decodes the current
    one: SQLite's share runs outside the GIL, so it overlaps Python's decoding. At most ``DEPTH``
    items wait in memory; an error reading is raised where the caller asks for the next item."""

    DEPTH = 2

    def __init__(self, *source: Any):
        self._items: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=source, name="opsbook-mirror-read", daemon=True)
        self._thread.start()

    def _run(self, *source: Any) -> None:
        try:
            self._read(*source)
        except BaseException as exc:  # (the caller raises it)
            self._put(exc)

    def _read(self, *source: Any) -> None:
        raise NotImplementedError

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Any:
        try:
            item = self._items.get(timeout=LOCK_WAIT_S)
        except queue.Empty:
            raise StripeAccessError(f"the Stripe mirror's file gave no rows for {LOCK_WAIT_S:.0f} s — check the disk "
                                    f"holding it, or run with {MIRROR_VARIABLE}=off to read Stripe directly") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the reading (after the item it is reading, if any) and waits for it."""
        self._stop.set()
        self._thread.join(timeout=LOCK_WAIT_S)


class _ReadAhead(_Ahead):
    """A cursor's next batches of SERVE_BATCH rows (`rows`: each row's step outside the GIL)."""

    def _read(self, cursor: sqlite3.Cursor) -> None:
        while True:
            rows = cursor.fetchmany(SERVE_BATCH)
            if not self._put(rows) or not rows:
                return


@dataclass
class _Snapshot:
    conn: sqlite3.Connection
    rows: "list | _Page"         # the first batch, or page (reading it took the snapshot)
    cursor: sqlite3.Cursor | None  # (read in rows: the cursor of the rest)
    whole: "_Query"              # the query of whole objects
    projected: bool              # the rows are already projected to the fields asked for

    @classmethod
    def begun(cls, conn: sqlite3.Connection, query: "_Query", whole: "_Query",
              projected: bool, paged: bool) -> "_Snapshot":
        if paged:
            return cls(conn, _Page.read(conn, query, None), None, whole, projected)
        cursor = conn.execute(*query.plain())
        return cls(conn, cursor.fetchmany(SERVE_BATCH), cursor, whole, projected)


_ORDER = " ORDER BY o.created DESC, o.id DESC"


@dataclass
class _Page:
    """SERVE_BATCH rows of a listing's query (after the row `after`: its created and id) read in
    one step: SQLite joins each column's texts into one string, so the thread reading ahead
    holds the GIL once a page instead of once a row (read row by row, the reading and the
    caller's decoding took turns instead of overlapping: half a million invoices, 9 s of either
    alone and 9 s together; read in pages, 8 s together on a loaded machine, with 12 s of CPU).
    A listing's objects in pages are in the order the query gives them: a page is the materialised
    first SERVE_BATCH rows after `after`, read in the order they were written to it."""

    count: int
    texts: tuple                 # per column, its values joined by commas ('null' for NULL)
    last: tuple | None           # the last row's (created, id): where the next page starts
    query: "_Query"
    after: tuple | None
    conn: sqlite3.Connection     # (the snapshot's: a page that is not JSON is read again, row by row)

    @property
    def full(self) -> bool:
        return self.count >= SERVE_BATCH

    @classmethod
    def read(cls, conn: sqlite3.Connection, query: "_Query", after: tuple | None) -> "_Page":
        row = conn.execute(*query.page(after)).fetchone()
        return cls(row[0], tuple(row[1:-2]), (row[-2], row[-1]), query, after, conn)

    def rows(self) -> list:
        """The page's rows one by one (a row that is not JSON fails where it is)."""
        return [row[:-2] for row in self.conn.execute(*self.query.page(self.after, joined=False))]

    def objects(self, expand: bool) -> Iterable[dict]:
        """The page's objects: one json.loads for the whole page (its customers expanded by a
        second), the collector paused (see `_decoded`); a row that is not JSON: one at a time."""
        try:
            with collector_paused():
                objects = json.loads(f"[{self.texts[0]}]")
                customers = json.loads(f"[{self.texts[1]}]") if expand else None
        except (TypeError, ValueError):
            objects = None
        if objects is None or len(objects) != self.count or (expand and len(customers) != self.count):
            return _one_by_one(self.rows(), expand)
        if expand:
            for obj, customer in zip(objects, customers):
                _expand(obj, customer)
        return objects


@dataclass(frozen=True)
class _Query:
    """A listing's SELECT over ``objects o`` (its customer's row joined as ``c`` when expanded):
    the columns, the join, the WHERE conditions and their parameters, newest first."""

    columns: tuple[str, ...]
    join: str
    conds: tuple[str, ...]
    column_args: tuple           # the columns' parameters (they come before the WHERE's)
    cond_args: tuple             # the conditions' parameters, in order
    upper: int | None = None     # which condition is ``o.created < ?`` (`lt`)
    source: str = "objects o"    # what is listed (a form's rows: ``object_rows x``)

    @property
    def _key(self) -> str:
        return self.source.split()[-1]  # (the alias whose created and id order the listing)

    def _order(self) -> str:
        return _ORDER.replace("o.", f"{self._key}.")

    def plain(self) -> tuple[str, list]:
        return (f"SELECT {', '.join(self.columns)} FROM {self.source}{self.join} WHERE {' AND '.join(self.conds)}"
                f"{self._order()}", [*self.column_args, *self.cond_args])

    def page(self, after: tuple | None, joined: bool = True) -> tuple[str, list]:
        """The first SERVE_BATCH rows after the row `after` (its created and id; None: from the
        newest): their rows, or (`joined`) each column's texts joined, the count and the last key."""
        conds, args = list(self.conds), list(self.cond_args)
        if after is not None:
            if self.upper is not None:
                # (implied by the key, which is below it; left in, SQLite would bound its index
                # search by it and walk from `lt` past every row served, on every page)
                at = sum(cond.count("?") for cond in conds[:self.upper])
                del conds[self.upper], args[at]
            conds.append(f"({self._key}.created, {self._key}.id) < (?, ?)")
            args += after
        page = (f"SELECT {', '.join(f'{c} AS v{i}' for i, c in enumerate(self.columns))}, {self._key}.created AS k1, "
                f"{self._key}.id AS k2 FROM {self.source}{self.join} WHERE {' AND '.join(conds)}{self._order()} "
                f"LIMIT {int(SERVE_BATCH)}")
        args = [*self.column_args, *args]
        if not joined:
            return page, args
        texts = ", ".join(f"group_concat(coalesce(v{i}, 'null'), ',')" for i in range(len(self.columns)))
        return (f"WITH page AS MATERIALIZED ({page}) SELECT count(*), {texts}, "
                "(SELECT k1 FROM page ORDER BY k1, k2 LIMIT 1), (SELECT k2 FROM page ORDER BY k1, k2 LIMIT 1) "
                "FROM page"), args


class _PagesAhead(_Ahead):
    """A listing's next pages (each one step of SQLite's, the GIL taken once a page); the end
    said as an empty page."""

    def __init__(self, conn: sqlite3.Connection, page: _Page):
        self._conn = conn
        super().__init__(conn, page)

    def _read(self, conn: sqlite3.Connection, page: _Page) -> None:
        while page.full:
            page = _Page.read(conn, page.query, page.last)
            if not self._put(page):
                return
        if page.count:  # (a last page that was not full)
            self._put(_Page(0, (), None, page.query, page.last, conn))

    def close(self, interrupt: bool = False) -> None:
        """As `_Ahead.close`; with `interrupt`, the page being read is abandoned (SQLite's
        interrupt: the caller is done with the connection, a stuck disk is not waited on)."""
        if interrupt:
            self._stop.set()
            self._conn.interrupt()
        super().close()


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")


def _dropped(object_type: str, wanted: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The kept keys SQLite may remove to serve `wanted` (None: project in Python).

    Exact because a row's `data` holds only PROJECTIONS keys (``_project``, tombstones): what
    remains after json_remove is the projection, JSON nulls kept and absent keys absent, numbers
    and strings copied as written. Events are kept whole (their keys are not known)."""
    kept = PROJECTIONS[object_type]
    if wanted is None or not kept or not all(_PLAIN_KEY.fullmatch(k) for k in kept):
        return None
    return tuple(k for k in kept if k not in set(wanted))


def _json_refused(exc: sqlite3.OperationalError) -> bool:
    """The projection failing (SQLITE_ERROR: "malformed JSON" on a row; an SQLite without
    json_remove), not the file: the whole objects' query is tried instead, and raises if the
    file is at fault. (Python 3.10 gives no code: any OperationalError is tried again so.)"""
    return getattr(exc, "sqlite_errorcode", 1) == 1  # SQLITE_ERROR


def _decoded(rows: list, expand: bool) -> Iterable[dict]:
    """A batch of rows as objects: one json.loads for the whole batch (one call's overhead, and
    its key cache shared by the batch); the customers expanded.

    The garbage collector is off during the decoding: json.loads creates only acyclic objects,
    yet the collector ran every 700 of them, rescanning the batch and, every so often, every
    object the caller holds (a million served objects: most of the serving time). It is left
    off when the caller paused it; another thread's pause meanwhile would be lifted here, which
    costs it time, never correctness."""
    texts = [row[0] for row in rows]
    try:
        with collector_paused():
            objects = json.loads(f"[{','.join(texts)}]")
            customers = (json.loads(f"[{','.join([row[1] if row[1] is not None else 'null' for row in rows])}]")
                         if expand else None)
    except (TypeError, ValueError):
        objects = None
    if objects is None or len(objects) != len(rows) or (expand and len(customers) != len(rows)):
        return _one_by_one(rows, expand)  # a row that is not JSON: it fails where it is, as before
    if expand:
        for obj, customer, row in zip(objects, customers, rows):
            if row[1] is not None:
                obj["customer"] = customer
    return objects


def _one_by_one(rows: list, expand: bool) -> Iterator[dict | list]:
    for row in rows:
        obj = json.loads(row[0])
        if expand:
            _expand(obj, json.loads(row[1]) if row[1] is not None else None)
        yield obj


def _expand(obj: dict | list, customer: dict | None) -> None:
    """An object's expanded customer in place of its id (a row, `RowForm`, holds its own)."""
    if customer is not None and type(obj) is dict:
        obj["customer"] = customer
