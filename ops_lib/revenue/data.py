"""Everything the revenue report reads from Stripe, fetched once per kind per run.

| kind                 | filter pushed to Stripe                            | used for                          |
|----------------------|----------------------------------------------------|-----------------------------------|
| subscriptions        | status=all (canceled ones carry churn), customers expanded (their discounts) | MRR, its history |
| invoices             | created ≥ the history's first month − 1 year (a yearly invoice covers a year) | MRR history, revenue |
| charges              | created in the period ± 1 day (the slack matches the app's late records) | success rate, reconciliation |
| refunds, disputes    | created in the period                              | revenue                           |
| balance transactions | created in the period                              | fees and net                      |

The ``currencies`` parameter is applied here, to every kind: nothing outside it reaches a table.
Stripe filters one currency per request at most (and only some lists), so the selection is made
on our side rather than multiplying requests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from ..findings import Metrics
from ..utc import from_epoch
from ..stripe_api import (list_balance_transactions, list_charges, list_disputes, list_invoices,
                          list_refunds, list_subscriptions)
from .period import Period, history_buckets

YEAR_LOOKBACK = timedelta(days=366)
CHARGE_SLACK = timedelta(days=1)


@dataclass
class StripeData:
    period: Period
    history_months: int
    currencies: tuple[str, ...]
    subscriptions: list[dict] = field(default_factory=list)
    invoices: list[dict] = field(default_factory=list)
    charges: list[dict] = field(default_factory=list)  # the period ± CHARGE_SLACK
    refunds: list[dict] = field(default_factory=list)
    disputes: list[dict] = field(default_factory=list)
    balance_transactions: list[dict] = field(default_factory=list)

    @property
    def history_start(self) -> datetime:
        first = history_buckets(self.period, self.history_months)[0][1]
        return from_epoch(first)

    @property
    def charges_in_period(self) -> list[dict]:
        return [c for c in self.charges if self.period.contains(c["created"])]

    def metrics(self) -> Metrics:
        """What was read; embedded lists Stripe cut short (over 10 invoice lines or subscription items
        in a listing) are counted, as the history and MRR see only what was served."""
        truncated_lines = sum(1 for i in self.invoices if (i.get("lines") or {}).get("has_more"))
        truncated_items = sum(1 for s in self.subscriptions if (s.get("items") or {}).get("has_more"))
        return Metrics({
            "period_start": self.period.start,
            "period_until": self.period.until,
            "currencies": ", ".join(self.currencies) or "all",
            "stripe_subscriptions": len(self.subscriptions),
            "stripe_invoices": len(self.invoices),
            "stripe_charges_in_period": len(self.charges_in_period),
            "stripe_refunds_in_period": len(self.refunds),
            "stripe_disputes_in_period": len(self.disputes),
            "stripe_balance_transactions_in_period": len(self.balance_transactions),
            **({"invoices_with_more_lines_than_served": truncated_lines} if truncated_lines else {}),
            **({"subscriptions_with_more_items_than_served": truncated_items} if truncated_items else {}),
        })


def normalise_currencies(currencies: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(sorted({c.strip().lower() for c in currencies or () if c and c.strip()}))


def keep_currency(obj: dict, currencies: Sequence[str]) -> bool:
    return not currencies or (obj.get("currency") or "").lower() in currencies


def fetch_stripe(client, period: Period, *, history_months: int = 12,
                 currencies: Iterable[str] | None = None) -> StripeData:
    """One listing per kind, filters pushed to the API (see the module's table)."""
    wanted = normalise_currencies(currencies)
    data = StripeData(period=period, history_months=history_months, currencies=wanted)
    since_invoices = data.history_start - YEAR_LOOKBACK
    until = period.until
    keep = lambda objs: [o for o in objs if keep_currency(o, wanted)]  # noqa: E731
    data.subscriptions = keep(list_subscriptions(client, status="all", expand_customer=True))
    data.invoices = keep(list_invoices(client, created_since=since_invoices))
    data.charges = keep(list_charges(client, since=period.start - CHARGE_SLACK, until=until + CHARGE_SLACK))
    data.refunds = keep(list_refunds(client, since=period.start, until=until))
    data.disputes = keep(list_disputes(client, since=period.start, until=until))
    data.balance_transactions = keep(list_balance_transactions(client, since=period.start, until=until))
    return data


def id_of(ref) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return ref.get("id")


at = from_epoch  # Stripe's epoch seconds as a UTC datetime (ops_lib.utc)

