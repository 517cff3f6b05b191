"""Usage recomputed from the usage events, for every organisation's billing period at once.

``recompute_usage`` is ``scan.scan_usage`` without the weekly series and the duplicates check:
every organisation's period travels as three bound array literals (ids, starts, ends), joined
with the usage events in one aggregate pass and with the stored counters — no query per
customer, however many there are (see ``scan`` for how repeated idempotency keys are found).

Each idempotency key counts once per organisation and period, with its largest quantity: a client
that retried an event (same key, delivered twice) used the product once. The repeated copies are
counted apart (``repeated``) and listed by the ``duplicate_usage_events`` check.

Periods are half-open, ``start <= occurred_at < end``, in UTC; the session's time zone is set to
UTC so that an app storing ``timestamp without time zone`` in UTC is read correctly.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection

from ..findings import Metrics
from ..schema_map import SchemaMap
from .accounts import Accounts
from .scan import scan_usage, usage_table
from .table import Computed, integers


def recompute_usage(conn: Connection, schema: SchemaMap, accounts: Accounts) -> list[dict]:
    """One row per organisation: its period, plan limit, recomputed usage and stored counter.

    ``used`` is the recomputed usage, ``stored`` the app's counter for the same period
    (None: the app has no counter row for it), ``pct`` the share of the plan's limit used.
    """
    return scan_usage(conn, schema, accounts, weeks=0).usage


def usage_metrics(usage: list[dict]) -> Metrics:
    usage = usage_table(usage)
    used, _ = integers(usage.column("used"))
    limit, has_limit = integers(usage.column("usage_limit"))
    limited = has_limit & (limit != 0)
    at_80, highest = 0, None
    if isinstance(usage.column("pct"), Computed):
        # the shares as the rows compute them (``100.0 * used / limit``, the same doubles), rounded
        # as Python rounds them where it matters: rounding keeps the order, so the highest is the
        # highest share rounded, and only shares just under 80 % may round up to it
        share = used[limited] * 100.0 / limit[limited]
        if len(share):
            at_80 = int((share >= 80.0).sum()) + sum(round(s, 1) >= 80 for s in share[(share >= 79.9) & (share < 80.0)].tolist())
            highest = round(float(share.max()), 1)
    else:
        for pct, ok in zip(usage.values("pct"), limited.tolist()):
            if ok and pct is not None:
                at_80 += pct >= 80
                highest = pct if highest is None or pct > highest else highest
    return Metrics(
        usage_units_in_current_periods=int(used.sum()),
        usage_events_in_current_periods=int(integers(usage.column("events"))[0].sum()),
        organisations_with_a_counter=int(integers(usage.column("stored"))[1].sum()),
        organisations_at_80_pct_of_limit_or_more=at_80,
        highest_pct_of_limit=highest,
    )
