"""The revenue report's rules on hand-made Stripe objects: MRR normalisation, discounts, statuses,
unpriced items, currencies; the history rebuilt from invoices; each movement type on a made-up
customer history and the identity; revenue dating; and each check with a problem and healthy."""
from __future__ import annotations

import io
from datetime import datetime, timezone
from fractions import Fraction

import pytest

from ops_lib.errors import ParameterError
from ops_lib.revenue import checks, money, movements, mrr, payments, plots, revenue
from ops_lib.revenue.data import StripeData
from ops_lib.revenue.period import Period, history_buckets, resolve_period
from ops_lib.stripe_emulator import objects as o

DAY = 86_400


def ts(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


NOW = ts(2026, 11, 20, 12)


def price(amount=2_900, interval="month", count=1, currency="usd", **kw):
    return o.make_price(product="prod_x", unit_amount=amount, interval=interval, interval_count=count,
                        currency=currency, created=ts(2020, 1, 1), **kw)


def sub(items, *, status="active", created=ts(2026, 1, 10), start=None, end=None, customer="cus_A", **kw):
    return o.make_subscription(customer=customer, items=items, status=status, created=created,
                               current_period_start=start if start is not None else ts(2026, 11, 10),
                               current_period_end=end, **kw)


def monthly(s, moment=NOW, grace=30) -> Fraction:
    return mrr.state_mrr(s, moment, grace).amount


# --------------------------------------------------------------------------- MRR of one subscription


def test_items_are_normalised_to_a_month():
    assert mrr.monthly_factor({"interval": "year", "interval_count": 1}) == Fraction(1, 12)
    assert mrr.monthly_factor({"interval": "week", "interval_count": 2}) == Fraction(26, 12)
    assert mrr.monthly_factor({"interval": "day", "interval_count": 1}) == Fraction(365, 12)
    assert monthly(sub([price(120_000, "year")])) == 10_000
    assert monthly(sub([price(700, "week")])) == Fraction(700 * 52, 12)
    assert monthly(sub([price(100, "day")])) == Fraction(100 * 365, 12)
    assert monthly(sub([price(30_000, "month", 3)])) == 10_000
    assert monthly(sub([price(1_000, "week", 2)])) == Fraction(1_000 * 52, 24)
    assert monthly(sub([(price(2_900), 4), (price(500), 2)])) == 4 * 2_900 + 2 * 500
    sub_cents = o.make_price(product="p", unit_amount=1, interval="month")
    sub_cents["unit_amount_decimal"] = "0.5"
    assert monthly(sub([(sub_cents, 3)])) == Fraction(3, 2)


@pytest.mark.parametrize("coupon, expected", [
    (dict(percent_off=20, duration="forever"), Fraction(2_320)),
    (dict(percent_off=33.33, duration="forever"), Fraction(2_900) * Fraction(6667, 10_000)),
    (dict(amount_off=500, currency="usd", duration="forever"), Fraction(2_400)),
    (dict(amount_off=5_000, currency="usd", duration="forever"), Fraction(0)),  # never below zero
    (dict(amount_off=500, currency="eur", duration="forever"), Fraction(2_900)),  # not its currency
    (dict(percent_off=50, duration="repeating", duration_in_months=12), Fraction(1_450)),  # still running
    (dict(percent_off=50, duration="repeating", duration_in_months=3), Fraction(2_900)),  # ended
    (dict(percent_off=50, duration="once"), Fraction(2_900)),  # used on the first invoice, months ago
])
def test_discounts_by_kind_and_duration(coupon, expected):
    created = ts(2026, 5, 10)  # a repeating coupon of 12 months runs until 2027-05, of 3 until 2026-08
    assert monthly(sub([price()], created=created, coupon=o.make_coupon(**coupon))) == expected


def test_an_amount_off_is_per_invoice_so_normalised_like_the_items():
    yearly = sub([price(120_000, "year")], coupon=o.make_coupon(amount_off=12_000, currency="usd", duration="forever"))
    assert monthly(yearly) == 10_000 - 1_000


def test_a_once_discount_counts_for_the_period_it_discounts_and_a_customer_discount_applies():
    fresh = sub([price()], created=ts(2026, 11, 10), start=ts(2026, 11, 10),
                coupon=o.make_coupon(amount_off=500, currency="usd", duration="once"))
    assert monthly(fresh) == 2_400
    assert monthly(fresh, moment=ts(2026, 12, 15)) == 2_400  # still attached: Stripe removes it after use
    later = dict(fresh, current_period_start=ts(2026, 12, 10))
    assert monthly(later, moment=ts(2026, 12, 15)) == 2_900
    customer = o.make_customer(id="cus_A")
    customer["discount"] = o.make_discount(o.make_coupon(percent_off=10, duration="forever"), start=ts(2025, 1, 1),
                                           customer="cus_A")
    assert monthly(dict(sub([price()]), customer=customer)) == 2_610
    own = sub([price()], coupon=o.make_coupon(percent_off=50, duration="forever"))
    assert monthly(dict(own, customer=customer)) == 1_450  # the subscription's own discount wins


@pytest.mark.parametrize("status", ["trialing", "incomplete", "incomplete_expired", "paused", "canceled", "unpaid"])
def test_only_paying_statuses_count(status):
    result = mrr.state_mrr(sub([price()], status=status), NOW, 30)
    assert result.amount == 0 and not result.counted and result.gross == 2_900


def test_past_due_counts_within_its_grace_and_cancel_at_period_end_until_the_end():
    late = sub([price()], status="past_due", start=NOW - 10 * DAY)
    assert monthly(late) == 2_900 and mrr.state_mrr(late, NOW, 30).basis.startswith("past_due 10 d, within")
    assert monthly(late, grace=7) == 0
    assert monthly(sub([price()], status="past_due", start=NOW - 31 * DAY)) == 0
    leaving = sub([price()], cancel_at_period_end=True)
    assert monthly(leaving) == 2_900 and "cancels at period end" in mrr.state_mrr(leaving, NOW, 30).basis
    paused = dict(sub([price()]), pause_collection={"behavior": "void", "resumes_at": None})
    assert monthly(paused) == 0


def test_tiered_and_metered_items_are_reported_not_guessed():
    tiered = o.make_price(product="p", interval="month", tiers=[{"up_to": 100, "unit_amount": 5},
                                                                {"up_to": None, "unit_amount": 1}], id="price_tiered")
    metered = o.make_price(product="p", unit_amount=3, interval="month", usage_type="metered", id="price_metered")
    s = sub([price(), (tiered, 500), (metered, None)])
    result = mrr.state_mrr(s, NOW, 30)
    assert result.amount == 2_900 and [u["price"] for u in result.unpriced] == ["price_tiered", "price_metered"]
    finding = checks.unpriced_items([result])
    assert finding.severity == "info" and finding.items == sorted(u["item"] for u in result.unpriced)
    assert {r["reason"].split(":")[0].split(" ")[0] for r in finding.rows} == {"tiered", "metered"}
    # Only subscriptions that count: a trial's metered item is nobody's concern yet.
    assert checks.unpriced_items([mrr.state_mrr(dict(s, status="trialing"), NOW, 30)]).severity == "ok"
    assert checks.unpriced_items([mrr.state_mrr(sub([price()]), NOW, 30)]).severity == "ok"


def test_currencies_are_never_summed_and_zero_decimal_ones_are_not_divided():
    results = [mrr.state_mrr(sub([price(4_900, currency="jpy")], customer="cus_J"), NOW, 30),
               mrr.state_mrr(sub([price(2_900)], customer="cus_U"), NOW, 30),
               mrr.state_mrr(sub([price(700, "week")], customer="cus_W"), NOW, 30)]
    totals = {r["currency"]: r for r in mrr.mrr_by_currency(results)}
    assert totals["jpy"]["mrr"] == 4_900.0 and totals["jpy"]["arr"] == 58_800.0
    assert totals["usd"]["mrr_minor"] == 2_900 + Fraction(700 * 52, 12)
    assert totals["usd"]["mrr"] == 59.33 and totals["usd"]["arr"] == 712.0
    assert money.major(1_234, "kwd") == 1.234 and money.fmt(4_900, "jpy") == "4,900 JPY"
    assert money.minor(0.5, "usd") == 50 and money.minor(1, "jpy") == 1


# --------------------------------------------------------------------------- the history from invoices


def invoice_for(s, period, *, status="paid", quantity=None, line_price=None, amount=None, extra=(), discount=None):
    item = s["items"]["data"][0]
    p = line_price or item["price"]
    line = o.make_invoice_line(p, quantity if quantity is not None else item.get("quantity", 1), period=period,
                               subscription=s["id"], subscription_item=item["id"], amount=amount)
    return o.make_invoice(customer=s["customer"], subscription=s["id"], lines=[line, *extra], status=status,
                          created=period[0], discount=discount)


def test_the_history_reads_invoices_before_the_current_period():
    s = sub([(price(), 3)], created=ts(2026, 8, 1), start=ts(2026, 11, 1))
    invoices = [invoice_for(s, (ts(2026, 8, 1), ts(2026, 9, 1)), quantity=1),
                invoice_for(s, (ts(2026, 9, 1), ts(2026, 10, 1)), quantity=2),
                invoice_for(s, (ts(2026, 10, 1), ts(2026, 11, 1)), quantity=2, status="void"),
                invoice_for(s, (ts(2026, 11, 1), ts(2026, 12, 1)))]
    book = mrr.MRRBook([s], invoices)
    assert book.at(s, ts(2026, 7, 15)).amount == 0  # before it started
    assert book.at(s, ts(2026, 8, 15)).amount == 2_900
    assert book.at(s, ts(2026, 9, 15)).amount == 5_800
    assert book.at(s, ts(2026, 10, 15)).amount == 0  # a void invoice: a gap, not a guess
    assert book.at(s, NOW).amount == 8_700 and book.at(s, NOW).basis == "active"


def test_trials_prorations_unpaid_invoices_and_the_fallback():
    s = sub([price()], created=ts(2026, 6, 1), start=ts(2026, 11, 1), trial_end=None)
    trial = invoice_for(s, (ts(2026, 6, 1), ts(2026, 6, 15)), amount=0)
    credit = o.make_invoice_line(price(), 1, period=(ts(2026, 7, 10), ts(2026, 8, 1)), subscription=s["id"],
                                 subscription_item=s["items"]["data"][0]["id"], amount=-1_000, proration=True)
    upgrade = invoice_for(s, (ts(2026, 6, 15), ts(2026, 7, 15)), extra=[credit])
    unpaid = invoice_for(s, (ts(2026, 7, 15), ts(2026, 8, 15)), status="open")
    book = mrr.MRRBook([s], [trial, upgrade, unpaid], grace_days=10)
    assert book.at(s, ts(2026, 6, 10)).amount == 0  # a trial's $0 line
    assert book.at(s, ts(2026, 7, 1)).amount == 2_900  # the proration credit is not recurring
    assert book.at(s, ts(2026, 7, 20)).amount == 2_900  # unpaid, 5 days in: within the grace
    assert book.at(s, ts(2026, 8, 1)).amount == 0  # 17 days in: beyond
    older = sub([price()], created=ts(2025, 1, 1), start=ts(2026, 11, 1), customer="cus_B")
    assert mrr.MRRBook([older], []).at(older, ts(2025, 6, 1)).amount == 2_900  # before any invoice: assumed
    assert "assumed" in mrr.MRRBook([older], []).at(older, ts(2025, 6, 1)).basis
    trialing_then = dict(older, trial_end=ts(2025, 2, 1))
    assert mrr.MRRBook([trialing_then], []).at(trialing_then, ts(2025, 1, 15)).amount == 0


def history_book():
    """Six customers over four months (2026-08 … 2026-11), one movement each, and a second currency."""
    pro, team = price(2_900, id="price_pro"), price(9_900, id="price_team")
    subs, invoices = [], []

    def monthly_subscription(customer, p, first, last, *, status="active", quantity=1, canceled=None, per_month=None):
        starts = [ts(2026, m, 1) for m in range(first, last + 1)]
        created = starts[0]
        s = sub([(p, quantity)], customer=customer, created=created, status=status, start=starts[-1],
                end=o.add_interval(starts[-1], "month"), canceled_at=canceled)
        subs.append(s)
        for n, start in enumerate(starts):
            q = per_month[n] if per_month else quantity
            invoices.append(invoice_for(s, (start, o.add_interval(start, "month")), quantity=q))
        return s

    monthly_subscription("cus_new", pro, 10, 11)                                    # new in October
    monthly_subscription("cus_grow", pro, 7, 11, quantity=3, per_month=[1, 1, 1, 1, 3])  # expansion in November
    down = monthly_subscription("cus_shrink", pro, 7, 11)                          # contraction in October
    for inv in invoices:
        if inv["subscription"] == down["id"] and inv["period_start"] < ts(2026, 10, 1):
            line = inv["lines"]["data"][0]
            line["price"], line["amount"] = team, 9_900
    monthly_subscription("cus_gone", team, 7, 10, status="canceled", canceled=ts(2026, 10, 20))   # churn in October
    monthly_subscription("cus_two", pro, 7, 11)                                     # keeps Pro …
    monthly_subscription("cus_two", team, 7, 9, status="canceled", canceled=ts(2026, 9, 15))      # … drops Team: contraction
    monthly_subscription("cus_back", pro, 7, 8, status="canceled", canceled=ts(2026, 8, 20))      # churn in August …
    monthly_subscription("cus_back", team, 11, 11)                                  # … reactivation in November
    monthly_subscription("cus_grow", price(4_900, currency="jpy", id="price_jpy"), 11, 11)  # a second currency
    return mrr.MRRBook(subs, invoices)


def period_nov():
    return Period(start=datetime(2026, 11, 1, tzinfo=timezone.utc), end=datetime(2026, 12, 1, tzinfo=timezone.utc),
                  now=datetime.fromtimestamp(NOW, timezone.utc), label="2026-11")


def test_each_movement_type_on_a_made_up_history():
    book = history_book()
    rows = movements.history(book, period_nov(), months=4)
    by = {(r["currency"], r["month"]): r for r in rows}
    seen = {}
    for month in ("2026-08", "2026-09", "2026-10", "2026-11"):
        for m in movements.customer_movements(book, *[b[1:] for b in history_buckets(period_nov(), 4) if b[0] == month][0]):
            seen.setdefault(month, {})[(m["customer"], m["currency"])] = m["movement"]
    assert seen["2026-08"] == {("cus_back", "usd"): "churn"}
    assert seen["2026-09"] == {("cus_two", "usd"): "contraction"}  # Team dropped, Pro kept: not a churn
    assert seen["2026-10"] == {("cus_new", "usd"): "new", ("cus_shrink", "usd"): "contraction",
                               ("cus_gone", "usd"): "churn"}
    assert seen["2026-11"] == {("cus_grow", "usd"): "expansion", ("cus_back", "usd"): "reactivation",
                               ("cus_grow", "jpy"): "expansion"}  # already paying in USD: not new
    nov, oct_ = by[("usd", "2026-11")], by[("usd", "2026-10")]
    assert (nov["expansion"], nov["reactivation"], nov["new"]) == (2 * 2_900, 9_900, 0)
    assert (oct_["new"], oct_["contraction"], oct_["churn"]) == (2_900, 7_000, 9_900)
    assert by[("jpy", "2026-11")]["expansion"] == 4_900 and by[("jpy", "2026-10")]["end"] == 0
    for row in rows:
        assert movements.identity_gap(row) == 0
        assert row["start"] + row["new"] + row["expansion"] + row["reactivation"] - row["contraction"] - row["churn"] == row["end"]
    totals = mrr.mrr_by_currency(book.closing(period_nov().until_ts))
    assert checks.mrr_identity_broken(rows, totals).severity == "ok"
    table = movements.history_table(rows)
    assert {r["identity_residue"] for r in table} == {0.0}
    assert [r["movement"] for r in movements.customer_table(movements.customer_movements(
        book, ts(2026, 11, 1), NOW))] == ["expansion", "expansion", "reactivation"]  # jpy, then usd


@pytest.mark.parametrize("before, after, others, had, expected", [
    (0, 10, (False, False), False, "new"),
    (0, 10, (False, False), True, "reactivation"),
    (0, 10, (True, True), False, "expansion"),
    (10, 0, (False, False), True, "churn"),
    (10, 0, (False, True), True, "contraction"),
    (10, 15, (False, False), True, "expansion"),
    (15, 10, (False, False), True, "contraction"),
    (10, 10, (False, False), True, None),
])
def test_classify(before, after, others, had, expected):
    assert movements.classify(Fraction(before), Fraction(after), other_before=others[0], other_after=others[1],
                              had_mrr_before=had) == expected


def test_a_broken_history_is_reported():
    book = history_book()
    rows = movements.history(book, period_nov(), months=4)
    totals = mrr.mrr_by_currency(book.closing(period_nov().until_ts))
    broken = [dict(r) for r in rows]
    oct_usd = next(r for r in broken if (r["currency"], r["month"]) == ("usd", "2026-10"))
    oct_usd["churn"] -= 9_900  # a churn lost: the movements no longer add up
    finding = checks.mrr_identity_broken(broken, totals)
    assert finding.severity == "warning" and finding.items == ["usd:2026-10"]
    assert finding.rows[0]["gap"] == -99.0

    jumped = [dict(r) for r in rows]
    for r in jumped:
        if (r["currency"], r["month"]) == ("usd", "2026-09"):
            r["start"] += 100
            r["end"] += 100  # adds up, but does not continue from August
    assert checks.mrr_identity_broken(jumped, totals).items == ["usd:2026-09", "usd:2026-10"]

    stale = [dict(t, mrr_minor=t["mrr_minor"] + 1) if t["currency"] == "jpy" else t for t in totals]
    assert checks.mrr_identity_broken(rows, stale).items == ["jpy:2026-11"]
    assert checks.mrr_identity_broken(rows, totals).severity == "ok"


# --------------------------------------------------------------------------- revenue and payments


def stripe_data(**kinds) -> StripeData:
    period = period_nov()
    return StripeData(period=period, history_months=12, currencies=(), **kinds)


def test_revenue_is_dated_when_paid_refunded_or_disputed():
    pro, addon = price(2_900, metadata={"plan": "pro"}), price(1_000, nickname="Add-on")
    s = sub([pro, addon])
    charge = o.make_charge(amount=3_900, customer="cus_A", created=ts(2026, 11, 3), balance_transaction="txn_1")
    lines = [o.make_invoice_line(pro, 1, period=(ts(2026, 10, 28), ts(2026, 11, 28)), subscription=s["id"],
                                 subscription_item="si_1"),
             o.make_invoice_line(addon, 1, period=(ts(2026, 10, 28), ts(2026, 11, 28)), subscription=s["id"],
                                 subscription_item="si_2")]
    late = o.make_invoice(customer="cus_A", subscription=s["id"], lines=lines, created=ts(2026, 10, 28),
                          paid_at=ts(2026, 11, 3), charge=charge)        # created in October, paid in November
    early = o.make_invoice(customer="cus_A", subscription=s["id"], lines=lines[:1], created=ts(2026, 9, 28),
                           paid_at=ts(2026, 10, 1), charge="ch_old")    # paid in October: not this period
    yen = o.make_invoice(customer="cus_J", lines=[o.make_invoice_line(price(4_900, currency="jpy"), 1,
                                                                        period=(ts(2026, 11, 2), ts(2026, 12, 2)))],
                         created=ts(2026, 11, 2), paid_at=ts(2026, 11, 2))
    one_off = o.make_charge(amount=1_500, customer="cus_A", created=ts(2026, 11, 5))
    refund = o.make_refund(charge="ch_old", amount=2_900, currency="usd", created=ts(2026, 11, 6))
    stray = o.make_refund(charge="ch_unknown", amount=700, currency="usd", created=ts(2026, 11, 9))
    before = o.make_refund(charge="ch_old", amount=100, currency="usd", created=ts(2026, 10, 30))  # not this period
    dispute = o.make_dispute(charge=charge, created=ts(2026, 11, 7))
    txns = [o.make_balance_transaction(amount=3_900, source=charge["id"], created=ts(2026, 11, 3)),
            o.make_balance_transaction(amount=-2_900, type="refund", source=refund["id"], created=ts(2026, 11, 6)),
            o.make_balance_transaction(amount=-3_900, type="adjustment", source=dispute["id"], created=ts(2026, 11, 7)),
            o.make_balance_transaction(amount=-50_000, type="payout", source="po_1", created=ts(2026, 11, 8))]
    data = stripe_data(invoices=[late, early, yen], charges=[charge, one_off], refunds=[refund, stray, before],
                       disputes=[dispute], balance_transactions=txns)
    rows = {(r["currency"], r["plan"]): r for r in revenue.revenue_by_plan(data)}
    assert rows[("usd", "pro")]["gross"] == 2_900 and rows[("usd", "Add-on")]["gross"] == 1_000
    assert rows[("usd", "pro")]["invoices_paid"] == 1
    assert rows[("usd", revenue.ONE_OFF)]["gross"] == 1_500
    assert rows[("usd", "pro")]["refunded"] == 2_900  # October's charge, refunded in November, on its plan
    assert rows[("usd", revenue.UNKNOWN)]["refunded"] == 700  # a charge outside the data read: said so
    assert rows[("usd", "pro")]["disputed"] + rows[("usd", "Add-on")]["disputed"] == 3_900
    assert rows[("jpy", "prod_x")]["gross"] == 4_900
    totals = {t["currency"]: t for t in revenue.revenue_totals(rows.values())}
    assert totals["usd"]["fees"] == sum(t["fee"] for t in txns[:3])  # the payout is not revenue
    assert totals["usd"]["net"] == sum(t["net"] for t in txns[:3])
    table = revenue.revenue_table(list(rows.values()))
    assert [r["plan"] for r in table if r["currency"] == "jpy"] == ["prod_x", "TOTAL"]
    assert next(r for r in table if r["currency"] == "jpy")["gross"] == 4_900.0


def charges(*statuses, created=ts(2026, 11, 5)):
    out = []
    for n, status in enumerate(statuses):
        code = {"failed": ["card_declined", "insufficient_funds", "expired_card"][n % 3]}.get(status)
        out.append(o.make_charge(amount=1_000, customer="cus_A", status=status, failure_code=code, created=created + n))
    return out


def test_payment_success_rate_low():
    healthy = charges(*["succeeded"] * 99, "failed")
    assert revenue.success_rate(healthy)["success_rate_pct"] == 99.0
    assert checks.payment_success_rate_low(healthy).severity == "ok"
    pending = charges(*["succeeded"] * 99, "failed", *["pending"] * 20)  # pending left out
    assert checks.payment_success_rate_low(pending).severity == "ok"
    low = charges(*["succeeded"] * 97, "failed", "failed", "failed", "pending")
    finding = checks.payment_success_rate_low(low)
    assert finding.severity == "warning" and finding.items == [c["id"] for c in low if c["status"] == "failed"]
    assert "97.00 %" in finding.title and "1 pending" in finding.note
    assert checks.payment_success_rate_low(low, threshold_pct=95).severity == "ok"
    assert checks.payment_success_rate_low(charges("pending")).severity == "ok"
    assert {r["failure_code"]: r["charges"] for r in revenue.failures_by_code(low)} == {
        "card_declined": 1, "insufficient_funds": 1, "expired_card": 1}
    days = revenue.success_over_time(low, period_nov())
    assert len(days) == 20 and sum(d["failed"] for d in days) == 3


def test_revenue_mismatch():
    def paid(charge, **changes):
        row = {"organisation_id": 1, "stripe_charge_id": charge["id"], "stripe_invoice_id": charge["invoice"],
               "amount": charge["amount"], "currency": charge["currency"], "status": "succeeded",
               "paid_at": datetime.fromtimestamp(charge["created"], timezone.utc)}
        return {**row, **changes}

    ok, missing, wrong, yen, by_invoice = (
        o.make_charge(amount=2_900, customer="cus_A", created=ts(2026, 11, 2)),
        o.make_charge(amount=2_900, customer="cus_B", created=ts(2026, 11, 3)),
        o.make_charge(amount=2_900, customer="cus_C", created=ts(2026, 11, 4)),
        o.make_charge(amount=4_900, currency="jpy", customer="cus_J", created=ts(2026, 11, 5)),
        o.make_charge(amount=2_900, customer="cus_D", created=ts(2026, 11, 6), invoice="in_D"))
    failed = o.make_charge(amount=2_900, customer="cus_E", status="failed", created=ts(2026, 11, 7))
    boundary = o.make_charge(amount=2_900, customer="cus_F", created=ts(2026, 10, 31, 23, 59))
    data = stripe_data(charges=[ok, missing, wrong, yen, by_invoice, failed, boundary])
    app = [paid(ok), paid(wrong, amount=2_990), paid(yen), paid(by_invoice, stripe_charge_id=None),
           paid(failed), paid(boundary, paid_at=datetime(2026, 11, 1, 0, 1, tzinfo=timezone.utc)),
           {"organisation_id": 9, "stripe_charge_id": "ch_ghost", "stripe_invoice_id": None, "amount": 100,
            "currency": "usd", "status": "succeeded", "paid_at": datetime(2026, 11, 8, tzinfo=timezone.utc)}]
    rows = payments.reconcile(data, app)
    assert [(r["charge"], r["problem"]) for r in rows] == [
        (missing["id"], "missing in the app"), (wrong["id"], "amount differs"),
        (failed["id"], "not paid in Stripe: the charge failed"),
        ("ch_ghost", "not paid in Stripe: no such charge within a day of the period")]
    assert rows[1]["stripe_amount"] == 29.0 and rows[1]["app_amount"] == 29.9
    finding = checks.revenue_mismatch(rows)
    assert finding.severity == "warning" and finding.items == [r["charge"] for r in rows]
    assert [r["charge"] for r in payments.reconcile(data, app, tolerance=1.0)] == [missing["id"], failed["id"], "ch_ghost"]
    assert payments.reconcile(stripe_data(charges=[yen]), [paid(yen, amount=4_901)], tolerance=0.5)[0]["problem"] == "amount differs"  # ¥1 > ¥0.5
    assert payments.reconcile(stripe_data(charges=[yen]), [paid(yen, currency="usd")])[0]["problem"].startswith("currency differs")
    assert payments.reconcile(stripe_data(charges=[yen]), [paid(yen, status="failed")])[0]["problem"] == "the app says failed"
    healthy = stripe_data(charges=[ok, yen, by_invoice, failed, boundary])
    good = [paid(ok), paid(yen), paid(by_invoice, stripe_charge_id=None), paid(boundary)]
    assert payments.reconcile(healthy, good) == [] and checks.revenue_mismatch([]).severity == "ok"


def test_a_tolerance_between_whole_minor_units_and_a_payment_compared_once():
    charge = o.make_charge(amount=2_900, customer="cus_A", created=ts(2026, 11, 2))
    odd = {**o.make_charge(amount=2_900, customer="cus_B", created=ts(2026, 11, 3)), "amount": 2_900.5}

    def paid(c, amount):
        return {"organisation_id": 1, "stripe_charge_id": c["id"], "stripe_invoice_id": None, "amount": amount,
                "currency": "usd", "status": "succeeded", "paid_at": datetime.fromtimestamp(c["created"], timezone.utc)}

    def problems(app, tolerance):
        return [r["problem"] for r in payments.reconcile(stripe_data(charges=[charge]), app, tolerance=tolerance)]

    assert problems([paid(charge, 2_901)], 0.015) == []  # 1¢ ≤ 1.5¢
    assert problems([paid(charge, 2_902)], 0.015) == ["amount differs"]  # 2¢ > 1.5¢
    assert problems([paid(charge, 2_898)], 0.02) == [] and problems([paid(charge, 2_897)], 0.02) == ["amount differs"]
    # a charge amount that is not whole minor units: compared with the exact tolerance
    assert payments.reconcile(stripe_data(charges=[odd]), [paid(odd, 2_902)], tolerance=0.014)[0]["problem"] == "amount differs"
    assert payments.reconcile(stripe_data(charges=[odd]), [paid(odd, 2_902)], tolerance=0.015) == []  # 1.5¢ ≤ 1.5¢
    # two app rows for one charge: each compared (the first alike, the second not)
    assert problems([paid(charge, 2_900), paid(charge, 2_950)], 0.0) == ["amount differs"]
    assert problems([paid(charge, 2_900), paid(charge, 2_900)], 0.0) == []


# --------------------------------------------------------------------------- period and plots


def test_the_period():
    now = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
    current = resolve_period(now=now)
    assert (current.start, current.until, current.label, current.so_far) == (
        datetime(2026, 11, 1, tzinfo=timezone.utc), now, "2026-11", True)
    october = resolve_period("2026-10", now=now)
    assert (october.start.day, october.end.month, october.until.month, october.so_far) == (1, 11, 11, False)
    days = resolve_period("2026-10", "2026-09-15", "2026-09-30", now=now)
    assert (days.start, days.end) == (datetime(2026, 9, 15, tzinfo=timezone.utc), datetime(2026, 10, 1, tzinfo=timezone.utc))
    assert resolve_period(start_date="2026-11-10", now=now).until == now
    previous = resolve_period("previous", now=datetime(2027, 1, 1, 6, tzinfo=timezone.utc))
    assert (previous.label, previous.start.year, previous.end, previous.so_far) == (
        "2026-12", 2026, datetime(2027, 1, 1, tzinfo=timezone.utc), False)
    for bad in (dict(period="2026-13"), dict(period="November"), dict(start_date="2026-11-31"),
                dict(start_date="2026-11-10", end_date="2026-11-01"), dict(period="2027-01")):
        with pytest.raises(ParameterError):
            resolve_period(**bad, now=now)
    assert [b[0] for b in history_buckets(current, 3)] == ["2026-09", "2026-10", "2026-11"]
    assert history_buckets(current, 1)[0][2] == int(now.timestamp())


def test_the_figures_render():
    book = history_book()
    rows = movements.history(book, period_nov(), months=4)
    figures = [plots.plot_mrr_history(rows), plots.plot_mrr_history(movements.history_table(rows)),
               plots.plot_mrr_history([]), plots.plot_revenue_by_plan([]),
               plots.plot_revenue_by_plan([{"currency": "usd", "plan": "pro", "invoices_paid": 1, "gross": 29.0,
                                            "refunded": 0.0, "disputed": 0.0, "fees": 1.14, "net": 27.86}]),
               plots.plot_success_rate(revenue.success_over_time(charges("succeeded", "failed"), period_nov())),
               plots.plot_success_rate([])]
    for fig in figures:
        fig.savefig(io.BytesIO(), format="png")
    assert figures[0]._repr_png_().startswith(b"\x89PNG")
