"""The revenue report's compact representation on synthetic Stripe objects at some scale
(``ops_lib.revenue.synthetic``: every price interval, discount kind, status, invoice status,
prorations, three currencies), without an emulator or a database:

* each record reads exactly as the trimmed dict the report kept before records (and the keys and
  values of the whole object it came from);
* every table, metric and finding is the same from whole objects (``compact=False``) as from
  records, and the same as the code before records and MRR profiles computed (pinned digests);
* the book's fast paths (shared profiles, snapshots from per-subscription facts, exact sums)
  agree with its one-subscription path at every moment that matters.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from fractions import Fraction

import pytest

from ops_lib.revenue import checks, conversion, data as rdata, money, movements, mrr, payments, revenue, synthetic
from ops_lib.revenue import mrr_metrics, revenue_metrics
from ops_lib.revenue.period import history_buckets, resolve_period

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=timezone.utc)
N = 1_500


def digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def app_rows(stripe_data) -> list[dict]:
    """The app's payments: one per succeeded charge, one missing, one with a wrong amount."""
    rows = []
    for k, c in enumerate(c for c in stripe_data.charges if c["status"] == "succeeded"):
        if k == 1:
            continue
        rows.append({"organisation_id": k, "stripe_charge_id": c["id"], "stripe_invoice_id": c.get("invoice"),
                     "amount": c["amount"] + (1 if k == 2 else 0), "currency": c["currency"], "status": "succeeded",
                     "paid_at": datetime.fromtimestamp(c["created"], timezone.utc)})
    return rows


def tables(stripe_data, months: int = 12, *, mods=None) -> dict:
    """What the notebook shows and records from one fetch, as plain values (``mods``: the modules
    to compute with; the test suite's own by default)."""
    m = mods or {"checks": checks, "conversion": conversion, "movements": movements, "mrr": mrr,
                 "payments": payments, "revenue": revenue, "mrr_metrics": mrr_metrics, "revenue_metrics": revenue_metrics}
    period = stripe_data.period
    book = m["mrr"].MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
    at_end = book.closing(period.until_ts)
    totals = m["mrr"].mrr_by_currency(at_end)
    history = m["movements"].history(book, period, months=months)
    charges = stripe_data.charges_in_period
    rows = m["revenue"].revenue_by_plan(stripe_data)
    cohorts = m["conversion"].trial_cohorts(stripe_data.subscriptions, NOW)
    return {
        "metrics": dict(stripe_data.metrics()),
        "totals": m["mrr"].display_totals(totals),
        "exact_totals": totals,
        "mrr_metrics": dict(m["mrr_metrics"](totals)),
        "subscriptions": m["mrr"].subscription_rows(at_end),
        "unpriced": m["checks"].unpriced_items(at_end).to_dict(),
        "history": history,
        "history_table": m["movements"].history_table(history),
        "identity": m["checks"].mrr_identity_broken(history, totals).to_dict(),
        "moves": m["movements"].customer_table(
            m["movements"].customer_movements(book, period.start_ts, period.until_ts), book),
        "movement_metrics": dict(m["movements"].movement_metrics(book, period)),
        "revenue": rows,
        "revenue_table": m["revenue"].revenue_table(rows),
        "revenue_metrics": dict(m["revenue_metrics"](rows, m["revenue"].success_rate(charges))),
        "failures": m["revenue"].failures_by_code(charges),
        "over_time": m["revenue"].success_over_time(charges, period),
        "low_success": m["checks"].payment_success_rate_low(charges, threshold_pct=99.0).to_dict(),
        "cohorts": cohorts,
        "conversion": m["conversion"].trial_conversion_low(cohorts, 20.0).to_dict(),
        "mismatch": m["checks"].revenue_mismatch(m["payments"].reconcile(stripe_data, app_rows(stripe_data))).to_dict(),
    }


def fetched(history_periods: int, period=None, *, compact: bool = True, currencies=None, n: int = N):
    account = synthetic.SyntheticAccount(n, NOW, history_periods=history_periods)
    return rdata.gather(account.listing, period or resolve_period(now=NOW), compact=compact, currencies=currencies)


# What the code before records, MRR profiles and exact sums computed from these synthetic
# objects (``tables`` with ``ops_lib/revenue`` as committed before, digest of each value's repr):
# any change to a figure, a row or its order changes a digest. Findings are left out (their form is
# ops_lib.findings'; they are compared whole against whole objects above). The objects come from
# the emulator's builders: a change there, e.g. to Stripe's fee, changes the digests too.
PINNED = {
    0: {
        "metrics": "a133e6901474ddd9",
        "totals": "a0fb1afe2c2617ba",
        "exact_totals": "e488d9497a7238f9",
        "mrr_metrics": "116cdf26fedddfc4",
        "subscriptions": "52adeee6629990c0",
        "history": "2c0b3e6ec523fe19",
        "history_table": "1ceddd7a0a6f98d3",
        "moves": "4b5c86226c5d9e87",
        "movement_metrics": "600a2c1475b4c035",
        "revenue": "0f8f5f48e89b151c",
        "revenue_table": "810462e78b3ac1cb",
        "revenue_metrics": "6f6b99517f99cb7d",
        "failures": "e9d512ac62417b24",
        "over_time": "d79d0dbaf02abdd3",
        "cohorts": "c72177dba856778b",
    },
    3: {
        "metrics": "4c22a473785395a8",
        "totals": "dedf342e7de2db7e",
        "exact_totals": "61e14a64a2b90860",
        "mrr_metrics": "89adb1d8a36b3286",
        "subscriptions": "67d3ef3302fafafe",
        "history": "7d74da14351b0a47",
        "history_table": "99414a8c3e7a17eb",
        "moves": "4e4cd9ad374a37b7",
        "movement_metrics": "de87b98b79749669",
        "revenue": "26d35f00239f7fe6",
        "revenue_table": "78a204db277bab63",
        "revenue_metrics": "38e7d2e30c0aaa6d",
        "failures": "2059adbbd2ccceb6",
        "over_time": "69401d4b0b4d373d",
        "cohorts": "c72177dba856778b",
    },
}


@pytest.fixture(scope="module", params=[0, 3], ids=["current-period-invoices", "three-periods-of-invoices"])
def both(request):
    """The same synthetic account fetched whole and compact."""
    return request.param, fetched(request.param, compact=False), fetched(request.param)


def test_records_read_as_the_trimmed_dicts_and_the_whole_objects(both):
    _, whole, compact = both
    for kind in synthetic.KINDS:
        assert len(getattr(whole, kind)) == len(getattr(compact, kind)), kind
        for full, record in zip(getattr(whole, kind), getattr(compact, kind)):
            assert isinstance(record, rdata.StripeRecord)
            assert record == reference_trim(kind, full), (kind, full["id"])
            for key in record:  # each kept key has the whole object's value (ids for expanded references)
                value = full[key]
                if key in ("customer", "charge", "invoice", "subscription", "source") and isinstance(value, dict) \
                        and kind != "subscriptions":
                    value = value["id"]
                if not isinstance(value, (dict, list)):
                    assert record[key] == value, (kind, key)


def test_every_table_metric_and_finding_is_the_same_from_whole_objects_and_records(both):
    history_periods, whole, compact = both
    found_whole, found_compact = tables(whole), tables(compact)
    assert found_whole["subscriptions"] and found_whole["history"] and found_whole["revenue"]
    assert found_whole["moves"] and found_whole["mismatch"]["items"] and found_whole["unpriced"]["items"]
    for key in found_whole:
        assert found_compact[key] == found_whole[key], key
    assert {k: digest(v) for k, v in found_compact.items() if k in PINNED[history_periods]} == PINNED[history_periods]


def test_the_previous_month_and_a_currency_selection_agree_too():
    previous = resolve_period("previous", now=NOW)
    for currencies in (None, ["EUR", "jpy"]):
        whole = fetched(2, previous, compact=False, currencies=currencies, n=600)
        compact = fetched(2, previous, currencies=currencies, n=600)
        assert tables(whole, 6) == tables(compact, 6)
        if currencies:
            assert {s["currency"] for s in compact.subscriptions} == {"eur", "jpy"}


def test_the_fast_snapshot_is_the_sum_of_each_subscriptions_mrr(both):
    _, whole, compact = both
    for stripe_data in (whole, compact):
        book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
        plain = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
        for moment in sorted({b - 1 for _, s, e in history_buckets(stripe_data.period, 14) for b in (s, e)}):
            expected: dict = {}
            for sub in plain.subscriptions:
                result = plain.at(sub, moment, mrr.Profile(sub))  # a profile of its own: nothing shared
                if result.amount > 0:
                    key = (result.customer, result.currency)
                    expected[key] = expected.get(key, 0) + result.amount
            assert book.snapshot(moment) == expected, moment
        for sub in stripe_data.subscriptions:  # at the moments its story turns at
            moments = set()
            for key in ("created", "start_date", "current_period_start", "trial_end", "ended_at"):
                if sub.get(key):
                    moments |= {sub[key] - 1, sub[key], sub[key] + 31 * 86_400, sub[key] + 45 * 86_400}
            for segment in book.segments.get(sub["id"], ()):
                moments |= {segment.start, segment.start + 31 * 86_400, segment.end - 1, segment.end}
            for moment in moments:
                result = plain.at(sub, moment, mrr.Profile(sub))
                assert book.amount_at(sub, moment) == (result.amount, result.currency)
                assert book.at(sub, moment) == result


def test_subscriptions_share_a_profile_only_when_it_is_the_same():
    p1, p2 = synthetic._catalogue()["usd"][:2]
    twin = dict(p1)  # the same id and content, another object: its own profile, the same figures
    dearer = dict(p1, unit_amount=3900, unit_amount_decimal="3900")  # the same id, another amount
    coupon = synthetic.so.make_coupon(percent_off=50, duration="forever", id="HALF")
    subs = []
    for k, items in enumerate([[(p1, 2)], [(p1, 3)], [(twin, 2)], [(dearer, 2)], [(p1, 2)], [(p1, 2), (p2, 1)],
                               [(p1, 2)], [(p1, 2)]]):
        sub = synthetic.so.make_subscription(customer=f"cus_{k}", items=items, created=1_700_000_000, id=f"sub_{k}")
        for item, (price, _) in zip(sub["items"]["data"], items):
            item["price"] = price  # (as the compact objects do: one object per price)
        if k >= 6:
            sub["discount"] = synthetic.so.make_discount(coupon, start=1_700_000_000 + (k - 6) * 200)
            sub["discount"]["coupon"] = coupon  # (shared, as compact objects share it)
        subs.append(sub)
    book = mrr.MRRBook(subs, [])
    amounts = [book.amount_at(s, 1_700_000_100)[0] for s in subs]
    assert amounts == [5_800, 8_700, 5_800, 7_800, 5_800, 5_800 + 9_900, 2_900, 5_800]
    profiles = [book.profile(s) for s in subs]
    assert profiles[0] is profiles[4] and profiles[6] is profiles[7] and len({id(p) for p in profiles}) == 6
    assert [r.row() for r in book.subscriptions_at(1_700_000_100)] == \
        [mrr.state_mrr(s, 1_700_000_100, 30).row() for s in subs]


def test_exact_sums_are_the_sums():
    values = [Fraction(2_900), Fraction(700 * 52, 12), Fraction(99_000, 12), Fraction(1, 3), 5, Fraction(-7, 12)] * 50
    total = money.ExactSum()
    for v in values:
        total.add(v)
    assert total.value() == sum(values, Fraction(0)) and isinstance(total.value(), Fraction)
    assert money.ExactSum().value() == 0


def test_a_record_reads_like_a_dict():
    c = rdata.Compactor()
    sub = c.subscription({"id": "sub_1", "currency": "usd", "status": "active", "created": 1_700_000_000,
                          "ended_at": None, "items": {"data": [{"id": "si_1", "quantity": 2, "price": {"id": "p"}}],
                                                      "has_more": False, "url": "/x"},
                          "customer": {"id": "cus_1", "name": "A", "email": "a@example.com"}, "metadata": {"a": "b"}})
    assert sub["id"] == "sub_1" and sub.get("ended_at", 5) is None and "ended_at" in sub
    assert "start_date" not in sub and sub.get("start_date") is None and sub.get("start_date", 5) == 5
    with pytest.raises(KeyError):
        sub["metadata"]
    assert list(sub) == ["id", "currency", "status", "created", "ended_at", "customer", "items"]
    assert sub["items"] == {"has_more": False, "data": [{"id": "si_1", "quantity": 2, "price": {"id": "p"}}]}
    assert sub["customer"] == {"id": "cus_1", "name": "A"} and set(sub["customer"]) == {"id", "name"}
    assert dict(sub)["created"] == 1_700_000_000 and len(sub) == 7 and bool(sub)
    assert not rdata.Transitions.of({}) and rdata.Transitions.of({}) == {}
    bare = c.invoice({"id": "in_1", "lines": None})
    assert bare["lines"] is None and bare == {"id": "in_1", "lines": None}
    assert c.invoice({"id": "in_2", "lines": {"data": None}})["lines"] == {"data": None}
    assert "lines" not in c.invoice({"id": "in_3"})
    # the same id named by another kind is one string
    invoice = c.invoice({"id": "in_4", "charge": "ch_" + "9" * 24, "status": "paid", "currency": "usd"})
    charge = c.charge({"id": "ch_" + "9" * 24, "invoice": {"id": "in_4"}, "currency": "usd", "created": 1_700_000_000})
    assert charge["id"] is invoice["charge"] and charge["invoice"] == "in_4"


# --------------------------------------------------------------------------- the trimmed dicts, as before records


def _pick(obj, keys):
    return {k: obj[k] for k in keys if k in obj}


def _price(price):
    if not isinstance(price, dict):
        return price
    out = _pick(price, ("id", "billing_scheme", "tiers_mode", "unit_amount", "unit_amount_decimal", "nickname", "lookup_key"))
    if "recurring" in price:
        r = price["recurring"]
        out["recurring"] = _pick(r, ("interval", "interval_count", "usage_type")) if isinstance(r, dict) else r
    if "metadata" in price:
        m = price["metadata"]
        out["metadata"] = ({"plan": m["plan"]} if "plan" in m else {}) if isinstance(m, dict) else m
    if "product" in price:
        p = price["product"]
        out["product"] = _pick(p, ("id", "name")) if isinstance(p, dict) else p
    return out


def _discount(discount):
    if not isinstance(discount, dict):
        return discount
    out = _pick(discount, ("start", "end"))
    if "coupon" in discount:
        c = discount["coupon"]
        out["coupon"] = _pick(c, ("id", "duration", "duration_in_months", "percent_off", "amount_off", "currency")) \
            if isinstance(c, dict) else c
    return out


def _listing(listing, item):
    if not isinstance(listing, dict):
        return listing
    out = _pick(listing, ("has_more",))
    if "data" in listing:
        out["data"] = [item(x) for x in listing["data"] or ()] if listing["data"] is not None else None
    return out


def _ref(ref):
    return ref if ref is None or isinstance(ref, str) else ref.get("id")


def reference_trim(kind: str, obj: dict) -> dict:
    """The dict ``data.Compactor`` kept of ``obj`` before it kept records (its code, as it was, but
    for a subscription item's id: now kept only when its price has no monthly amount; and a
    balance transaction's id, no longer kept)."""
    if kind == "subscriptions":
        out = _pick(obj, ("id", "currency", "status", "created", "start_date", "current_period_start", "ended_at",
                          "canceled_at", "trial_start", "trial_end", "cancel_at_period_end", "pause_collection"))
        if "customer" in obj:
            customer = obj["customer"]
            if isinstance(customer, dict):
                customer = _pick(customer, ("id", "name"))
                if "discount" in obj["customer"]:
                    customer["discount"] = _discount(obj["customer"]["discount"])
            out["customer"] = customer
        if "discount" in obj:
            out["discount"] = _discount(obj["discount"])
        if "items" in obj:
            def item(i):
                out = _pick(i, ("id", "quantity"))
                if "price" in i:
                    out["price"] = _price(i["price"])
                    if isinstance(i["price"], dict) and mrr.unpriced_reason(out["price"]) is None:
                        out.pop("id", None)  # (records keep an item's id only for the unpriced_items check)
                return out
            out["items"] = _listing(obj["items"], item)
        return out
    if kind == "invoices":
        out = _pick(obj, ("id", "status", "currency", "created", "amount_paid"))
        for ref in ("subscription", "customer", "charge"):
            if ref in obj:
                out[ref] = _ref(obj[ref])
        if "discount" in obj:
            out["discount"] = _discount(obj["discount"])
        if "total_discount_amounts" in obj:
            a = obj["total_discount_amounts"]
            out["total_discount_amounts"] = [_pick(x, ("amount",)) for x in a] if a else a
        if "status_transitions" in obj:
            t = obj["status_transitions"]
            out["status_transitions"] = _pick(t, ("paid_at",)) if isinstance(t, dict) else t
        if "lines" in obj:
            def line(x):
                out = _pick(x, ("type", "proration", "amount", "quantity"))
                if "period" in x:
                    out["period"] = _pick(x["period"], ("start", "end")) if isinstance(x["period"], dict) else x["period"]
                if "price" in x:
                    out["price"] = _price(x["price"])
                return out
            out["lines"] = _listing(obj["lines"], line)
        return out
    fields, refs = {
        "charges": (("id", "created", "status", "amount", "currency", "failure_code", "failure_message"), ("customer", "invoice")),
        "refunds": (("id", "created", "status", "amount", "currency"), ("charge",)),
        "disputes": (("id", "created", "status", "amount", "currency"), ("charge",)),
        # (a balance transaction's id: never read, not kept)
        "balance_transactions": (("created", "type", "reporting_category", "amount", "fee", "net", "currency"), ("source",)),
    }[kind]
    out = _pick(obj, fields)
    for ref in refs:
        if ref in obj:
            out[ref] = _ref(obj[ref])
    return out
