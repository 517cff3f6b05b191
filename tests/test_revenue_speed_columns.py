"""The revenue report's faster paths against plain computations, on small real-looking inputs
(synthetic accounts, whole and as records) and odd ones (missing keys, None values, an expanded
customer without a discount, a falsy discount, lines without a period…):

* ``mrr.profile_keys`` (the subscriptions' profile keys read as columns) is ``Profile.key`` of each;
* ``mrr.customer_columns`` is ``_customer_of`` of each customer, its errors included;
* ``MRRBook.subscriptions_at`` (the commonest outcomes made from columns) is ``at`` of each;
* ``mrr.invoice_segments`` (one-line invoices read without grouping) is a plain reading of the invoices;
* ``subscription_rows``' order (rows grouped, each group sorted by id) is the one sort by the full key;
* ``snapshots.Facts``' segment arrays (read as columns) are a plain walk over the book's segments;
* ``snapshots.changed`` (a dense array over the keys, or the sorted union) and
  ``movements.distinct_rows`` (each case as one number) are a dict's and ``np.unique``'s answers.
"""
from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from ops_lib.revenue import data as rdata, movements, mrr, snapshots
from ops_lib.revenue.period import history_buckets

from .revenue_fixtures import fetched_whole_and_as_records

T0 = 1_780_000_000
DAY = 86_400


@pytest.fixture(scope="module")
def both():
    """One synthetic account (three billing periods of invoices) fetched whole and as records."""
    return fetched_whole_and_as_records(400, 3)


def price(pid="price_pro", amount=2900, interval="month", **extra):
    return {"id": pid, "unit_amount": amount, "unit_amount_decimal": str(amount) if amount is not None else None,
            "billing_scheme": "per_unit", "recurring": {"interval": interval, "interval_count": 1,
                                                        "usage_type": "licensed"}, "metadata": {"plan": pid}, **extra}


PRO, TEAM = price(), price("price_team", 9900)
METERED = {**price("price_api", None), "recurring": {"interval": "month", "usage_type": "metered"}}
HALF = {"id": "HALF", "percent_off": 50, "duration": "forever"}
ONCE = {"id": "ONCE", "amount_off": 500, "currency": "usd", "duration": "once"}


def sub(k, **fields):
    """A subscription as Stripe lists it (customer expanded), ``fields`` overriding."""
    out = {"id": f"sub_{k}", "currency": "usd", "status": "active", "created": T0, "start_date": T0,
           "current_period_start": T0 + 30 * DAY, "ended_at": None, "trial_end": None, "cancel_at_period_end": False,
           "pause_collection": None, "discount": None,
           "customer": {"id": f"cus_{k}", "name": f"Customer {k}", "discount": None},
           "items": {"has_more": False, "data": [{"id": f"si_{k}", "quantity": 1, "price": PRO}]}}
    out.update(fields)
    return out


def odd_subscriptions() -> list[dict]:
    """Subscriptions of every shape the columns must read as ``get`` does."""
    return [
        sub(0), sub(1), sub(2, items={"data": [{"price": PRO, "quantity": 3}, {"price": TEAM}]}),
        sub(3, items={"data": [{"price": PRO}, {"id": "si_m", "price": METERED, "quantity": 2}]}),  # unpriced
        sub(4, items=None), sub(5, items={"has_more": True}), sub(6, items={"data": [{"price": None, "quantity": 1}]}),
        sub(7, discount={"coupon": HALF, "start": T0}),
        sub(8, customer={"id": "cus_8", "discount": {"coupon": ONCE, "start": T0 + 40 * DAY}}),  # the customer's
        sub(9, discount={}, customer={"id": "cus_9", "discount": {"coupon": HALF, "start": T0}}),  # {}: none
        sub(10, discount={"start": T0}), sub(11, discount={"coupon": None}), sub(12, customer="cus_12"),
        sub(13, customer=None), sub(14, customer={"id": "cus_14"}), sub(15, customer={"id": None, "name": "x"}),
        sub(16, status="past_due"), sub(17, status="past_due", current_period_start=T0 - 90 * DAY),
        sub(18, status="canceled", ended_at=T0 + 50 * DAY), sub(19, status="trialing", trial_end=T0 + 99 * DAY),
        sub(20, pause_collection={"behavior": "void"}), sub(21, cancel_at_period_end=True),
        sub(22, start_date=None, created=T0 + 10 * DAY), sub(23, start_date=None, created=None),
        sub(24, status=None), sub(25, status="incomplete_expired", ended_at=None), sub(26, ended_at=T0 + 45 * DAY),
        sub(27, current_period_start=None), sub(28, id=None), sub(29, currency="USD"),
        sub(30, status="unpaid"), sub(31, discount={"coupon": ONCE, "start": T0 + 31 * DAY}),
        sub(32, status="canceled", ended_at=T0 - 10 * DAY, start_date=T0 - 200 * DAY),
        sub(33, items={"data": [{"price": PRO, "quantity": 2}]}), sub(34, items={"data": [{"price": PRO, "quantity": 2}]}),
    ] + [{k: v for k, v in sub(35).items() if k != key} for key in ("status", "customer", "discount", "items",
                                                                   "start_date", "current_period_start", "ended_at")]


def both_forms(subs):
    """The subscriptions as whole dicts and as records (a compactor shares equal prices and coupons)."""
    c = rdata.Compactor()
    return [subs, [c.subscription(s) for s in subs]]


def moments():
    return [T0 - 1, T0, T0 + 20 * DAY, T0 + 30 * DAY - 1, T0 + 35 * DAY, T0 + 46 * DAY, T0 + 400 * DAY]


def test_profile_keys_are_each_subscriptions_profile_key(both):
    for subs in both_forms(odd_subscriptions()) + [stripe_data.subscriptions for stripe_data in both]:
        keys = list(mrr.profile_keys(subs))
        assert len(keys) == len(subs)
        assert keys == [mrr.Profile.key(s) for s in subs]
        assert any(key is None for key in keys) and sum(key is not None for key in keys) > len(keys) // 2
        book, plain = mrr.MRRBook(subs, []), mrr.MRRBook(subs, [])
        profiles, each = book._all_profiles(), [plain.profile(s) for s in subs]
        # the same sharing (which subscriptions share a profile) and the same figures
        assert [profiles.index(p) for p in profiles] == [each.index(p) for p in each]
        for p, q in zip(profiles, each):
            assert (p.currency, p.gross, p.plan, p.interval, p.quantity, p.unpriced, p.coupon_text, p.discounted) == \
                (q.currency, q.gross, q.plan, q.interval, q.quantity, q.unpriced, q.coupon_text, q.discounted)


def test_a_subscription_the_columns_cannot_key_is_left_to_profile_and_its_errors():
    for subs in both_forms([sub(0), sub(1, currency=None), sub(2)]):
        assert list(mrr.profile_keys(subs))[1] is mrr.ASK_EACH
        with pytest.raises(AttributeError):  # (None has no .lower(), as Profile finds)
            mrr.MRRBook(subs, [])._all_profiles()
    no_currency = {k: v for k, v in sub(1).items() if k != "currency"}
    for subs in both_forms([sub(0), no_currency]):
        with pytest.raises(KeyError):
            mrr.MRRBook(subs, [])._all_profiles()
    with pytest.raises(AttributeError):  # an item that is not a mapping
        list(mrr.profile_keys([sub(0, items={"data": ["si_1"]})]))


def test_customer_columns_are_each_customers_id_and_name():
    c = rdata.Compactor()
    customers = ["cus_1", None, {"id": "cus_2", "name": "Two"}, {"id": "cus_3"}, {"id": None, "name": "Nobody"},
                 c.subscription(sub(4))["customer"], c.subscription(sub(5, customer={"id": "cus_5"}))["customer"], 7]
    ids, names = mrr.customer_columns(customers)
    assert list(zip(ids, names)) == [mrr._customer_of(customer) for customer in customers]
    assert mrr.customer_columns([]) == ([], [])
    with pytest.raises(KeyError):
        mrr.customer_columns(["cus_1", {"name": "no id"}])


def test_everyones_results_at_a_moment_are_each_ones():
    for subs in both_forms([s for s in odd_subscriptions() if s.get("currency")]):
        book = mrr.MRRBook(subs, [], grace_days=30)
        for moment in moments():
            assert book.subscriptions_at(moment) == [book.at(s, moment) for s in subs], moment
    without_id = {k: v for k, v in sub(40, status="canceled", ended_at=T0).items() if k != "id"}
    for subs in both_forms([sub(39), without_id]):
        with pytest.raises(KeyError):  # (``at`` raises on it too)
            mrr.MRRBook(subs, []).subscriptions_at(T0 + DAY)


def test_an_ended_subscriptions_day_is_its_date():
    cache: dict = {}
    for moment in (T0, T0 + 1, T0 + DAY - 1, T0 + DAY, 0, -1, -DAY - 1, T0 + 0.5, T0 + 86_399.9):
        assert mrr._day_text(moment, cache) == f"{rdata.at(moment):%Y-%m-%d}"
    assert mrr._day_text(True, {}) == f"{rdata.at(True):%Y-%m-%d}"


def line(price_, amount, start, end, *, kind="subscription", proration=False, quantity=1):
    out = {"type": kind, "proration": proration, "amount": amount, "quantity": quantity, "price": price_}
    if start is not None or end is not None:
        out["period"] = {"start": start, "end": end}
    return out


def invoice(k, sub_id, lines, *, status="paid", created=None, **fields):
    out = {"id": f"in_{k}", "status": status, "currency": "usd", "created": T0 + k if created is None else created,
           "subscription": sub_id, "customer": "cus_1", "discount": None, "total_discount_amounts": [],
           "lines": {"has_more": False, "data": lines}}
    out.update(fields)
    return out


def odd_invoices() -> list[dict]:
    month = 30 * DAY
    return [
        invoice(0, "sub_1", [line(PRO, 2900, T0, T0 + month)]),
        invoice(1, "sub_1", [line(PRO, 2900, T0 + month, T0 + 2 * month)], status="open"),
        invoice(2, "sub_2", [line(PRO, 2900, T0, T0 + month), line(TEAM, 9900, T0, T0 + month),
                             line(PRO, 100, T0, T0 + month, proration=True), line(None, 500, T0, T0 + month, kind="invoiceitem"),
                             line(TEAM, 9900, T0 + month, T0 + 2 * month, quantity=2)]),  # two periods
        invoice(3, "sub_3", [line(PRO, 2900, None, None)]), invoice(4, "sub_3", [line(PRO, 2900, T0, None)]),
        invoice(5, "sub_3", [line(PRO, 2900, T0 - month, T0)], status="void"),
        invoice(6, "sub_3", [line(PRO, 2900, T0 - month, T0)], status="draft"),
        invoice(7, None, [line(PRO, 2900, T0, T0 + month)]), invoice(8, {"id": "sub_4"}, [line(PRO, 2900, T0, T0 + month)]),
        invoice(9, "sub_4", [line(PRO, 2900, T0 - month, T0)], status="uncollectible", created=None),
        invoice(10, "sub_5", [line(PRO, 2900, T0, T0 + month)], discount={"coupon": HALF, "start": T0},
                total_discount_amounts=[{"amount": 1450}]),
        invoice(11, "sub_5", [line(PRO, 2900, T0 + month, T0 + 2 * month)], discount={"coupon": HALF, "start": T0},
                total_discount_amounts=[{"amount": 0}]),  # nothing taken: no discount
        invoice(12, "sub_6", [line(PRO, 2900, T0, T0 + month)], created=T0),
        invoice(13, "sub_6", [line(TEAM, 9900, T0, T0 + month)], created=T0),  # the same start and creation
        invoice(14, "sub_6", [line(PRO, 2900, T0 - 2 * month, T0 - month)]),  # older, listed later
        invoice(15, "sub_7", [], currency="EUR"), invoice(16, "sub_7", [line(PRO, 2900, T0, T0 + month)], currency="EUR"),
        {**invoice(17, "sub_8", [line(PRO, 2900, T0, T0 + month)]), "lines": None},
        invoice(18, "sub_9", [line(PRO, 2900, T0, T0 + month)], customer={"id": "cus_9"}),
    ]


def plain_segments(invoices) -> dict[str, list[mrr.Segment]]:
    """``invoice_segments`` read one invoice and one line at a time, as a dict is read."""
    out: dict[str, list[mrr.Segment]] = {}
    for inv in invoices:
        sub_id = rdata.id_of(inv.get("subscription"))
        if not sub_id or inv.get("status") not in mrr.INVOICE_STATUSES_WITH_MRR:
            continue
        by_period: dict[tuple, list] = {}
        for ln in (inv.get("lines") or {}).get("data") or []:
            if ln.get("type") == "subscription" and not ln.get("proration"):
                period = ln.get("period") or {}
                by_period.setdefault((period.get("start"), period.get("end")), []).append(ln)
        amounts = inv.get("total_discount_amounts")
        discounted = bool(amounts) and sum(d.get("amount", 0) for d in amounts) > 0
        discount = inv.get("discount")
        coupon = discount.get("coupon") if discount and discounted else None
        currency = inv["currency"].lower()
        for (start, end), lines in by_period.items():
            if start is None or end is None:
                continue
            gross, net, plan, quantity, applied = mrr._segment_amounts(lines, discount if coupon else None, currency)
            out.setdefault(sub_id, []).append(mrr.Segment(
                sub_id, rdata.id_of(inv.get("customer")), currency, start, end, gross, net, inv.get("status") == "paid",
                inv["id"], inv.get("created") or 0, plan, quantity, applied))
    for segments in out.values():
        segments.sort(key=lambda s: (s.start, s.created))
    return out


def test_invoice_segments_are_a_plain_reading_of_the_invoices(both):
    c = rdata.Compactor()
    for invoices in (odd_invoices(), [c.invoice(i) for i in odd_invoices()]) + tuple(d.invoices for d in both):
        found = mrr.invoice_segments(invoices)
        assert found == plain_segments(invoices)
        assert list(found) == list(plain_segments(invoices))  # (the subscriptions in the same order)
    found = mrr.invoice_segments(odd_invoices())
    assert [s.invoice for s in found["sub_6"]] == ["in_14", "in_12", "in_13"]
    assert [(s.start, s.gross) for s in found["sub_2"]] == [(T0, 2900 + 9900), (T0 + 30 * DAY, 9900)]  # (a line bills its amount)
    assert found["sub_5"][0].amount == 1450 and found["sub_5"][1].amount == 2900 and "sub_3" not in found
    with pytest.raises(KeyError):  # an invoice without an id, as before
        mrr.invoice_segments([{k: v for k, v in odd_invoices()[0].items() if k != "id"}])


def plain_facts_segments(book, facts) -> dict[str, list]:
    """The facts' segment arrays as a walk over ``book.segments`` (the subscriptions' order)."""
    out = {"sub": [], "start": [], "end": [], "paid": [], "amount": [], "group": [], "first": []}
    group = -1
    for i, s in enumerate(book.subscriptions):
        found = book.segments.get(s["id"]) or []
        out["first"].append(found[0].start if found else snapshots.NEVER)
        previous = None
        for seg in found:
            if (seg.start, seg.created) != previous:
                group, previous = group + 1, (seg.start, seg.created)
            out["sub"].append(i)
            out["start"].append(seg.start)
            out["end"].append(seg.end)
            out["paid"].append(seg.paid)
            out["amount"].append((seg.amount, seg.currency) if seg.amount > 0 else None)
            out["group"].append(group)
    return out


def test_the_facts_segment_arrays_are_a_walk_over_the_segments(both):
    subs = [s for s in odd_subscriptions() if s.get("currency") and s.get("id")]
    subs += [sub(6), sub(6, status="canceled", ended_at=T0), sub(99)]  # (one id twice; one without invoices)
    month_invoices = odd_invoices()
    for book in [mrr.MRRBook(subs, month_invoices)] + [mrr.MRRBook(d.subscriptions, d.invoices) for d in both] + \
            [mrr.MRRBook([], [])]:
        facts = snapshots.Facts(book)
        plain = plain_facts_segments(book, facts)
        for key in ("sub", "start", "end", "paid", "group"):
            assert facts.seg[key].tolist() == plain[key], key
        assert facts.first_invoiced.tolist() == plain["first"]
        assert [facts.amounts[k] if k >= 0 else None for k in facts.seg["amount"].tolist()] == plain["amount"]


def test_the_snapshots_are_each_subscriptions_amounts_with_odd_subscriptions():
    # (an expanded customer whose id is None is left out: the facts' factorize reads it as a missing
    # value and counts it under another customer, as the code before these columns did too)
    subs = [s for s in odd_subscriptions() if s.get("currency") and s.get("id") and s["id"] != "sub_15"]
    for form in both_forms(subs):
        book, plain = mrr.MRRBook(form, odd_invoices(), grace_days=30), mrr.MRRBook(form, odd_invoices(), grace_days=30)
        for moment in moments():
            expected: dict = {}
            for s in plain.subscriptions:
                result = plain.at(s, moment, mrr.Profile(s))
                if result.amount > 0:
                    expected[(result.customer, result.currency)] = expected.get((result.customer, result.currency), 0) \
                        + result.amount
            assert book.snapshot(moment) == expected, moment


def test_the_table_order_is_the_one_sort():
    rng = random.Random(5)
    rows = [{"currency": rng.choice(["usd", "eur", "jpy"]), "counted": rng.random() < 0.7,
             "mrr": rng.choice([None, 0.0, -0.0, 29.0, 30.33, 99.0, -0.05, 1e-9]),
             "subscription": f"sub_{rng.randrange(60)}", "n": n} for n in range(400)]  # (ids repeat: stability)
    expected = sorted(rows, key=lambda r: (r["currency"], not r["counted"], -(r["mrr"] or 0), r["subscription"]))
    assert mrr._in_table_order(list(rows)) == expected
    assert mrr._in_table_order([]) == []
    mixed = [dict(rows[0], subscription=None), dict(rows[0], subscription="sub_1", mrr=1.0)]
    assert mrr._in_table_order(list(mixed)) == sorted(mixed, key=lambda r: (r["currency"], not r["counted"],
                                                                         -(r["mrr"] or 0), r["subscription"]))
    clash = [dict(rows[0], subscription=None), dict(rows[0], subscription="sub_1")]
    with pytest.raises(TypeError):  # (None against text within one group: the one sort fails too)
        mrr._in_table_order(clash)


def test_subscription_rows_are_in_the_one_sorts_order(both):
    for stripe_data in both:
        book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices)
        rows = mrr.subscription_rows(book.closing(stripe_data.period.until_ts))
        assert rows == sorted(rows, key=lambda r: (r["currency"], not r["counted"], -(r["mrr"] or 0), r["subscription"]))
        assert len({r["mrr"] for r in rows}) > 10


def plain_changed(keys_before, values_before, keys_after, values_after):
    was, now = dict(zip(keys_before.tolist(), values_before.tolist())), dict(zip(keys_after.tolist(), values_after.tolist()))
    keys = sorted(k for k in set(was) | set(now) if was.get(k, snapshots.NONE) != now.get(k, snapshots.NONE))
    return keys, [was.get(k, snapshots.NONE) for k in keys], [now.get(k, snapshots.NONE) for k in keys]


@pytest.mark.parametrize("size", [50, 5_000, 10_000_000])  # (dense; dense; sparse: the sorted union)
def test_changed_pairs_are_a_dicts_answer(size):
    rng = np.random.default_rng(size)
    for n_before, n_after in ((0, 0), (0, 7), (9, 0), (30, 40)):
        keys_before = np.sort(rng.choice(size, size=min(n_before, size), replace=False)).astype(np.int64)
        keys_after = np.sort(rng.choice(size, size=min(n_after, size), replace=False)).astype(np.int64)
        values_before = rng.integers(0, 4, size=keys_before.size).astype(np.int64)
        values_after = rng.integers(0, 4, size=keys_after.size).astype(np.int64)
        keys, was, now = snapshots.changed(keys_before, values_before, keys_after, values_after, size)
        assert (keys.tolist(), was.tolist(), now.tolist()) == plain_changed(keys_before, values_before, keys_after,
                                                                            values_after)
        assert keys.dtype == was.dtype == now.dtype == np.int64


def test_distinct_cases_are_numpys_distinct_rows():
    rng = np.random.default_rng(3)
    for rows, values, currencies in ((0, 5, 2), (1, 1, 1), (500, 7, 3), (2_000, 300, 1)):
        cases = np.stack([rng.integers(-1, values, rows), rng.integers(-1, values, rows), rng.integers(0, 2, rows),
                          rng.integers(0, 2, rows), rng.integers(0, 2, rows), rng.integers(0, currencies, rows)],
                         axis=1).astype(np.int64)
        distinct, which, times = movements.distinct_rows(cases, values, currencies)
        expected = np.unique(cases, axis=0, return_inverse=True, return_counts=True)
        assert distinct.tolist() == expected[0].tolist() and times.tolist() == expected[2].tolist()
        assert which.reshape(-1).tolist() == expected[1].reshape(-1).tolist()


def test_a_months_movements_are_each_customers(both):
    """``customer_movements`` against the snapshots compared customer by customer."""
    for stripe_data in both:
        book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices)
        for _, start, end in history_buckets(stripe_data.period, 4):
            before, after = book.snapshot_closing(start), book.snapshot_closing(end)
            moved = {(r["customer"], r["currency"]): (r["start"], r["end"])
                     for r in movements.customer_movements(book, start, end)}
            expected = {key: (before.get(key, Fraction(0)), after.get(key, Fraction(0)))
                        for key in set(before) | set(after) if before.get(key, 0) != after.get(key, 0)}
            assert moved == expected and moved


def plain_customer_table(rows, book):
    """``customer_table`` reading each subscription's customer and converting each amount as it comes."""
    names = {}
    for s in book.subscriptions:
        customer = s.get("customer")
        if isinstance(customer, dict) or isinstance(customer, rdata.StripeRecord):
            if customer["id"] in {row["customer"] for row in rows}:
                names[customer["id"]] = customer.get("name")
    order = {m: i for i, m in enumerate(movements.MOVEMENTS)}
    ordered = sorted(rows, key=lambda r: (r["currency"], order[r["movement"]], -abs(r["change"]), r["customer"]))
    return [{"customer": r["customer"], "name": names.get(r["customer"]), "currency": r["currency"],
             "movement": r["movement"], "mrr_before": mrr.money.major(r["start"], r["currency"]),
             "mrr_after": mrr.money.major(r["end"], r["currency"]), "change": mrr.money.major(r["change"], r["currency"])}
            for r in ordered]


def test_the_customer_table_names_and_amounts_are_each_rows(both):
    subs = [sub(0), sub(1), sub(2, customer="cus_0"), sub(3, customer={"id": "cus_1", "name": "Renamed"}),
            sub(4, customer=None), sub(5, customer={"id": "cus_5"}), sub(6, customer={"id": None, "name": "None's"})]
    rows = [{"customer": c, "currency": cur, "movement": m, "start": Fraction(s), "end": Fraction(e),
             "change": Fraction(e) - Fraction(s)}
            for c, cur, m, s, e in [("cus_0", "usd", "new", 0, 2900), ("cus_1", "usd", "expansion", 2900, 5800),
                                    ("cus_5", "jpy", "churn", 4900, 0), (None, "usd", "new", 0, 1),
                                    ("cus_9", "usd", "contraction", Fraction(700 * 52, 12), 2900)]]
    for form in both_forms(subs):
        book = mrr.MRRBook(form, [])
        assert movements.customer_table(rows, book) == plain_customer_table(rows, book)
        assert {r["customer"]: r["name"] for r in movements.customer_table(rows, book)} == \
            {"cus_0": "Customer 0", "cus_1": "Renamed", "cus_5": None, None: "None's", "cus_9": None}
    for stripe_data in both:
        book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices)
        moved = movements.customer_movements(book, stripe_data.period.start_ts, stripe_data.period.until_ts)
        assert movements.customer_table(moved, book) == plain_customer_table(moved, book) and moved
    with pytest.raises(KeyError):  # an expanded customer without an id, as before
        movements.customer_table(rows, mrr.MRRBook([sub(7, customer={"name": "no id"})], []))
