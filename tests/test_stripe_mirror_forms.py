"""The Stripe mirror's row forms (stripe_mirror.RowForm, revenue.rows): a listing asked
for a form serves what the same listing without it serves, once revenue's Compactor has built its
records; never stale, lost, repeated or failing rows."""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from ops_lib import stripe_mirror
from ops_lib.revenue import data as d
from ops_lib.revenue import rows
from ops_lib.stripe_api import make_client
from ops_lib.stripe_emulator import objects as o

from tests.stripe_fixtures import SECRET_KEY
from tests.test_revenue_rows import CUSTOMER_FIELDS, project
from tests.test_stripe_mirror import DAY, NOW, odd_mirror, stripe_account  # noqa: F401 (fixtures)

KIND = {"subscriptions": "subscription", "invoices": "invoice", "charges": "charge",
        "balance_transactions": "balance_transaction"}


def asked(kind: str) -> dict:
    """What revenue_report's fetch asks the mirror for (``data.fetch_stripe``, compact)."""
    out = {"fields": d._LISTED_FIELDS[kind]}
    if kind == "subscriptions":
        out.update(expand_customer=True, customer_fields=CUSTOMER_FIELDS)
    return out


def served(mirror, kind: str, form: bool, **bounds) -> list:
    return list(mirror.listing(KIND[kind], **asked(kind), **bounds,
                               **({"form": rows.FORMS[kind]} if form else {})))


def records(mirror, kind: str, form: bool, **bounds) -> list:
    build = project(d.Compactor(), kind)
    return [build(x) for x in served(mirror, kind, form, **bounds)]


def assert_same_records(mirror, kind: str, **bounds) -> list:
    """The records built from the form's listing are those built from the objects' listing;
    returns what the form's listing served."""
    with_form = served(mirror, kind, True, **bounds)
    build = project(d.Compactor(), kind)
    want = records(mirror, kind, False, **bounds)
    got = [build(x) for x in with_form]
    assert [r.get("id") for r in got] == [r.get("id") for r in want]  # (a balance transaction keeps none)
    assert got == want
    return with_form


def new_run(mirror) -> None:
    mirror._sync.at = float("-inf")  # a new run: synced before serving


def mirror_of(account):
    return stripe_mirror.of(make_client(SECRET_KEY, account.base_url))


def add_billing(account, n: int = 60) -> dict:
    """Invoices (one cut short: ``has_more``), charges and balance transactions for `n` of the
    account's subscriptions, many of them created in one second (ties across pages)."""
    state = account.state
    made: dict[str, list] = {"invoice": [], "charge": [], "balance_transaction": []}
    for i, sub in enumerate(state["objects"]["subscription"][:n]):
        created = NOW - 3 * DAY if i % 3 else NOW - 3 * DAY - i * 60
        charge = o.make_charge(amount=4900, customer=sub["customer"], created=created,
                               status="failed" if i % 7 == 0 else "succeeded")
        invoice = o.make_invoice(customer=sub["customer"], subscription=sub, created=created, charge=charge,
                                 paid_at=created + 10 if i % 7 else None, status="paid" if i % 7 else "open")
        if i == 5:
            invoice["lines"]["has_more"] = True
        fee = o.make_balance_transaction(amount=4900, source=charge, created=created)
        made["invoice"].append(invoice)
        made["charge"].append(charge)
        made["balance_transaction"].append(fee)
    account.change(*(x for kind in made.values() for x in kind))
    return made


@pytest.mark.parametrize("batch", [1000, 4])
def test_every_revenue_form_serves_the_records_its_objects_build_in_bounds_and_pages(stripe_account, monkeypatch,
                                                                                     batch):
    """Subscriptions (customers expanded), invoices, charges and balance transactions, whole and
    bounded (gte, lt, both; a bound inside the tied second), pages of 4 splitting the tied second:
    the same records, in the same order, as the objects' listing; most served as rows (made 7 a
    transaction with the small pages)."""
    add_billing(stripe_account)
    mirror = mirror_of(stripe_account)
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", batch)
    if batch < 10:
        monkeypatch.setattr(stripe_mirror, "FILL_BATCH", 7)  # (rows made in many transactions)
    for kind in KIND:
        for bounds in ({}, {"gte": NOW - 3 * DAY}, {"lt": NOW - 3 * DAY}, {"gte": NOW - 3 * DAY - 1800, "lt": NOW},
                       {"gte": NOW - 3 * DAY, "lt": NOW - 3 * DAY + 1}):
            if kind == "subscriptions" and bounds:
                continue  # (revenue lists every subscription)
            out = assert_same_records(mirror, kind, **bounds)
            assert out and sum(type(x) is list for x in out) >= len(out) // 2, (kind, bounds)


def test_rows_follow_every_write_of_their_objects_and_customers(stripe_account):
    """After the rows are made, a warm run applies: an invoice paid, one deleted, a charge refunded,
    new balance transactions (caught up, no events of their own), a subscription moved to another
    customer and that customer renamed, a customer deleted then created again under its id, and a
    subscription of a customer the mirror lacks (fetched): every kind's records are the objects'."""
    made = add_billing(stripe_account, n=20)
    mirror = mirror_of(stripe_account)
    bounds = {kind: {} if kind == "subscriptions" else {"gte": NOW - 30 * DAY} for kind in KIND}
    for kind in KIND:
        assert_same_records(mirror, kind, **bounds[kind])
    objects = stripe_account.state["objects"]
    subs, customers, price = objects["subscription"], objects["customer"], objects["price"][0]
    paid = {**made["invoice"][0], "status": "paid", "status_transitions": {
        **made["invoice"][0]["status_transitions"], "paid_at": NOW - 100}}
    deleted = made["invoice"][1]
    refunded = {**made["charge"][2], "refunded": True, "amount_refunded": 4900, "status": "succeeded"}
    fee = o.make_balance_transaction(amount=-4900, type="refund", source=refunded, created=NOW - 90)
    moved = {**subs[3], "customer": customers[40]["id"]}
    renamed = {**customers[40], "name": "Moved here ☃"}
    gone = customers[4]
    back = {**gone, "name": "Back again"}
    stranger = o.make_customer(email="stranger@example.com", name="Stranger", created=NOW - 80)
    newcomer = o.make_subscription(customer=stranger, items=[(price, 2)], created=NOW - 70)
    stripe_account.change(
        fee, stranger, newcomer,
        o.make_event("invoice.paid", paid, created=NOW - 100),
        o.make_event("invoice.deleted", deleted, created=NOW - 95),
        o.make_event("charge.refunded", refunded, created=NOW - 90),
        o.make_event("customer.subscription.updated", moved, created=NOW - 85),
        o.make_event("customer.updated", renamed, created=NOW - 84),
        o.make_event("customer.deleted", {**gone, "deleted": True}, created=NOW - 83),
        o.make_event("customer.created", back, created=NOW - 82),
        o.make_event("customer.subscription.created", newcomer, created=NOW - 70),  # (no customer.created)
        replace={paid["id"]: paid, refunded["id"]: refunded, moved["id"]: moved, renamed["id"]: renamed,
                 gone["id"]: back},
        drop={deleted["id"]})
    new_run(mirror)
    for kind in KIND:
        out = assert_same_records(mirror, kind, **bounds[kind])
        by_id = {x[0] if type(x) is list else x["id"]: x for x in out}
        if kind == "subscriptions":
            assert by_id[moved["id"]][-1] == [customers[40]["id"], "Moved here ☃"]
            assert by_id[subs[4]["id"]][-1] == [gone["id"], "Back again"]
            assert by_id[newcomer["id"]][-1] == [stranger["id"], "Stranger"]
        if kind == "invoices":
            assert deleted["id"] not in by_id and by_id[paid["id"]][1] == "paid"
        if kind == "balance_transactions":
            assert fee["id"] in by_id


def _set(mirror, object_type: str, object_id: str, **values) -> None:
    """An object's stored JSON changed in place (an UPDATE of ``objects``: its row is dropped)."""
    with sqlite3.connect(mirror.path) as conn:
        (data,) = conn.execute("SELECT data FROM objects WHERE type = ? AND id = ?", (object_type, object_id)).fetchone()
        conn.execute("UPDATE objects SET data = ? WHERE type = ? AND id = ?",
                     (json.dumps({**json.loads(data), **values}, separators=(",", ":")), object_type, object_id))


@pytest.mark.parametrize("position", [2, 30])
def test_an_object_sqlite_cannot_parse_among_rows_turns_the_rest_to_objects_with_the_same_records(
        stripe_account, monkeypatch, position):
    """Pages of 7 over object_rows: an object without a row (a discount) whose JSON SQLite refuses
    (NaN, as Python writes it) in the first page or a later one; another with NaN in its row. The
    listing goes on from the last key with whole objects: the same records (NaN compared by repr),
    none lost or repeated."""
    mirror = mirror_of(stripe_account)
    monkeypatch.setattr(stripe_mirror, "SERVE_BATCH", 7)
    ids = [x[0] for x in served(mirror, "subscriptions", True)]
    _set(mirror, "subscription", ids[position], discount={"id": "di_1", "coupon": {"id": "C", "percent_off": float("nan")}})
    _set(mirror, "subscription", ids[position - 1], trial_end=float("nan"))
    with_form = served(mirror, "subscriptions", True)
    assert type(with_form[position]) is dict
    assert (type(with_form[0]) is list) == (position >= 7), "rows up to the page SQLite refused"
    build = project(d.Compactor(), "subscriptions")
    want = records(mirror, "subscriptions", False)
    assert repr([build(x) for x in with_form]) == repr(want)
    assert [r["id"] for r in want] == ids


# --------------------------------------------------------------------------- bugs


def test_an_interrupt_while_rows_are_made_stops_the_listing_and_keeps_the_mirror(stripe_account, capsys):
    """Ctrl-C (Jupyter's interrupt) while the mirror makes a form's rows — at a million objects the
    fill takes a while, its time mostly in the form's Python `make` — raises KeyboardInterrupt there.
    It must stop the listing, and leave the mirror as it is. (It is swallowed by SQLite's function
    call as "user-defined function raised exception", an OperationalError that `_prepared` takes
    for a corrupt file: the mirror is deleted and listed again from Stripe, and the run goes on.)"""
    mirror = mirror_of(stripe_account)
    list(mirror.listing("subscription", **asked("subscriptions")))  # mirrored, cold
    made: list[str] = []

    def interrupted(sub, customer):
        made.append(sub["id"])
        if len(made) == 5:
            raise KeyboardInterrupt  # (what SIGINT raises in the Python code running then)
        return rows.subscription_row(sub, customer)

    form = stripe_mirror.RowForm("review.interrupted.1", interrupted, expands_customer=True)
    capsys.readouterr()
    stripe_account.reset()
    with pytest.raises(KeyboardInterrupt):
        list(mirror.listing("subscription", **asked("subscriptions"), form=form))
    assert "rebuilding" not in capsys.readouterr().err, "the mirror file was deleted"
    assert "/v1/subscriptions" not in stripe_account.requests(), "listed again from Stripe"


def test_odd_subscriptions_and_customers_get_the_records_their_objects_get(odd_mirror):
    """The odd objects (no status, null fields, no customer, a deleted customer, a discount,
    huge and fractional numbers, unicode), pages of 40: rows or objects, the same records."""
    out = assert_same_records(odd_mirror, "subscriptions")
    by_id = {x[0] if type(x) is list else x["id"]: x for x in out}
    assert type(by_id[odd_mirror.odd[-1]["id"]]) is dict, "its customer deleted: no row"
    assert sum(type(x) is list for x in out) > len(out) // 2


def test_a_customer_another_run_renames_is_in_the_rows_this_run_serves(stripe_account):
    """Run A makes the rows; run B (another client on the same file) syncs a customer's new name and
    lists without the form; run A's next listing serves the new name."""
    first = mirror_of(stripe_account)
    assert_same_records(first, "subscriptions")
    customer = stripe_account.state["objects"]["customer"][12]
    renamed = {**customer, "name": "Renamed by another run"}
    stripe_account.change(o.make_event("customer.updated", renamed, created=NOW - 5), replace={renamed["id"]: renamed})
    other = mirror_of(stripe_account)
    assert len(served(other, "subscriptions", False)) == 250
    new_run(first)
    out = assert_same_records(first, "subscriptions")
    assert [x[-1] for x in out if type(x) is list and x[-1][0] == customer["id"]] == [[customer["id"], renamed["name"]]]


def _id_and_customer_name(obj: dict, customer: dict | None) -> list:
    return [obj["id"], customer.get("name") if customer else None]


@pytest.mark.parametrize("object_type", ["invoice", "charge"])
def test_a_form_expanding_the_customer_serves_objects_but_for_subscriptions(stripe_account, object_type):
    """The triggers drop, when a customer is written, the rows of the subscriptions naming it (the
    one kind whose listings expand it): an invoice's or a charge's listing in such a form is served
    as objects, its customer's current name with it."""
    add_billing(stripe_account, n=5)
    mirror = mirror_of(stripe_account)
    form = stripe_mirror.RowForm("review.customer-name.1", _id_and_customer_name, expands_customer=True)
    asked_ = {"fields": ("id", "customer"), "expand_customer": True, "customer_fields": ("id", "name")}
    assert all(type(x) is dict for x in mirror.listing(object_type, **asked_, form=form))
    customer = stripe_account.state["objects"]["customer"][0]
    renamed = {**customer, "name": "Renamed ☃"}
    stripe_account.change(o.make_event("customer.updated", renamed, created=NOW - 5), replace={renamed["id"]: renamed})
    new_run(mirror)
    objects = list(mirror.listing(object_type, **asked_))
    assert list(mirror.listing(object_type, **asked_, form=form)) == objects
    assert ["Renamed ☃"] == [x["customer"]["name"] for x in objects if x["customer"]["id"] == customer["id"]]


def test_another_run_lists_between_the_batches_of_a_long_fill(stripe_account, monkeypatch):
    """A first fill at a million objects takes minutes: another run (another client on the same file)
    gets the mirror between two of its batches instead of waiting for all of them."""
    monkeypatch.setattr(stripe_mirror, "FILL_BATCH", 20)
    mirror, other = mirror_of(stripe_account), mirror_of(stripe_account)
    list(mirror.listing("subscription", **asked("subscriptions")))  # mirrored, cold
    moments: dict[str, float] = {}
    lister = threading.Thread(target=lambda: (list(other.listing("customer", fields=("id",))),
                                              moments.setdefault("other listed", time.monotonic())))

    def slow(sub, customer):
        if not lister.is_alive() and "other listed" not in moments:
            lister.start()
        time.sleep(0.002)
        moments["last row made"] = time.monotonic()
        return [sub["id"]]

    served = list(mirror.listing("subscription", **asked("subscriptions"),
                                 form=stripe_mirror.RowForm("test.slow.1", slow, expands_customer=True)))
    lister.join(10)
    assert len(served) == 250 and all(type(x) is list for x in served)
    assert moments["other listed"] < moments["last row made"]
