"""MRR and ARR from Stripe subscriptions, at any moment of the history — ChartMogul/Baremetrics rules.

**A subscription's MRR** is the sum of its items' ``unit_amount × quantity`` normalised to a
month — a year ÷ 12, a week × 52/12, a day × 365/12, each divided by ``interval_count`` — minus
its active discount. Only ``active`` subscriptions count, and ``past_due`` ones for up to
``past_due_grace_days`` into the unpaid period (its renewal invoice failed at the period's start;
ChartMogul's "automatically churn delinquent subscriptions after N days"). ``trialing``,
``incomplete``, ``incomplete_expired``, ``paused``, ``unpaid`` and ``canceled`` subscriptions, and
those whose collection is paused, count nothing. A subscription set to cancel at the period's end
counts until it ends.

**Discounts** (the subscription's, else its customer's) reduce MRR for the billing periods they
apply to, as ChartMogul's invoice-based MRR does: ``forever`` always; ``repeating`` until its
``end``; ``once`` for the one period it discounts (attached during the current period — older
``once`` discounts were used up). ``percent_off`` takes its share of the priced items;
``amount_off`` is per invoice, so it is normalised to a month like the items and never takes
MRR below zero.

**Unpriced items** — metered prices (billed on usage not yet known) and tiered prices (no single
unit amount) — are left out of MRR and reported by the ``unpriced_items`` check, not guessed.

Amounts stay exact (``Fraction`` of the currency's minor unit: a weekly $7 is 3033⅓ ¢ a month)
until a table shows them; currencies are never summed together.

**The history.** Stripe keeps events for 30 days only, so the monthly history is rebuilt from
durable objects instead:

1. at or after a live subscription's ``current_period_start``: its current state, as above
   (so the history's last point *is* the current MRR);
2. earlier: the subscription invoice whose line period covers the moment — its non-proration
   subscription lines (amount as billed: a trial's $0 line counts $0) normalised by their
   price's interval, minus the invoice's discount by the same rules; an unpaid invoice counts
   only ``past_due_grace_days`` into its period; draft and void invoices count nothing;
3. before the oldest invoice fetched (the lookback is a year before the chart's first month):
   the subscription's current items from its ``start_date`` (after any trial) — the only
   guess, and documented as such in each row's ``basis``;
4. never after ``ended_at``, never before ``start_date``; a gap between invoices is a gap in MRR.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

from . import money
from .data import at, id_of

DAY = 86_400
ZERO = Fraction(0)

_MONTHLY = {"month": Fraction(1), "year": Fraction(1, 12), "week": Fraction(52, 12), "day": Fraction(365, 12)}
EXCLUDED_STATUSES = {
    "trialing": "trialing: not paying yet",
    "incomplete": "incomplete: the first payment has not succeeded",
    "incomplete_expired": "incomplete_expired: the first payment never succeeded",
    "paused": "paused",
    "canceled": "canceled",
    "unpaid": "unpaid: Stripe stopped retrying its invoices",
}
INVOICE_STATUSES_WITH_MRR = ("paid", "open", "uncollectible")
SNAPSHOTS_KEPT = 4  # MRRBook's cache of per-customer snapshots (see MRRBook.snapshot)


# --------------------------------------------------------------------------- prices


def monthly_factor(recurring: Mapping) -> Fraction:
    """What one billing interval is worth per month: year 1/12, week 52/12, day 365/12, ÷ interval_count."""
    try:
        base = _MONTHLY[recurring["interval"]]
    except KeyError:
        raise ValueError(f"unknown billing interval {recurring.get('interval')!r}") from None
    return base / int(recurring.get("interval_count") or 1)


def unpriced_reason(price: Mapping) -> str | None:
    """Why an item's monthly amount cannot be known from the price alone (None: it can)."""
    recurring = price.get("recurring") or {}
    if recurring.get("usage_type") == "metered":
        return "metered: billed on usage not known until the period closes"
    if price.get("billing_scheme") == "tiered":
        return f"tiered ({price.get('tiers_mode') or 'graduated'}): no single unit amount"
    if price.get("unit_amount") is None and price.get("unit_amount_decimal") in (None, ""):
        return "no unit amount"
    if not recurring:
        return "not a recurring price"
    return None


def unit_amount(price: Mapping) -> Fraction:
    """The exact unit amount in minor units (unit_amount_decimal keeps sub-cent prices)."""
    if price.get("unit_amount_decimal") not in (None, ""):
        return Fraction(Decimal(str(price["unit_amount_decimal"])))
    return Fraction(price["unit_amount"])


def plan_label(price: Mapping | None) -> str:
    """The plan a price belongs to: its metadata ``plan``, else nickname, lookup key, product."""
    if not price:
        return "(no price)"
    metadata = price.get("metadata") or {}
    product = price.get("product")
    product_name = product.get("name") if isinstance(product, Mapping) else product
    return str(metadata.get("plan") or price.get("nickname") or price.get("lookup_key") or product_name or price.get("id"))


def interval_label(recurring: Mapping | None) -> str:
    if not recurring:
        return "one-time"
    count = int(recurring.get("interval_count") or 1)
    return recurring["interval"] if count == 1 else f"{count} {recurring['interval']}s"


# --------------------------------------------------------------------------- discounts


def discount_active(discount: Mapping | None, moment: int, period_start: int) -> bool:
    """Does the discount apply to the billing period that holds ``moment`` (which started at ``period_start``)?"""
    if not discount or not discount.get("coupon"):
        return False
    start = discount.get("start") or 0
    if moment < start:
        return False
    duration = discount["coupon"].get("duration")
    if duration == "forever":
        return True
    if duration == "repeating":
        end = discount.get("end")
        return end is None or moment < end
    if duration == "once":
        return start >= period_start
    return False


def coupon_reduction(coupon: Mapping, subtotal: Fraction, factor: Fraction, currency: str) -> Fraction:
    """The monthly reduction a coupon makes on ``subtotal`` (monthly, minor units)."""
    if coupon.get("percent_off") is not None:
        return subtotal * Fraction(Decimal(str(coupon["percent_off"]))) / 100
    if coupon.get("amount_off") is not None:
        if (coupon.get("currency") or currency).lower() != currency.lower():
            return ZERO  # Stripe applies an amount_off coupon only in its own currency
        return min(subtotal, Fraction(coupon["amount_off"]) * factor)
    return ZERO


def describe_discount(discount: Mapping | None) -> str | None:
    if not discount or not discount.get("coupon"):
        return None
    coupon = discount["coupon"]
    if coupon.get("percent_off") is not None:
        what = f"{Decimal(str(coupon['percent_off'])).normalize():f}% off"
    else:
        what = f"{money.fmt(coupon.get('amount_off'), coupon.get('currency') or 'usd')} off"
    duration = coupon.get("duration")
    if duration == "repeating":
        duration = f"repeating {coupon.get('duration_in_months')} months"
    return f"{what} ({duration})"


def subscription_discount(sub: Mapping) -> Mapping | None:
    """The subscription's discount, else its customer's (when the customer was expanded)."""
    if sub.get("discount"):
        return sub["discount"]
    customer = sub.get("customer")
    if isinstance(customer, Mapping):
        return customer.get("discount")
    return None


# --------------------------------------------------------------------------- one subscription


@dataclass(slots=True)
class SubscriptionMRR:
    """A subscription's MRR at one moment, with why it counts or not."""

    subscription: str
    customer: str
    customer_name: str | None
    currency: str
    status: str
    plan: str
    interval: str
    quantity: int
    gross: Fraction  # before discount, priced items only
    amount: Fraction  # what counts (0 when excluded)
    counted: bool
    basis: str  # why: the status rule, the invoice, or the assumption
    discount: str | None = None
    unpriced: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        return {
            "customer": self.customer,
            "customer_name": self.customer_name,
            "subscription": self.subscription,
            "status": self.status,
            "plan": self.plan,
            "interval": self.interval,
            "quantity": self.quantity,
            "currency": self.currency,
            "list_mrr": money.major(self.gross, self.currency),
            "discount": self.discount,
            "mrr": money.major(self.amount, self.currency),
            "counted": self.counted,
            "basis": self.basis,
            "unpriced_items": len(self.unpriced),
        }


def _customer(sub: Mapping) -> tuple[str, str | None]:
    customer = sub.get("customer")
    if isinstance(customer, Mapping):
        return customer["id"], customer.get("name")
    return customer, None


def state_mrr(sub: Mapping, moment: int, grace_days: int, *, assume_active: bool = False,
              basis: str | None = None) -> SubscriptionMRR:
    """The subscription's MRR at ``moment`` from its current items, discount and status.

    ``assume_active`` skips the status rule (the history before the oldest invoice).
    """
    currency = sub["currency"].lower()
    customer, customer_name = _customer(sub)
    gross, unpriced, factor, plans, quantity = ZERO, [], None, [], 0
    items = (sub.get("items") or {}).get("data") or []
    for item in items:
        price = item.get("price") or {}
        reason = unpriced_reason(price)
        plans.append(plan_label(price))
        if reason:
            unpriced.append({"item": item.get("id"), "price": price.get("id"), "plan": plan_label(price),
                             "reason": reason, "quantity": item.get("quantity")})
            continue
        qty = item.get("quantity")
        qty = 1 if qty is None else int(qty)
        quantity += qty
        item_factor = monthly_factor(price["recurring"])
        factor = factor if factor is not None else item_factor
        gross += unit_amount(price) * qty * item_factor
    if factor is None and items and (items[0].get("price") or {}).get("recurring"):
        factor = monthly_factor(items[0]["price"]["recurring"])
    period_start = sub.get("current_period_start") or sub.get("created") or 0
    discount = subscription_discount(sub)
    net = gross
    if discount_active(discount, moment, period_start):
        net = max(ZERO, gross - coupon_reduction(discount["coupon"], gross, factor or Fraction(1), currency))
    else:
        discount = None
    status = sub.get("status", "")
    counted, why = True, basis or "active"
    if not assume_active:
        if sub.get("pause_collection"):
            counted, why = False, "collection paused"
        elif status == "active":
            why = "active, cancels at period end" if sub.get("cancel_at_period_end") else "active"
        elif status == "past_due":
            days = (moment - period_start) / DAY
            counted = days <= grace_days
            why = (f"past_due {days:.0f} d, within the {grace_days} d grace" if counted
                   else f"past_due {days:.0f} d, beyond the {grace_days} d grace")
        else:
            counted, why = False, EXCLUDED_STATUSES.get(status, status or "unknown status")
    first_recurring = next((i["price"]["recurring"] for i in items if (i.get("price") or {}).get("recurring")), None)
    return SubscriptionMRR(
        subscription=sub["id"], customer=customer, customer_name=customer_name, currency=currency,
        status=status, plan=" + ".join(dict.fromkeys(plans)) or "(no items)",
        interval=interval_label(first_recurring), quantity=quantity, gross=gross,
        amount=net if counted else ZERO, counted=counted, basis=why,
        discount=describe_discount(discount), unpriced=unpriced,
    )


# --------------------------------------------------------------------------- invoices as history


@dataclass(slots=True)
class Segment:
    """A billed period of a subscription, from one invoice: its MRR over [start, end)."""

    subscription: str
    customer: str
    currency: str
    start: int
    end: int
    gross: Fraction
    amount: Fraction
    paid: bool
    invoice: str
    created: int
    plan: str
    quantity: int
    discount: str | None = None

    def covers(self, moment: int) -> bool:
        return self.start <= moment < self.end


def invoice_segments(invoices: Iterable[Mapping]) -> dict[str, list[Segment]]:
    """Per subscription, the periods its invoices billed (draft and void invoices left out)."""
    segments: dict[str, list[Segment]] = {}
    for invoice in invoices:
        sub_id = id_of(invoice.get("subscription"))
        if not sub_id or invoice.get("status") not in INVOICE_STATUSES_WITH_MRR:
            continue
        currency = invoice["currency"].lower()
        by_period: dict[tuple[int, int], list[Mapping]] = {}
        for line in (invoice.get("lines") or {}).get("data") or []:
            if line.get("type") != "subscription" or line.get("proration"):
                continue
            period = line.get("period") or {}
            by_period.setdefault((period.get("start"), period.get("end")), []).append(line)
        discount = invoice.get("discount")
        discounted = sum(d.get("amount", 0) for d in invoice.get("total_discount_amounts") or []) > 0
        for (start, end), lines in by_period.items():
            if start is None or end is None:
                continue
            gross, factor, plans, quantity = ZERO, None, [], 0
            for line in lines:
                price = line.get("price") or {}
                plans.append(plan_label(price))
                if unpriced_reason(price):
                    continue
                line_factor = monthly_factor(price["recurring"])
                factor = factor if factor is not None else line_factor
                gross += Fraction(line["amount"]) * line_factor
                quantity += int(line.get("quantity") or 0)
            net = gross
            applied = None
            if discount and discounted and discount.get("coupon"):
                net = max(ZERO, gross - coupon_reduction(discount["coupon"], gross, factor or Fraction(1), currency))
                applied = describe_discount(discount)
            segments.setdefault(sub_id, []).append(Segment(
                subscription=sub_id, customer=id_of(invoice.get("customer")), currency=currency,
                start=start, end=end, gross=gross, amount=net, paid=invoice["status"] == "paid",
                invoice=invoice["id"], created=invoice.get("created") or 0,
                plan=" + ".join(dict.fromkeys(plans)), quantity=quantity, discount=applied,
            ))
    for items in segments.values():
        items.sort(key=lambda s: (s.start, s.created))
    return segments


# --------------------------------------------------------------------------- the book


class MRRBook:
    """Every subscription's MRR at any moment: the current state, its invoices, or the assumption."""

    def __init__(self, subscriptions: Sequence[Mapping], invoices: Iterable[Mapping], *, grace_days: int = 30):
        self.subscriptions = list(subscriptions)
        self.grace_days = grace_days
        self.segments = invoice_segments(invoices)
        # The latest few snapshots only: the history walks the months in order (each month's end is
        # the next one's start) and the period's movements come last; at 1M customers each is ~100 MB.
        self._snapshots: OrderedDict[int, dict[tuple[str, str], Fraction]] = OrderedDict()
        self._first_positive: dict[str, int] | None = None

    # -- one subscription

    def at(self, sub: Mapping, moment: int) -> SubscriptionMRR:
        start = sub.get("start_date") or sub.get("created") or 0
        ended = sub.get("ended_at")
        status = sub.get("status", "")
        if moment < start:
            return self._zero(sub, moment, "not started yet")
        if ended is not None and moment >= ended:
            return self._zero(sub, moment, f"{status or 'ended'} since {at(ended):%Y-%m-%d}")
        if status not in ("canceled", "incomplete_expired") and moment >= (sub.get("current_period_start") or 0):
            return state_mrr(sub, moment, self.grace_days)
        segments = self.segments.get(sub["id"], [])
        covering = [s for s in segments if s.covers(moment)]
        if covering:
            return self._from_segment(sub, max(covering, key=lambda s: (s.start, s.created)), moment)
        first = segments[0].start if segments else None
        if first is None or moment < first:
            if status in ("incomplete", "incomplete_expired"):
                return self._zero(sub, moment, EXCLUDED_STATUSES[status])
            if sub.get("trial_end") and moment < sub["trial_end"]:
                return self._zero(sub, moment, "trialing")
            return state_mrr(sub, moment, self.grace_days, assume_active=True,
                             basis="before its oldest invoice read: current items assumed")
        return self._zero(sub, moment, "no invoice covers this time")

    def _zero(self, sub: Mapping, moment: int, why: str) -> SubscriptionMRR:
        result = state_mrr(sub, moment, self.grace_days, assume_active=True)
        result.amount, result.counted, result.basis, result.discount = ZERO, False, why, None
        return result

    def _from_segment(self, sub: Mapping, seg: Segment, moment: int) -> SubscriptionMRR:
        customer, name = _customer(sub)
        counted = seg.paid or (moment - seg.start) / DAY <= self.grace_days
        why = f"invoice {seg.invoice}" + ("" if seg.paid else (" (unpaid, within grace)" if counted else " (unpaid, beyond grace)"))
        return SubscriptionMRR(
            subscription=sub["id"], customer=customer, customer_name=name, currency=seg.currency,
            status=sub.get("status", ""), plan=seg.plan, interval=interval_label(_first_recurring(sub)),
            quantity=seg.quantity, gross=seg.gross, amount=seg.amount if counted else ZERO, counted=counted,
            basis=why, discount=seg.discount,
        )

    # -- everyone

    def subscriptions_at(self, moment: int) -> list[SubscriptionMRR]:
        return [self.at(sub, moment) for sub in self.subscriptions]

    def closing(self, boundary: int) -> list[SubscriptionMRR]:
        """Every subscription's MRR as a month (or the period) closed: in its last second before
        ``boundary``. A change effective at a boundary — a subscription starting on the 1st at
        00:00 — belongs to the month that begins there."""
        return self.subscriptions_at(boundary - 1)

    def snapshot_closing(self, boundary: int) -> dict[tuple[str, str], Fraction]:
        return self.snapshot(boundary - 1)

    def snapshot(self, moment: int) -> dict[tuple[str, str], Fraction]:
        """MRR per (customer, currency) at ``moment``; customers with none are left out."""
        if moment in self._snapshots:
            self._snapshots.move_to_end(moment)
            return self._snapshots[moment]
        totals: dict[tuple[str, str], Fraction] = {}
        for result in self.subscriptions_at(moment):
            if result.amount > 0:
                key = (result.customer, result.currency)
                totals[key] = totals.get(key, ZERO) + result.amount
        self._snapshots[moment] = totals
        while len(self._snapshots) > SNAPSHOTS_KEPT:
            self._snapshots.popitem(last=False)
        return totals

    def first_positive(self, customer: str) -> int | None:
        """The first moment the customer had MRR (in any currency), as far as the data reaches."""
        if self._first_positive is None:
            firsts: dict[str, int] = {}
            for sub in self.subscriptions:
                moment = self._sub_first_positive(sub)
                if moment is not None:
                    cust = _customer(sub)[0]
                    firsts[cust] = min(firsts.get(cust, moment), moment)
            self._first_positive = firsts
        return self._first_positive.get(customer)

    def _sub_first_positive(self, sub: Mapping) -> int | None:
        candidates = []
        segments = self.segments.get(sub["id"], [])
        start = sub.get("start_date") or sub.get("created") or 0
        first_seg = segments[0].start if segments else None
        candidates += [max(s.start, start) for s in segments if s.amount > 0 and (s.paid or self.grace_days > 0)]
        if sub.get("status") not in ("incomplete", "incomplete_expired"):
            region_start = max(start, sub.get("trial_end") or 0)
            bounds = [x for x in (first_seg, sub.get("current_period_start"), sub.get("ended_at")) if x is not None]
            region_end = min(bounds) if bounds else None
            if (region_end is None or region_start < region_end) and \
                    state_mrr(sub, region_start, self.grace_days, assume_active=True).amount > 0:
                candidates.append(region_start)
        cps = sub.get("current_period_start")
        if sub.get("status") in ("active", "past_due") and cps is not None and state_mrr(sub, cps, self.grace_days).amount > 0:
            candidates.append(max(cps, start))
        return min(candidates) if candidates else None


def _first_recurring(sub: Mapping) -> Mapping | None:
    for item in (sub.get("items") or {}).get("data") or []:
        if (item.get("price") or {}).get("recurring"):
            return item["price"]["recurring"]
    return None


# --------------------------------------------------------------------------- tables


def mrr_by_currency(results: Iterable[SubscriptionMRR]) -> list[dict]:
    """MRR and ARR per currency (never summed across currencies), exact in ``mrr_minor``."""
    totals: dict[str, dict] = {}
    for r in results:
        row = totals.setdefault(r.currency, {"currency": r.currency, "mrr_minor": ZERO, "subscriptions": 0,
                                             "customers": set()})
        if r.counted and r.amount > 0:
            row["mrr_minor"] += r.amount
            row["subscriptions"] += 1
            row["customers"].add(r.customer)
    rows = []
    for currency in sorted(totals):
        row = totals[currency]
        customers = len(row["customers"])
        rows.append({
            "currency": currency,
            "mrr": money.major(row["mrr_minor"], currency),
            "arr": money.major(row["mrr_minor"] * 12, currency),
            "paying_subscriptions": row["subscriptions"],
            "paying_customers": customers,
            "arpa": money.major(row["mrr_minor"] / customers, currency) if customers else None,
            "mrr_minor": row["mrr_minor"],
        })
    return rows


def display_totals(rows: Sequence[dict]) -> list[dict]:
    """The per-currency table without its exact column."""
    return [{k: v for k, v in row.items() if k != "mrr_minor"} for row in rows]


def subscription_rows(results: Iterable[SubscriptionMRR], *, include_zero: bool = True) -> list[dict]:
    rows = [r.row() for r in results if include_zero or r.amount > 0]
    return sorted(rows, key=lambda r: (r["currency"], not r["counted"], -(r["mrr"] or 0), r["subscription"]))
