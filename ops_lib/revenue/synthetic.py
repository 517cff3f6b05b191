"""Stripe-like objects for the revenue report at any scale, built in-process: the benchmark
(``benchmarks/bench_revenue_memory.py``) and the tests feed them through the report's functions
without an emulator or HTTP.

``SyntheticAccount(n, now)`` describes ``n`` subscriptions, each with a customer (expanded, as the
report lists them), its invoices, charges, refunds, disputes and balance transactions. Every
object is built by the emulator's builders (``stripe_emulator.objects``: the keys Stripe sends)
when a listing reaches it and goes through a JSON round trip like a parsed response, so that
nothing but what the report keeps stays in memory. Each kind is listed on its own
(``listing(kind, since, until)``, the filters ``data.fetch_stripe`` pushes to Stripe), and each
subscription's story — plan, status, discount, billing history — is derived from its index
alone, so the listings agree with one another.

The mix covers every rule of the report: USD, EUR and JPY; monthly, yearly, weekly, quarterly
and multi-seat prices, tiered and metered add-ons, ``unit_amount_decimal`` sub-cent prices;
percent (forever), amount (repeating) and once discounts on the subscription or its customer;
active, past_due, canceled, trialing, incomplete(_expired), unpaid, paused subscriptions, paused
collection and cancellation at the period's end; proration lines; paid, open, void, draft and
uncollectible invoices; failed and pending charges; one-off charges; refunds and disputes.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from ..stripe_emulator import objects as so

DAY = 86_400
_APPROX_DAYS = {"day": 1, "week": 7, "month": 30.44, "year": 365.25}
KINDS = ("subscriptions", "invoices", "charges", "refunds", "disputes", "balance_transactions")


def _price(pid: str, amount: int | None, currency: str, interval: str, count: int = 1, *, plan: str,
           usage_type: str = "licensed", tiers=None, decimal: str | None = None) -> dict:
    price = so.make_price(product=f"prod_{plan}", unit_amount=amount, currency=currency, interval=interval,
                          interval_count=count, usage_type=usage_type, tiers=tiers, id=pid, created=1_600_000_000,
                          nickname=f"{plan.title()} {interval}", metadata={"plan": plan})
    price.pop("tiers", None)  # embedded copies lack them
    if decimal is not None:
        price["unit_amount_decimal"] = decimal
    return price


def _catalogue() -> dict[str, list[dict]]:
    """The prices of each currency: the main plans first, then the add-ons."""
    out = {}
    for cur in ("usd", "eur", "jpy"):  # JPY: zero-decimal, ¥4,900 against $29.00
        out[cur] = [
            _price(f"price_pro_monthly_{cur}", 2900 if cur != "jpy" else 4900, cur, "month", plan="pro"),
            _price(f"price_team_monthly_{cur}", 9900 if cur != "jpy" else 14_900, cur, "month", plan="team"),
            _price(f"price_team_yearly_{cur}", 99_000 if cur != "jpy" else 149_000, cur, "year", plan="team"),
            _price(f"price_pro_weekly_{cur}", 700 if cur != "jpy" else 1_200, cur, "week", plan="pro"),
            _price(f"price_team_quarterly_{cur}", 27_000 if cur != "jpy" else 40_000, cur, "month", 3, plan="team"),
            _price(f"price_seat_decimal_{cur}", 1234 if cur != "jpy" else 1_000, cur, "month", plan="seat",
                   decimal="1233.5" if cur != "jpy" else None),
            _price(f"price_api_tiered_{cur}", None, cur, "month", plan="api",
                   tiers=[{"up_to": 1000, "unit_amount": 0}, {"up_to": None, "unit_amount": 1}]),
            _price(f"price_sends_metered_{cur}", 2, cur, "month", plan="sends", usage_type="metered"),
        ]
    return out


@dataclass(frozen=True)
class _Story:
    """One subscription's facts, derived from its index."""

    i: int
    currency: str
    prices: tuple  # (price, quantity)
    status: str
    created: int
    period_start: int
    period_end: int
    interval: str
    count: int
    coupon: str | None  # "percent", "amount", "once"
    on_customer: bool
    cancel_at_period_end: bool
    paused: bool
    trial: bool
    periods: tuple  # the billed (start, end) periods, oldest first
    invoice_statuses: tuple
    prorate: bool


class SyntheticAccount:
    """``n`` subscriptions' worth of Stripe objects at ``now`` (see the module's docstring).

    ``history_periods``: how many billing periods before the current one each subscription has
    invoices for (0: the current one only — the 1M demo's shape; 6: the 100k demo's)."""

    def __init__(self, n: int, now: datetime, *, seed: int = 7, history_periods: int = 0, json_round_trip: bool = True):
        self.n, self.seed, self.history_periods = n, seed, history_periods
        self.now = int(now.timestamp())
        self.json_round_trip = json_round_trip
        self.catalogue = _catalogue()
        self.coupons = {
            "percent": so.make_coupon(percent_off=20, duration="forever", id="PCT20", created=1_600_000_000),
            "amount": {cur: so.make_coupon(amount_off=1000 if cur != "jpy" else 500, currency=cur, duration="repeating",
                                           duration_in_months=6, id=f"AMT_{cur}", created=1_600_000_000)
                       for cur in self.catalogue},
            "once": so.make_coupon(percent_off=12.5, duration="once", id="ONCE125", created=1_600_000_000),
        }

    # -- stories

    def story(self, i: int) -> _Story:
        r = random.Random(self.seed * 1_000_003 + i)
        x = r.random()
        currency = "usd" if x < 0.85 else "eur" if x < 0.95 else "jpy"
        cat = self.catalogue[currency]
        x = r.random()
        if x < 0.70:
            main = (cat[r.random() < 0.7 and 0 or 1], r.choice((1, 1, 1, 2, 3, 5)))
        elif x < 0.80:
            main = (cat[2], 1)
        elif x < 0.86:
            main = (cat[3], 1)
        elif x < 0.92:
            main = (cat[4], r.choice((1, 2)))
        else:
            main = (cat[5], r.randint(1, 40))
        prices = [main]
        if main[0]["recurring"]["interval"] == "month" and main[0]["recurring"]["interval_count"] == 1:
            y = r.random()
            if y < 0.02:
                prices.append((cat[6], 1))
            elif y < 0.04:
                prices.append((cat[7], None))
            elif y < 0.07:
                prices.append((cat[5], r.randint(1, 10)))
        recurring = main[0]["recurring"]
        interval, count = recurring["interval"], recurring["interval_count"]
        x = r.random()
        status = ("active" if x < 0.74 else "past_due" if x < 0.78 else "canceled" if x < 0.89 else
                  "trialing" if x < 0.94 else "incomplete" if x < 0.95 else "incomplete_expired" if x < 0.96 else
                  "unpaid" if x < 0.97 else "paused" if x < 0.98 else "active")
        age = int(r.random() * 730 * DAY) + DAY
        created = self.now - age
        trial = status == "trialing" or r.random() < 0.08
        if status == "trialing":
            created = self.now - r.randint(1, 13) * DAY
        first = created + 14 * DAY if trial and status != "trialing" else created
        # the periods, anchored on ``first``: the current one holds now; the earlier ones as needed
        seen: dict[int, int] = {}

        def boundary(k: int) -> int:
            if k not in seen:
                seen[k] = first if k == 0 else so.add_interval(first, interval, count * k)
            return seen[k]

        k = int((self.now - first) // (_APPROX_DAYS[interval] * count * DAY))
        while k > 0 and boundary(k) > self.now:
            k -= 1
        while boundary(k + 1) <= self.now:
            k += 1
        periods = [(boundary(j), boundary(j + 1)) for j in range(max(0, k - self.history_periods - 3), k)]
        current = (boundary(k), boundary(k + 1))
        if status == "canceled":
            # ended some periods ago (or in the current one): bill until then
            back = r.randint(0, min(3, len(periods)))
            if back:
                current = periods[-back]
                periods = periods[:-back]
        if status == "trialing":
            current, periods = (created, created + 14 * DAY), []
        billed = periods[-self.history_periods:] if self.history_periods else []
        billed = billed + [current] if status not in ("trialing",) else []
        statuses = []
        for k, _ in enumerate(billed):
            last = k == len(billed) - 1
            y = r.random()
            if last and status in ("past_due", "unpaid"):
                statuses.append("open")
            elif last and status == "incomplete":
                statuses.append("open")
            elif last and status == "incomplete_expired":
                statuses.append("void")
            elif y < 0.01:
                statuses.append("void")
            elif y < 0.02:
                statuses.append("draft")
            elif y < 0.025:
                statuses.append("uncollectible")
            else:
                statuses.append("paid")
        x = r.random()
        coupon = "percent" if x < 0.05 else "amount" if x < 0.08 else "once" if x < 0.10 else None
        return _Story(i=i, currency=currency, prices=tuple(prices), status=status, created=created,
                      period_start=current[0], period_end=current[1], interval=interval, count=count,
                      coupon=coupon, on_customer=coupon is not None and r.random() < 0.3,
                      cancel_at_period_end=status == "active" and r.random() < 0.02,
                      paused=status == "active" and r.random() < 0.005, trial=trial,
                      periods=tuple(billed), invoice_statuses=tuple(statuses), prorate=r.random() < 0.03)

    # -- objects

    @staticmethod
    def ids(i: int) -> tuple[str, str]:
        return f"sub_1Q{i:018d}", f"cus_Q{i:012d}"

    def _discount(self, s: _Story) -> dict | None:
        if s.coupon is None:
            return None
        coupon = self.coupons[s.coupon]
        if s.coupon == "amount":
            coupon = coupon[s.currency]
        sub_id, cus_id = self.ids(s.i)
        # a once coupon is attached in the current period (it discounts only that one); the others at creation
        start = s.period_start if s.coupon == "once" else s.created
        return so.make_discount(coupon, start=start, customer=cus_id, subscription=None if s.on_customer else sub_id,
                                id=f"di_{s.i:020d}")

    def subscription(self, s: _Story) -> dict:
        sub_id, cus_id = self.ids(s.i)
        discount = self._discount(s)
        customer = so.make_customer(id=cus_id, email=f"billing{s.i}@example.com", name=f"Organisation {s.i}",
                                    created=s.created, currency=s.currency,
                                    discount=discount if s.on_customer else None, invoice_prefix=f"P{s.i:07d}")
        sub = so.make_subscription(customer=cus_id, items=list(s.prices), status=s.status, id=sub_id,
                                   created=s.created, current_period_start=s.period_start,
                                   current_period_end=s.period_end, cancel_at_period_end=s.cancel_at_period_end,
                                   canceled_at=s.period_start + DAY if s.status == "canceled" else None,
                                   trial_end=s.created + 14 * DAY if s.trial else None)
        for n, item in enumerate(sub["items"]["data"]):
            item["id"] = f"si_{s.i:016d}{n}"
        if s.trial and s.status != "trialing":
            sub["trial_start"], sub["trial_end"] = s.created, s.created + 14 * DAY
            sub["start_date"] = s.created
        if s.status == "canceled":
            sub["ended_at"] = s.period_start + DAY
        if s.paused:
            sub["pause_collection"] = {"behavior": "void", "resumes_at": None}
        sub["discount"] = None if s.on_customer else discount
        sub["customer"] = customer
        return sub

    def _bills(self, s: _Story) -> Iterator[tuple]:
        """(k, start, end, status, discount, lines as (price, quantity, amount, proration))."""
        discount = self._discount(s)
        for k, ((start, end), status) in enumerate(zip(s.periods, s.invoice_statuses)):
            lines = []
            for price, qty in s.prices:
                usage = (s.i % 5000) if price["recurring"]["usage_type"] == "metered" else qty
                if price["billing_scheme"] == "tiered":
                    amount = max(0, (s.i % 3000) - 1000)
                else:
                    amount = so.amount_for_quantity(price, usage or 0)
                lines.append((price, usage or 0, amount, False))
            if s.prorate and k == len(s.periods) - 1:
                price = s.prices[0][0]
                lines.append((price, 1, -(price["unit_amount"] or 0) // 3, True))
            applies = discount is not None and (s.coupon != "once" or start >= discount["start"])
            yield k, start, end, status, discount if applies else None, lines

    def invoices(self, s: _Story) -> Iterator[dict]:
        sub_id, cus_id = self.ids(s.i)
        for k, start, end, status, discount, bill in self._bills(s):
            lines = [so.make_invoice_line(price, qty, period=(start + 5 * DAY, end) if proration else (start, end),
                                          subscription=sub_id, subscription_item=f"si_{s.i:016d}{0 if proration else n}",
                                          amount=amount, proration=proration)
                     for n, (price, qty, amount, proration) in enumerate(bill)]
            invoice = so.make_invoice(customer=cus_id, status=status, subscription=sub_id, lines=lines,
                                      id=f"in_{s.i:016d}{k:03d}", created=start, charge=self._charge_id(s, k, status),
                                      paid_at=self._paid_at(s, start) if status == "paid" else None,
                                      discount=discount, number=f"P{s.i:07d}-{k:04d}",
                                      customer_email=f"billing{s.i}@example.com", customer_name=f"Organisation {s.i}")
            if discount is None:
                invoice["discount"], invoice["discounts"], invoice["total_discount_amounts"] = None, [], []
            yield invoice

    @staticmethod
    def _charge_id(s: _Story, k: int, status: str) -> str | None:
        return f"ch_{s.i:016d}{k:03d}" if status in ("paid", "open", "uncollectible") else None

    @staticmethod
    def _paid_at(s: _Story, start: int) -> int:
        return start + 3600 + (s.i % 600)

    def charges(self, s: _Story) -> Iterator[dict]:
        """(charge, balance transaction or None, its refund/dispute with their transactions)."""
        for k, start, end, status, discount, bill in self._bills(s):
            charge_id = self._charge_id(s, k, status)
            if charge_id is None:
                continue
            subtotal = sum(amount for _, _, amount, _ in bill)
            amount, cur, created = subtotal - so.discount_amount(discount, subtotal), s.currency, self._paid_at(s, start)
            if status == "paid" and amount > 0:
                status = "pending" if s.i % 997 == 5 else "succeeded"
            elif status == "paid":
                continue
            else:
                status = "failed"
            invoice_id = f"in_{s.i:016d}{k:03d}"
            codes = ("card_declined", "insufficient_funds", "expired_card", "incorrect_cvc")
            txn = None
            if status == "succeeded":
                txn = so.make_balance_transaction(amount=amount, currency=cur, source=charge_id,
                                                  id=f"txn_{s.i:016d}{k:03d}", created=created)
            charge = so.make_charge(amount=max(amount, 1), currency=cur, customer=self.ids(s.i)[1], status=status,
                                    id=charge_id, created=created, invoice=invoice_id,
                                    failure_code=codes[s.i % 4] if status == "failed" else None,
                                    balance_transaction=txn, billing_name=f"Organisation {s.i}")
            extra = []
            if status == "succeeded" and s.i % 211 == 3:  # a refund, full or partial
                part = amount if s.i % 2 else amount // 2
                rt = so.make_balance_transaction(amount=-part, currency=cur, type="refund", source=f"re_{s.i:016d}{k:03d}",
                                                 id=f"txn_r{s.i:015d}{k:03d}", created=created + DAY // 2, fee=0)
                extra.append(("refunds", so.make_refund(charge=charge, amount=part, id=f"re_{s.i:016d}{k:03d}",
                                                        created=created + DAY // 2, balance_transaction=rt)))
                extra.append(("balance_transactions", rt))
            elif status == "succeeded" and s.i % 1499 == 7:  # a dispute
                dt = so.make_balance_transaction(amount=-amount, currency=cur, type="adjustment",
                                                 source=f"dp_{s.i:016d}{k:03d}", id=f"txn_d{s.i:015d}{k:03d}",
                                                 created=created + DAY // 3)
                extra.append(("disputes", so.make_dispute(charge=charge, id=f"dp_{s.i:016d}{k:03d}",
                                                          created=created + DAY // 3, balance_transactions=[dt])))
                extra.append(("balance_transactions", dt))
            yield charge, txn, extra
        if s.i % 101 == 9:  # a one-off payment, without an invoice
            created = s.period_start + 2 * DAY + s.i % 1000
            txn = so.make_balance_transaction(amount=5000, currency=s.currency, source=f"ch_1off{s.i:014d}",
                                              id=f"txn_1off{s.i:012d}", created=created)
            yield so.make_charge(amount=5000, currency=s.currency, customer=self.ids(s.i)[1], id=f"ch_1off{s.i:014d}",
                                 created=created, balance_transaction=txn), txn, []

    # -- listings

    def listing(self, kind: str, since: datetime | int | None = None, until: datetime | int | None = None) -> Iterator[dict]:
        """Every object of ``kind`` created in [since, until), as one listing returns them."""
        since, until = (int(t.timestamp()) if isinstance(t, datetime) else t for t in (since, until))
        def within(obj):
            return (since is None or obj["created"] >= since) and (until is None or obj["created"] < until)

        if kind in ("refunds", "disputes"):  # only some stories have them: the others are not derived
            indices = (i for i in range(self.n) if i % 211 == 3 or i % 1499 == 7)
        else:
            indices = range(self.n)
        for i in indices:
            s = self.story(i)
            if kind == "subscriptions":
                found = [self.subscription(s)]
            elif kind == "invoices":
                found = [inv for inv in self.invoices(s) if within(inv)]
            else:
                found = []
                for charge, txn, extra in self.charges(s):
                    if kind == "charges":
                        found.append(charge)
                    elif kind == "balance_transactions" and txn is not None:
                        found.append(txn)
                    found.extend(obj for k, obj in extra if k == kind)
                found = [obj for obj in found if within(obj)]
            for obj in found:
                yield json.loads(json.dumps(obj)) if self.json_round_trip else obj
