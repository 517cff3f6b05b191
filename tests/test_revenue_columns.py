"""The revenue report reads its records a column at a time (``data.record_columns`` and its kin:
``embedded_items``, ``line_periods``, ``nested_column``, ``lines_key``): each column must be what
reading every object as a dict gives, for records and whole dicts alike, odd shapes included. And
the book lets its invoice segments go once its facts hold them, rebuilding the same ones if asked.
"""
from __future__ import annotations

from fractions import Fraction

import pytest

from ops_lib.revenue import data as rdata, mrr
from ops_lib.revenue.period import resolve_period

from .revenue_fixtures import NOW, fetched_whole_and_as_records


@pytest.fixture(scope="module")
def both():
    """The same synthetic account (three billing periods of invoices) fetched whole and as records."""
    return fetched_whole_and_as_records(400, 3)


def as_dicts(objs, key):
    return [list((obj.get(key) or {}).get("data") or []) for obj in objs]


def test_embedded_lists_are_each_objects_items(both):
    for stripe_data in both:
        for kind, key in (("invoices", "lines"), ("subscriptions", "items")):
            objs = getattr(stripe_data, kind)
            found = rdata.embedded_items(objs, key)
            assert [list(items) for items in found] == as_dicts(objs, key) and any(found), (kind, type(objs[0]))
    c = rdata.Compactor()
    odd = [c.invoice({"id": "in_1", "lines": None}), c.invoice({"id": "in_2", "lines": {"data": None}}),
           c.invoice({"id": "in_3"}), c.invoice({"id": "in_4", "lines": {"has_more": True}}),
           c.invoice({"id": "in_5", "lines": {"data": [{"type": "subscription", "amount": 5}], "has_more": False}})]
    found = rdata.embedded_items(odd, "lines")
    assert [list(items) for items in found] == as_dicts(odd, "lines") == [[], [], [], [], [{"type": "subscription", "amount": 5}]]
    assert rdata.embedded_items([], "lines") == []
    more = rdata.embedded_has_more(odd, "lines")
    assert more == [(i.get("lines") or {}).get("has_more") for i in odd] == [None, None, None, True, False]


def test_the_metrics_count_the_lists_stripe_cut_short(both):
    whole, compact = both
    assert dict(whole.metrics()) == dict(compact.metrics())
    assert "invoices_with_more_lines_than_served" not in compact.metrics()
    c = rdata.Compactor()
    cut = {**whole.invoices[0], "lines": {**whole.invoices[0]["lines"], "has_more": True}}
    items = {**whole.subscriptions[0]["items"], "has_more": True}
    for stripe_data, invoice, sub in ((whole, cut, {**whole.subscriptions[0], "items": items}),
                                      (compact, c.invoice(cut), c.subscription({**whole.subscriptions[0], "items": items}))):
        stripe_data = rdata.StripeData(stripe_data.period, 12, (), subscriptions=stripe_data.subscriptions + [sub, sub],
                                       invoices=stripe_data.invoices + [invoice])
        metrics = stripe_data.metrics()
        assert metrics["invoices_with_more_lines_than_served"] == 1
        assert metrics["subscriptions_with_more_items_than_served"] == 2


def test_line_periods_and_nested_columns_read_as_the_dicts(both):
    for stripe_data in both:
        lines = [line for invoice in stripe_data.invoices for line in invoice["lines"]["data"]]
        expected = [((line.get("period") or {}).get("start"), (line.get("period") or {}).get("end")) for line in lines]
        assert rdata.line_periods(lines) == expected and expected[0][0] is not None
        transitions = [invoice.get("status_transitions") for invoice in stripe_data.invoices] + [None]
        paid_at = rdata.nested_column(transitions, "paid_at")
        assert paid_at == [(t or {}).get("paid_at") for t in transitions] and paid_at[-1] is None
        assert any(paid_at)
    c = rdata.Compactor()
    odd = [c._line({"type": "subscription"}), c._line({"period": {"start": 5}}), c._line({"period": None}),
           c._line({"period": {}}), c._line({"period": {"start": 1, "end": 2}})]
    assert rdata.line_periods(odd) == [(None, None), (5, None), (None, None), (None, None), (1, 2)]


def test_lines_key_is_the_lines_prices_by_identity_and_amounts(both):
    whole, compact = both
    keys = set()
    for invoice in compact.invoices:
        lines = invoice["lines"]["data"]
        key = rdata.lines_key(tuple(rdata.embedded_items([invoice], "lines")[0]))
        assert key == tuple((id(line.get("price")), line.get("amount")) for line in lines)
        keys.add(key)
    assert len(keys) < len(compact.invoices) / 4  # (the records share their prices: invoices share keys)
    lines = whole.invoices[0]["lines"]["data"]
    assert rdata.lines_key(lines) == tuple((id(line["price"]), line["amount"]) for line in lines)


def test_the_book_lets_its_segments_go_once_the_facts_hold_them(both):
    _, compact = both
    book = mrr.MRRBook(compact.subscriptions, compact.invoices, grace_days=30)
    before = {sub_id: list(found) for sub_id, found in book.segments.items()}
    assert sum(map(len, before.values())) > len(compact.subscriptions)
    book._all_facts()
    assert book._segments is None
    assert book.segments == before  # rebuilt from the invoices when asked again
    listed = mrr.MRRBook(compact.subscriptions, iter(compact.invoices), grace_days=30)  # (no list to rebuild from)
    listed._all_facts()
    assert listed._segments is not None and listed.segments == before


def test_totals_count_each_amount_however_the_results_share_it():
    def result(amount, currency="usd", customer="cus_1", counted=True):
        return mrr.SubscriptionMRR(subscription="sub", customer=customer, customer_name=None, currency=currency,
                                   status="active", plan="p", interval="month", quantity=1, gross=amount, amount=amount,
                                   counted=counted, basis="active")
    shared = Fraction(2_900)
    third = Fraction(700 * 52, 12)
    results = [result(shared, customer="cus_1"), result(shared, customer="cus_2"), result(Fraction(2_900), customer="cus_2"),
               result(third, customer="cus_3"), result(third, customer="cus_3"), result(shared, counted=False),
               result(mrr.ZERO, customer="cus_4"), result(shared, currency="eur", customer="cus_1"),
               result(Fraction(-5), customer="cus_5")]
    rows = {row["currency"]: row for row in mrr.mrr_by_currency(results)}
    assert rows["usd"]["mrr_minor"] == 3 * 2_900 + 2 * third and rows["usd"]["paying_subscriptions"] == 5
    assert rows["usd"]["paying_customers"] == 3 and rows["eur"]["mrr_minor"] == 2_900
    assert rows["eur"]["paying_customers"] == 1 and list(rows) == ["eur", "usd"]
    table = mrr.subscription_rows(results)
    assert [row["mrr"] for row in table if row["currency"] == "usd"] == [30.33, 30.33, 29.0, 29.0, 29.0, 0.0, -0.05, 29.0]


def test_everyones_mrr_at_a_moment_is_each_ones(both):
    whole, _ = both
    active = next(sub for sub in whole.subscriptions if sub["status"] == "active" and not sub.get("cancel_at_period_end"))
    paused = {**active, "id": "sub_paused", "pause_collection": {"behavior": "void", "resumes_at": None}}
    for stripe_data in both:
        extra = paused if stripe_data is whole else rdata.Compactor().subscription(paused)
        book = mrr.MRRBook(stripe_data.subscriptions + [extra], stripe_data.invoices, grace_days=30)
        period = stripe_data.period
        bases = set()
        for moment in (period.until_ts - 1, period.start_ts - 1, period.start_ts + 20 * 86_400, period.until_ts - 400 * 86_400):
            everyone = book.subscriptions_at(moment)
            assert everyone == [book.at(sub, moment) for sub in book.subscriptions], moment
            bases |= {r.basis.split(" ")[0] for r in everyone}
        # (each rule met: the current state's statuses, the invoices, the assumption, the ends)
        assert {"active", "active,", "past_due", "collection", "invoice", "before", "not", "canceled", "trialing:",
                "paused", "unpaid:", "incomplete:", "no"} <= bases


def test_charges_over_time_count_each_charge_in_its_day(both):
    from collections import Counter
    from datetime import timedelta
    from ops_lib.revenue import revenue

    def one_at_a_time(charges, period):  # success_over_time's buckets as it counted them, a charge at a time
        step = timedelta(days=7) if period.until - period.start > timedelta(days=62) else timedelta(days=1)
        start = period.start.replace(hour=0, minute=0, second=0, microsecond=0)
        buckets, moment = {}, start
        while moment < period.until:
            buckets[moment], moment = Counter(), moment + step
        for charge in charges:
            key = start + int((rdata.at(charge["created"]) - start) / step) * step
            if key in buckets:
                buckets[key][charge.get("status")] += 1
        return [(key, c["succeeded"], c["failed"], c["pending"]) for key, c in buckets.items()]

    whole, compact = both
    start = int(compact.period.start.replace(hour=0, minute=0, second=0).timestamp())
    odd = [{"created": start - 10, "status": "failed"}, {"created": start - 86_400 - 1, "status": "failed"},
           {"created": start + 3 * 86_400 - 1, "status": "pending"}, {"created": start + 3 * 86_400, "status": None},
           {"created": compact.period.until_ts + 86_400 * 40, "status": "succeeded"}]
    quarter = resolve_period(start_date="2026-08-01", end_date="2026-11-30", now=NOW)  # (weeks)
    for charges, period in ((compact.charges, compact.period), (whole.charges, whole.period), (odd, compact.period),
                            (compact.charges + odd, quarter), ([], compact.period)):
        rows = revenue.success_over_time(charges, period)
        assert [(r["day"], r["succeeded"], r["failed"], r["pending"]) for r in rows] == one_at_a_time(charges, period)
    rows = revenue.success_over_time(odd, compact.period)
    assert (rows[0]["failed"], rows[2]["pending"], rows[3]["pending"]) == (1, 1, 0)
    assert sum(r["succeeded"] + r["failed"] + r["pending"] for r in rows) == 2
    floats = [{**c, "created": c["created"] + 0.5} for c in odd]  # (not whole seconds: a charge at a time)
    assert [r["failed"] for r in revenue.success_over_time(floats, compact.period)][0] == 1
