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
                 currencies: Iterable[str] | None = None, compact: bool = True) -> StripeData:
    """One listing per kind, filters pushed to the API (see the module's table); each object kept
    with only the fields the computations read (``Compactor``), as it streams in (``compact=False``:
    whole, as Stripe sent them; the tests compare the two)."""
    wanted = normalise_currencies(currencies)
    data = StripeData(period=period, history_months=history_months, currencies=wanted)
    since_invoices = data.history_start - YEAR_LOOKBACK
    until = period.until
    c = Compactor()

    def keep(objs, project):
        return [project(o) if compact else o for o in objs if keep_currency(o, wanted)]

    data.subscriptions = keep(list_subscriptions(client, status="all", expand_customer=True), c.subscription)
    data.invoices = keep(list_invoices(client, created_since=since_invoices), c.invoice)
    data.charges = keep(list_charges(client, since=period.start - CHARGE_SLACK, until=until + CHARGE_SLACK), c.charge)
    data.refunds = keep(list_refunds(client, since=period.start, until=until), c.refund)
    data.disputes = keep(list_disputes(client, since=period.start, until=until), c.dispute)
    data.balance_transactions = keep(list_balance_transactions(client, since=period.start, until=until),
                                     c.balance_transaction)
    return data


def id_of(ref) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return ref.get("id")


at = from_epoch  # Stripe's epoch seconds as a UTC datetime (ops_lib.utc)


# --------------------------------------------------------------------------- compact objects
#
# Each object is kept with only the fields the computations read, as it streams in: the rest of a
# Stripe object (addresses, metadata, payment settings, the invoice's own copies of its customer's
# details…) is most of its size and was held for the whole run. Same dict shapes, same keys when
# present, so every computation reads them as before. Identical prices (the same price on every
# invoice line and subscription item) and coupons are one shared object: read-only, never mutated.

_RECURRING = ("interval", "interval_count", "usage_type")
_COUPON = ("id", "duration", "duration_in_months", "percent_off", "amount_off", "currency")
_DISCOUNT = ("start", "end")
_SUB_FIELDS = ("id", "currency", "status", "created", "start_date", "current_period_start", "ended_at",
               "canceled_at", "trial_start", "trial_end", "cancel_at_period_end", "pause_collection")
_INVOICE_FIELDS = ("id", "status", "currency", "created", "amount_paid")
_LINE_FIELDS = ("type", "proration", "amount", "quantity")
_CHARGE_FIELDS = ("id", "created", "status", "amount", "currency", "failure_code", "failure_message")
_REFUND_FIELDS = ("id", "created", "status", "amount", "currency")
_DISPUTE_FIELDS = ("id", "created", "status", "amount", "currency")
_BALANCE_FIELDS = ("id", "created", "type", "reporting_category", "amount", "fee", "net", "currency")


def _pick(obj: dict, keys: Sequence[str]) -> dict:
    return {k: obj[k] for k in keys if k in obj}


class Compactor:
    """Projects the objects of one fetch, sharing identical prices and coupons between them, and one
    copy of each repeated string (currencies, statuses; a subscription's and customer's ids on every
    invoice of theirs). Lives as long as the fetch."""

    def __init__(self):
        self._shared: dict = {}
        self._strings: dict[str, str] = {}

    def _share(self, value):
        key = repr(value)  # small dicts and lists of str/int/None: their repr is a faithful key
        return self._shared.setdefault(key, value)

    def _one(self, out: dict, keys: Sequence[str]) -> dict:
        """``out`` with its string values under ``keys`` replaced by their one copy."""
        for k in keys:
            value = out.get(k)
            if isinstance(value, str):
                out[k] = self._strings.setdefault(value, value)
        return out

    def price(self, price):
        if not isinstance(price, dict):
            return price
        out = _pick(price, ("id", "billing_scheme", "tiers_mode", "unit_amount", "unit_amount_decimal",
                            "nickname", "lookup_key"))
        if "recurring" in price:
            recurring = price["recurring"]
            out["recurring"] = _pick(recurring, _RECURRING) if isinstance(recurring, dict) else recurring
        if "metadata" in price:
            metadata = price["metadata"]
            out["metadata"] = ({"plan": metadata["plan"]} if "plan" in metadata else {}) \
                if isinstance(metadata, dict) else metadata
        if "product" in price:
            product = price["product"]
            out["product"] = _pick(product, ("id", "name")) if isinstance(product, dict) else product
        return self._share(out)

    def discount(self, discount):
        if not isinstance(discount, dict):
            return discount
        out = _pick(discount, _DISCOUNT)
        if "coupon" in discount:
            coupon = discount["coupon"]
            out["coupon"] = self._share(_pick(coupon, _COUPON)) if isinstance(coupon, dict) else coupon
        return out

    def _listing(self, listing, item):
        if not isinstance(listing, dict):
            return listing
        out = _pick(listing, ("has_more",))
        if "data" in listing:
            out["data"] = [item(x) for x in listing["data"] or ()] if listing["data"] is not None else None
        return out

    def subscription(self, sub: dict) -> dict:
        out = _pick(sub, _SUB_FIELDS)
        customer = sub.get("customer")
        if "customer" in sub:
            if isinstance(customer, dict):
                customer = self._one(_pick(customer, ("id", "name")), ("id",))
                if "discount" in sub["customer"]:
                    customer["discount"] = self.discount(sub["customer"]["discount"])
            out["customer"] = customer
        self._one(out, ("id", "currency", "status", "customer"))
        if "discount" in sub:
            out["discount"] = self.discount(sub["discount"])
        if "items" in sub:
            out["items"] = self._listing(sub["items"], self._item)
        return out

    def _item(self, item):
        out = _pick(item, ("id", "quantity"))
        if "price" in item:
            out["price"] = self.price(item["price"])
        return out

    def invoice(self, invoice: dict) -> dict:
        out = _pick(invoice, _INVOICE_FIELDS)
        for ref in ("subscription", "customer", "charge"):
            if ref in invoice:
                out[ref] = id_of(invoice[ref])
        if "discount" in invoice:
            out["discount"] = self.discount(invoice["discount"])
        if "total_discount_amounts" in invoice:
            amounts = invoice["total_discount_amounts"]
            out["total_discount_amounts"] = [_pick(a, ("amount",)) for a in amounts] if amounts else \
                self._share(amounts)  # (the empty list: one for all)
        if "status_transitions" in invoice:
            transitions = invoice["status_transitions"]
            if isinstance(transitions, dict):
                transitions = _pick(transitions, ("paid_at",))
                transitions = self._share(transitions) if transitions.get("paid_at") is None else transitions
            out["status_transitions"] = transitions
        if "lines" in invoice:
            out["lines"] = self._listing(invoice["lines"], self._line)
        return self._one(out, ("subscription", "customer", "currency", "status"))

    def _line(self, line):
        out = self._one(_pick(line, _LINE_FIELDS), ("type",))
        if "period" in line:
            period = line["period"]
            out["period"] = _pick(period, ("start", "end")) if isinstance(period, dict) else period
        if "price" in line:
            out["price"] = self.price(line["price"])
        return out

    def _with_refs(self, obj: dict, fields: Sequence[str], refs: Sequence[str]) -> dict:
        out = _pick(obj, fields)
        for ref in refs:
            if ref in obj:
                out[ref] = id_of(obj[ref])
        return self._one(out, ("currency", "status", "customer", "type", "reporting_category"))

    def charge(self, charge: dict) -> dict:
        return self._with_refs(charge, _CHARGE_FIELDS, ("customer", "invoice"))

    def refund(self, refund: dict) -> dict:
        return self._with_refs(refund, _REFUND_FIELDS, ("charge",))

    def dispute(self, dispute: dict) -> dict:
        return self._with_refs(dispute, _DISPUTE_FIELDS, ("charge",))

    def balance_transaction(self, txn: dict) -> dict:
        return self._with_refs(txn, _BALANCE_FIELDS, ("source",))
