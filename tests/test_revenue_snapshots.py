"""The book's snapshots, totals, movements and first MRR from arrays (``revenue.snapshots``) against
the one-subscription path (``MRRBook.at``) on hand-made edge cases: several subscriptions of one
customer in one currency, an invoice in another currency than the subscription's, invoices of the
same start and creation, grace, trials, incomplete and canceled subscriptions, each kind of
discount; an empty book and a single subscription; and ``data.columns``."""
from __future__ import annotations

from datetime import datetime, timezone
from fractions import Fraction

from ops_lib.revenue import data as rdata, movements, mrr
from ops_lib.stripe_emulator import objects as o

DAY = 86_400


def ts(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def price(amount, currency="usd", interval="month", **kw):
    return o.make_price(product="prod_x", unit_amount=amount, interval=interval, currency=currency,
                        created=ts(2020, 1, 1), **kw)


def sub(customer, items, *, status="active", created=ts(2026, 3, 10), start=ts(2026, 11, 10), **kw):
    return o.make_subscription(customer=customer, items=items, status=status, created=created,
                               current_period_start=start, **kw)


def invoice(s, start, end, *, status="paid", amount=None, currency=None, created=None):
    item = s["items"]["data"][0]
    line = o.make_invoice_line(item["price"], item.get("quantity", 1), period=(start, end), subscription=s["id"],
                               subscription_item=item["id"], amount=amount)
    out = o.make_invoice(customer=s["customer"], subscription=s["id"], lines=[line], status=status,
                         created=start if created is None else created)
    if currency:
        out["currency"] = currency
    return out


def edge_cases() -> mrr.MRRBook:
    subs, invoices = [], []
    # two subscriptions of one customer in one currency: their sum
    a1, a2 = sub("cus_A", [(price(2_900), 2)]), sub("cus_A", [price(9_900)], created=ts(2026, 6, 1))
    # invoiced in EUR before the subscription moved to USD: another (customer, currency)
    b = sub("cus_B", [price(5_000)], created=ts(2026, 5, 1))
    invoices += [invoice(b, ts(2026, 5, 1), ts(2026, 6, 1), currency="eur", amount=4_000),
                 invoice(b, ts(2026, 6, 1), ts(2026, 7, 1))]
    # two invoices of the same start and creation, covering different spans: the first listed counts
    c = sub("cus_C", [price(1_000)], created=ts(2026, 7, 1))
    invoices += [invoice(c, ts(2026, 7, 1), ts(2026, 7, 20), amount=700),
                 invoice(c, ts(2026, 7, 1), ts(2026, 8, 1), amount=1_500)]
    # unpaid: within the grace, then beyond it; past_due on its current period
    d = sub("cus_D", [price(3_000)], status="past_due", created=ts(2026, 8, 1), start=ts(2026, 10, 25))
    invoices += [invoice(d, ts(2026, 8, 1), ts(2026, 10, 25), status="open")]
    # canceled, trialing (then active), incomplete, paused collection
    e = sub("cus_E", [price(4_000)], status="canceled", created=ts(2026, 4, 1), start=ts(2026, 8, 1))
    e["ended_at"] = ts(2026, 8, 15)
    f = sub("cus_F", [price(2_000)], created=ts(2026, 9, 1), start=ts(2026, 10, 15))
    f["trial_start"], f["trial_end"] = ts(2026, 9, 1), ts(2026, 9, 15)
    g = sub("cus_G", [price(2_000)], status="incomplete", created=ts(2026, 10, 2), start=ts(2026, 10, 2))
    h = sub("cus_H", [price(2_000)], created=ts(2026, 2, 1))
    h["pause_collection"] = {"behavior": "void"}
    # discounts: forever on the customer, repeating until its end, once in the current period, once before it
    forever = o.make_coupon(percent_off=25, duration="forever", id="F25")
    repeating = o.make_coupon(amount_off=500, currency="usd", duration="repeating", duration_in_months=2, id="R5")
    once = o.make_coupon(percent_off=50, duration="once", id="O50")
    i = sub("cus_I", [price(2_000)])
    i["customer"] = o.make_customer(id="cus_I", name="Customer I", discount=o.make_discount(forever, start=ts(2026, 5, 1)))
    j = sub("cus_J", [price(2_000)])
    j["discount"] = dict(o.make_discount(repeating, start=ts(2026, 6, 1)), end=ts(2026, 8, 1))
    k = sub("cus_K", [price(2_000)])
    k["discount"] = o.make_discount(once, start=ts(2026, 11, 12))
    m = sub("cus_M", [price(2_000)])
    m["discount"] = o.make_discount(once, start=ts(2026, 4, 1))
    # a yearly price and a second currency of a customer already paying in USD
    n = sub("cus_A", [price(120_000, "eur", "year")], created=ts(2026, 9, 1))
    subs += [a1, a2, b, c, d, e, f, g, h, i, j, k, m, n]
    return mrr.MRRBook(subs, invoices, grace_days=10)


MOMENTS = sorted({ts(2026, month, day) + shift for month in range(2, 13) for day in (1, 10, 15, 20, 25)
                  for shift in (-1, 0)} | {ts(2026, 8, 11), ts(2026, 8, 12)})


def expected_snapshot(book: mrr.MRRBook, moment: int) -> dict:
    out: dict = {}
    for s in book.subscriptions:
        result = book.at(s, moment, mrr.Profile(s))
        if result.amount > 0:
            key = (result.customer, result.currency)
            out[key] = out.get(key, 0) + result.amount
    return out


def test_snapshots_and_totals_are_each_subscriptions_mrr_added_up():
    book = edge_cases()
    seen_keys = set()
    for moment in MOMENTS:
        expected = expected_snapshot(book, moment)
        assert book.snapshot(moment) == expected, moment
        totals = {}
        for (_, cur), amount in expected.items():
            total, n = totals.get(cur, (Fraction(0), 0))
            totals[cur] = (total + amount, n + 1)
        assert book.totals_closing(moment + 1) == totals, moment
        seen_keys |= set(expected)
    # the cases that take the slow paths were there
    assert {("cus_A", "usd"), ("cus_A", "eur"), ("cus_B", "eur"), ("cus_B", "usd")} <= seen_keys
    assert book.snapshot(ts(2026, 7, 10))[("cus_C", "usd")] == 700  # the first of two equal invoices …
    assert book.snapshot(ts(2026, 7, 25))[("cus_C", "usd")] == 1_500  # … the other where the first ended
    assert book.snapshot(ts(2026, 8, 5))[("cus_D", "usd")] == 3_000  # unpaid, within the grace …
    assert ("cus_D", "usd") not in book.snapshot(ts(2026, 8, 12))  # … and beyond it


def test_movements_classify_the_snapshots_differences():
    book = edge_cases()
    for start, end in zip(MOMENTS, MOMENTS[1:]):
        before, after = expected_snapshot(book, start - 1), expected_snapshot(book, end - 1)
        expected = []
        for customer, currency in sorted(set(before) | set(after)):
            s, e = before.get((customer, currency), Fraction(0)), after.get((customer, currency), Fraction(0))
            first = book.first_positive(customer)
            kind = movements.classify(
                s, e, other_before=any(c == customer and cur != currency for c, cur in before),
                other_after=any(c == customer and cur != currency for c, cur in after),
                had_mrr_before=first is not None and first < start)
            if kind:
                expected.append({"customer": customer, "currency": currency, "movement": kind, "start": s, "end": e,
                                 "change": e - s, "paying_before": any(c == customer for c, _ in before),
                                 "paying_after": any(c == customer for c, _ in after)})
        assert movements.customer_movements(book, start, end) == expected, (start, end)


def test_first_mrr_of_each_customer():
    book = edge_cases()
    assert book.first_positive("cus_A") == ts(2026, 3, 10)
    assert book.first_positive("cus_B") == ts(2026, 5, 1)  # its first invoice, in EUR
    assert book.first_positive("cus_F") == ts(2026, 9, 15)  # after its trial
    assert book.first_positive("cus_G") is None  # incomplete: never paid
    assert book.first_positive("cus_H") == ts(2026, 2, 1)  # before its current period: its items assumed
    assert book.first_positive("cus_unknown") is None
    for customer in ("cus_A", "cus_B", "cus_C", "cus_D", "cus_E", "cus_F", "cus_I", "cus_J", "cus_K", "cus_M"):
        first = book.first_positive(customer)
        assert any(key[0] == customer for key in expected_snapshot(book, first)), customer
        assert not any(key[0] == customer for key in expected_snapshot(book, first - 1)), customer


def test_an_empty_book_and_a_single_subscription():
    empty = mrr.MRRBook([], [])
    assert empty.snapshot(ts(2026, 11, 1)) == {} and empty.totals_closing(ts(2026, 11, 1)) == {}
    assert movements.customer_movements(empty, ts(2026, 10, 1), ts(2026, 11, 1)) == []
    assert empty.first_positive("cus_A") is None
    one = mrr.MRRBook([sub("cus_A", [price(2_900)], created=ts(2026, 10, 5))], [])
    assert one.totals_closing(ts(2026, 11, 1)) == {"usd": (Fraction(2_900), 1)}
    assert [m["movement"] for m in movements.customer_movements(one, ts(2026, 10, 1), ts(2026, 11, 1))] == ["new"]
    nobody = mrr.MRRBook([sub(None, [price(2_900)])], [])  # no customer: a key of its own, None
    assert nobody.snapshot(ts(2026, 11, 1)) == {(None, "usd"): 2_900} and nobody.first_positive(None) == ts(2026, 3, 10)


def test_columns_read_records_and_dicts_alike():
    whole = [sub("cus_A", [price(2_900)]), sub("cus_B", [price(900)], status="trialing")]
    whole[1]["ended_at"] = None
    del whole[0]["ended_at"]  # absent: read as None, like a dict's get
    compactor = rdata.Compactor()
    records = [compactor.subscription(s) for s in whole]
    keys = ("id", "status", "ended_at", "current_period_start")
    assert rdata.record_columns(records, *keys) == rdata.record_columns(whole, *keys) == \
        [[s.get(k) for s in whole] for k in keys]
    assert rdata.record_columns([records[0], whole[1]], "status") == [["active", "trialing"]]  # mixed: read one by one
    assert rdata.record_columns([], "id") == [[]]
