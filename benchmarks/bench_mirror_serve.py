"""Serving listings from the Stripe mirror at scale: the warm run's cost once the sync is done.

    .venv/bin/python benchmarks/bench_mirror_serve.py --n 100000
    .venv/bin/python benchmarks/bench_mirror_serve.py --n 1000000 --keep /tmp/mirror1m.sqlite

Builds a mirror file (the module's own schema, projections and row columns) with N customers shaped
like the demo's (``ops_lib.stripe_emulator.objects.make_customer``: email, name, metadata with the
organisation id; 1 % deleted, kept as tombstones) and N/2 subscriptions (one or two items with
their price served whole, 15 % canceled, some trialing, a few with a discount), written straight
into SQLite (no emulator, no requests). Then it times what the runbooks ask of it, with the sync
made a no-op (it is not what is measured here):

* quota_audit: ``list_customers(fields=CUSTOMER_FIELDS)`` and
  ``list_subscriptions(status="all", fields=SUBSCRIPTION_FIELDS)``, with the garbage collector
  paused as its ``fetch_stripe`` pauses it, each alone and then together (the customers held while
  the subscriptions are served); the same with the collector on, as another caller would;
* revenue_report: ``list_subscriptions(status="all", expand_customer=True)`` (whole objects),
  with the collector on and paused;
* whole customers (no fields), the path of every other kind;

each through the old serving (``old_listing``: a copy of the code before batches and SQL-side
projections) and the current one, checks that they return the same objects in the same order, and
prints µs per object and seconds: CPU time (the steadier figure on a shared machine) and wall
time, best of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops_lib import stripe_mirror  # noqa: E402
from ops_lib.quota.accounts import CUSTOMER_FIELDS, SUBSCRIPTION_FIELDS  # noqa: E402
from ops_lib.bulk import collector_paused  # noqa: E402
from ops_lib.stripe_emulator import objects as so  # noqa: E402
from ops_lib.stripe_mirror import Mirror  # noqa: E402

NOW = 1_790_000_000
DAY = 86400
BATCH = 20_000


# ----------------------------------------------------------------------------- the old serving


def old_serve(snapshot, keep, wanted, expand_customer) -> Iterator[dict]:
    """`Mirror._serve` as it was: every row decoded whole in Python, one json.loads each."""
    conn, rows, cursor = snapshot
    try:
        while rows:
            for row in rows:
                obj = json.loads(row[0])
                if expand_customer and row[1] is not None:
                    obj["customer"] = json.loads(row[1])
                if keep is not None and not keep(obj):
                    continue
                yield obj if wanted is None else {k: obj[k] for k in wanted if k in obj}
            rows = cursor.fetchmany(1000)
    finally:
        conn.close()


def old_listing(path: Path, object_type: str, where: dict | None = None, keep=None, fields=None,
                expand_customer: bool = False) -> Iterator[dict]:
    """`Mirror.listing` as it was once synced: its SQL (`_query`), snapshot and `_serve`."""
    conds, args = ["o.type = ?"], [object_type]
    for column, value in (where or {}).items():
        conds.append(f"o.{column} = ?")
        args.append(value)
    join = " LEFT JOIN objects c ON c.type = 'customer' AND c.id = o.customer" if expand_customer else ""
    sql = (f"SELECT o.data{', c.data' if expand_customer else ''} FROM objects o{join} "
           f"WHERE {' AND '.join(conds)} ORDER BY o.created DESC, o.id DESC")
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN")
    cursor = conn.execute(sql, args)
    first = cursor.fetchmany(1000)
    return old_serve((conn, first, cursor), keep, tuple(fields) if fields is not None else None,
                     expand_customer)


# ----------------------------------------------------------------------------- building the file


def build(path: Path, n: int) -> None:
    """N customers and N/2 subscriptions, as the mirror stores them after a cold listing."""
    started = time.monotonic()
    so.seed_ids("bench-mirror-serve")
    rng = random.Random(42)
    product = so.make_product(name="Pro", id="prod_demo_pro", created=NOW - 800 * DAY)
    team = so.make_product(name="Team", id="prod_demo_team", created=NOW - 800 * DAY)
    prices = [so.make_price(product=product, unit_amount=4900, interval="month", id="price_demo_pro_monthly",
                            created=NOW - 800 * DAY, lookup_key="pro_monthly", metadata={"plan": "pro"}),
              so.make_price(product=team, unit_amount=19900, interval="month", id="price_demo_team_monthly",
                            created=NOW - 800 * DAY, nickname="Team (monthly)", metadata={"plan": "team"}),
              so.make_price(product=team, unit_amount=199000, interval="year", id="price_demo_team_yearly",
                            created=NOW - 800 * DAY, metadata={"plan": "team", "seats": "10"})]
    coupon = so.make_coupon(percent_off=20.0, duration="forever", id="LAUNCH20", created=NOW - 700 * DAY)
    mirror = Mirror(path, client=None)
    conn = mirror._open()
    conn.execute("PRAGMA synchronous = OFF")
    insert = ("INSERT OR REPLACE INTO objects (type, id, created, customer, status, kind, ref, deleted,"
              " pending, seen_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def row(object_type: str, obj: dict) -> tuple:
        kept = stripe_mirror._project(obj, object_type)
        customer, status, kind, ref = stripe_mirror._columns(object_type, kept)
        return (object_type, kept["id"], int(kept.get("created") or 0), customer, status, kind, ref,
                1 if obj.get("deleted") else 0, 0, NOW, dumps(kept))

    rows: list[tuple] = []

    def flush() -> None:
        with mirror._write(conn):
            conn.executemany(insert, rows)
        rows.clear()

    span = 700 * DAY
    statuses = ["active"] * 70 + ["canceled"] * 15 + ["trialing"] * 8 + ["past_due"] * 5 + ["unpaid"] * 2
    for i in range(n):
        created = NOW - span + (i * span) // n
        cid = f"cus_demo{i:07d}"
        if i % 100 == 99:  # deleted: a tombstone (subscriptions still name it)
            stone = {"id": cid, "object": "customer", "deleted": True}
            rows.append(("customer", cid, created, None, None, None, None, 1, 0, NOW, json.dumps(stone)))
        else:
            customer = so.make_customer(
                id=cid, email=f"user0@org{i}.example", name=f"Org {i} " + rng.choice(("GmbH", "Ltd", "Inc.", "SAS")),
                created=created, metadata={"organization_id": str(i)},
                phone="+4930123456" if i % 7 == 0 else None, balance=-500 if i % 53 == 0 else 0)
            rows.append(row("customer", customer))
        if i % 2 == 0:
            status = rng.choice(statuses)
            items = [(prices[i % 3], 1 + i % 4)] + ([(prices[0], 1)] if i % 11 == 0 else [])
            sub = so.make_subscription(
                id=f"sub_demo{i:07d}", customer=cid, items=items, status=status, created=created + 60,
                coupon=coupon if i % 17 == 0 else None, metadata={"organization_id": str(i)},
                latest_invoice=f"in_demo{i:07d}", cancel_at_period_end=status == "active" and i % 13 == 0)
            rows.append(row("subscription", sub))
        if len(rows) >= BATCH:
            flush()
    flush()
    since = 0
    with mirror._write(conn):
        for t in ("customer", "subscription"):
            conn.execute("INSERT OR REPLACE INTO coverage VALUES (?, ?, ?, ?, 0)",
                         (t, since, time.time(), stripe_mirror.signature(t)))
        mirror._set(conn, "cursor", {"created": NOW, "ids": []})
        mirror._set(conn, "synced_at", time.time())
        mirror._set(conn, "events_applied", 0)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    mirror.close()
    print(f"built {path} ({path.stat().st_size / 1e6:.0f} MB): {n:,} customers, {n // 2:,} subscriptions "
          f"in {time.monotonic() - started:.0f} s", flush=True)


# ----------------------------------------------------------------------------- timing


class Warm(Mirror):
    """The mirror with its sync made a no-op: what is timed is serving alone."""

    def ensure(self, object_type: str, since: int) -> None:
        pass


def listing(path: Path, old: bool, object_type: str, **query: Any) -> Iterator[dict]:
    if old:
        yield from old_listing(path, object_type, **query)
        return
    mirror = Warm(path, client=None)
    try:
        yield from mirror.listing(object_type, **query)
    finally:
        mirror.close()


def same(path: Path, object_type: str, query: dict) -> int:
    """The old and the new serving, side by side: the same objects in the same order (streamed:
    a million of each held at once would not fit)."""
    count = 0
    sentinel = object()
    for count, (a, b) in enumerate(itertools.zip_longest(listing(path, True, object_type, **query),
                                                         listing(path, False, object_type, **query),
                                                         fillvalue=sentinel), 1):
        assert a == b, f"object {count}: the new serving differs from the old: {a!r} != {b!r}"
    return count


# label, kind, query, with the garbage collector paused (quota's fetch_stripe pauses it: ops_lib.bulk)
CASES: list[tuple[str, str, dict, bool]] = [
    ("quota: customers, 7 fields", "customer", {"where": {"deleted": 0}, "fields": CUSTOMER_FIELDS}, True),
    ("quota: subscriptions, 14 fields", "subscription", {"fields": SUBSCRIPTION_FIELDS}, True),
    ("customers, 7 fields, gc on", "customer", {"where": {"deleted": 0}, "fields": CUSTOMER_FIELDS}, False),
    ("subscriptions, 14 fields, gc on", "subscription", {"fields": SUBSCRIPTION_FIELDS}, False),
    ("revenue: subscriptions + customer", "subscription", {"expand_customer": True}, False),
    ("revenue, collector paused", "subscription", {"expand_customer": True}, True),
    ("whole customers, gc on", "customer", {"where": {"deleted": 0}}, False),
]


def timed(run: Callable[[], list[list]], paused: bool) -> tuple[float, float, int]:
    """Wall and CPU seconds of `run`, and how many objects it served (the machine may be shared:
    CPU time is the steadier figure)."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    with collector_paused() if paused else contextlib.nullcontext():
        held = run()  # held until timed, as the runbooks hold them
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    count = sum(len(objects) for objects in held)
    del held
    return wall, cpu, count


def best_of(repeat: int, run: Callable[[], list[list]], paused: bool) -> tuple[float, float, int]:
    walls, cpus, counts = zip(*(timed(run, paused) for _ in range(repeat)))
    return min(walls), min(cpus), counts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="customers (subscriptions: N/2)")
    parser.add_argument("--keep", type=Path, help="the mirror file: reused when it exists, kept after")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="time the current serving only")
    parser.add_argument("--no-check", action="store_true", help="do not compare old and new objects")
    args = parser.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, N = {args.n:,}", flush=True)
    versions = ["new"] if args.no_old else ["old", "new"]
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as scratch:
        path = args.keep or Path(scratch) / "mirror.sqlite"
        if not path.exists():
            build(path, args.n)
        compared: set[str] = set()
        for label, object_type, query, paused in CASES:
            for which in versions:
                wall, cpu, count = best_of(
                    args.repeat, lambda: [list(listing(path, which == "old", object_type, **query))], paused)
                print(f"{label:36} {which}: {count:>9,} objects  {cpu * 1e6 / count:6.2f} µs/object  {cpu:6.2f} s CPU"
                      f"  (wall {wall * 1e6 / count:6.2f} µs, {wall:6.2f} s)", flush=True)
            if not args.no_old and not args.no_check and repr((object_type, query)) not in compared:
                compared.add(repr((object_type, query)))
                print(f"{label:36} same objects as before: {same(path, object_type, query):,} compared",
                      flush=True)
        (_, c_type, c_query, _), (_, s_type, s_query, _) = CASES[:2]
        for which in versions:
            wall, cpu, _ = best_of(args.repeat, lambda: [list(listing(path, which == "old", c_type, **c_query)),
                                                         list(listing(path, which == "old", s_type, **s_query))], True)
            print(f"quota_audit's two listings, {which}: {cpu:.2f} s CPU (wall {wall:.2f} s): customers held "
                  "while the subscriptions are served, the collector paused, as its fetch_stripe does", flush=True)


if __name__ == "__main__":
    main()
