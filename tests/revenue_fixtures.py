"""A synthetic Stripe account fetched whole and as records: the revenue tests that hold a new path
to the plain computation run both on each."""
from __future__ import annotations

from datetime import datetime, timezone

from ops_lib.revenue import data as rdata, synthetic
from ops_lib.revenue.period import resolve_period

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=timezone.utc)


def fetched_whole_and_as_records(subscriptions: int, history_periods: int) -> tuple[rdata.StripeData, rdata.StripeData]:
    """The account (``synthetic.SyntheticAccount``, invoices over `history_periods` billing periods)
    fetched as Stripe's dicts and as ``data.Compactor``'s records."""
    def fetched(compact: bool) -> rdata.StripeData:
        account = synthetic.SyntheticAccount(subscriptions, NOW, history_periods=history_periods)
        return rdata.gather(account.listing, resolve_period(now=NOW), compact=compact)
    return fetched(False), fetched(True)
