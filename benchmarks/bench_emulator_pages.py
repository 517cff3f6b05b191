"""What one page costs the Stripe emulator, for a state of any size: the per-page row of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_emulator_pages.py STATE [STATE...]

For each state file (JSON or SQLite) and each listed type: the time to open it (what the emulator
does before it answers its health check), then the median time of a page of 100 (no HTTP: api.py's
list_objects, rendering included) from the start of the listing, from a cursor in the middle,
with a `created` range, and with `customer=` (for types that have one).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops_lib.stripe_emulator.api import COLLECTIONS, Account, list_objects  # noqa: E402
from ops_lib.stripe_emulator.state import read_state  # noqa: E402
from ops_lib.stripe_emulator.store import SqliteAccount, is_sqlite_state  # noqa: E402

PATHS = {"customer": "/v1/customers", "invoice": "/v1/invoices", "charge": "/v1/charges", "event": "/v1/events"}


def _ms(fn, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(path: Path) -> list[str]:
    started = time.perf_counter()
    account = SqliteAccount(path) if is_sqlite_state(path) else Account(read_state(path)["objects"])
    open_s = time.perf_counter() - started
    counts = account.counts()
    rows = []
    for object_type, url in PATHS.items():
        n = counts.get(object_type, 0)
        if n < 200:
            continue
        collection = COLLECTIONS[url]
        ids = [o["id"] for o in list_objects(account, collection, {"limit": "100"})["data"]]
        middle = None
        # walk to the middle by cursor, 100 at a time, once (not timed)
        cursor, walked = ids[-1], 100
        while walked < n // 2:
            page = list_objects(account, collection, {"limit": "100", "starting_after": cursor})["data"]
            if not page:
                break
            cursor, walked = page[-1]["id"], walked + len(page)
        middle = cursor
        newest = list_objects(account, collection, {"limit": "1"})["data"][0]
        created = newest["created"]
        cells = {
            "first": _ms(lambda: list_objects(account, collection, {"limit": "100"})),
            "middle": _ms(lambda: list_objects(account, collection, {"limit": "100", "starting_after": middle})),
            "created range": _ms(lambda: list_objects(
                account, collection, {"limit": "100", "created": {"gte": str(created - 30 * 86400), "lt": str(created)}})),
        }
        if "customer" in collection.filters:
            customer = newest["customer"] if isinstance(newest["customer"], str) else newest["customer"]["id"]
            cells["customer="] = _ms(lambda: list_objects(account, collection, {"limit": "100", "customer": customer}))
        rows.append(f"| {path.name} | {open_s:.2f} | {object_type} | {n:,} | "
                    + " | ".join(f"{k} {v:.1f}" for k, v in cells.items()) + " |")
    return rows


def main(argv: list[str]) -> int:
    print("| state | open s | type | objects | page of 100, ms (median of 7) |")
    print("|---|---|---|---|---|")
    for arg in argv:
        for row in measure(Path(arg)):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
