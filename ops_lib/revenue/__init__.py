"""The revenue_report runbook: MRR/ARR and its movements, revenue, refunds, fees and payment
success — from Stripe's objects, with ChartMogul's and Baremetrics' definitions, per currency,
reconciled with the app's own payment records.

    period.py     the report's period (a month, a range of days, the current month so far; UTC)
    data.py       everything read from Stripe, once per kind, filters pushed to the API; kept as slotted records
    money.py      minor units, zero- and three-decimal currencies, display
    mrr.py        a subscription's MRR at any moment (current state, invoices, documented fallback)
    snapshots.py  every subscription's MRR at one moment at once, as arrays (the history's snapshots)
    movements.py  new / expansion / reactivation / contraction / churn per month and per customer
    revenue.py    revenue by plan and currency, fees and net, payment success rate
    payments.py   the app's payments (through the schema mapping) against Stripe's charges
    checks.py     payment_success_rate_low, revenue_mismatch, mrr_identity_broken, unpriced_items
    plots.py      MRR with its movements, revenue by plan, success rate over time
    synthetic.py  Stripe-like objects at any scale, in-process (the benchmark and the tests)
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Mapping

from ..findings import Metrics
from . import money

__all__ = ["CHECKS", "mrr_metrics", "revenue_metrics", "run_checks"]


def mrr_metrics(totals: Iterable[Mapping]) -> Metrics:
    """MRR, ARR and paying customers per currency, for the run's JSON (major units)."""
    out = {}
    for row in totals:
        cur = row["currency"]
        out[f"mrr_{cur}"] = row["mrr"]
        out[f"arr_{cur}"] = row["arr"]
        out[f"paying_customers_{cur}"] = row["paying_customers"]
    return Metrics(out)


def revenue_metrics(rows: Iterable[Mapping], success: Mapping | None = None) -> Metrics:
    """Gross, refunded, disputed, fees and net per currency (major units), and the success rate."""
    from .revenue import revenue_totals

    out: dict = {}
    for total in revenue_totals(list(rows)):
        cur = total["currency"]
        for key in ("gross", "refunded", "disputed", "fees", "net"):
            out[f"{key}_{cur}"] = money.major(Fraction(total[key]), cur)
    if success:
        out.update({"charges_succeeded": success["succeeded"], "charges_failed": success["failed"],
                    "charges_pending": success["pending"], "payment_success_rate_pct": success["success_rate_pct"]})
    return Metrics(out)


from .checks import CHECKS, run_checks  # noqa: E402 - check id -> function; the one way to run them all
