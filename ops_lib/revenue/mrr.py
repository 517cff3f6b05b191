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

**Cost.** What a subscription's items and coupon are worth (its ``Profile``) is worked out once per
distinct set of prices, quantities and coupon, and each invoice's billed period once per distinct
set of lines; a snapshot (MRR per customer at one moment, the history's unit) and each customer's
first MRR are array operations over every subscription's facts, read once (``snapshots.Facts``),
and build no per-subscription result. Totals add Fractions exactly, per denominator
(``money.ExactSum``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from itertools import islice
from operator import itemgetter
from collections.abc import Mapping as AbcMapping
from typing import Iterable, Iterator, Mapping, Sequence

from . import money
from ..bulk import collector_paused
from .data import at, embedded_items, id_of, line_periods, record_columns
from .snapshots import Facts

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
SNAPSHOTS_KEPT = 2  # MRRBook's cache of per-customer snapshots (see MRRBook.snapshot)


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
    product_name = product.get("name") if isinstance(product, AbcMapping) else product
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
    if isinstance(customer, AbcMapping):
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

    def row(self, major=None) -> dict:
        """The subscription's row (``major``: ``money.major`` or a cache of it)."""
        major = major or money.major
        row = _Row()  # its __dict__: every row shares one table of keys (215 bytes a row, not 470)
        row.customer = self.customer
        row.customer_name = self.customer_name
        row.subscription = self.subscription
        row.status = self.status
        row.plan = self.plan
        row.interval = self.interval
        row.quantity = self.quantity
        row.currency = self.currency
        row.list_mrr = major(self.gross, self.currency)
        row.discount = self.discount
        row.mrr = major(self.amount, self.currency)
        row.counted = self.counted
        row.basis = self.basis
        row.unpriced_items = len(self.unpriced)
        return row.__dict__


class _Row:
    """A table row built as an instance's attributes: its ``__dict__`` is a plain dict whose keys are
    shared with every other row's (CPython's split tables), for tables of a row per subscription."""


def customer_columns(customers: Sequence) -> tuple[list, list]:
    """``_customer_of`` of each subscription's ``customer``: the ids and the names (None unless
    expanded), an expanded customer's read as columns."""
    ids, names = list(customers), [None] * len(customers)
    mappings = {kind for kind in set(map(type, customers)) if kind is not str and issubclass(kind, AbcMapping)}
    expanded = [i for i, customer in enumerate(customers) if type(customer) in mappings]
    for i, customer_id, name in zip(expanded, *record_columns([customers[i] for i in expanded], "id", "name")):
        if customer_id is None:  # (no id, or a None one: read as ``_customer_of`` reads it, its KeyError too)
            customer_id, name = _customer_of(customers[i])
        ids[i], names[i] = customer_id, name
    return ids, names


def _day_text(moment: int, cache: dict[int, str]) -> str:
    """``f"{at(moment):%Y-%m-%d}"``, once per day (a UTC day is whole epoch days of seconds)."""
    if type(moment) is not int:
        return f"{at(moment):%Y-%m-%d}"
    day = moment // DAY
    found = cache.get(day)
    if found is None:
        found = cache[day] = f"{at(moment):%Y-%m-%d}"
    return found


def _customer(sub: Mapping) -> tuple[str, str | None]:
    return _customer_of(sub.get("customer"))


def _customer_of(customer) -> tuple[str, str | None]:
    """The customer's id and name (None unless expanded) from a subscription's ``customer``."""
    if type(customer) is not str and isinstance(customer, AbcMapping):
        return customer["id"], customer.get("name")
    return customer, None


class Profile:
    """What a subscription's MRR is regardless of the moment: its items priced, its plan, and what
    its discount's coupon takes when the discount applies. Subscriptions with the same prices,
    quantities and coupon share one (``MRRBook``): the moment only decides whether the discount
    applies and whether the status counts."""

    __slots__ = ("currency", "gross", "plan", "interval", "quantity", "unpriced", "coupon_text", "_coupon", "_factor",
                 "_discounted")

    def __init__(self, sub: Mapping):
        currency = sub["currency"].lower()
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
        discount = subscription_discount(sub)
        coupon = discount.get("coupon") if discount else None
        self.currency = currency
        self.gross = gross
        self._coupon, self._factor, self._discounted = coupon, factor, None
        self.coupon_text = describe_discount(discount) if coupon else None
        self.plan = " + ".join(dict.fromkeys(plans)) or "(no items)"
        first_recurring = next((i["price"]["recurring"] for i in items if (i.get("price") or {}).get("recurring")), None)
        self.interval = interval_label(first_recurring)
        self.quantity = quantity
        self.unpriced = unpriced

    @property
    def discounted(self) -> Fraction | None:
        """The MRR while the discount applies (None: no coupon to apply)."""
        if self._coupon and self._discounted is None:
            self._discounted = max(ZERO, self.gross - coupon_reduction(self._coupon, self.gross, self._factor or Fraction(1),
                                                                       self.currency))
        return self._discounted

    @staticmethod
    def key(sub: Mapping):
        """What the profile depends on, by identity (the compact objects share prices and coupons);
        None when a subscription's profile is its own (unpriced items name the item)."""
        items = (sub.get("items") or {}).get("data") or []
        parts = []
        for item in items:
            price = item.get("price") or {}
            if unpriced_reason(price):
                return None
            parts.append((id(price), item.get("quantity")))
        discount = subscription_discount(sub)
        coupon = discount.get("coupon") if discount else None
        return sub["currency"], tuple(parts), id(coupon) if coupon else None


ASK_EACH = object()  # ``profile_keys``: this subscription's key is ``Profile.key``'s to read


def profile_keys(subs: Sequence[Mapping]) -> Iterator:
    """Per subscription, ``Profile.key(sub)``, its fields read as columns (a subscription's ``get``
    is a Python call; its items' and discount's too), one key at a time (all of them held at once:
    a few hundred bytes a subscription). ``ASK_EACH`` for a subscription whose currency is not text
    (``Profile`` raises on it: left to ``MRRBook.profile``, in the subscriptions' order)."""
    currencies, discounts, customers = record_columns(subs, "currency", "discount", "customer")
    items_of = embedded_items(subs, "items")
    every_item = [item for items in items_of for item in items]
    prices, quantities = record_columns(every_item, "price", "quantity")
    # Whether each price has a monthly amount, once per price (the records share them): the
    # price object is held by its items while the keys are made, so its id stays its own
    priced = {id(price): price for price in prices}
    priced = {key: unpriced_reason(price or {}) is None for key, price in priced.items()}
    price_ids = list(map(id, prices))
    parts = zip(price_ids, quantities)
    item_priced = map(priced.__getitem__, price_ids)
    coupons = _coupons(discounts, customers)
    for currency, items, coupon in zip(currencies, items_of, coupons):
        n = len(items)
        billed = tuple(islice(parts, n))
        if not all(islice(item_priced, n)):
            yield None  # (an unpriced item names the item: a profile of its own)
        elif type(currency) is not str:
            yield ASK_EACH
        else:
            yield currency, billed, id(coupon) if coupon else None


def _coupons(discounts: Sequence, customers: Sequence) -> list:
    """Per subscription, the coupon of ``subscription_discount(sub)`` (None: no discount applies)
    from the subscriptions' ``discount`` and ``customer`` columns."""
    chosen = list(discounts)
    # the customer's discount when the subscription has none and the customer was expanded (a
    # mapping: known by its type, once per type — an ABC's isinstance is slow a million times)
    mappings = {kind for kind in set(map(type, customers)) if issubclass(kind, AbcMapping)}
    expanded = [i for i, (discount, customer) in enumerate(zip(discounts, customers))
                if not discount and type(customer) in mappings]
    for i, discount in zip(expanded, record_columns([customers[i] for i in expanded], "discount")[0]):
        chosen[i] = discount
    applied = [i for i, discount in enumerate(chosen) if discount]
    coupons = [None] * len(chosen)
    for i, coupon in zip(applied, record_columns([chosen[i] for i in applied], "coupon")[0]):
        coupons[i] = coupon
    return coupons


def state_mrr(sub: Mapping, moment: int, grace_days: int, *, assume_active: bool = False,
              basis: str | None = None, profile: Profile | None = None) -> SubscriptionMRR:
    """The subscription's MRR at ``moment`` from its current items, discount and status.

    ``assume_active`` skips the status rule (the history before the oldest invoice); ``profile``:
    the subscription's ``Profile`` when the caller keeps it.
    """
    p = profile or Profile(sub)
    amount, counted, why, discounted = _state_amount(sub, p, moment, grace_days, assume_active)
    customer, customer_name = _customer(sub)
    return SubscriptionMRR(
        subscription=sub["id"], customer=customer, customer_name=customer_name, currency=p.currency,
        status=sub.get("status", ""), plan=p.plan, interval=p.interval, quantity=p.quantity, gross=p.gross,
        amount=amount, counted=counted, basis=basis if assume_active and basis else why,
        discount=p.coupon_text if discounted else None, unpriced=p.unpriced,
    )


def _state_amount(sub: Mapping, p: Profile, moment: int, grace_days: int, assume_active: bool):
    """(amount, counted, why, discount applied) of ``state_mrr``: why is None for "active" when
    ``assume_active`` (the caller's ``basis`` or "active")."""
    return _status_amount(sub, p, moment, grace_days, assume_active,
                          sub.get("current_period_start") or sub.get("created") or 0, sub.get("status", ""),
                          sub.get("pause_collection"), sub.get("cancel_at_period_end"))


def _status_amount(sub: Mapping, p: Profile, moment: int, grace_days: int, assume_active: bool, period_start: int,
                   status: str, paused, cancels_at_period_end):
    """``_state_amount`` from the subscription's fields already read (``MRRBook.subscriptions_at``
    reads them as columns); ``sub`` is read for its discount only."""
    net, discounted = p.gross, False
    if p._coupon:
        if discount_active(subscription_discount(sub), moment, period_start):
            net, discounted = p.discounted, True
    counted, why = True, "active"
    if not assume_active:
        if paused:
            counted, why = False, "collection paused"
        elif status == "active":
            why = "active, cancels at period end" if cancels_at_period_end else "active"
        elif status == "past_due":
            days = (moment - period_start) / DAY
            counted = days <= grace_days
            why = (f"past_due {days:.0f} d, within the {grace_days} d grace" if counted
                   else f"past_due {days:.0f} d, beyond the {grace_days} d grace")
        else:
            counted, why = False, EXCLUDED_STATUSES.get(status, status or "unknown status")
    return (net if counted else ZERO), counted, why, discounted


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
    """Per subscription, the periods its invoices billed (draft and void invoices left out).

    Segments billing the same prices, amounts and quantities with the same coupon share their
    amounts, plan and discount text (worked out once: the compact invoices share their prices).
    Every field is read as a column (``record_columns``), the lines' too."""
    segments: dict[str, list[Segment]] = {}
    lowered: dict[str, str] = {}  # one copy of each currency code
    worked_out: dict[tuple, tuple] = {}  # by identity of prices and coupon: each value holds them
    invoices = invoices if isinstance(invoices, list) else list(invoices)
    kept = [k for k, (sub_ref, status) in enumerate(zip(*record_columns(invoices, "subscription", "status")))
            if (sub_ref if type(sub_ref) is str else id_of(sub_ref)) and status in INVOICE_STATUSES_WITH_MRR]
    for first in range(0, len(kept), _CHUNK):  # (the columns of a chunk at a time: a bounded transient)
        _add_segments([invoices[k] for k in kept[first:first + _CHUNK]], segments, lowered, worked_out)
    for items in segments.values():
        if len(items) > 1:  # (most subscriptions have one invoice in the lookback: nothing to order)
            items.sort(key=_segment_order)
    return segments


_CHUNK = 65_536


def _add_segments(invoices: list[Mapping], segments: dict, lowered: dict, worked_out: dict) -> None:
    """``invoice_segments``' work for some of the invoices (each with a subscription and a status with MRR)."""
    lines_of = embedded_items(invoices, "lines")
    every_line = [line for found in lines_of for line in found]
    kinds, prorations, prices, amounts, quantities = record_columns(
        every_line, "type", "proration", "price", "amount", "quantity")
    # Per line (read in order: each invoice's lines in turn): whether it bills the subscription (a
    # proration or an invoice item does not), its period, and what it bills (price by identity)
    line_columns = zip([kind == "subscription" and not proration for kind, proration in zip(kinds, prorations)],
                       line_periods(every_line), zip(map(id, prices), amounts, quantities), every_line)
    for invoice, lines, sub_ref, status, currency, discount, discounts, customer, invoice_id, created in zip(
            invoices, lines_of, *record_columns(invoices, "subscription", "status", "currency", "discount",
                                                "total_discount_amounts", "customer", "id", "created")):
        sub_id = sub_ref if type(sub_ref) is str else id_of(sub_ref)
        currency = lowered.get(currency) or lowered.setdefault(currency, currency.lower())
        if invoice_id is None:
            invoice_id = invoice["id"]  # (a KeyError, as before)
        discounted = bool(discounts) and sum(d.get("amount", 0) for d in discounts) > 0
        coupon = discount.get("coupon") if discount and discounted else None
        coupon_id = id(coupon) if coupon else None
        paid, created = status == "paid", created or 0
        customer = customer if type(customer) is str else id_of(customer)
        if len(lines) == 1:  # (most invoices: one line, its period's)
            bills, period, billed, line = next(line_columns)
            periods = ((period, (billed,), [line]),) if bills else ()
        else:
            periods = _periods_billed(islice(line_columns, len(lines)))
        for (start, end), billed, billed_lines in periods:
            if start is None or end is None:
                continue
            key = (currency, billed, coupon_id)
            found = worked_out.get(key)
            if found is None:  # (the lines and discount held with their figures: the key's ids stay theirs)
                found = worked_out[key] = _segment_amounts(billed_lines, discount if coupon else None,
                                                           currency) + (billed_lines, discount)
            gross, net, plan, quantity, applied, _, _ = found
            segment = Segment(sub_id, customer, currency, start, end, gross, net, paid, invoice_id, created, plan,
                              quantity, applied)
            listed = segments.get(sub_id)
            if listed is None:
                segments[sub_id] = [segment]
            else:
                listed.append(segment)


def _periods_billed(lines: Iterable[tuple]) -> Iterable[tuple]:
    """An invoice's subscription lines by period, in the order the periods first appear: each
    period, what its lines bill (``(id(price), amount, quantity)`` each) and the lines."""
    by_period: dict[tuple, tuple[list, list]] = {}
    for bills, period, billed, line in lines:
        if bills:
            found = by_period.get(period)
            if found is None:
                by_period[period] = [billed], [line]
            else:
                found[0].append(billed)
                found[1].append(line)
    return [(period, tuple(billed), lines) for period, (billed, lines) in by_period.items()]


def _segment_order(segment: Segment) -> tuple[int, int]:
    return segment.start, segment.created


def _segment_amounts(lines: Sequence[Mapping], discount: Mapping | None, currency: str) -> tuple:
    """(gross, net, plan, quantity, discount text) of one billed period's lines."""
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
    if discount is not None:
        net = max(ZERO, gross - coupon_reduction(discount["coupon"], gross, factor or Fraction(1), currency))
        applied = describe_discount(discount)
    return gross, net, " + ".join(dict.fromkeys(plans)), quantity, applied


# --------------------------------------------------------------------------- the book


class MRRBook:
    """Every subscription's MRR at any moment: the current state, its invoices, or the assumption.

    Each subscription's ``Profile`` is worked out once (and shared between subscriptions with the
    same prices, quantities and coupon), so that a moment costs a few comparisons per subscription;
    snapshots add up amounts without building a ``SubscriptionMRR`` per subscription."""

    def __init__(self, subscriptions: Sequence[Mapping], invoices: Iterable[Mapping], *, grace_days: int = 30):
        self.subscriptions = list(subscriptions)
        self.grace_days = grace_days
        # (a list given is kept, to rebuild the segments from once the facts hold what the history reads)
        self._invoices = invoices if isinstance(invoices, list) else None
        with collector_paused():
            self._segments: dict[str, list[Segment]] | None = invoice_segments(invoices)
        # The latest two snapshots only: the history walks the months in order (each month's end is
        # the next one's start) and the period's movements come last, at the last month's two
        # boundaries when the period is a month; at 1M customers each is ~50 MB.
        self._snapshots: OrderedDict[int, dict[tuple[str, str], Fraction]] = OrderedDict()
        self._shared_profiles: dict = {}
        self._profiles: list[Profile] | None = None  # parallel to self.subscriptions, made on first use
        self._facts: Facts | None = None  # likewise

    @property
    def segments(self) -> dict[str, list[Segment]]:
        """``invoice_segments`` of the book's invoices (rebuilt when asked after ``_all_facts`` let them go)."""
        if self._segments is None:
            with collector_paused():
                self._segments = invoice_segments(self._invoices)
        return self._segments

    # -- one subscription

    def profile(self, sub: Mapping) -> Profile:
        key = Profile.key(sub)
        if key is None:
            return Profile(sub)
        found = self._shared_profiles.get(key)
        if found is None:
            # (the key holds ids: the profile keeps the subscription, hence its prices and coupon, alive)
            found = self._shared_profiles[key] = (Profile(sub), sub)
        return found[0]

    def _all_profiles(self) -> list[Profile]:
        """``[self.profile(sub) for sub in self.subscriptions]``, the keys read as columns (``profile_keys``)."""
        if self._profiles is None:
            with collector_paused():
                self._profiles = self._profiles_of(self.subscriptions)
        return self._profiles

    def _profiles_of(self, subs: Sequence[Mapping]) -> list[Profile]:
        shared, profiles = self._shared_profiles, []
        for sub, key in zip(subs, profile_keys(subs)):
            if key is ASK_EACH:  # (an odd subscription: read as ``profile`` reads it, its errors included)
                profiles.append(self.profile(sub))
            elif key is None:
                profiles.append(Profile(sub))
            else:
                found = shared.get(key)
                if found is None:
                    found = shared[key] = (Profile(sub), sub)
                profiles.append(found[0])
        return profiles

    def _all_facts(self) -> Facts:
        """Every subscription's facts as arrays, read once (``snapshots.Facts``)."""
        if self._facts is None:
            with collector_paused():
                self._facts = Facts(self)
            if self._invoices is not None:
                # The facts hold the segments as arrays: the objects (~300 bytes a subscription) go
                # until a single subscription's MRR is asked again (``at``: rebuilt from the invoices)
                self._segments = None
        return self._facts

    def at(self, sub: Mapping, moment: int, profile: Profile | None = None) -> SubscriptionMRR:
        p = profile or self.profile(sub)
        start = sub.get("start_date") or sub.get("created") or 0
        ended = sub.get("ended_at")
        status = sub.get("status", "")
        if moment < start:
            return self._zero(sub, p, "not started yet")
        if ended is not None and moment >= ended:
            return self._zero(sub, p, f"{status or 'ended'} since {at(ended):%Y-%m-%d}")
        if status not in ("canceled", "incomplete_expired") and moment >= (sub.get("current_period_start") or 0):
            return state_mrr(sub, moment, self.grace_days, profile=p)
        segments = self.segments.get(sub["id"], [])
        covering = _covering(segments, moment)
        if covering is not None:
            return self._from_segment(sub, p, covering, moment)
        first = segments[0].start if segments else None
        if first is None or moment < first:
            if status in ("incomplete", "incomplete_expired"):
                return self._zero(sub, p, EXCLUDED_STATUSES[status])
            if sub.get("trial_end") and moment < sub["trial_end"]:
                return self._zero(sub, p, "trialing")
            return state_mrr(sub, moment, self.grace_days, assume_active=True, profile=p,
                             basis="before its oldest invoice read: current items assumed")
        return self._zero(sub, p, "no invoice covers this time")

    def amount_at(self, sub: Mapping, moment: int, profile: Profile | None = None) -> tuple[Fraction, str]:
        """``at(sub, moment)``'s amount and currency, without the rest of the result."""
        p = profile or self.profile(sub)
        start = sub.get("start_date") or sub.get("created") or 0
        if moment < start:
            return ZERO, p.currency
        ended = sub.get("ended_at")
        if ended is not None and moment >= ended:
            return ZERO, p.currency
        status = sub.get("status", "")
        if status not in ("canceled", "incomplete_expired") and moment >= (sub.get("current_period_start") or 0):
            return _state_amount(sub, p, moment, self.grace_days, False)[0], p.currency
        segments = self.segments.get(sub["id"])
        if segments:
            seg = _covering(segments, moment)
            if seg is not None:
                counted = seg.paid or (moment - seg.start) / DAY <= self.grace_days
                return (seg.amount if counted else ZERO), seg.currency
            if moment >= segments[0].start:
                return ZERO, p.currency
        if status in ("incomplete", "incomplete_expired"):
            return ZERO, p.currency
        if sub.get("trial_end") and moment < sub["trial_end"]:
            return ZERO, p.currency
        return _state_amount(sub, p, moment, self.grace_days, True)[0], p.currency

    def _zero(self, sub: Mapping, p: Profile, why: str) -> SubscriptionMRR:
        customer, customer_name = _customer(sub)
        return SubscriptionMRR(
            subscription=sub["id"], customer=customer, customer_name=customer_name, currency=p.currency,
            status=sub.get("status", ""), plan=p.plan, interval=p.interval, quantity=p.quantity, gross=p.gross,
            amount=ZERO, counted=False, basis=why, discount=None, unpriced=p.unpriced,
        )

    def _from_segment(self, sub: Mapping, p: Profile, seg: Segment, moment: int) -> SubscriptionMRR:
        customer, name = _customer(sub)
        counted = seg.paid or (moment - seg.start) / DAY <= self.grace_days
        why = f"invoice {seg.invoice}" + ("" if seg.paid else (" (unpaid, within grace)" if counted else " (unpaid, beyond grace)"))
        return SubscriptionMRR(
            subscription=sub["id"], customer=customer, customer_name=name, currency=seg.currency,
            status=sub.get("status", ""), plan=seg.plan, interval=p.interval,
            quantity=seg.quantity, gross=seg.gross, amount=seg.amount if counted else ZERO, counted=counted,
            basis=why, discount=seg.discount,
        )

    # -- everyone

    def subscriptions_at(self, moment: int) -> list[SubscriptionMRR]:
        """``[self.at(sub, moment) for sub in self.subscriptions]``: the fields ``at`` reads of a
        subscription in its current state (most of them, at a closing) read as columns first."""
        out: list[SubscriptionMRR] = []
        with collector_paused():
            profiles = self._all_profiles()
            for first in range(0, len(self.subscriptions), _CHUNK):  # (the columns of a chunk at a time)
                self._add_results(out, moment, self.subscriptions[first:first + _CHUNK], profiles[first:first + _CHUNK])
        return out

    def _add_results(self, out: list, moment: int, subs: list[Mapping], profiles: list[Profile]) -> None:
        """``subscriptions_at``'s results for some of the subscriptions, added to ``out``: the commonest
        outcomes (active, not started, ended) made here from the columns, the rest by ``at``."""
        grace_days = self.grace_days
        ids, start_dates, created, ended, statuses, current, customers, paused, cancels = record_columns(
            subs, "id", "start_date", "created", "ended_at", "status", "current_period_start", "customer",
            "pause_collection", "cancel_at_period_end")
        customer_ids, customer_names = customer_columns(customers)
        since: dict[int, str] = {}  # an ended subscription's day, as its basis shows it
        for sub, p, sub_id, start_date, made, ends, status, period_start, customer, name, pause, cancel in zip(
                subs, profiles, ids, start_dates, created, ended, statuses, current, customer_ids, customer_names,
                paused, cancels):
            status = sub.get("status", "") if status is None else status
            if moment < (start_date or made or 0):
                why = "not started yet"
            elif ends is not None and moment >= ends:
                why = f"{status or 'ended'} since {_day_text(ends, since)}"
            elif status in ("canceled", "incomplete_expired") or moment < (period_start or 0) or sub_id is None:
                out.append(self.at(sub, moment, p))  # (not in its current state: one at a time)
                continue
            else:
                if status == "active" and not pause and not p._coupon:  # (most: the profile's amount as it is)
                    amount, counted, why, discounted = (
                        p.gross, True, "active, cancels at period end" if cancel else "active", False)
                else:
                    amount, counted, why, discounted = _status_amount(
                        sub, p, moment, grace_days, False, period_start or made or 0, status, pause, cancel)
                out.append(SubscriptionMRR(sub_id, customer, name, p.currency, status, p.plan, p.interval,
                                           p.quantity, p.gross, amount, counted, why,
                                           p.coupon_text if discounted else None, p.unpriced))
                continue
            # (``at``'s zero before the start or after the end: ``_zero``)
            if sub_id is None:
                sub_id = sub["id"]  # (a KeyError when it has none, as ``at`` raises)
            out.append(SubscriptionMRR(sub_id, customer, name, p.currency, status, p.plan, p.interval, p.quantity,
                                       p.gross, ZERO, False, why, None, p.unpriced))

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
        with collector_paused():
            snapshot = self._snapshots[moment] = self._all_facts().snapshot(moment)
        while len(self._snapshots) > SNAPSHOTS_KEPT:
            self._snapshots.popitem(last=False)
        return snapshot

    def totals_closing(self, boundary: int) -> dict[str, tuple[Fraction, int]]:
        """Per currency, the MRR as the month closed and its paying customers."""
        return self._all_facts().totals(boundary - 1)

    def moves_closing(self, start: int, end: int) -> dict:
        """Whose MRR moved between the closings before ``start`` and ``end`` (``snapshots.Facts.moves``)."""
        return self._all_facts().moves(start - 1, end - 1, start)

    def first_positive(self, customer: str) -> int | None:
        """The first moment the customer had MRR (in any currency), as far as the data reaches."""
        return self._all_facts().first_positive(customer)


def _covering(segments: Sequence[Segment], moment: int) -> Segment | None:
    """The latest segment (by start, then invoice creation) covering ``moment``."""
    best = None
    for seg in segments:
        if seg.start <= moment < seg.end and (best is None or (seg.start, seg.created) > (best.start, best.created)):
            best = seg
    return best


def _first_recurring(sub: Mapping) -> Mapping | None:
    for item in (sub.get("items") or {}).get("data") or []:
        if (item.get("price") or {}).get("recurring"):
            return item["price"]["recurring"]
    return None


# --------------------------------------------------------------------------- tables


def mrr_by_currency(results: Iterable[SubscriptionMRR]) -> list[dict]:
    """MRR and ARR per currency (never summed across currencies), exact in ``mrr_minor``."""
    totals: dict[str, dict] = {}
    # Each amount's sign and how many times it counts, by identity (results share their profiles'
    # and invoices' amounts: a Fraction's hash and comparison cost more than the rest); added up
    # once each, times how many (the value holds the amount: the id in the key stays its own)
    positive: dict[int, tuple[bool, Fraction]] = {}
    times: dict[tuple[int, str], list] = {}
    for r in results:
        row = totals.get(r.currency)
        if row is None:
            row = totals[r.currency] = {"currency": r.currency, "mrr_minor": money.ExactSum(), "subscriptions": 0,
                                        "customers": set()}
        if not r.counted:
            continue
        found = positive.get(id(r.amount))
        if found is None:
            found = positive[id(r.amount)] = (r.amount > 0, r.amount)
        if found[0]:
            row["subscriptions"] += 1
            row["customers"].add(r.customer)
            times.setdefault((id(r.amount), r.currency), [r.amount, 0])[1] += 1
    for (_, currency), (amount, n) in times.items():
        totals[currency]["mrr_minor"].add(amount * n)
    rows = []
    for currency in sorted(totals):
        row = totals[currency]
        row["mrr_minor"] = row["mrr_minor"].value()
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
    """A row per subscription: by currency, counted ones first, largest MRR first, then by id."""
    # Amounts repeat (the results share their profiles' and invoices' amounts): each converted once,
    # known by identity (a Fraction's hash costs more than the conversion's lookup)
    majors: dict[tuple[int, str], tuple] = {}

    def major(amount: Fraction, currency: str) -> float | None:
        key = (id(amount), currency)
        found = majors.get(key)
        if found is None:  # (the value holds the amount: the id in the key stays its own)
            found = majors[key] = (money.major(amount, currency), amount)
        return found[0]

    with collector_paused():
        rows = [r.row(major) for r in results if include_zero or r.amount > 0]
        return _in_table_order(rows)


def _in_table_order(rows: list[dict]) -> list[dict]:
    """``sorted(rows, key=(currency, not counted, -mrr, subscription))``: the rows grouped by the
    first three (a few thousand distinct: currency, counted, MRR), the groups in order, each group
    sorted by subscription id alone (text against text: no four-part key compared per pair of rows)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["currency"], not row["counted"], -(row["mrr"] or 0))
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    try:
        ordered = []
        for key in sorted(groups):
            group = groups[key]
            group.sort(key=_SUBSCRIPTION)  # (stable: equal ids keep the results' order, as the one sort did)
            ordered.extend(group)
    except TypeError:  # ids of mixed kinds: only the one sort compares exactly the pairs it must
        return sorted(rows, key=lambda r: (r["currency"], not r["counted"], -(r["mrr"] or 0), r["subscription"]))
    return ordered


_SUBSCRIPTION = itemgetter("subscription")
