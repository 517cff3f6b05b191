"""ops_lib.stripe_mirror: the local mirror behind the list_* helpers, against the emulator through
the real stripe SDK over HTTP. The emulator counts the requests it serves; Stripe's changes
between runs are written into its state file (it reloads it), as objects plus their events."""
from __future__ import annotations

import gc
import json
import math
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops_lib import stripe_mirror
from ops_lib.errors import StripeAccessError
from ops_lib.quota.accounts import CUSTOMER_FIELDS, SUBSCRIPTION_FIELDS
from ops_lib.stripe_api import (SUBSCRIPTION_ROW, customers_by_id, list_balance_transactions, list_charges,
                                list_customer_ids, list_customers, list_events, list_invoices, list_refunds,
                                list_subscription_rows,
                                list_subscriptions, make_client)
from ops_lib.stripe_emulator import add_objects, new_state, write_state
from ops_lib.stripe_emulator import objects as o

from .stripe_fixtures import SECRET_KEY, control, running_emulator

DAY = 86400
N_CUSTOMERS = 250  # three pages of customers, three of subscriptions
NOW = int(time.time())


def build_state() -> dict:
    o.seed_ids("opsbook-mirror-tests")
    state = new_state([SECRET_KEY, {"key": "rk_test_51OpsbookNoEventsKey000000000qrst",
                                    "permissions": ["customer", "subscription"]}])
    product = o.make_product(name="Pro", created=NOW - 400 * DAY)
    price = o.make_price(product=product, unit_amount=4900, interval="month", created=NOW - 400 * DAY)
    add_objects(state, product, price)
    for n in range(N_CUSTOMERS):
        created = NOW - 300 * DAY + n * 3600
        customer = o.make_customer(email=f"owner{n}@example.com", name=f"Org {n}", created=created)
        sub = o.make_subscription(customer=customer, items=[(price, 1)], created=created + 60,
                                  status="canceled" if n % 10 == 0 else "active",
                                  canceled_at=created + DAY if n % 10 == 0 else None)
        add_objects(state, customer, sub)
    for n in range(5):  # recent activity: events in the last days, one not yet delivered
        customer = state["objects"]["customer"][n]
        add_objects(state, o.make_event("customer.updated", customer, created=NOW - (5 - n) * DAY,
                                        pending_webhooks=1 if n == 4 else 0))
    return state


@pytest.fixture
def stripe_account(tmp_path, monkeypatch):
    """A fresh account in a running emulator, and a scratch OPSBOOK_HOME for the mirror."""
    monkeypatch.setenv("OPSBOOK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, "on")  # the emulator is mirrored only when asked
    state = build_state()
    with running_emulator(state, tmp_path) as (_server, base_url, path):
        yield Account(state, base_url, path)


class Account:
    def __init__(self, state, base_url, path):
        self.state, self.base_url, self.path = state, base_url, path

    def requests(self) -> dict:
        return control(self.base_url, "GET", "requests")

    def reset(self) -> None:
        control(self.base_url, "DELETE", "requests")

    def change(self, *objects, replace: dict | None = None, drop: set | None = None) -> None:
        """Stripe changes between runs: objects replaced (same id) or added, their events added."""
        for kind, items in self.state["objects"].items():
            self.state["objects"][kind] = [(replace or {}).get(x["id"], x) for x in items
                                           if x["id"] not in (drop or set())]
        add_objects(self.state, *objects)
        time.sleep(0.01)  # a new modification time for the emulator's reload
        write_state(self.path, self.state)

    def run(self, **options):
        """One runbook's read: a new client (a new run), what quota_audit lists."""
        client = make_client(SECRET_KEY, self.base_url, **options)
        self.reset()
        customers = list(list_customers(client, fields=CUSTOMER_FIELDS))
        subscriptions = list(list_subscriptions(client, status="all", fields=SUBSCRIPTION_FIELDS))
        return customers, subscriptions, self.requests()


def mirror_files(home: Path) -> list[Path]:
    return sorted((home / "stripe-mirror").glob("*.sqlite"))


def direct(account):
    return account.run(mirror=False)


# --------------------------------------------------------------------------- cold and warm


def test_a_cold_run_lists_each_kind_once_and_a_warm_run_reads_only_events(stripe_account, capsys):
    want_customers, want_subs, direct_calls = direct(stripe_account)
    assert direct_calls == {"/v1/customers": 3, "/v1/subscriptions": 3}

    customers, subs, cold = stripe_account.run()
    assert (customers, subs) == (want_customers, want_subs), "the mirror serves what Stripe lists"
    n = len(customers) + len(subs)
    assert sum(cold.values()) <= math.ceil(n / 100) + 10
    assert cold == {"/v1/events": 1, "/v1/customers": 3, "/v1/subscriptions": 3}
    out = capsys.readouterr().out
    assert f"Stripe: mirror listed {N_CUSTOMERS} customers, 4 requests" in out

    customers, subs, warm = stripe_account.run()
    assert (customers, subs) == (want_customers, want_subs)
    assert warm == {"/v1/events": 1}, "nothing changed: one request, to the events"
    assert "Stripe: mirror synced, 0 events applied, 1 request" in capsys.readouterr().out


def test_a_change_made_in_stripe_between_runs_is_seen_on_the_warm_run(stripe_account, capsys):
    stripe_account.run()  # cold
    objects = stripe_account.state["objects"]
    price = objects["price"][0]
    newcomer = o.make_customer(email="new@example.com", name="Newcomer", created=NOW - 60)
    new_sub = o.make_subscription(customer=newcomer, items=[(price, 3)], created=NOW - 50)
    renamed = {**objects["customer"][7], "name": "Renamed Org"}
    gone = objects["customer"][8]
    canceled = {**objects["subscription"][9], "status": "canceled", "canceled_at": NOW - 30}
    stripe_account.change(
        newcomer, new_sub,
        o.make_event("customer.created", newcomer, created=NOW - 60),
        o.make_event("customer.subscription.created", new_sub, created=NOW - 50),
        o.make_event("customer.updated", renamed, created=NOW - 40),
        o.make_event("customer.deleted", gone, created=NOW - 35),
        o.make_event("customer.subscription.deleted", canceled, created=NOW - 30),
        replace={renamed["id"]: renamed, canceled["id"]: canceled}, drop={gone["id"]})
    capsys.readouterr()

    customers, subs, warm = stripe_account.run()
    assert warm == {"/v1/events": 1}, "only what changed: the events since the cursor"
    assert "Stripe: mirror synced, 5 events applied, 1 request" in capsys.readouterr().out
    want_customers, want_subs, _ = direct(stripe_account)
    assert (customers, subs) == (want_customers, want_subs)
    by_id = {c["id"]: c for c in customers}
    assert newcomer["id"] in by_id and gone["id"] not in by_id
    assert by_id[renamed["id"]]["name"] == "Renamed Org"
    assert {s["id"]: s["status"] for s in subs}[canceled["id"]] == "canceled"
    assert new_sub["id"] in {s["id"] for s in subs}

    # A subscription listed with its customer expanded: the deleted one shows as deleted.
    client = make_client(SECRET_KEY, stripe_account.base_url)
    expanded = {s["id"]: s["customer"] for s in list_subscriptions(client, status="all",
                                                                    expand_customer=True)}
    assert expanded[new_sub["id"]]["name"] == "Newcomer"
    orphan = next(s for s in objects["subscription"] if s["customer"] == gone["id"])
    assert expanded[orphan["id"]] == {"id": gone["id"], "object": "customer", "deleted": True}


def test_kinds_without_events_are_listed_from_their_newest_when_events_arrived(stripe_account):
    client = make_client(SECRET_KEY, stripe_account.base_url)
    since = NOW - 30 * DAY
    assert list(list_refunds(client, since=since)) == []
    assert list(list_balance_transactions(client, since=since)) == []
    assert list(list_charges(client, since=since)) == []

    stripe_account.reset()
    again = make_client(SECRET_KEY, stripe_account.base_url)
    assert list(list_balance_transactions(again, since=since)) == []
    assert stripe_account.requests() == {"/v1/events": 1}, "no event: nothing new to list"

    charge = o.make_charge(amount=4900, customer=stripe_account.state["objects"]["customer"][3],
                           created=NOW - 20)
    refund = o.make_refund(charge=charge, created=NOW - 10)
    fee = o.make_balance_transaction(amount=4900, source=charge, created=NOW - 20)
    back = o.make_balance_transaction(amount=-4900, type="refund", source=refund, created=NOW - 10)
    refunded = {**charge, "refunded": True, "amount_refunded": 4900}
    stripe_account.change(refunded, refund, fee, back,
                          o.make_event("charge.succeeded", charge, created=NOW - 20),
                          o.make_event("charge.refunded", refunded, created=NOW - 10))
    stripe_account.reset()
    later = make_client(SECRET_KEY, stripe_account.base_url)
    assert [r["id"] for r in list_refunds(later, since=since)] == [refund["id"]]
    assert [b["id"] for b in list_balance_transactions(later, since=since)] == [back["id"], fee["id"]]
    assert [c["refunded"] for c in list_charges(later, since=since)] == [True]
    assert stripe_account.requests() == {"/v1/events": 1, "/v1/refunds": 1,
                                         "/v1/balance_transactions": 1}


def test_served_events_carry_their_current_delivery_state(stripe_account):
    client = make_client(SECRET_KEY, stripe_account.base_url)
    events = list(list_events(client, NOW - 10 * DAY, types=["customer.updated"]))
    assert [e["pending_webhooks"] for e in events] == [1, 0, 0, 0, 0]
    retried = {**events[0], "pending_webhooks": 0}  # Stripe's retry got its 2xx since
    stripe_account.change(replace={retried["id"]: retried})
    stripe_account.reset()
    later = make_client(SECRET_KEY, stripe_account.base_url)
    again = list(list_events(later, NOW - 10 * DAY, types=["customer.*"]))
    assert [e["pending_webhooks"] for e in again] == [0, 0, 0, 0, 0]
    assert again == list(list_events(make_client(SECRET_KEY, stripe_account.base_url, mirror=False),
                                     NOW - 10 * DAY, types=["customer.*"]))
    assert stripe_account.requests() == {"/v1/events": 3}  # sync, delivery refresh, the direct read


# --------------------------------------------------------------------------- gaps


def _edit_meta(home: Path, key: str, value) -> None:
    (path,) = mirror_files(home)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))


def test_a_mirror_last_synced_beyond_the_event_retention_is_listed_again(stripe_account, capsys):
    home = Path(os.environ["OPSBOOK_HOME"])
    want = direct(stripe_account)[:2]
    stripe_account.run()
    _edit_meta(home, "synced_at", time.time() - 31 * DAY)
    customers, subs, calls = stripe_account.run()
    assert (customers, subs) == want
    assert calls == {"/v1/events": 1, "/v1/customers": 3, "/v1/subscriptions": 3}, "a full re-list"
    assert "beyond Stripe's 30 days of events" in capsys.readouterr().err


def test_a_cursor_the_events_cannot_reach_back_to_is_a_gap(stripe_account, capsys):
    stripe_account.run()
    newest = max(stripe_account.state["objects"]["event"], key=lambda e: e["created"])
    renamed = {**stripe_account.state["objects"]["customer"][2], "name": "Changed while nobody looked"}
    stripe_account.change(replace={renamed["id"]: renamed}, drop={newest["id"]})  # its event is gone
    customers, _subs, calls = stripe_account.run()
    assert calls["/v1/customers"] == 3, "listed again"
    assert {c["id"]: c["name"] for c in customers}[renamed["id"]] == "Changed while nobody looked"
    assert "is no longer listed: events were missed" in capsys.readouterr().err


def test_changed_fields_list_that_kind_again(stripe_account, monkeypatch):
    stripe_account.run()
    monkeypatch.setitem(stripe_mirror.PROJECTIONS, "customer",
                        stripe_mirror.PROJECTIONS["customer"] + ("address",))
    _customers, _subs, calls = stripe_account.run()
    assert calls == {"/v1/events": 1, "/v1/customers": 3}, "customers only: subscriptions kept"


def test_refresh_lists_again_and_off_reads_stripe_directly(stripe_account, monkeypatch):
    home = Path(os.environ["OPSBOOK_HOME"])
    stripe_account.run()
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, "refresh")
    assert stripe_account.run()[2] == {"/v1/events": 1, "/v1/customers": 3, "/v1/subscriptions": 3}
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, "off")
    gc.collect()  # (the earlier runs' clients closed: a connection's last close checkpoints the file)
    before = mirror_files(home)[0].stat().st_mtime_ns
    assert stripe_account.run()[2] == {"/v1/customers": 3, "/v1/subscriptions": 3}
    assert mirror_files(home)[0].stat().st_mtime_ns == before, "off: the mirror is left alone"
    elsewhere = home.parent / "mirrors"
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, str(elsewhere))
    assert stripe_account.run()[2]["/v1/customers"] == 3
    assert len(list(elsewhere.glob("*.sqlite"))) == 1


def test_by_default_stripe_itself_is_mirrored_and_an_api_on_this_machine_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSBOOK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(stripe_mirror.MIRROR_VARIABLE, raising=False)
    assert stripe_mirror.of(make_client(SECRET_KEY)) is not None, "Stripe: one request a run instead of a listing"
    assert stripe_mirror.of(make_client(SECRET_KEY, "https://stripe-proxy.example.com")) is not None
    for local in ("http://127.0.0.1:12111", "http://localhost:12111"):
        assert stripe_mirror.of(make_client(SECRET_KEY, local)) is None, "no event for every change: read it"
        assert stripe_mirror.of(make_client(SECRET_KEY, local, mirror=True)) is not None, "unless asked"
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, "off")
    assert stripe_mirror.of(make_client(SECRET_KEY)) is None
    assert stripe_mirror.of(make_client(SECRET_KEY, "http://127.0.0.1:12111", mirror=True)) is None
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.sqlite")), "made lazily"


# --------------------------------------------------------------------------- the file


def test_a_corrupt_mirror_file_is_rebuilt(stripe_account, capsys):
    home = Path(os.environ["OPSBOOK_HOME"])
    want = direct(stripe_account)[:2]
    stripe_account.run()
    (path,) = mirror_files(home)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database\n" * 500)
    customers, subs, calls = stripe_account.run()
    assert (customers, subs) == want
    assert calls["/v1/customers"] == 3
    assert "could not be read" in capsys.readouterr().err
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert stripe_account.run()[2] == {"/v1/events": 1}, "and it is a mirror again"


def test_the_mirror_file_holds_no_secret_and_only_its_owner_reads_it(stripe_account):
    home = Path(os.environ["OPSBOOK_HOME"])
    stripe_account.run()
    client = make_client(SECRET_KEY, stripe_account.base_url)
    list(list_events(client, NOW - 10 * DAY))
    folder = home / "stripe-mirror"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.iterdir()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert SECRET_KEY not in path.name and SECRET_KEY[-12:] not in path.name
        raw = path.read_bytes()
        for secret in (SECRET_KEY, SECRET_KEY[8:], stripe_account.base_url):
            assert secret.encode() not in raw, (path.name, secret[:8])


def test_a_key_that_cannot_read_events_reads_stripe_directly(stripe_account, capsys):
    client = make_client("rk_test_51OpsbookNoEventsKey000000000qrst", stripe_account.base_url)
    stripe_account.reset()
    assert len(list(list_customers(client))) == N_CUSTOMERS
    assert stripe_account.requests() == {"/v1/events": 1, "/v1/customers": 3}
    assert "the key may not read events" in capsys.readouterr().err


def test_a_failing_sync_is_one_line_and_the_next_run_goes_on(stripe_account):
    stripe_account.run()
    control(stripe_account.base_url, "POST", "faults", {"status": 500, "count": None,
                                                        "path_prefix": "/v1/events"})
    try:
        with pytest.raises(StripeAccessError, match="while reading customers") as err:
            stripe_account.run(max_network_retries=0)
        assert "\n" not in str(err.value) and SECRET_KEY not in str(err.value)
    finally:
        control(stripe_account.base_url, "DELETE", "faults")
    assert stripe_account.run()[2] == {"/v1/events": 1}


def test_progress_is_printed_on_stderr_during_long_listings(stripe_account, monkeypatch, capsys):
    monkeypatch.setattr(stripe_mirror, "PROGRESS_EVERY_S", 0.0)
    stripe_account.run()
    err = capsys.readouterr().err
    assert "Stripe: mirror: listing customers: 3 pages, 250 objects" in err
    assert "Stripe: mirror: listing subscriptions: 1 pages, 100 objects" in err


RUN = """
import json, sys
from ops_lib.stripe_api import make_client, list_customers, list_subscriptions
client = make_client(sys.argv[1], sys.argv[2])
customers = list(list_customers(client))
subs = list(list_subscriptions(client, status="all", expand_customer=True))
print(json.dumps([len(customers), len(subs), sorted(c["id"] for c in customers)]))
"""


def test_two_runs_at_once_share_the_mirror_without_corrupting_it(stripe_account):
    home = Path(os.environ["OPSBOOK_HOME"])
    want = sorted(c["id"] for c in direct(stripe_account)[0])
    stripe_account.reset()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs = [subprocess.Popen([sys.executable, "-c", RUN, SECRET_KEY, stripe_account.base_url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(3)]
    results = [run.communicate(timeout=120) for run in runs]
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == [N_CUSTOMERS, N_CUSTOMERS, want]
    calls = stripe_account.requests()
    assert calls["/v1/customers"] == 3 and calls["/v1/subscriptions"] == 3, "listed once, shared"
    (path,) = mirror_files(home)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_listings_from_the_mirror_match_stripe_with_filters(stripe_account):
    mirrored = make_client(SECRET_KEY, stripe_account.base_url)
    plain = make_client(SECRET_KEY, stripe_account.base_url, mirror=False)
    customer = stripe_account.state["objects"]["customer"][11]["id"]
    price = stripe_account.state["objects"]["price"][0]["id"]
    since = NOW - 200 * DAY

    def project(obj):
        return stripe_mirror._project(obj, obj["object"])

    for call in (lambda c: list_subscriptions(c), lambda c: list_subscriptions(c, status="canceled"),
                 lambda c: list_subscriptions(c, status="ended", created_since=since),
                 lambda c: list_subscriptions(c, customer=customer),
                 lambda c: list_subscriptions(c, price=price, status="all"),
                 lambda c: list_customers(c, created_since=since),
                 lambda c: list_customers(c, email="owner12@example.com"),
                 lambda c: list_invoices(c, status="paid")):
        assert list(call(mirrored)) == [project(x) for x in call(plain)]


def test_another_account_behind_the_same_address_is_not_taken_for_the_mirrored_one(stripe_account,
                                                                                     capsys):
    """An emulator restarted on the same port with another state whose events reuse the ids (a
    seeded build): the cursor's event says something else there, so it is listed again."""
    stripe_account.run()
    newest = max(stripe_account.state["objects"]["event"], key=lambda e: e["created"])
    other = {**newest, "data": {"object": {**newest["data"]["object"], "name": "Someone else"}}}
    stripe_account.change(replace={newest["id"]: other})
    assert stripe_account.run()[2]["/v1/customers"] == 3
    assert "is no longer listed: events were missed" in capsys.readouterr().err
    delivered = {**other, "pending_webhooks": 0 if other["pending_webhooks"] else 1}
    stripe_account.change(replace={newest["id"]: delivered})
    assert stripe_account.run()[2] == {"/v1/events": 1}, "its delivery state alone changing is no gap"


# --------------------------------------------------------------------------- serving


ODD = "Ünïcødé ☃ \u2028 😀 \"quoted\" \\ back/slash \x01"


def odd_objects(state: dict) -> list[dict]:
    """Customers and subscriptions with every kind of JSON value where the checks read fields:
    absent keys, JSON nulls, nested objects and lists, unicode and escapes, integers beyond 2^53
    and 2^63, floats, booleans, empty strings and containers; created in the last hour (newest
    first: they lead the listings, in the first batch served)."""
    price = state["objects"]["price"][0]
    coupon = o.make_coupon(percent_off=12.5, duration="forever", created=NOW - 500 * DAY)
    base = o.make_customer(email="odd@example.com", name="Odd", created=NOW - 3000)
    absent = {k: v for k, v in base.items() if k not in ("email", "currency", "phone", "discount")}
    nulls = {**o.make_customer(created=NOW - 2900), "email": None, "name": None, "metadata": {},
             "description": None, "balance": None, "delinquent": None}
    rich = {**o.make_customer(email="ÿ@exämple.com", name=ODD, created=NOW - 2800),
            "description": "", "phone": "+1 (555) 010-0000", "balance": 2 ** 63 + 7,
            "delinquent": True, "livemode": False, "deleted": False,
            "discount": o.make_discount(coupon, start=NOW - 2800),
            "metadata": {"organization_id": "42", "nested": {"a": [1, 2.5, -0.0, 1e-7, 1.7976931348623157e308,
                                                                  True, False, None, [], {}, ""]},
                         "big": -(2 ** 64), "exact": 9007199254740993, ODD: ODD}}
    floats = {**o.make_customer(email="f@example.com", created=NOW - 2700), "balance": 0.1 + 0.2,
              "metadata": {"ratio": 3.0, "tiny": 5e-324, "neg": -12345678901234567890.5}}
    customers = [absent, nulls, rich, floats]
    subs = []
    for n, customer in enumerate(customers):
        sub = o.make_subscription(customer=customer, items=[(price, 2 ** 60 + n)], created=customer["created"] + 5,
                                  coupon=coupon if n % 2 else None, metadata={"n": str(n), ODD: ODD})
        subs.append(sub)
    subs[0] = {k: v for k, v in subs[0].items() if k not in ("status", "trial_end", "metadata")}
    subs[1].update(ended_at=None, canceled_at=None, cancel_at_period_end=None, status=None)
    subs[2].update(metadata={"deep": {"deeper": [{"x": ODD}, [[[2 ** 70]]]]}}, trial_end=NOW + 1.5)
    del subs[3]["customer"]  # nothing to expand
    orphan_owner = o.make_customer(email="gone@example.com", created=NOW - 2600)
    orphan = o.make_subscription(customer=orphan_owner, items=[(price, 1)], created=NOW - 2590)
    return customers + subs + [orphan_owner, orphan]


def _project(obj: dict, fields) -> dict:
    return {k: obj[k] for k in fields if k in obj}


def _canonical(objects: list[dict]) -> str:
    """Comparable even with NaN in them (NaN != NaN): the objects' JSON, key order aside."""
    return json.dumps(objects, sort_keys=True)


@pytest.fixture
def odd_mirror(stripe_account, monkeypatch):
    """The account with the odd objects added, mirrored cold, then the orphan's customer deleted
    (a tombstone: three keys); spied: whether SQLite projected."""
    odd = odd_objects(stripe_account.state)
    stripe_account.change(*odd)
    mirror = stripe_mirror.of(make_client(SECRET_KEY, stripe_account.base_url))
    list(mirror.listing("customer"))
    list(mirror.listing("subscription", expand_customer=True))
    gone = odd[-1]["customer"]
    stripe_account.change(o.make_event("customer.deleted", {"id": gone, "object": "customer", "deleted": True},
                                       created=NOW - 10), drop={gone})
    mirror._sync.at = float("-inf")  # a new run: synced before serving
    assert len(list(mirror.listing("customer"))) == N_CUSTOMERS + 5
    projected: list[bool] = []
    snapshot = stripe_mirror.Mirror._snapshot

    def spy(self, query, alternative=None, **how):
        taken = snapshot(self, query, alternative, **how)
        projected.append(taken.projected)
        return taken

    monkeypatch.setattr(stripe_mirror.Mirror, "_snapshot", spy)
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 40)  # several batches, the last one partial
    mirror.projected = projected
    mirror.odd = odd
    return mirror


FIELD_SETS = {
    "customer": [CUSTOMER_FIELDS, ("email",), ("description",), ("name", "balance", "discount"),
                 ("id", "id", "name"), ("id",), (), stripe_mirror.PROJECTIONS["customer"],
                 tuple(reversed(stripe_mirror.PROJECTIONS["customer"]))],
    "subscription": [SUBSCRIPTION_FIELDS, ("id",), ("status",), ("customer",), ("items", "metadata", "trial_end"),
                     (), stripe_mirror.PROJECTIONS["subscription"]],
}


def test_fields_projected_by_sqlite_are_the_whole_objects_projected_in_python(odd_mirror):
    mirror = odd_mirror
    for object_type, query in (("customer", {"where": {"deleted": 0}}), ("customer", {}), ("subscription", {}),
                               ("subscription", {"where": {"status": ("active", "canceled")},
                                                 "gte": NOW - 200 * DAY, "lt": NOW - 2700})):
        whole = list(mirror.listing(object_type, **query))
        assert whole
        for fields in FIELD_SETS[object_type]:
            mirror.projected.clear()
            served = list(mirror.listing(object_type, fields=fields, **query))
            assert mirror.projected == [True], "served by the SQL projection"
            assert served == [_project(x, fields) for x in whole], (object_type, query, fields)

    customers = {c["id"]: c for c in mirror.listing(
        "customer", where={"deleted": 0}, fields=CUSTOMER_FIELDS + ("balance", "delinquent"))}
    absent, nulls, rich, floats = (customers[c["id"]] for c in mirror.odd[:4])
    assert mirror.odd[-2]["id"] not in customers, "deleted: not listed"
    stone = next(c for c in mirror.listing("customer", fields=CUSTOMER_FIELDS)
                 if c["id"] == mirror.odd[-2]["id"])
    assert stone == {"id": mirror.odd[-2]["id"], "object": "customer", "deleted": True}
    assert "email" not in absent and nulls["email"] is None and nulls["name"] is None, "absent stays absent"
    assert rich["name"] == ODD and rich["balance"] == 2 ** 63 + 7 and rich["delinquent"] is True
    assert rich["metadata"]["exact"] == 9007199254740993 and rich["metadata"]["big"] == -(2 ** 64)
    assert rich["metadata"]["nested"]["a"][2:5] == [-0.0, 1e-7, 1.7976931348623157e308]
    assert floats["balance"] == 0.1 + 0.2 and floats["metadata"]["tiny"] == 5e-324
    assert type(rich["deleted"]) is bool and type(floats["metadata"]["ratio"]) is float


def test_the_quota_listings_from_the_mirror_are_what_stripe_lists(odd_mirror, stripe_account):
    customers, subs, calls = stripe_account.run()
    want_customers, want_subs, _ = direct(stripe_account)
    assert calls == {"/v1/events": 1}
    assert customers == want_customers and subs == want_subs
    assert {c["id"] for c in odd_mirror.odd[:4]} <= {c["id"] for c in customers}


def _rows_one_by_one(mirror, object_type: str, expand: bool) -> list[dict]:
    """The listing as it was served before batches and SQL projections: each row decoded alone."""
    join = " LEFT JOIN objects c ON c.type = 'customer' AND c.id = o.customer" if expand else ""
    with sqlite3.connect(mirror.path) as conn:
        rows = conn.execute(f"SELECT o.data{', c.data' if expand else ''} FROM objects o{join} WHERE o.type = ? "
                            "ORDER BY o.created DESC, o.id DESC", (object_type,)).fetchall()
    objects = []
    for row in rows:
        obj = json.loads(row[0])
        if expand and row[1] is not None:
            obj["customer"] = json.loads(row[1])
        objects.append(obj)
    return objects


def test_subscriptions_expanded_with_their_customers_are_the_rows_decoded_one_by_one(odd_mirror):
    mirror = odd_mirror
    gone = mirror.odd[-1]["customer"]
    served = list(mirror.listing("subscription", expand_customer=True))
    want = _rows_one_by_one(mirror, "subscription", expand=True)
    assert served == want
    by_id = {s["id"]: s for s in served}
    assert by_id[mirror.odd[-1]["id"]]["customer"] == {"id": gone, "object": "customer", "deleted": True}
    assert by_id[mirror.odd[6]["id"]]["customer"]["name"] == ODD
    assert "customer" not in by_id[mirror.odd[7]["id"]]
    for fields in FIELD_SETS["subscription"]:
        assert list(mirror.listing("subscription", expand_customer=True, fields=fields)) == [
            _project(x, fields) for x in want], fields
    assert list(mirror.listing("customer")) == _rows_one_by_one(mirror, "customer", expand=False)


def test_keep_reads_the_whole_object_even_when_fewer_fields_are_asked_for(odd_mirror):
    mirror = odd_mirror
    whole = list(mirror.listing("customer", where={"deleted": 0}))
    mirror.projected.clear()
    kept = list(mirror.listing("customer", where={"deleted": 0}, fields=("id",),
                               keep=lambda c: c.get("phone") is not None or "email" not in c))
    assert mirror.projected == [False], "projected in Python, after keep"
    assert kept == [{"id": c["id"]} for c in whole if c.get("phone") is not None or "email" not in c]
    assert len(kept) >= 2
    expanded = list(mirror.listing("subscription", expand_customer=True, fields=("id", "status"),
                                   keep=lambda s: isinstance(s.get("customer"), dict)
                                   and s["customer"].get("name") == "Odd"))
    assert expanded == [{"id": mirror.odd[4]["id"]}], "keep sees the customer expanded"


def _poison(mirror, object_type: str, object_id: str, key: str, value: float) -> None:
    """A row holding what Python's json writes and reads but SQLite's JSON parser refuses."""
    with sqlite3.connect(mirror.path) as conn:
        (data,) = conn.execute("SELECT data FROM objects WHERE type = ? AND id = ?",
                               (object_type, object_id)).fetchone()
        obj = json.loads(data)
        obj[key] = value
        conn.execute("UPDATE objects SET data = ? WHERE type = ? AND id = ?",
                     (json.dumps(obj, separators=(",", ":")), object_type, object_id))


@pytest.mark.parametrize("position", ["first batch", "later batch"])
def test_a_value_sqlite_cannot_parse_is_served_as_python_reads_it(odd_mirror, monkeypatch, capsys, position):
    mirror = odd_mirror
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 40)
    customers = list(mirror.listing("customer"))
    at = 3 if position == "first batch" else 150
    _poison(mirror, "customer", customers[at]["id"], "balance", float("nan"))
    _poison(mirror, "customer", customers[at + 60]["id"], "metadata", {"x": float("inf")})
    capsys.readouterr()
    whole = list(mirror.listing("customer"))
    assert whole[at]["balance"] != whole[at]["balance"] and whole[at + 60]["metadata"]["x"] == float("inf")
    mirror.projected.clear()
    served = list(mirror.listing("customer", fields=CUSTOMER_FIELDS + ("balance",)))
    assert mirror.projected == [position == "later batch"]
    assert _canonical(served) == _canonical([_project(c, CUSTOMER_FIELDS + ("balance",)) for c in whole])
    assert len(served) == len(whole)
    assert "could not be read" not in capsys.readouterr().err, "a value, not a damaged file: no rebuild"


def test_a_row_that_is_not_json_fails_where_it_is_after_the_objects_before_it(odd_mirror):
    mirror = odd_mirror
    customers = list(mirror.listing("customer"))
    with sqlite3.connect(mirror.path) as conn:
        conn.execute("UPDATE objects SET data = '{\"id\": ' WHERE type = 'customer' AND id = ?",
                     (customers[5]["id"],))
    for fields in (None, CUSTOMER_FIELDS):
        served = []
        with pytest.raises(json.JSONDecodeError):
            for obj in mirror.listing("customer", fields=fields):
                served.append(obj)
        assert served == [c if fields is None else _project(c, fields) for c in customers[:5]]


def test_a_listing_left_half_read_closes_its_snapshot(odd_mirror, monkeypatch):
    mirror = odd_mirror
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 40)
    want = list(mirror.listing("customer", fields=CUSTOMER_FIELDS))
    listing = mirror.listing("customer", fields=CUSTOMER_FIELDS)
    assert [next(listing) for _ in range(50)] == want[:50]
    listing.close()
    with sqlite3.connect(mirror.path, timeout=1) as conn:  # no snapshot left open: the WAL can be emptied
        assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert list(mirror.listing("customer", fields=CUSTOMER_FIELDS)) == want


def _row_of(sub: dict) -> tuple:
    """What a SUBSCRIPTION_ROW says of a listed subscription, written out from its fields."""
    customer = sub.get("customer")
    items = sub.get("items", {}).get("data", [])
    return (sub.get("id"), customer.get("id") if isinstance(customer, dict) else customer, sub.get("status"),
            sub.get("current_period_start"), sub.get("current_period_end"), tuple(i.get("price") for i in items))


def test_subscription_rows_from_the_mirror_are_what_stripe_lists(odd_mirror, stripe_account):
    # two subscriptions of ten items on two prices, the same prices in the same order: one tuple
    price = stripe_account.state["objects"]["price"][0]
    other = o.make_price(product=price["product"], unit_amount=100, interval="year", lookup_key="other",
                         created=NOW - 30)
    customer = stripe_account.state["objects"]["customer"][1]
    many = [o.make_subscription(customer=customer, items=[(other if i % 3 else price, i + 1) for i in range(10)],
                                created=NOW - 5 + n) for n in range(2)]
    stripe_account.change(other, *many, *(o.make_event("customer.subscription.created", sub, created=NOW - 5 + n)
                                         for n, sub in enumerate(many)))
    mirrored = make_client(SECRET_KEY, stripe_account.base_url)
    direct_client = make_client(SECRET_KEY, stripe_account.base_url, mirror=False)
    listed = list(list_subscriptions(direct_client, status="all"))
    odd_mirror.projected.clear()
    rows = list(list_subscription_rows(mirrored, status="all"))
    assert odd_mirror.projected == [True], "served from the mirror's rows, not decoded"
    assert rows == [_row_of(s) for s in listed] == list(list_subscription_rows(direct_client, status="all"))
    assert len(SUBSCRIPTION_ROW) == len(rows[0]) == 6
    by_prices = {}
    for row in rows:
        by_prices.setdefault(len(row[5]), set()).add(id(row[5]))
    assert len(by_prices[1]) == 1, "equal prices: one shared tuple"
    assert len(by_prices[10]) == 1 and [p["id"] for p in rows[0][5]] == [
        price["id"] if i % 3 == 0 else other["id"] for i in range(10)]
    by_id = {row[0]: row for row in rows}
    no_status, no_customer = odd_mirror.odd[4], odd_mirror.odd[7]
    assert by_id[no_status["id"]][2] is None and by_id[no_customer["id"]][1] is None
    assert isinstance(by_id[no_status["id"]][3], int) and by_id[no_status["id"]][5][0]["unit_amount"] == 4900
    # Stripe's status filters, as the mirror applies them ("ended": canceled or incomplete_expired;
    # none: everything but canceled)
    for status, wanted in (("active", {"active"}), ("canceled", {"canceled"}),
                           ("ended", {"canceled", "incomplete_expired"})):
        assert list(list_subscription_rows(mirrored, status=status)) == [r for r in rows if r[2] in wanted]
    assert list(list_subscription_rows(mirrored, status=None)) == [r for r in rows if r[2] != "canceled"]


def test_subscription_rows_past_the_shared_prices_bound_are_the_same_rows_unshared(odd_mirror, stripe_account,
                                                                                    monkeypatch):
    from ops_lib import stripe_api
    mirrored = make_client(SECRET_KEY, stripe_account.base_url)
    shared = list(list_subscription_rows(mirrored))
    monkeypatch.setattr(stripe_api, "SHARED_PRICES_AT_MOST", 0)
    unshared = list(list_subscription_rows(mirrored))
    assert unshared == shared and len({id(row[5]) for row in unshared}) == len(unshared)


def test_customer_ids_from_the_mirror_are_those_stripe_lists_without_the_deleted(odd_mirror, stripe_account):
    direct_client = make_client(SECRET_KEY, stripe_account.base_url, mirror=False)
    listed = [c["id"] for c in list_customers(direct_client)]
    odd_mirror.projected.clear()
    ids = list(list_customer_ids(make_client(SECRET_KEY, stripe_account.base_url)))
    assert odd_mirror.projected == [True], "the id column, no JSON"
    assert ids == listed == list(list_customer_ids(direct_client))
    assert odd_mirror.odd[-2]["id"] not in ids, "deleted (a tombstone in the mirror): not listed"
    assert len(ids) == N_CUSTOMERS + 4


@pytest.mark.parametrize("position", ["first batch", "later batch"])
def test_a_subscription_row_sqlite_cannot_parse_is_served_as_python_reads_it(odd_mirror, stripe_account, monkeypatch,
                                                                            position):
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 40)
    client = make_client(SECRET_KEY, stripe_account.base_url)
    subs = list(list_subscriptions(client, status="all"))
    at = 2 if position == "first batch" else 120
    _poison(odd_mirror, "subscription", subs[at]["id"], "current_period_end", float("nan"))
    odd_mirror.projected.clear()
    rows = list(list_subscription_rows(client))
    assert odd_mirror.projected == [True], "its row made again in Python, which reads NaN"
    whole = list(list_subscriptions(client, status="all"))
    assert _canonical(rows) == _canonical([_row_of(s) for s in whole]) and len(rows) == len(subs)
    assert rows[at][4] != rows[at][4], "NaN, as Python reads it"


def test_subscription_items_keep_what_the_runbooks_read_from_stripe_and_the_mirror_alike(stripe_account):
    mirrored = list(list_subscriptions(make_client(SECRET_KEY, stripe_account.base_url), status="all"))
    direct_ = list(list_subscriptions(make_client(SECRET_KEY, stripe_account.base_url, mirror=False), status="all"))
    whole = {s["id"]: s for s in stripe_account.state["objects"]["subscription"]}
    assert [s["items"] for s in mirrored] == [s["items"] for s in direct_]
    for sub in direct_:
        original = whole[sub["id"]]["items"]["data"]
        assert [i["id"] for i in sub["items"]["data"]] == [i["id"] for i in original]
        for item, before in zip(sub["items"]["data"], original):
            assert set(item) == set(stripe_mirror.ITEM_PROJECTION) & set(before)
            assert item["price"] == {k: v for k, v in before["price"].items() if k in stripe_mirror.PRICE_PROJECTION}
            assert {"unit_amount", "recurring", "metadata", "product"} <= set(item["price"])


def test_the_kept_price_fields_cover_what_quota_and_revenue_read():
    from ops_lib.quota import accounts
    assert set(accounts.ITEM_FIELDS) <= set(stripe_mirror.ITEM_PROJECTION)
    assert set(accounts.PRICE_FIELDS) <= set(stripe_mirror.PRICE_PROJECTION)
    # revenue_report's MRR (revenue.data.Compactor.price, revenue.mrr): items' id, quantity, price
    revenue_reads = ("id", "billing_scheme", "tiers_mode", "unit_amount", "unit_amount_decimal", "nickname",
                     "lookup_key", "recurring", "metadata", "product")
    assert set(revenue_reads) <= set(stripe_mirror.PRICE_PROJECTION)
    assert {"id", "quantity", "price"} <= set(stripe_mirror.ITEM_PROJECTION)


def _reading_threads() -> int:
    import threading
    return sum(t.name == "opsbook-mirror-read" for t in threading.enumerate())


def test_a_listing_read_ahead_in_batches_is_whole_and_in_order_and_leaves_no_thread(odd_mirror):
    whole = list(odd_mirror.listing("customer"))
    assert len(whole) > 3 * stripe_mirror.SERVE_BATCH, "several batches read ahead"
    assert [c["id"] for c in whole] == [c["id"] for c in odd_mirror.listing("customer", fields=("id",))]
    assert _reading_threads() == 0


def test_pages_split_objects_of_one_second_with_none_lost_or_repeated(stripe_account, monkeypatch):
    tied = [o.make_customer(email=f"tie{i}@example.com", created=NOW - 5000) for i in range(30)]
    stripe_account.change(*tied)
    mirror = stripe_mirror.of(make_client(SECRET_KEY, stripe_account.base_url))
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 7)  # page boundaries inside the tied second
    served = list(mirror.listing("customer"))
    assert served == _rows_one_by_one(mirror, "customer", expand=False)
    assert len({c["id"] for c in served}) == len(served)
    assert sorted(c["id"] for c in served if c["created"] == NOW - 5000) == sorted(c["id"] for c in tied)
    subscriptions = list(mirror.listing("subscription", expand_customer=True, fields=("id", "customer")))
    assert subscriptions == [{k: s[k] for k in ("id", "customer") if k in s}
                             for s in _rows_one_by_one(mirror, "subscription", expand=True)]


def test_pages_of_a_bounded_listing_are_its_rows_and_each_starts_at_the_last_one_served(odd_mirror, monkeypatch):
    mirror = odd_mirror
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 9)
    with sqlite3.connect(mirror.path) as conn:
        created = [c for (c,) in conn.execute("SELECT created FROM objects WHERE type = 'customer' "
                                              "ORDER BY created DESC, id DESC")]
    whole = _rows_one_by_one(mirror, "customer", expand=False)
    lo, hi = created[-1] + 1, created[0]  # (the oldest and the newest second left out)
    served = list(mirror.listing("customer", gte=lo, lt=hi, where={"deleted": (0, 1)}))
    assert served == [c for c, at in zip(whole, created) if lo <= at < hi] and len(served) > 3 * 9
    # A page after a row searches the index from that row: with `lt` also in the SQL, SQLite bounds
    # its search by `lt` and walks every row served again on every page.
    query = mirror._query("customer", lo, hi, {}, False)
    sql, args = query.page((hi - 1, "cus_z"))
    with sqlite3.connect(mirror.path) as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    assert "(created,id)<(?,?)" in plan.replace(" ", ""), plan


# --------------------------------------------------------------------------- row forms


def _names_row(sub: dict, customer: dict | None) -> list | None:
    """A test form: a subscription's id and status, and its customer's name (none without a status)."""
    if sub.get("status") is None:
        return None
    return [sub["id"], sub["status"], customer.get("name") if customer else None]


NAMES = stripe_mirror.RowForm("test.names.1", _names_row, expands_customer=True)
NAMES_ASKED = {"fields": ("id", "status", "customer"), "expand_customer": True, "customer_fields": ("id", "name")}


def _named(sub: dict) -> list:
    customer = sub["customer"] if isinstance(sub.get("customer"), dict) else None
    return [sub["id"], sub["status"], customer.get("name") if customer else None]


@pytest.mark.parametrize("bounds", [{}, {"gte": NOW - 296 * DAY, "lt": NOW - 2700}])
def test_a_listing_in_a_form_serves_rows_where_the_form_makes_one_and_objects_elsewhere_in_order(odd_mirror, bounds):
    """Over several pages, odd objects among them (no status, a null one, no customer, a deleted
    customer): a row for each object the form describes, the object itself for the others, in
    the listing's order; the same again when read warm."""
    objects = list(odd_mirror.listing("subscription", **NAMES_ASKED, **bounds))
    for _ in ("made", "kept"):
        odd_mirror.projected.clear()
        served = list(odd_mirror.listing("subscription", **NAMES_ASKED, **bounds, form=NAMES))
        assert odd_mirror.projected == [True]
        assert served == [_named(x) if x.get("status") is not None else x for x in objects]
        assert 3 * 40 < sum(type(x) is list for x in served) < len(served)


def test_a_row_is_made_again_when_its_object_or_its_customer_changes(stripe_account):
    mirror = stripe_mirror.of(make_client(SECRET_KEY, stripe_account.base_url))
    first = {row[0]: row for row in mirror.listing("subscription", **NAMES_ASKED, form=NAMES)}
    subs = stripe_account.state["objects"]["subscription"]
    customers = {c["id"]: c for c in stripe_account.state["objects"]["customer"]}
    renamed = {**customers[subs[1]["customer"]], "name": "Renamed ☃"}
    late = {**subs[2], "status": "past_due"}
    stripe_account.change(o.make_event("customer.updated", renamed, created=NOW - 20),
                          o.make_event("customer.subscription.updated", late, created=NOW - 10),
                          replace={renamed["id"]: renamed, late["id"]: late})
    mirror._sync.at = float("-inf")  # a new run: synced before serving
    second = {row[0]: row for row in mirror.listing("subscription", **NAMES_ASKED, form=NAMES)}
    assert second[subs[1]["id"]][2] == "Renamed ☃" and second[late["id"]][1] == "past_due"
    assert {k: v for k, v in second.items() if k not in (subs[1]["id"], late["id"])} == \
        {k: v for k, v in first.items() if k not in (subs[1]["id"], late["id"])}


def test_a_new_version_of_a_form_makes_every_row_again_and_an_object_it_fails_on_is_served_whole(stripe_account):
    mirror = stripe_mirror.of(make_client(SECRET_KEY, stripe_account.base_url))
    list(mirror.listing("subscription", **NAMES_ASKED, form=NAMES))

    def picky(sub, customer):
        if sub["id"].endswith(("0", "5")):
            raise ValueError("a form with a bug")
        return [sub["id"]]

    other = stripe_mirror.RowForm("test.other_names.1", lambda sub, customer: [sub["id"]], True)
    list(mirror.listing("subscription", **NAMES_ASKED, form=other))
    served = list(mirror.listing("subscription", **NAMES_ASKED, form=stripe_mirror.RowForm("test.names.2", picky, True)))
    assert all(x == [x[0]] if type(x) is list else x["id"].endswith(("0", "5")) for x in served)
    assert any(type(x) is dict for x in served) and any(type(x) is list for x in served)
    with sqlite3.connect(mirror.path) as conn:
        forms = dict(conn.execute("SELECT form, count(*) FROM object_rows GROUP BY form"))
    assert forms == {"test.names.2": N_CUSTOMERS, "test.other_names.1": N_CUSTOMERS}, \
        "the old version's rows dropped, another form's kept"


def test_a_form_serves_only_listings_its_rows_can_answer(odd_mirror):
    """Filtered by a column, read by `keep`, or without the customer the form expands: objects."""
    for asked in ({"where": {"status": "active"}}, {"keep": lambda sub: True},
                  {"expand_customer": False}):
        served = list(odd_mirror.listing("subscription", **{**NAMES_ASKED, **asked}, form=NAMES))
        assert served and all(type(x) is dict for x in served), asked
    for bad in ("bad name'; --", "no_version", "test.names.", ".1"):
        with pytest.raises(ValueError):
            stripe_mirror.RowForm(bad, _names_row)


def test_a_listing_left_after_its_first_object_stops_its_reading_thread(odd_mirror):
    listing = odd_mirror.listing("customer", fields=("id", "email"))
    next(listing)
    assert _reading_threads() == 1
    listing.close()
    assert _reading_threads() == 0


def test_customers_read_by_id_are_the_same_from_the_mirror_and_from_stripe(stripe_account, monkeypatch):
    from ops_lib import stripe_api
    customers = stripe_account.state["objects"]["customer"]
    ids = [customers[3]["id"], customers[7]["id"], "cus_nobody", customers[3]["id"]]
    fields = ("id", "email", "created")
    mirrored = list(customers_by_id(make_client(SECRET_KEY, stripe_account.base_url), ids, fields=fields))
    stripe_account.reset()
    direct_ = list(customers_by_id(make_client(SECRET_KEY, stripe_account.base_url, mirror=False), ids, fields=fields))
    want = [{k: c[k] for k in fields} for c in (customers[3], customers[7])]
    key = lambda c: c["id"]  # noqa: E731
    assert sorted(mirrored, key=key) == sorted(direct_, key=key) == sorted(want, key=key)
    assert stripe_account.requests()["/v1/customers/"+customers[3]["id"]] == 1, "one request each (twice asked: once)"
    monkeypatch.setattr(stripe_api, "RETRIEVE_AT_MOST", 1)
    stripe_account.reset()
    many = list(customers_by_id(make_client(SECRET_KEY, stripe_account.base_url, mirror=False), ids, fields=fields))
    assert sorted(many, key=key) == sorted(want, key=key)
    assert stripe_account.requests() == {"/v1/customers": math.ceil(N_CUSTOMERS / 100)}, "more than a few: one listing"


def test_invoice_lines_keep_what_the_runbooks_read_from_stripe_and_the_mirror_alike(stripe_account):
    sub = stripe_account.state["objects"]["subscription"][0]
    stripe_account.change(o.make_invoice(customer=sub["customer"], subscription=sub, created=NOW - 5))
    mirrored = list(list_invoices(make_client(SECRET_KEY, stripe_account.base_url)))
    direct_ = list(list_invoices(make_client(SECRET_KEY, stripe_account.base_url, mirror=False)))
    assert any(i["lines"]["data"] for i in direct_)
    assert [i["lines"] for i in mirrored] == [i["lines"] for i in direct_]
    whole = {i["id"]: i for i in stripe_account.state["objects"]["invoice"]}
    for invoice in direct_:
        for line, before in zip(invoice["lines"]["data"], whole[invoice["id"]]["lines"]["data"], strict=True):
            assert set(line) == set(stripe_mirror.LINE_PROJECTION) & set(before)
            assert {"type", "amount", "quantity", "period", "price"} <= set(line)
            assert line["price"] == {k: v for k, v in before["price"].items() if k in stripe_mirror.PRICE_PROJECTION}


def test_an_expanded_customer_keeps_the_fields_asked_for_from_stripe_and_the_mirror_alike(stripe_account):
    asked = {"status": "all", "expand_customer": True, "fields": ("id", "customer", "status"),
             "customer_fields": ("id", "object", "name")}
    mirrored = list(list_subscriptions(make_client(SECRET_KEY, stripe_account.base_url), **asked))
    direct_ = list(list_subscriptions(make_client(SECRET_KEY, stripe_account.base_url, mirror=False), **asked))
    assert mirrored == direct_ and len(direct_) == len(stripe_account.state["objects"]["subscription"])
    names = {c["id"]: c["name"] for c in stripe_account.state["objects"]["customer"]}
    for sub in direct_:
        assert sub["customer"] == {"id": sub["customer"]["id"], "object": "customer",
                                   "name": names[sub["customer"]["id"]]}


def test_quota_reads_a_mirrors_subscriptions_in_background_and_stripes_only_when_the_join_asks(stripe_account,
                                                                                              monkeypatch):
    from ops_lib import quota, stripe_api
    from ops_lib.quota import accounts
    backgrounded: list = []

    def spy(listing, name="opsbook-listing"):
        backgrounded.append(name)
        return stripe_api.in_background(listing, name)

    monkeypatch.setattr(accounts, "in_background", spy)
    direct_client = make_client(SECRET_KEY, stripe_account.base_url, mirror=False)
    stripe_account.reset()
    streamed = quota.stream_stripe(direct_client)
    assert backgrounded == [] and "/v1/subscriptions" not in stripe_account.requests(), "nothing asked of Stripe yet"
    want = list(streamed["subscription_rows"])
    assert stripe_account.requests()["/v1/subscriptions"] == 3

    mirrored = quota.stream_stripe(make_client(SECRET_KEY, stripe_account.base_url))
    assert backgrounded == ["opsbook-stripe-subscriptions"], "the mirror's rows are read from the call on"
    assert list(mirrored["subscription_rows"]) == want and len(want) == N_CUSTOMERS
