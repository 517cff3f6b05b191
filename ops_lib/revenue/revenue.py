"""Revenue in the period by plan and currency, and the payment success rate.

* **Gross**: invoices paid in the period, dated by ``status_transitions.paid_at`` (not when they
  were created: an invoice retried for a week is revenue the day it is paid), split across plans
  by their lines; plus succeeded charges without an invoice (one-off payments), dated by creation.
* **Refunds** and **disputes** are dated when they happened (their ``created``), whatever month
  the charge was in; a refund counts once it has not failed or been cancelled.
* **Fees** and **net** come from the balance transactions created in the period (what Stripe
  actually took and paid out: processing fees, dispute fees, refunds and dispute withdrawals),
  payouts and transfers left out. They are in the balance's settlement currency: a charge in
  another currency is converted by Stripe at its ``exchange_rate``.
* **Plans**: a line's price ``metadata.plan``, else its nickname, lookup key or product.

The payment success rate is ``succeeded ÷ (succeeded + failed)`` over the charges created in the
period; ``pending`` charges have no outcome yet and are left out.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import money
from .data import StripeData, at, embedded_items, id_of, lines_key, nested_column, record_columns
from .mrr import plan_label
from .period import Period

ONE_OFF = "(one-off charges)"
UNKNOWN = "(not an invoice of the period's data)"
EXCLUDED_BALANCE_CATEGORIES = {"payout", "payout_reversal", "transfer", "transfer_reversal", "topup",
                               "topup_reversal", "connect_collection_transfer", "connect_reserved_funds",
                               "advance", "advance_funding", "anticipation_repayment"}
REFUND_STATUSES_COUNTED = {"succeeded", "pending", "requires_action"}
# The shares of what has no invoice, one list each (``_Splits`` knows a list by its identity)
_ALL_UNKNOWN = [(UNKNOWN, Fraction(1))]
_ALL_ONE_OFF = [(ONE_OFF, Fraction(1))]
_ALL_FEES = [("(Stripe fees and adjustments)", Fraction(1))]


def invoice_plan_shares(invoice: Mapping) -> list[tuple[str, Fraction]]:
    """The plans an invoice bills, each with its share of the invoice (by its lines' positive amounts)."""
    lines = [l for l in (invoice.get("lines") or {}).get("data") or [] if (l.get("amount") or 0) > 0]
    if not lines:
        first = next(iter((invoice.get("lines") or {}).get("data") or []), None)
        return [(plan_label(first.get("price")) if first else "(no lines)", Fraction(1))]
    total = sum(l["amount"] for l in lines)
    shares: dict[str, Fraction] = defaultdict(Fraction)
    for line in lines:
        shares[plan_label(line.get("price"))] += Fraction(line["amount"], total)
    return list(shares.items())


def allocate(amount: int, shares: Sequence[tuple[str, Fraction]]) -> list[tuple[str, int]]:
    """``amount`` split by ``shares`` in whole minor units (the remainder to the largest share)."""
    if not shares:
        return []
    parts = [(plan, int(amount * share)) for plan, share in shares]  # int() truncates toward zero
    remainder = amount - sum(part for _, part in parts)
    largest = max(range(len(shares)), key=lambda i: shares[i][1])
    parts[largest] = (parts[largest][0], parts[largest][1] + remainder)
    return parts


def invoice_plan_split(invoice: Mapping) -> list[tuple[str, int]]:
    """``amount_paid`` split across the plans of its lines, in proportion to their amounts."""
    return allocate(int(invoice.get("amount_paid") or 0), invoice_plan_shares(invoice))


class _Shares:
    """``invoice_plan_shares``, worked out once per set of lines billing the same prices and amounts
    (the compact invoices share their prices: most invoices bill one of a few combinations)."""

    def __init__(self):
        self._found: dict[tuple, tuple[list, object]] = {}

    def __call__(self, invoice: Mapping, lines: Sequence[Mapping] | None = None) -> list[tuple[str, Fraction]]:
        """(``lines``: the invoice's, when already read: ``embedded_items``.)"""
        if lines is None:
            lines = (invoice.get("lines") or {}).get("data") or []
        key = lines_key(lines)
        found = self._found.get(key)
        if found is None:  # (the value holds the lines: the ids in the key stay theirs)
            found = self._found[key] = (invoice_plan_shares(invoice), lines)
        return found[0]


class _Splits:
    """``allocate``, worked out once per amount and list of shares (amounts repeat with the prices;
    the lists of shares are ``_Shares``' and the constants above, known by identity)."""

    def __init__(self):
        self._found: dict[tuple[int, int], tuple[list, list]] = {}

    def __call__(self, amount: int, shares: list[tuple[str, Fraction]]) -> list[tuple[str, int]]:
        key = (amount, id(shares))
        found = self._found.get(key)
        if found is None:  # (the value holds the shares: the id in the key stays theirs)
            found = self._found[key] = (allocate(amount, shares), shares)
        return found[0]


class _Attribution:
    """Which plan a charge, refund or dispute belongs to, through its invoice.

    Invoices are known by their index in ``data.invoices``; each one's shares are worked out once,
    when first asked (the period's paid invoices, then the charges' invoices again)."""

    def __init__(self, data: StripeData):
        self.shares = _Shares()
        self.invoices = data.invoices
        self._lines = embedded_items(data.invoices, "lines")
        self._shares_of: list = [None] * len(data.invoices)  # per invoice, its shares once asked
        invoice_ids, charge_ids = record_columns(data.invoices, "id", "charge")
        self.invoice_by_id = {invoice_id: i for i, invoice_id in enumerate(invoice_ids)}
        self.invoice_by_charge = {id_of(charge): i for i, charge in enumerate(charge_ids) if charge}
        charge_ids, charge_invoices = record_columns(data.charges, "id", "invoice")
        self.charge_invoice = dict(zip(charge_ids, charge_invoices))  # charge id -> its ``invoice``
        self.refund_charge = dict(zip(*record_columns(data.refunds, "id", "charge")))
        self.dispute_charge = dict(zip(*record_columns(data.disputes, "id", "charge")))

    def shares_of_invoice(self, index: int) -> list[tuple[str, Fraction]]:
        found = self._shares_of[index]
        if found is None:
            found = self._shares_of[index] = self.shares(self.invoices[index], self._lines[index])
        return found

    def shares_of_charge(self, charge_id: str | None) -> list[tuple[str, Fraction]]:
        if not charge_id:
            return _ALL_UNKNOWN
        invoice = self.invoice_by_charge.get(charge_id)
        known = charge_id in self.charge_invoice
        charge_invoice = self.charge_invoice.get(charge_id)
        if invoice is None and charge_invoice:
            invoice = self.invoice_by_id.get(id_of(charge_invoice))
        if invoice is not None:
            return self.shares_of_invoice(invoice)
        if known and not charge_invoice:
            return _ALL_ONE_OFF  # (an invoice naming it was handled above)
        return _ALL_UNKNOWN

    def shares_of_balance(self, source) -> list[tuple[str, Fraction]]:
        """The shares of a balance transaction with this ``source``."""
        source = id_of(source) or ""
        if source in self.refund_charge:
            return self.shares_of_charge(id_of(self.refund_charge[source]))
        if source in self.dispute_charge:
            return self.shares_of_charge(id_of(self.dispute_charge[source]))
        if source.startswith(("ch_", "py_")):
            return self.shares_of_charge(source)
        return _ALL_UNKNOWN if source else _ALL_FEES


def revenue_by_plan(data: StripeData) -> list[dict]:
    """Per currency and plan: paid invoices, gross, refunds, disputes, fees, net (minor units)."""
    period = data.period
    contains = period.contains
    who = _Attribution(data)
    split = _Splits()
    table: dict[tuple[str, str], dict] = {}

    def row(currency: str, plan: str) -> dict:
        key = (currency.lower(), plan)
        found = table.get(key)
        if found is None:
            found = table[key] = {"currency": key[0], "plan": plan, "invoices_paid": 0, "gross": 0, "refunded": 0,
                                  "disputed": 0, "fees": 0, "net": 0}
        return found

    status, transitions, amount_paid, currency = record_columns(
        data.invoices, "status", "status_transitions", "amount_paid", "currency")
    paid_at = nested_column(transitions, "paid_at")
    # The paid invoices counted per (currency, amount, shares): most pay one of a few prices, so
    # each distinct one is split and added once, times how many (``invoice_plan_split`` each)
    paid: dict[tuple, list] = {}
    for index, (status, paid_at, amount_paid, currency) in enumerate(zip(status, paid_at, amount_paid, currency)):
        if status != "paid" or not contains(paid_at):
            continue
        shares = who.shares_of_invoice(index)
        _count(paid, (currency, int(amount_paid or 0), id(shares)), shares)
    for (currency, amount_paid, _), (shares, times) in paid.items():
        for n, (plan, amount) in enumerate(split(amount_paid, shares)):
            r = row(currency, plan)
            r["gross"] += amount * times
            r["invoices_paid"] += times if n == 0 else 0
    charges = data.charges_in_period
    for charge_id, status, invoice, currency, amount in zip(*record_columns(
            charges, "id", "status", "invoice", "currency", "amount")):
        if status == "succeeded" and not invoice and charge_id not in who.invoice_by_charge:
            row(currency, ONE_OFF)["gross"] += amount
    for refund in data.refunds:
        if contains(refund.get("created")) and refund.get("status") in REFUND_STATUSES_COUNTED:
            for plan, amount in split(refund["amount"], who.shares_of_charge(id_of(refund.get("charge")))):
                row(refund["currency"], plan)["refunded"] += amount
    for dispute in data.disputes:
        if contains(dispute.get("created")):
            for plan, amount in split(dispute["amount"], who.shares_of_charge(id_of(dispute.get("charge")))):
                row(dispute["currency"], plan)["disputed"] += amount
    excluded = EXCLUDED_BALANCE_CATEGORIES
    # Likewise the balance transactions, per (currency, fee, net, shares)
    moved: dict[tuple, list] = {}
    for created, category, kind, source, fee, net, currency in zip(*record_columns(
            data.balance_transactions, "created", "reporting_category", "type", "source", "fee", "net", "currency")):
        if not contains(created) or category in excluded or kind in excluded:
            continue
        shares = who.shares_of_balance(source)
        _count(moved, (currency, fee or 0, net or 0, id(shares)), shares)
    for (currency, fee, net, _), (shares, times) in moved.items():
        for plan, part in split(fee, shares):
            row(currency, plan)["fees"] += part * times
        for plan, part in split(net, shares):
            row(currency, plan)["net"] += part * times
    return sorted(table.values(), key=lambda r: (r["currency"], -r["gross"], r["plan"]))


def _count(counts: dict[tuple, list], key: tuple, shares: list) -> None:
    """One more of ``key`` in ``counts`` (its value: the shares the key names by identity, held
    there so that the id stays theirs, and how many)."""
    found = counts.get(key)
    if found is None:
        counts[key] = [shares, 1]
    else:
        found[1] += 1


def revenue_totals(rows: Sequence[dict]) -> list[dict]:
    totals: dict[str, dict] = {}
    for r in rows:
        t = totals.setdefault(r["currency"], {"currency": r["currency"], "invoices_paid": 0, "gross": 0,
                                              "refunded": 0, "disputed": 0, "fees": 0, "net": 0})
        for key in ("invoices_paid", "gross", "refunded", "disputed", "fees", "net"):
            t[key] += r[key]
    return [totals[c] for c in sorted(totals)]


def revenue_table(rows: Sequence[dict], *, with_totals: bool = True) -> list[dict]:
    """Major units, each currency's plans then its total."""
    out = []
    totals = {t["currency"]: t for t in revenue_totals(rows)}
    for currency in sorted(totals):
        for r in [r for r in rows if r["currency"] == currency] + ([dict(totals[currency], plan="TOTAL")] if with_totals else []):
            out.append({"currency": currency, "plan": r["plan"], "invoices_paid": r["invoices_paid"],
                        **{k: money.major(r[k], currency) for k in ("gross", "refunded", "disputed", "fees", "net")}})
    return out


# --------------------------------------------------------------------------- payment success


def success_rate(charges: Iterable[Mapping]) -> dict:
    """Counts by status and ``succeeded ÷ (succeeded + failed)`` in percent (None without attempts)."""
    charges = charges if isinstance(charges, list) else list(charges)
    counts = Counter(record_columns(charges, "status")[0])
    decided = counts["succeeded"] + counts["failed"]
    return {
        "succeeded": counts["succeeded"], "failed": counts["failed"], "pending": counts["pending"],
        "success_rate_pct": round(100 * counts["succeeded"] / decided, 2) if decided else None,
    }


def failures_by_code(charges: Iterable[Mapping]) -> list[dict]:
    failed = [c for c in charges if c.get("status") == "failed"]
    by_code: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for charge in failed:
        by_code[(charge.get("failure_code") or "(none)", charge["currency"])].append(charge)
    rows = [{"failure_code": code, "currency": cur, "charges": len(items),
             "amount": money.major(sum(c["amount"] for c in items), cur),
             "share_of_failures_pct": round(100 * len(items) / len(failed), 1),
             "example_message": items[0].get("failure_message")}
            for (code, cur), items in by_code.items()]
    return sorted(rows, key=lambda r: (-r["charges"], r["failure_code"], r["currency"]))


def success_over_time(charges: Iterable[Mapping], period: Period) -> list[dict]:
    """Charges per day (per week for periods over two months): succeeded, failed, rate."""
    step = timedelta(days=7) if period.until - period.start > timedelta(days=62) else timedelta(days=1)
    start = period.start.replace(hour=0, minute=0, second=0, microsecond=0)
    buckets: dict[datetime, Counter] = {}
    moment = start
    while moment < period.until:
        buckets[moment] = Counter()
        moment += step
    charges = charges if isinstance(charges, list) else list(charges)
    created, status = record_columns(charges, "created", "status")
    if all(type(c) is int for c in created):
        _count_by_bucket(buckets, start, step, created, status)
    else:  # (a timestamp that is not whole seconds, or none: one charge at a time)
        for charge in charges:
            created = at(charge["created"])
            index = int((created - start) / step)
            key = start + index * step
            if key in buckets:
                buckets[key][charge.get("status")] += 1
    rows = []
    for key, counts in buckets.items():
        decided = counts["succeeded"] + counts["failed"]
        rows.append({"day": key, "succeeded": counts["succeeded"], "failed": counts["failed"], "pending": counts["pending"],
                     "success_rate_pct": round(100 * counts["succeeded"] / decided, 2) if decided else None})
    return rows


def _count_by_bucket(buckets: dict[datetime, Counter], start: datetime, step: timedelta, created: list[int],
                     status: list) -> None:
    """``success_over_time``'s count of each status per bucket, for whole-second timestamps, as
    arrays: a charge's bucket is ``int((at(created) - start) / step)`` (truncated, as ``int`` does)."""
    seconds = np.array(created, dtype=np.int64) - int(start.timestamp())
    index = np.trunc(seconds / step.total_seconds()).astype(np.int64)
    codes, statuses = pd.factorize(np.array(status, dtype=object), use_na_sentinel=True)
    kept = (index >= 0) & (index < len(buckets)) & (codes >= 0)  # (a status None is counted nowhere shown)
    counts = np.bincount(index[kept] * len(statuses) + codes[kept], minlength=len(buckets) * len(statuses))
    for key, per_status in zip(buckets, counts.reshape(len(buckets), len(statuses)).tolist()):
        for name, n in zip(statuses.tolist(), per_status):
            if n:
                buckets[key][name] += n


def failed_charge_rows(charges: Iterable[Mapping]) -> list[dict]:
    failed = sorted((c for c in charges if c.get("status") == "failed"), key=lambda c: (c["created"], c["id"]))
    return [{"charge": c["id"], "created": at(c["created"]), "customer": id_of(c.get("customer")),
             "invoice": id_of(c.get("invoice")), "amount": money.major(c["amount"], c["currency"]),
             "currency": c["currency"], "failure_code": c.get("failure_code"),
             "failure_message": c.get("failure_message")} for c in failed]

