"""The revenue report keeps each Stripe object with only the fields its computations read
(``data.Compactor``): every figure, table and finding must be the same as from the whole objects.

Against the same demo-like target as tests/test_revenue_report.py (real PostgreSQL, the real SDK
against the emulator), at each of its moments, the period's month and the previous one.
"""
from __future__ import annotations

from ops_lib.revenue import checks, conversion, data as rdata, movements, mrr, payments, revenue
from ops_lib.revenue.period import resolve_period
from ops_lib.stripe_api import make_client

from .test_revenue_report import API_KEY, MAPPING, target  # noqa: F401  (the module's fixture)


def everything(stripe_data: rdata.StripeData, app: list[dict]) -> dict:
    """What the notebook computes from one fetch, as plain values."""
    period = stripe_data.period
    book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
    at_end = book.closing(period.until_ts)
    totals = mrr.mrr_by_currency(at_end)
    history = movements.history(book, period, months=12)
    charges = stripe_data.charges_in_period
    cohorts = conversion.trial_cohorts(stripe_data.subscriptions, period.until_ts)
    return {
        "metrics": dict(stripe_data.metrics()),
        "totals": totals,
        "subscriptions": mrr.subscription_rows(at_end),
        "unpriced": checks.unpriced_items(at_end).to_dict(),
        "history": history,
        "identity": checks.mrr_identity_broken(history, totals).to_dict(),
        "moves": movements.customer_table(movements.customer_movements(book, period.start_ts, period.until_ts), book),
        "movement_metrics": dict(movements.movement_metrics(book, period)),
        "revenue": revenue.revenue_by_plan(stripe_data),
        "success": revenue.success_rate(charges),
        "failures": revenue.failures_by_code(charges),
        "over_time": revenue.success_over_time(charges, period),
        "failed": revenue.failed_charge_rows(charges),
        "low_success": checks.payment_success_rate_low(charges, threshold_pct=99.0).to_dict(),
        "cohorts": cohorts,
        "conversion": conversion.trial_conversion_low(cohorts, 20.0).to_dict(),
        "mismatch": checks.revenue_mismatch(payments.reconcile(stripe_data, app), tolerance=0.0).to_dict(),
        "app_query": app,
    }


def test_compact_objects_give_every_figure_the_whole_objects_give(target):  # noqa: F811
    client = make_client(API_KEY, target["api_base"])
    this_month = resolve_period(now=target["data"].now)
    for period in (this_month, resolve_period("previous", now=target["data"].now)):
        whole = rdata.fetch_stripe(client, period, compact=False)
        compact = rdata.fetch_stripe(client, period)
        assert [s["id"] for s in compact.subscriptions] == [s["id"] for s in whole.subscriptions]
        assert [i["id"] for i in compact.invoices] == [i["id"] for i in whole.invoices]
        with target["engine"].connect() as conn:
            app_whole = payments.app_payments(conn, MAPPING, whole)
            app_compact = payments.app_payments(conn, MAPPING, compact)
        found_whole, found_compact = everything(whole, app_whole), everything(compact, app_compact)
        assert found_whole["subscriptions"] and found_whole["history"] and found_whole["revenue"]
        if period is this_month:  # the planted mismatches: the comparison covers findings with items
            assert found_whole["mismatch"]["items"]
        for key in found_whole:
            assert found_compact[key] == found_whole[key], key


def test_compact_objects_hold_only_what_is_read(target):  # noqa: F811
    client = make_client(API_KEY, target["api_base"])
    compact = rdata.fetch_stripe(client, resolve_period(now=target["data"].now))
    sub = compact.subscriptions[0]
    assert "metadata" not in sub and "default_payment_method" not in sub
    assert set(sub["customer"]) <= {"id", "name", "discount"}
    invoice = next(i for i in compact.invoices if (i.get("lines") or {}).get("data"))
    assert "customer_email" not in invoice and "hosted_invoice_url" not in invoice
    assert isinstance(invoice["customer"], str)
    # The same price on many invoice lines is one object.
    prices = [line["price"] for i in compact.invoices for line in i["lines"]["data"] if line.get("price")]
    assert len({id(p) for p in prices}) < len(prices)


def history_all_snapshots_first(book: mrr.MRRBook, period, months: int) -> list[dict]:
    """movements.history as it was before it went month by month (every snapshot held at once)."""
    from ops_lib.revenue.period import history_buckets
    buckets = history_buckets(period, months)
    currencies: set[str] = set()
    for _, start, end in buckets:
        currencies |= {cur for _, cur in book.snapshot_closing(start)} | {cur for _, cur in book.snapshot_closing(end)}
    rows = []
    for label, start, end in buckets:
        rows.extend(movements.summarise(book, label, start, end, currencies))
    return sorted(rows, key=lambda r: (r["currency"], r["from"]))


def test_the_month_by_month_history_is_the_history_of_all_snapshots(target):  # noqa: F811
    client = make_client(API_KEY, target["api_base"])
    stripe_data = rdata.fetch_stripe(client, resolve_period(now=target["data"].now))
    book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
    for months in (1, 3, 12, 24):  # 24: back before some currencies had any MRR (their rows of zeros)
        expected = history_all_snapshots_first(mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices), stripe_data.period, months)
        assert movements.history(book, stripe_data.period, months=months) == expected, months
    assert len(book._snapshots) <= mrr.SNAPSHOTS_KEPT
