"""The demo's billing history: months of invoices, charges and balance transactions in Stripe and
the app's own ``payments`` rows, plus organisations whose subscriptions exercise every rule of the
revenue report — and the incidents it must find.

``plant(engine, data, account)`` runs right after ``stripe_account.build``: it adds to the Stripe
state (``account``, changed in place) and to the app database (``engine``, a superuser engine on
the seeded app database), and returns what the revenue_report checks must report, as
``{check_id: [items, in the order the finding lists them]}``.

What is there, with ``now`` the data set's moment and *the window* the part of the current month
before it (at most its last 20 days) — the default period of the report. The window is wherever
``now`` falls in the month: on the 1st at 00:05 it is the four and a half minutes since midnight,
on the 31st at 23:59 the last 20 days. Everything the report of the current month must show is
placed inside it, at fractions of it, never at a fixed age (an age like "80 days ago" lands in the
current month on some days and in the previous one on others), so that the report — and a
newcomer's ``make demo`` — shows the same scenarios at any moment of any month:

* every seeded subscription: six months of paid monthly invoices (30-day periods, as the seed
  makes them) with their charges, balance transactions and the app's payments;
* new organisations (ids after the seeded ones), each a rule of the report:
  yearly, weekly, quarterly and multi-seat items; percent, amount (repeating), once and
  customer-level discounts; a JPY subscription; a trial; past_due within and beyond the grace;
  cancel at period end; a tiered and a metered add-on; and, inside the window, an expansion, a
  contraction, a churn, a cancellation that is not a churn (the customer keeps another
  subscription), a reactivation and a new customer;
* inside the window: the monthly renewals of the percent-off, amount-off, JPY, tiered and
  metered subscriptions (so the month's revenue has both currencies and every kind of plan);
* inside the window: failed charges with four failure codes (the success rate falls below 99 %),
  a pending charge, a full and a partial refund, a dispute, and two payments on which the app
  disagrees with Stripe (one missing, one with the wrong amount).

The database rows agree with Stripe for every organisation (plan codes free/pro/team, the
subscription's status, primary price and periods), so other runbooks see no drift here: new
prices map to the app's plans through their ``metadata.plan``.
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..stripe_emulator import objects as so
from ..stripe_emulator.state import OBJECT_TYPES
from .seed import Dataset, copy_rows

BULK = "_bulk"  # an account's key for its SqliteStateWriter (stripe_account.build, large accounts)

DAY = 86_400
SEED_PERIOD_DAYS = 30  # the seed's subscriptions run 30-day periods
WINDOW_DAYS = 20  # the window is at most the month's last 20 days
TARGET_SUCCESS_RATE = 98.5  # the window's success rate is kept below this (the check's default is 99 %)

# What the ledger keeps of a charge written straight to a large account's store.
SLIM = ("id", "object", "created", "status", "customer", "amount", "currency", "invoice", "failure_code")

PLAN_OF_PRICE = {"price_demo_pro_monthly": "pro", "price_demo_team_monthly": "team"}


@dataclass
class _Ledger:
    """What plant() adds: Stripe objects, the app's rows, and what the checks must find."""

    account: dict
    now: int
    win_start: int
    win_end: int
    payments: list[dict] = field(default_factory=list)
    organizations: list[dict] = field(default_factory=list)
    users: list[dict] = field(default_factory=list)
    subscriptions: list[dict] = field(default_factory=list)
    mismatches: list[tuple[int, str]] = field(default_factory=list)
    charges: list[dict] = field(default_factory=list)
    # A large account (stripe_account.BULK): the seeded history goes straight to this writer
    # while ``bulk`` is set, and ``charges`` keeps only a summary of those charges (SLIM).
    sink: Any = None
    bulk: bool = False

    def t(self, fraction: float) -> int:
        """A moment inside the window."""
        return int(self.win_start + fraction * (self.win_end - self.win_start))

    @property
    def quick(self) -> int:
        """Seconds from an invoice in the window to its payment: 10, less when the window is short
        (the first minutes of a month), so that what follows a payment still comes after it."""
        return max(1, min(10, (self.win_end - self.win_start) // 100))

    def add(self, *objects: dict) -> None:
        """Into the state as they are (``add_objects`` stores copies): later changes — a refund on a
        charge, a subscription's latest invoice — must reach the stored object."""
        if self.bulk:
            self.sink.add(*objects)
            return
        for obj in objects:
            if obj["object"] not in OBJECT_TYPES:
                raise ValueError(f"the emulator does not serve {obj['object']} objects")
            self.account["objects"].setdefault(obj["object"], []).append(obj)

    # -- money movements

    def charge(self, *, customer: str, amount: int, currency: str, created: int, invoice: str | None,
               org_id: int | None, status: str = "succeeded", failure_code: str | None = None,
               app_amount: int | None = None, record: bool = True, charge_id: str | None = None) -> dict:
        charge_id = charge_id or so.new_id("ch")
        txn = None
        if status == "succeeded":
            txn = so.make_balance_transaction(amount=amount, currency=currency, type="charge", source=charge_id,
                                              created=created, description=f"Invoice {invoice}" if invoice else None)
        charge = so.make_charge(amount=amount, currency=currency, customer=customer, status=status, id=charge_id,
                                created=created, failure_code=failure_code, invoice=invoice,
                                balance_transaction=txn, payment_intent=None)
        self.add(charge, *([txn] if txn else []))
        self.charges.append({k: charge[k] for k in SLIM} if self.bulk else charge)
        if status == "succeeded" and record and org_id is not None:
            self.payments.append({
                "organization_id": org_id, "stripe_invoice_id": invoice, "stripe_charge_id": charge_id,
                "amount": amount if app_amount is None else app_amount, "currency": currency,
                "status": "succeeded", "paid_at": _dt(created),
            })
        return charge

    def refund(self, charge: dict, *, amount: int, created: int) -> dict:
        refund_id = so.new_id("re")
        txn = so.make_balance_transaction(amount=-amount, currency=charge["currency"], type="refund",
                                          source=refund_id, created=created, fee=0, description="REFUND FOR CHARGE")
        refund = so.make_refund(charge=charge, amount=amount, id=refund_id, created=created,
                                balance_transaction=txn, reason="requested_by_customer")
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        if charge["refunded"]:
            for row in self.payments:
                if row["stripe_charge_id"] == charge["id"]:
                    row["status"] = "refunded"
        self.add(refund, txn)
        return refund

    def dispute(self, charge: dict, *, created: int) -> dict:
        dispute_id = so.new_id("dp")
        txn = so.make_balance_transaction(amount=-charge["amount"], currency=charge["currency"], type="adjustment",
                                          source=dispute_id, created=created, description="Chargeback withdrawal")
        dispute = so.make_dispute(charge=charge, id=dispute_id, created=created, balance_transactions=[txn],
                                  reason="fraudulent", status="needs_response")
        charge["disputed"] = True
        self.add(dispute, txn)
        return dispute

    def invoice(self, *, customer: dict, sub: dict, lines: list[dict], created: int, org_id: int | None,
                status: str = "paid", discount: dict | None = None, billing_reason: str = "subscription_cycle",
                failures: tuple[str, ...] = (), app_amount: int | None = None, record: bool = True,
                pay_after: int = 3600) -> tuple[dict, dict | None]:
        """An invoice for ``lines``, its failed attempts and (when paid) the charge that paid it."""
        invoice_id = so.new_id("in")
        currency = lines[0]["currency"]
        subtotal = sum(line["amount"] for line in lines)
        total = subtotal - so.discount_amount(discount, subtotal)
        attempt_at = created + min(pay_after, 600)
        paid_charge, last_charge = None, None
        for n, code in enumerate(failures):
            last_charge = self.charge(customer=customer["id"], amount=total, currency=currency,
                                      created=attempt_at + n, invoice=invoice_id, org_id=org_id,
                                      status="failed", failure_code=code)
        paid_at = None
        if status == "paid" and total > 0:
            paid_at = created + pay_after + len(failures)
            paid_charge = self.charge(customer=customer["id"], amount=total, currency=currency, created=paid_at,
                                      invoice=invoice_id, org_id=org_id, app_amount=app_amount, record=record)
            last_charge = paid_charge
        elif status == "paid":
            paid_at = created
        invoice = so.make_invoice(
            customer=customer, status=status, subscription=sub["id"], lines=lines, id=invoice_id,
            created=created, charge=last_charge, paid_at=paid_at, billing_reason=billing_reason,
            attempt_count=max(len(failures) + (1 if paid_charge else 0), 1 if status != "draft" else 0),
            discount=discount,
        )
        if discount is None:
            invoice["discount"], invoice["discounts"], invoice["total_discount_amounts"] = None, [], []
        if self.bulk and last_charge is not None:
            self.charges[-1]["invoice_created"] = created
        self.add(invoice)
        sub["latest_invoice"] = invoice_id
        return invoice, paid_charge


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _month_start(ts: int) -> int:
    moment = _dt(ts)
    return int(moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp())


def _months_before(ts: int, months: int) -> int:
    moment = _dt(ts)
    index = moment.year * 12 + moment.month - 1 - months
    year, month = index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def window(now: int) -> tuple[int, int]:
    """The window of the month holding ``now``: [start, end], inside the month so far, at most its
    last 20 days, a margin (up to two minutes, less in a month's first minutes) off both edges."""
    month_start = _month_start(now)
    margin = max(1, min(120, (now - month_start) // 20))
    start = max(month_start + margin, now - WINDOW_DAYS * DAY)
    return start, max(start, now - margin)


def _anchored(at: int, months: int, count: int) -> list[tuple[int, int]]:
    """``count`` billing periods of ``months`` months, the last one starting at ``at``."""
    starts = [_months_before(at, months * k) for k in range(count - 1, -1, -1)]
    return list(zip(starts, starts[1:] + [so.add_interval(at, "month", months)]))


def _cycles(start: int, interval: str, count: int, until: int) -> list[tuple[int, int]]:
    """Billing periods from ``start`` while they start before ``until`` (the last one holds it)."""
    periods = []
    moment = start
    while moment < until:
        end = so.add_interval(moment, interval, count)
        periods.append((moment, end))
        moment = end
    return periods


def _lines(sub: dict, period: tuple[int, int], *, prices: dict[str, dict], quantities: dict[str, int] | None = None,
           discount: dict | None = None) -> list[dict]:
    """One line per item of ``sub`` for ``period`` (tiered items priced with their full tiers)."""
    lines = []
    for item in sub["items"]["data"]:
        price = prices.get(item["price"]["id"], item["price"])
        quantity = (quantities or {}).get(price["id"], item.get("quantity", 0))
        lines.append(so.make_invoice_line(price, quantity, period=period, subscription=sub["id"],
                                          subscription_item=item["id"], discount=discount))
    return lines


def plant(engine: Engine | None, data: Dataset, account: dict) -> dict:
    """Add the billing history and the revenue scenarios to Stripe (``account``) and the app
    database; return ``{check_id: [items]}`` for the revenue_report checks.

    Everything is placed relative to ``data.now`` (``seed.build(now=...)``), so a data set can be
    built for any moment; with ``engine=None`` only the Stripe side is built (the app's rows are
    not written), which is how the tests sweep the moments of a month."""
    so.seed_ids(f"opsbook-billing-history-{data.seed}")
    now = int(data.now.timestamp())
    month_start = _month_start(now)
    win_start, win_end = window(now)
    ledger = _Ledger(account=account, now=now, win_start=win_start, win_end=win_end, sink=account.get(BULK))

    prices = _catalog(ledger)
    _seed_history(ledger, data, prices)
    next_id = max(o["id"] for o in data.organizations) + 1
    expected = _scenarios(ledger, data, prices, next_id)
    _lower_success_rate(ledger)
    if engine is not None:
        _write_app_rows(engine, ledger)

    window_failures = sorted((c for c in ledger.charges if c["status"] == "failed" and month_start <= c["created"] < now),
                             key=lambda c: (c["created"], c["id"]))
    return {
        "payment_success_rate_low": [c["id"] for c in window_failures],
        "revenue_mismatch": [charge_id for _, charge_id in sorted(ledger.mismatches)],
        "unpriced_items": expected["unpriced_items"],
        "mrr_identity_broken": [],
        # the demo's one trial is still running: a healthy control (trial_incidents plants the cohorts
        # the conversion tests use, outside the demo account)
        "trial_conversion_low": [],
    }


# --------------------------------------------------------------------------- the catalogue


def _catalog(ledger: _Ledger) -> dict[str, dict]:
    """The seeded prices (tagged with their plan) and the new ones, by id (full objects, tiers included)."""
    objects = ledger.account["objects"]
    for price in objects["price"]:
        if price["id"] in PLAN_OF_PRICE:
            price["metadata"] = {**price.get("metadata", {}), "plan": PLAN_OF_PRICE[price["id"]]}
    for sub in objects["subscription"]:
        for item in sub["items"]["data"]:
            if item["price"]["id"] in PLAN_OF_PRICE:
                item["price"]["metadata"] = {**item["price"].get("metadata", {}), "plan": PLAN_OF_PRICE[item["price"]["id"]]}
    created = ledger.now - 800 * DAY
    products = {
        "api": so.make_product(name="API calls", id="prod_demo_api_calls", created=created, unit_label="call"),
        "usage": so.make_product(name="Campaign sends", id="prod_demo_usage", created=created, unit_label="send"),
    }
    new = [
        so.make_price(product="prod_demo_team", unit_amount=99_000, interval="year", id="price_demo_team_yearly",
                      created=created, nickname="Team yearly", metadata={"plan": "team"}),
        so.make_price(product="prod_demo_pro", unit_amount=700, interval="week", id="price_demo_pro_weekly",
                      created=created, nickname="Pro weekly", metadata={"plan": "pro"}),
        so.make_price(product="prod_demo_team", unit_amount=27_000, interval="month", interval_count=3,
                      id="price_demo_team_quarterly", created=created, nickname="Team quarterly", metadata={"plan": "team"}),
        so.make_price(product="prod_demo_pro", unit_amount=4_900, currency="jpy", interval="month",
                      id="price_demo_pro_monthly_jpy", created=created, nickname="Pro (JPY)", metadata={"plan": "pro"}),
        so.make_price(product=products["api"], interval="month", id="price_demo_api_calls_tiered", created=created,
                      nickname="API calls (tiered)", tiers=[{"up_to": 10_000, "unit_amount": 0},
                                                            {"up_to": 100_000, "unit_amount": 1},
                                                            {"up_to": None, "unit_amount": 0, "flat_amount": 90_000}]),
        so.make_price(product=products["usage"], unit_amount=2, interval="month", usage_type="metered",
                      id="price_demo_sends_metered", created=created, nickname="Campaign sends (metered)"),
    ]
    ledger.add(*products.values(), *new)
    return {p["id"]: p for p in objects["price"]}


# --------------------------------------------------------------------------- the seeded subscriptions


def _seed_history(ledger: _Ledger, data: Dataset, prices: dict[str, dict]) -> None:
    customers = {c["id"]: c for c in ledger.account["objects"]["customer"]}
    customers.update(ledger.account.get("_slim_customers") or {})  # a large account's streamed ones
    org_of = {o["stripe_customer_id"]: o["id"] for o in data.organizations}
    seeded = {s["stripe_subscription_id"] for s in data.subscriptions}
    ledger.bulk = ledger.sink is not None
    try:
        for sub in [s for s in ledger.account["objects"]["subscription"] if s["id"] in seeded]:
            customer = customers[sub["customer"]]
            start, end = sub["current_period_start"], sub["current_period_end"]
            periods = [(start - k * SEED_PERIOD_DAYS * DAY, start - (k - 1) * SEED_PERIOD_DAYS * DAY)
                       for k in range(data.history_periods, 0, -1)]
            periods = [p for p in periods if p[0] >= sub["created"]] + [(start, end)]
            for period in periods:
                ledger.invoice(customer=customer, sub=sub, lines=_lines(sub, period, prices=prices), created=period[0],
                               org_id=org_of[customer["id"]],
                               billing_reason="subscription_create" if period[0] == sub["created"] else "subscription_cycle")
    finally:
        ledger.bulk = False


# --------------------------------------------------------------------------- the scenarios


@dataclass
class _Org:
    id: int
    name: str
    plan: str
    customer: dict


class _Scenes:
    """What every scenario shares: the ledger, the price list, the organisations made so far, and
    the three ways to make one (an organisation, a subscription, its invoices)."""

    hours = 5 * 3600  # keeps renewals away from "now"

    def __init__(self, ledger: _Ledger, data: Dataset, prices: dict[str, dict], first_id: int):
        self.ledger, self.prices, self.first_id = ledger, prices, first_id
        self.now, self.t = ledger.now, ledger.t
        self.orgs: list[_Org] = []
        self.seeded_customers = {o["stripe_customer_id"] for o in data.organizations}

    def org(self, name: str, plan: str, *, created_days: int, currency: str = "usd", discount_coupon: dict | None = None) -> _Org:
        org_id = self.first_id + len(self.orgs)
        created = self.now - created_days * DAY - self.hours
        customer = so.make_customer(id=f"cus_demo{org_id:06d}", email=f"user0@org{org_id}.example", name=name,
                                    created=created, currency=currency, metadata={"organization_id": str(org_id)})
        if discount_coupon is not None:
            customer["discount"] = so.make_discount(discount_coupon, start=created, customer=customer["id"])
        self.ledger.add(customer)
        o = _Org(org_id, name, plan, customer)
        self.orgs.append(o)
        self.ledger.organizations.append({"id": org_id, "name": name, "plan_code": plan, "stripe_customer_id": customer["id"],
                                     "created_at": _dt(created)})
        self.ledger.users.append({"organization_id": org_id, "email": f"user0@org{org_id}.example", "name": f"Owner of {name}",
                             "role": "owner", "last_login_at": _dt(self.now - 3 * 3600), "created_at": _dt(created)})
        return o

    def subscribe(self, o: _Org, items: list[tuple[str, int | None]], *, created: int, status: str = "active",
                  periods: list[tuple[int, int]] | None = None, coupon: dict | None = None, **kw) -> dict:
        sub = so.make_subscription(customer=o.customer, items=[(self.prices[p], q) for p, q in items], status=status,
                                   created=created, coupon=coupon,
                                   current_period_start=periods[-1][0] if periods else None,
                                   current_period_end=periods[-1][1] if periods else None, **kw)
        self.ledger.add(sub)
        self.ledger.subscriptions.append({
            "organization_id": o.id, "stripe_subscription_id": sub["id"], "stripe_price_id": items[0][0],
            "plan_code": self.prices[items[0][0]]["metadata"]["plan"], "status": status,
            "current_period_start": _dt(sub["current_period_start"]), "current_period_end": _dt(sub["current_period_end"]),
            "cancel_at_period_end": sub["cancel_at_period_end"], "created_at": _dt(created),
        })
        return sub

    def bill_all(self, o: _Org, sub: dict, periods: list[tuple[int, int]], *, discount_for=None, until: int | None = None,
                 quantities=None) -> list[tuple[dict, dict | None]]:
        """An invoice per period, paid an hour later, or at once for a period that starts in the window."""
        out = []
        for n, period in enumerate(periods):
            if until is not None and period[0] >= until:
                break
            discount = discount_for(n, period) if discount_for else None
            lines = _lines(sub, period, prices=self.prices, discount=discount,
                           quantities=quantities(n, period) if quantities else None)
            out.append(self.ledger.invoice(customer=o.customer, sub=sub, lines=lines, created=period[0], org_id=o.id,
                                      discount=discount,
                                      billing_reason="subscription_create" if n == 0 else "subscription_cycle",
                                      pay_after=self.ledger.quick if period[0] >= self.ledger.win_start else 3600))
        return out


def _scenarios(ledger: _Ledger, data: Dataset, prices: dict[str, dict], first_id: int) -> dict:
    """Every scenario, each in its own function, in the order they are written to the ledger (the
    order decides ids): what one needs from another is passed to it."""
    s = _Scenes(ledger, data, prices, first_id)
    yearly_org = _yearly(s)
    weekly_invoices = _weekly(s)
    _quarterly(s)
    _percent_off(s)
    _amount_off(s)
    _jpy(s)
    _trialing(s)
    _cancels_at_period_end(s)
    tiered, metered = _unpriced_add_ons(s)
    _past_due_beyond_grace(s)

    # --- inside the window, in time order ---
    _past_due_within_grace(s)
    _expansion(s)
    shrink_charge = _contraction(s)
    _refund_before_window(s)
    _churn(s)
    _new_customer(s)
    _dispute(s, weekly_invoices)
    _cancellation_not_churn(s)
    s.ledger.refund(shrink_charge, amount=shrink_charge["amount"] // 2, created=s.t(0.7))  # half the contraction's charge
    _pending_charge(s, yearly_org)
    _reactivation(s)

    unpriced = [(tiered["id"], tiered["items"]["data"][1]["id"]), (metered["id"], metered["items"]["data"][1]["id"])]
    return {"unpriced_items": [item for _, item in sorted(unpriced)]}


def _yearly(s: _Scenes):
    # Yearly: one invoice for the year.
    now = s.now
    o = s.org("Annual Analytics", "team", created_days=200)
    created = o.customer["created"]
    periods = _cycles(created, "year", 1, now)
    s.bill_all(o, s.subscribe(o, [("price_demo_team_yearly", 1)], created=created, periods=periods), periods)
    return o


def _weekly(s: _Scenes):
    # Weekly; one of its charges two weeks ago is disputed inside the window.
    now = s.now
    o = s.org("Weekly Wonders", "pro", created_days=60)
    created = o.customer["created"]
    periods = _cycles(created, "week", 1, now - 3600)
    weekly_invoices = s.bill_all(o, s.subscribe(o, [("price_demo_pro_weekly", 1)], created=created, periods=periods), periods)
    return weekly_invoices


def _quarterly(s: _Scenes):
    # Quarterly (interval_count 3), with a customer-level 10 % discount.
    now = s.now
    o = s.org("Quarterly Quants", "team", created_days=100,
            discount_coupon=so.make_coupon(percent_off=10, duration="forever", id="DEMO_CUSTOMER_10", created=now - 400 * DAY))
    created = o.customer["created"]
    periods = _cycles(created, "month", 3, now - 3600)
    sub = s.subscribe(o, [("price_demo_team_quarterly", 1)], created=created, periods=periods)
    s.bill_all(o, sub, periods, discount_for=lambda n, p: o.customer["discount"])


def _percent_off(s: _Scenes):
    # Percent off forever. This one, the amount-off, JPY, tiered and metered subscriptions renew
    # inside the window (their periods are anchored at a moment of it, not at an age), so that the
    # month so far has revenue in both currencies and on every kind of plan, whatever the day.
    ledger, now, t = s.ledger, s.now, s.t
    coupon = so.make_coupon(percent_off=20, duration="forever", id="DEMO_LAUNCH20", created=now - 400 * DAY)
    o = s.org("Percent Partners", "pro", created_days=0)
    periods = _anchored(t(0.06), 1, 3)
    _backdate(o, ledger, periods[0][0])
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=periods[0][0], periods=periods, coupon=coupon)
    s.bill_all(o, sub, periods, discount_for=lambda n, p: sub["discount"])


def _amount_off(s: _Scenes):
    # Amount off, repeating for 3 months (still running).
    ledger, now, t = s.ledger, s.now, s.t
    coupon = so.make_coupon(amount_off=1_000, currency="usd", duration="repeating", duration_in_months=3,
                            id="DEMO_TEAM10X3", created=now - 400 * DAY)
    o = s.org("Amount Associates", "team", created_days=0)
    periods = _anchored(t(0.85), 1, 2)
    _backdate(o, ledger, periods[0][0])
    sub = s.subscribe(o, [("price_demo_team_monthly", 1)], created=periods[0][0], periods=periods, coupon=coupon)
    s.bill_all(o, sub, periods, discount_for=lambda n, p: sub["discount"] if p[0] < sub["discount"]["end"] else None)


def _jpy(s: _Scenes):
    # JPY (zero-decimal).
    ledger, t = s.ledger, s.t
    o = s.org("Tokyo Tsubasa KK", "pro", created_days=0, currency="jpy")
    periods = _anchored(t(0.2), 1, 4)
    _backdate(o, ledger, periods[0][0])
    s.bill_all(o, s.subscribe(o, [("price_demo_pro_monthly_jpy", 1)], created=periods[0][0], periods=periods), periods)


def _trialing(s: _Scenes):
    # Trialing: a $0 first invoice, no MRR yet.
    ledger, prices = s.ledger, s.prices
    o = s.org("Trial Troupe", "team", created_days=5)
    created = o.customer["created"]
    sub = s.subscribe(o, [("price_demo_team_monthly", 1)], created=created, status="trialing")
    trial_lines = _lines(sub, (created, sub["trial_end"]), prices=prices)
    for line in trial_lines:
        line.update(amount=0, amount_excluding_tax=0, unit_amount_excluding_tax="0",
                    description=f"Trial period for {prices['price_demo_team_monthly']['nickname'] or 'Team'}")
    ledger.invoice(customer=o.customer, sub=sub, lines=trial_lines, created=created, org_id=o.id,
                   billing_reason="subscription_create")


def _cancels_at_period_end(s: _Scenes):
    # Cancels at the end of its period: counts until then.
    now = s.now
    o = s.org("Leaving Logistics", "pro", created_days=75)
    created = o.customer["created"]
    periods = _cycles(created, "month", 1, now - 3600)
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=created, periods=periods, cancel_at_period_end=True,
                    canceled_at=now - 2 * DAY)
    s.bill_all(o, sub, periods)


def _unpriced_add_ons(s: _Scenes):
    # Tiered add-on (licensed, 20,000 calls) and metered add-on: left out of MRR, reported.
    ledger, t = s.ledger, s.t
    o = s.org("Tiered Telemetry", "pro", created_days=0)
    periods = _anchored(t(0.25), 1, 3)
    _backdate(o, ledger, periods[0][0])
    tiered = s.subscribe(o, [("price_demo_pro_monthly", 1), ("price_demo_api_calls_tiered", 20_000)],
                       created=periods[0][0], periods=periods)
    s.bill_all(o, tiered, periods)
    o = s.org("Metered Mailers", "team", created_days=0)
    periods = _anchored(t(0.36), 1, 2)
    _backdate(o, ledger, periods[0][0])
    metered = s.subscribe(o, [("price_demo_team_monthly", 1), ("price_demo_sends_metered", None)],
                        created=periods[0][0], periods=periods)
    s.bill_all(o, metered, periods, quantities=lambda n, p: {"price_demo_sends_metered": 1_000 + 250 * n})
    return tiered, metered


def _past_due_beyond_grace(s: _Scenes):
    # past_due beyond the grace: the yearly renewal failed 40 days ago.
    ledger, prices, now = s.ledger, s.prices, s.now
    o = s.org("Lapsed Labs", "team", created_days=405)
    renewal = now - 40 * DAY
    periods = [(_months_before(renewal, 12), renewal), (renewal, so.add_interval(renewal, "year"))]
    sub = s.subscribe(o, [("price_demo_team_yearly", 1)], created=periods[0][0], status="past_due", periods=periods)
    ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, periods[0], prices=prices), created=periods[0][0],
                   org_id=o.id, billing_reason="subscription_create")
    ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, periods[1], prices=prices), created=renewal,
                   org_id=o.id, status="open", failures=("insufficient_funds", "card_declined"))


def _past_due_within_grace(s: _Scenes):
    # past_due within the grace: its renewal failed in the window.
    ledger, prices, t = s.ledger, s.prices, s.t
    late_at = t(0.12)
    o = s.org("Late Payments Ltd", "pro", created_days=0)
    periods = [(_months_before(late_at, k), _months_before(late_at, k - 1)) for k in (3, 2, 1)]
    periods.append((late_at, so.add_interval(late_at, "month")))
    _backdate(o, ledger, periods[0][0])
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=periods[0][0], status="past_due", periods=periods)
    s.bill_all(o, sub, periods[:-1])
    ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, periods[-1], prices=prices), created=late_at,
                   org_id=o.id, status="open", failures=("insufficient_funds",), pay_after=ledger.quick)


def _expansion(s: _Scenes):
    # Expansion: 3 → 5 seats, billing cycle reset; the app recorded the list price, not the prorated total.
    ledger, prices, t = s.ledger, s.prices, s.t
    grow_at = t(0.3)
    anchor = grow_at - 12 * DAY  # the upgrade comes 12 days into a period
    o = s.org("Seats Galore", "pro", created_days=0)
    old = [(_months_before(anchor, k), _months_before(anchor, k - 1)) for k in (3, 2, 1)]
    old.append((anchor, so.add_interval(anchor, "month")))
    _backdate(o, ledger, old[0][0])
    new_period = (grow_at, so.add_interval(grow_at, "month"))
    sub = s.subscribe(o, [("price_demo_pro_monthly", 5)], created=old[0][0], periods=old + [new_period])
    s.bill_all(o, sub, old, quantities=lambda n, p: {"price_demo_pro_monthly": 3})
    unused = old[-1][1] - grow_at
    credit = round(3 * 2_900 * unused / (old[-1][1] - old[-1][0]))
    lines = _lines(sub, new_period, prices=prices) + [so.make_invoice_line(
        prices["price_demo_pro_monthly"], 3, period=(grow_at, old[-1][1]), subscription=sub["id"],
        subscription_item=sub["items"]["data"][0]["id"], amount=-credit, proration=True,
        description="Unused time on 3 × Pro after the upgrade")]
    _, charge = ledger.invoice(customer=o.customer, sub=sub, lines=lines, created=grow_at, org_id=o.id,
                               billing_reason="subscription_update", failures=("card_declined",), pay_after=ledger.quick,
                               app_amount=5 * 2_900)
    ledger.mismatches.append((charge["created"], charge["id"]))


def _contraction(s: _Scenes):
    # Contraction: team → pro at a renewal in the window; half of that charge refunded later.
    ledger, prices, t = s.ledger, s.prices, s.t
    shrink_at = t(0.42)
    o = s.org("Downsized Digital", "pro", created_days=0)
    old = [(_months_before(shrink_at, k), _months_before(shrink_at, k - 1)) for k in (4, 3, 2, 1)]
    _backdate(o, ledger, old[0][0])
    new_period = (shrink_at, so.add_interval(shrink_at, "month"))
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=old[0][0], periods=old + [new_period])
    team_prices = dict(prices)
    team_prices[sub["items"]["data"][0]["price"]["id"]] = prices["price_demo_team_monthly"]
    for n, period in enumerate(old):
        ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, period, prices=team_prices), created=period[0],
                       org_id=o.id, billing_reason="subscription_create" if n == 0 else "subscription_cycle")
    _, shrink_charge = ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, new_period, prices=prices),
                                      created=shrink_at, org_id=o.id, failures=("expired_card",), pay_after=ledger.quick)
    return shrink_charge


def _refund_before_window(s: _Scenes):
    # A full refund of a seeded customer's charge from before the window.
    ledger, t = s.ledger, s.t
    seeded_charges = [c for c in ledger.charges if c["status"] == "succeeded" and c["customer"] in s.seeded_customers
                      and ledger.win_start - 40 * DAY < c["created"] < ledger.win_start]
    if seeded_charges:
        target = min(seeded_charges, key=lambda c: (c["created"], c["id"]))
        if ledger.sink is not None and "invoice_created" in target:  # a summary: the charge is in the store
            target = ledger.sink.get(target["id"])
            ledger.refund(target, amount=target["amount"], created=t(0.47))
            ledger.sink.add(target)  # replaces the stored one
        else:
            ledger.refund(target, amount=target["amount"], created=t(0.47))


def _churn(s: _Scenes):
    # Churn: cancelled at once, the customer has nothing else.
    t = s.t
    churn_at = t(0.5)
    o = s.org("Churned Chairs", "free", created_days=150)
    created = o.customer["created"]
    periods = _cycles(created, "month", 1, churn_at)
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=created, status="canceled", periods=periods,
                    canceled_at=churn_at, cancellation_reason="cancellation_requested")
    s.bill_all(o, sub, periods)


def _new_customer(s: _Scenes):
    # New customer with a once-only $5 discount; the app never recorded its payment.
    ledger, prices, now, t = s.ledger, s.prices, s.now, s.t
    new_at = t(0.55)
    coupon = so.make_coupon(amount_off=500, currency="usd", duration="once", id="DEMO_WELCOME5", created=now - 400 * DAY)
    o = s.org("Fresh Foods", "pro", created_days=0)
    _backdate(o, ledger, new_at - 3 * DAY)
    period = (new_at, so.add_interval(new_at, "month"))
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=new_at, periods=[period], coupon=coupon)
    _, charge = ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, period, prices=prices, discount=sub["discount"]),
                               created=new_at, org_id=o.id, discount=sub["discount"], billing_reason="subscription_create",
                               pay_after=ledger.quick, record=False)
    ledger.mismatches.append((charge["created"], charge["id"]))


def _dispute(s: _Scenes, weekly_invoices: list):
    # A dispute on a weekly charge from two weeks before.
    ledger, t = s.ledger, s.t
    paid = [c for _, c in weekly_invoices if c is not None and c["created"] < t(0.6) - 10 * DAY]
    ledger.dispute(paid[-1], created=t(0.6))


def _cancellation_not_churn(s: _Scenes):
    # A cancellation that is not a churn: the customer keeps its Pro subscription.
    now, t = s.now, s.t
    drop_at = t(0.65)
    o = s.org("Two Teams Trading", "pro", created_days=120)
    created = o.customer["created"]
    periods = _cycles(created, "month", 1, now - 3600)
    s.bill_all(o, s.subscribe(o, [("price_demo_pro_monthly", 1)], created=created, periods=periods), periods)
    periods = _cycles(created + 3600, "month", 1, drop_at)
    sub = s.subscribe(o, [("price_demo_team_monthly", 1)], created=created + 3600, status="canceled", periods=periods,
                    canceled_at=drop_at)
    s.bill_all(o, sub, periods)


def _pending_charge(s: _Scenes, yearly_org: _Org):
    # A pending one-off charge (a bank debit still processing): no outcome yet.
    ledger, t = s.ledger, s.t
    ledger.charge(customer=yearly_org.customer["id"], amount=12_000, currency="usd", created=t(0.72), invoice=None,
                  org_id=yearly_org.id, status="pending")


def _reactivation(s: _Scenes):
    # Reactivation: churned three months ago, back on Team; the first attempt failed.
    ledger, prices, now, t = s.ledger, s.prices, s.now, s.t
    back_at = t(0.78)
    o = s.org("Comeback Coffee", "team", created_days=200)
    created = o.customer["created"]
    left_at = now - 90 * DAY
    periods = _cycles(created, "month", 1, left_at)
    sub = s.subscribe(o, [("price_demo_pro_monthly", 1)], created=created, status="canceled", periods=periods,
                    canceled_at=left_at)
    s.bill_all(o, sub, periods)
    period = (back_at, so.add_interval(back_at, "month"))
    sub = s.subscribe(o, [("price_demo_team_monthly", 1)], created=back_at, periods=[period])
    ledger.invoice(customer=o.customer, sub=sub, lines=_lines(sub, period, prices=prices), created=back_at, org_id=o.id,
                   billing_reason="subscription_create", failures=("incorrect_cvc",), pay_after=ledger.quick)


def _backdate(o: _Org, ledger: _Ledger, created: int) -> None:
    """An organisation created just before its first subscription."""
    created -= 2 * DAY
    o.customer["created"] = created
    for row in ledger.organizations:
        if row["id"] == o.id:
            row["created_at"] = _dt(created)
    for row in ledger.users:
        if row["organization_id"] == o.id:
            row["created_at"] = _dt(created)


def _lower_success_rate(ledger: _Ledger) -> None:
    """More failed first attempts on the month's renewals, until the rate is below the target."""
    month_start = _month_start(ledger.now)
    invoiced_at = {i["id"]: i["created"] for i in ledger.account["objects"].get("invoice", [])}
    for c in ledger.charges:
        if "invoice_created" in c:
            invoiced_at[c["invoice"]] = c["invoice_created"]

    def this_month(c: dict) -> bool:
        return month_start <= c["created"] < ledger.now

    succeeded = sum(1 for c in ledger.charges if c["status"] == "succeeded" and this_month(c))
    failed = sum(1 for c in ledger.charges if c["status"] == "failed" and this_month(c))
    codes = ("card_declined", "insufficient_funds", "expired_card", "card_declined")
    candidates = sorted((c for c in ledger.charges if c["status"] == "succeeded" and this_month(c) and c.get("invoice")),
                        key=lambda c: (c["created"], c["id"]))
    n = 0
    while candidates:
        if 100 * succeeded / (succeeded + failed) < TARGET_SUCCESS_RATE:
            break
        base = candidates[n % len(candidates)]
        # Between the invoice and the payment that succeeded (never before the invoice existed).
        created = min(max(base["created"] - 300 - n, invoiced_at[base["invoice"]], month_start), base["created"])
        charge = ledger.charge(customer=base["customer"], amount=base["amount"], currency=base["currency"],
                               created=created, invoice=base["invoice"], org_id=None, status="failed",
                               failure_code=codes[n % len(codes)])
        failed += this_month(charge)
        n += 1


# --------------------------------------------------------------------------- the app's rows


def _write_app_rows(engine: Engine, ledger: _Ledger) -> None:
    with engine.begin() as conn:
        if ledger.organizations:
            conn.execute(sa.text(
                "INSERT INTO organizations (id, name, plan_code, stripe_customer_id, created_at) "
                "VALUES (:id, :name, :plan_code, :stripe_customer_id, :created_at)"), ledger.organizations)
            conn.execute(sa.text("SELECT setval('organizations_id_seq', (SELECT max(id) FROM organizations))"))
            conn.execute(sa.text(
                "INSERT INTO users (organization_id, email, name, role, last_login_at, created_at) "
                "VALUES (:organization_id, :email, :name, :role, :last_login_at, :created_at)"), ledger.users)
            conn.execute(sa.text(
                "INSERT INTO subscriptions (organization_id, stripe_subscription_id, stripe_price_id, plan_code, status, "
                "current_period_start, current_period_end, cancel_at_period_end, created_at, updated_at) "
                "VALUES (:organization_id, :stripe_subscription_id, :stripe_price_id, :plan_code, :status, "
                ":current_period_start, :current_period_end, :cancel_at_period_end, :created_at, :created_at)"),
                ledger.subscriptions)
        if ledger.payments:
            columns = ["organization_id", "stripe_invoice_id", "stripe_charge_id", "amount", "currency", "status", "paid_at"]
            copy_rows(conn, "payments", columns, (tuple(row[c] for c in columns) for row in ledger.payments))
