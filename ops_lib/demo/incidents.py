"""Live incidents on the demo database, for as long as the demo runs.

* a report query that has been running for minutes (long_running_queries);
* a session that updated an organisation and went idle inside its transaction, holding the row
  lock (idle_in_transaction, and the root blocker of the next one);
* a second update of the same row, blocked behind it (blocked_queries).

Run as its own process (``DATABASE_URL=… python -m ops_lib.demo.incidents``) so it outlives the command
that started it; it ends by itself after ``--lifetime`` seconds, when the demo stops, or when the
server went away (PostgreSQL stopped: its sessions are gone, and the demo plants them again when it
starts the server again).
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time

import psycopg2

LONG_RUNNING_SQL = "SELECT pg_sleep(%(seconds)s), count(*) FROM usage_events WHERE kind = 'export'"
HOLD_LOCK_SQL = "UPDATE organizations SET name = name WHERE id = 1"
BLOCKED_SQL = "UPDATE organizations SET is_blocked = is_blocked WHERE id = 1"

APP_NAMES = {
    "long_running": "demo-app/nightly-report",
    "lock_holder": "demo-app/admin-console",
    "blocked": "demo-app/billing-worker",
}


def _connect(dsn: str, role: str):
    conn = psycopg2.connect(dsn, application_name=APP_NAMES[role])
    conn.autocommit = False
    return conn


def run(dsn: str, lifetime: float) -> None:
    holder = _connect(dsn, "lock_holder")
    holder.cursor().execute(HOLD_LOCK_SQL)  # and then: nothing; the transaction stays open

    def long_running() -> None:
        conn = _connect(dsn, "long_running")
        try:
            conn.cursor().execute(LONG_RUNNING_SQL, {"seconds": lifetime})
        except psycopg2.Error:
            pass  # cancelled by a remediation, or the demo stopped
        finally:
            conn.close()

    def blocked() -> None:
        conn = _connect(dsn, "blocked")
        try:
            conn.cursor().execute(BLOCKED_SQL)
            conn.rollback()
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    threads = [threading.Thread(target=fn, daemon=True) for fn in (long_running, blocked)]
    for thread in threads:
        thread.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + lifetime
    while not stop.wait(max(0.0, min(1.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
        if not threads[0].is_alive() and _closed_by_server(holder):
            break  # the server went away (or ended both our sessions): nothing left to hold
    try:
        holder.rollback()
        holder.close()
    except psycopg2.Error:
        pass


def _closed_by_server(conn) -> bool:
    """An idle session in a transaction hears nothing from the server unless it is being ended."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg2.Error):
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    args = parser.parse_args(argv)
    print("incidents running", flush=True)
    run(os.environ["DATABASE_URL"], args.lifetime)  # from the environment: not visible in ps
    return 0


if __name__ == "__main__":
    sys.exit(main())
