"""The SQLite state (ops_lib/stripe_emulator/store.py) and the demo's streamed build of it.

tests/test_stripe_emulator.py runs every API test against both state formats; these check what
is particular to SQLite: a large account streamed while the demo builds it is the same account
the in-memory build makes, a replaced file is served at once, and `python -m` serves one.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ops_lib.demo import billing_history, seed, stripe_account
from ops_lib.stripe_emulator import add_objects, new_state, start_emulator, stop
from ops_lib.stripe_emulator import objects as o
from ops_lib.stripe_emulator.store import is_sqlite_state, write_sqlite_state

from .stripe_fixtures import SECRET_KEY, T0, build_rich_state, client_for, control

NOW = datetime(2026, 11, 18, 15, 30, tzinfo=timezone.utc)


def _account(tmp_path: Path, store: Path | None):
    data = seed.build(seed=5, organisations=60, stripe_events=25, history_periods=2, now=NOW)
    account, _ = stripe_account.build(data, api_key=SECRET_KEY, receiver_url="http://127.0.0.1:9/stripe/webhook",
                                      store=store)
    manifest = billing_history.plant(None, data, account)
    return account, manifest


def _stored(path: Path) -> dict[str, dict]:
    with sqlite3.connect(path) as conn:
        return {row[0]: json.loads(row[1]) for row in conn.execute("SELECT id, body FROM objects")}


def test_a_streamed_account_is_the_account_built_in_memory(tmp_path):
    in_memory, manifest = _account(tmp_path, None)
    streamed, streamed_manifest = _account(tmp_path, tmp_path / "stripe.sqlite")
    writer = streamed.pop(billing_history.BULK)
    assert writer.added > 0, "the seeded history and background events went to the store"
    assert len(streamed["objects"]["invoice"]) < len(in_memory["objects"]["invoice"])
    writer.finish(streamed)

    expected = {obj["id"]: obj for items in in_memory["objects"].values() for obj in items}
    assert _stored(tmp_path / "stripe.sqlite") == json.loads(json.dumps(expected))
    assert streamed_manifest == manifest
    assert manifest["payment_success_rate_low"], "the planted failures are there either way"


def test_history_periods_sizes_the_seeded_billing_history(tmp_path):
    def invoices(periods: int) -> int:
        data = seed.build(seed=5, organisations=60, history_periods=periods, now=NOW)
        account, _ = stripe_account.build(data, api_key=SECRET_KEY, receiver_url="http://127.0.0.1:9/x")
        billing_history.plant(None, data, account)
        return len(account["objects"]["invoice"])

    none, two = invoices(0), invoices(2)
    subscribers = len(seed.build(seed=5, organisations=60, now=NOW).subscriptions)
    assert 0 < two - none <= 2 * subscribers


def test_a_replaced_sqlite_state_is_served_at_once(tmp_path):
    o.seed_ids("sqlite-reload")
    state = new_state([SECRET_KEY])
    add_objects(state, o.make_customer(email="first@example.com", created=T0))
    path = write_sqlite_state(tmp_path / "stripe.sqlite", state)
    assert is_sqlite_state(path)
    server, thread, base_url = start_emulator(path)
    try:
        client = client_for(base_url)
        assert [c.email for c in client.v1.customers.list().data] == ["first@example.com"]
        add_objects(state, o.make_customer(email="second@example.com", created=T0 + 1))
        state["faults"] = [{"status": 429, "count": 1, "path_prefix": "/v1/charges"}]
        write_sqlite_state(path, state)
        assert [c.email for c in client.v1.customers.list().data] == ["second@example.com", "first@example.com"]
        assert control(base_url, "GET", "health")["objects"]["customer"] == 2
        assert control(base_url, "GET", "faults")["faults"][0]["status"] == 429
    finally:
        stop(server, thread)


def test_a_listing_reads_its_page_from_an_index_not_the_table(tmp_path):
    """The query plans of the listing, cursor and customer= reads: index ranges, never a scan."""
    path = write_sqlite_state(tmp_path / "stripe.sqlite", build_rich_state())
    conn = sqlite3.connect(path)
    queries = [
        "SELECT body FROM objects WHERE type = 'event' AND (created, id) < (1, 'x') ORDER BY created DESC, id DESC LIMIT 32",
        "SELECT body FROM objects WHERE type = 'event' AND created >= 1 AND created <= 2 "
        "AND (created, id) > (1, 'x') ORDER BY created ASC, id ASC LIMIT 32",
        "SELECT body FROM objects WHERE type = 'charge' AND customer = 'cus_x' ORDER BY created DESC, id DESC LIMIT 32",
        "SELECT body FROM objects WHERE type = 'refund' AND parent = 'ch_x' ORDER BY created DESC, id DESC LIMIT 32",
    ]
    for sql in queries:
        plan = " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, (sql, plan)
