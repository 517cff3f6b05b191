"""The rows the Stripe mirror keeps for revenue_report (``revenue.rows``): a row builds exactly the
record its object builds, or the object gets no row (and is served as the object)."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest

from ops_lib import stripe_mirror
from ops_lib.revenue import data as d
from ops_lib.revenue import rows
from ops_lib.revenue.synthetic import SyntheticAccount

NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
KIND = {"subscriptions": "subscription", "invoices": "invoice", "charges": "charge",
        "balance_transactions": "balance_transaction"}
CUSTOMER_FIELDS = d._listed(d.Customer) + ("deleted",)


def stored(obj: dict, kind: str) -> tuple[dict, dict | None]:
    """The object as the mirror stores it (and, for a subscription, its customer, stored apart)."""
    obj = copy.deepcopy(obj)
    customer = None
    if kind == "subscriptions" and isinstance(obj.get("customer"), dict):
        customer = stripe_mirror._project(obj["customer"], "customer")
        obj["customer"] = customer["id"]
    return stripe_mirror._project(obj, KIND[kind]), customer


def served(obj: dict, customer: dict | None, kind: str) -> dict:
    """The object as a listing with revenue's fields serves it (its customer expanded)."""
    out = {k: obj[k] for k in d._LISTED_FIELDS[kind] if k in obj}
    if customer is not None:
        out["customer"] = {k: customer[k] for k in CUSTOMER_FIELDS if k in customer}
    return out


def row_of(obj: dict, customer: dict | None, kind: str) -> list | None:
    """The row the mirror keeps, through the JSON it keeps it as."""
    form = rows.FORMS[kind]
    made = form.make(obj, customer) if form.expands_customer else form.make(obj)
    return None if made is None else json.loads(json.dumps(made))


def project(compactor: d.Compactor, kind: str):
    return {"subscriptions": compactor.subscription, "invoices": compactor.invoice,
            "charges": compactor.charge, "balance_transactions": compactor.balance_transaction}[kind]


def assert_same_record_or_no_row(obj: dict, customer: dict | None, kind: str) -> bool:
    """True when the object has a row (and its record is the object's record)."""
    row = row_of(obj, customer, kind)
    if row is None:
        return False
    compactor = d.Compactor()
    from_object = project(compactor, kind)(served(obj, customer, kind))
    from_row = project(compactor, kind)(row)
    assert type(from_row) is type(from_object) and from_row == from_object, (kind, obj.get("id"))
    # (one compactor: the row's prices are the very objects the object's are, as lines_key reads them)
    for key in ("items", "lines"):
        listing = from_row.get(key)
        for a, b in zip((listing or {}).get("data") or [], (from_object.get(key) or {}).get("data") or []):
            assert a.get("price") is b.get("price")
    return True


@pytest.mark.parametrize("kind", sorted(KIND))
def test_a_row_builds_the_record_its_object_builds(kind):
    """Every rule of the synthetic account (currencies, intervals, tiered and metered prices,
    discounts, trials, pauses, prorations, every status): each object either has a row that
    builds the same record, or none; most have one."""
    account = SyntheticAccount(400, NOW, history_periods=3)
    made = total = 0
    for obj in account.listing(kind):
        total += 1
        made += assert_same_record_or_no_row(*stored(obj, kind), kind)
    assert total and made >= 0.6 * total, (kind, made, total)


def _odd_variants(kind: str) -> list[tuple[dict, dict | None]]:
    account = SyntheticAccount(40, NOW, history_periods=2)
    base = next(o for o in account.listing(kind) if row_of(*stored(o, kind), kind) is not None)
    obj, customer = stored(base, kind)
    out = []

    def variant(change, on_customer=False):
        o, c = copy.deepcopy(obj), copy.deepcopy(customer)
        change(c if on_customer else o)
        out.append((o, c))

    for key in list(obj):
        variant(lambda o, key=key: o.pop(key))
        variant(lambda o, key=key: o.__setitem__(key, None))
        variant(lambda o, key=key: o.__setitem__(key, {"id": "x_expanded", "object": "thing"}))
        variant(lambda o, key=key: o.__setitem__(key, 2 ** 70))
        variant(lambda o, key=key: o.__setitem__(key, 1.5))
        variant(lambda o, key=key: o.__setitem__(key, "Ünï \"odd\" \\ text"))
    listing = "items" if kind == "subscriptions" else "lines" if kind == "invoices" else None
    if listing:
        variant(lambda o: o[listing].pop("has_more"))
        variant(lambda o: o[listing].__setitem__("data", None))
        variant(lambda o: o[listing].__setitem__("data", []))
        variant(lambda o: o[listing]["data"].append("not an object"))
        entry = obj[listing]["data"][0]
        for key in list(entry):
            variant(lambda o, key=key: o[listing]["data"][0].pop(key))
            variant(lambda o, key=key: o[listing]["data"][0].__setitem__(key, None))
            variant(lambda o, key=key: o[listing]["data"][0].__setitem__(key, "price_as_an_id"))
        variant(lambda o: o[listing]["data"][0]["price"].__setitem__("metadata", {"plan": "Ünï", "other": 1}))
        variant(lambda o: o[listing]["data"][0]["price"].pop("recurring"))
    if kind == "invoices":
        variant(lambda o: o["lines"]["data"][0]["period"].pop("end"))
        variant(lambda o: o["status_transitions"].pop("paid_at"))
        variant(lambda o: o.__setitem__("total_discount_amounts", [{"amount": 100, "discount": "di_1"}]))
    if customer is not None:
        for key in list(customer):
            variant(lambda c, key=key: c.pop(key), on_customer=True)
            variant(lambda c, key=key: c.__setitem__(key, None), on_customer=True)
        variant(lambda c: c.__setitem__("deleted", True), on_customer=True)
        variant(lambda c: c.__setitem__("discount", {"id": "di_1", "coupon": {"id": "C", "percent_off": 10}}),
                on_customer=True)
        out.append((copy.deepcopy(obj), None))  # (a customer the mirror lacks: the id stays)
    return out


@pytest.mark.parametrize("kind", sorted(KIND))
def test_an_object_of_another_shape_gets_no_row_or_the_same_record(kind):
    """Absent keys, nulls, expanded references, huge and fractional numbers, text, lists cut or
    empty, prices that are ids, a deleted or discounted customer: never a row that builds another
    record."""
    variants = _odd_variants(kind)
    with_row = sum(assert_same_record_or_no_row(o, c, kind) for o, c in variants)
    assert 0 < with_row < len(variants), (kind, with_row, len(variants))


def test_a_form_that_cannot_describe_an_object_makes_no_row_rather_than_failing():
    make = stripe_mirror._row_maker(rows.FORMS["invoices"], [])
    assert make("not json") is None and make('{"id": 1}') is None and make("[1, 2]") is None
    expanding = stripe_mirror._row_maker(rows.FORMS["subscriptions"], [])
    assert expanding('{"id": "sub_1"}', None) is None and expanding("{}", "not json") is None


def test_subscriptions_billing_the_same_prices_and_quantities_share_one_tuple_of_items():
    """From rows and from objects alike: a subscription's priced items are one tuple for every
    subscription billing the same prices and quantities (half a million subscriptions on a few
    plans); an item whose price has no monthly amount keeps its id, and its subscription its own."""
    account = SyntheticAccount(400, NOW, history_periods=0)
    compactor = d.Compactor()
    records = []
    for obj in account.listing("subscriptions"):
        row = row_of(*stored(obj, "subscriptions"), "subscriptions")
        records.append(compactor.subscription(row if row is not None else served(*stored(obj, "subscriptions"),
                                                                                  "subscriptions")))
    by_bill: dict[tuple, set] = {}
    for sub in records:
        items = sub._items_data
        bill = tuple((item["price"].get("id"), item.get("quantity"), "id" in item) for item in items)
        by_bill.setdefault(bill, set()).add(id(items))
    shared = [bill for bill, tuples in by_bill.items() if not any(named for *_, named in bill)]
    assert shared and all(len(by_bill[bill]) == 1 for bill in shared)
    assert len({id(sub._items_data) for sub in records}) < len(records) / 4
    named = [sub for sub in records if any("id" in item for item in sub._items_data)]
    assert named and len({id(sub._items_data) for sub in named}) == len(named)


def test_a_timestamp_repeated_between_objects_is_one_object_and_the_table_of_them_stays_bounded(monkeypatch):
    """Two million objects at a million customers carry ~4M timestamps of ~1,400 distinct seconds:
    each second one int, whichever object (from rows or objects) holds it; where timestamps hardly
    repeat, the table of them starts over past ``MOMENTS_SHARED`` (an object's own stay one copy)."""
    account = SyntheticAccount(200, NOW, history_periods=1)
    compactor = d.Compactor()
    records = []
    for kind in ("subscriptions", "invoices", "charges", "balance_transactions"):
        for obj in account.listing(kind):
            row = row_of(*stored(obj, kind), kind)
            records.append(project(compactor, kind)(row if row is not None else served(*stored(obj, kind), kind)))
    held: dict[int, set] = {}
    for record in records:
        created = record.get("created")
        if type(created) is int and created > 256:
            held.setdefault(created, set()).add(id(created))
    assert any(len(records_of) for records_of in held.values())
    repeated = [moment for moment, objects in held.items() if len(objects) > 1]
    assert not repeated, f"{len(repeated)} timestamps held as more than one int"

    monkeypatch.setattr(d, "MOMENTS_SHARED", 10)
    compactor = d.Compactor()
    for obj in account.listing("invoices"):
        invoice = compactor.invoice(json.loads(json.dumps(served(*stored(obj, "invoices"), "invoices"))))
        periods = [line.get("period") or {} for line in invoice["lines"]["data"]]
        own = {invoice["created"], invoice["status_transitions"]["paid_at"],
               *(p.get("start") for p in periods), *(p.get("end") for p in periods)}
        assert len(compactor._same) <= 10 + len(own)
        assert all(p["start"] is invoice["created"] for p in periods if p.get("start") == invoice["created"])


def test_equal_invoice_lines_and_paid_ats_are_one_record_each():
    """One billing run's renewals bill the same price, amount, quantity and period: from rows and
    from objects alike, each such line is one record (and each equal list of lines one tuple), the
    invoices paid at the same second one ``status_transitions``; what differs stays apart."""
    account = SyntheticAccount(400, NOW, history_periods=2)
    compactor = d.Compactor()
    invoices = []
    for obj in account.listing("invoices"):
        for made in (row_of(*stored(obj, "invoices"), "invoices"), served(*stored(obj, "invoices"), "invoices")):
            if made is not None:
                invoices.append(compactor.invoice(json.loads(json.dumps(made))))
    lines_by_bill: dict[tuple, set] = {}
    for invoice in invoices:
        for line in invoice._lines_data:
            period = line.get("period") or {}
            bill = (line.get("type"), line.get("proration"), id(line.get("price")), line.get("amount"),
                    line.get("quantity"), period.get("start"), period.get("end"))
            lines_by_bill.setdefault(bill, set()).add(id(line))
    assert len(lines_by_bill) > 10 and all(len(records) == 1 for records in lines_by_bill.values())
    lists: dict[tuple, set] = {}
    for invoice in invoices:
        lists.setdefault(tuple(map(id, invoice._lines_data)), set()).add(id(invoice._lines_data))
    assert all(len(tuples) == 1 for tuples in lists.values()) and len(lists) < len(invoices)
    paid = {}
    for invoice in invoices:
        transitions = invoice._status_transitions
        if type(transitions._paid_at) is int:
            paid.setdefault(transitions._paid_at, set()).add(id(transitions))
    assert paid and all(len(records) == 1 for records in paid.values())
