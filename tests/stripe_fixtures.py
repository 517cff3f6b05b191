"""A rich Stripe account for the emulator tests, built with the emulator's own builders.

It holds every variant the builders know (subscription statuses, coupon durations, price
kinds, invoice and charge outcomes, zero-decimal JPY, all event types the runbooks read), so
that validating the emulator's answers against the specification covers them all. Tests compute
their expectations from `state["objects"]` rather than hard-coding ids.
"""
from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import stripe

from ops_lib.stripe_emulator import add_objects, new_state, start_emulator, stop, write_state
from ops_lib.stripe_emulator import objects as o

API_VERSION = "2023-08-16"
SECRET_KEY = "sk_test_51OpsbookEmulatorSecretKey0000abcd"
RESTRICTED_KEY = "rk_test_51OpsbookEmulatorRestricted00wxyz"
RESTRICTED_PERMISSIONS = ["event", "webhook_endpoint"]

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY = 86400
PAGINATION_EVENTS = 130  # more than one page of 100


def build_rich_state() -> dict[str, Any]:
    o.seed_ids("opsbook-stripe-tests")
    state = new_state([SECRET_KEY, {"key": RESTRICTED_KEY, "permissions": RESTRICTED_PERMISSIONS}])
    add = lambda *objs: add_objects(state, *objs)  # noqa: E731

    # Catalog: every price kind.
    starter = o.make_product(name="Starter", created=T0 - 400 * DAY)
    pro = o.make_product(name="Pro", created=T0 - 400 * DAY, unit_label="seat")
    usage = o.make_product(name="API calls", created=T0 - 300 * DAY)
    setup = o.make_product(name="Onboarding", created=T0 - 300 * DAY, active=False)
    prices = {
        "starter_monthly": o.make_price(product=starter, unit_amount=1900, interval="month",
                                        created=T0 - 400 * DAY, nickname="Starter monthly",
                                        lookup_key="starter_monthly"),
        "pro_monthly": o.make_price(product=pro, unit_amount=4900, interval="month",
                                    created=T0 - 399 * DAY, nickname="Pro monthly"),
        "pro_yearly": o.make_price(product=pro, unit_amount=49000, interval="year",
                                   created=T0 - 398 * DAY, nickname="Pro yearly"),
        "pro_quarterly": o.make_price(product=pro, unit_amount=13500, interval="month",
                                      interval_count=3, created=T0 - 397 * DAY),
        "starter_weekly": o.make_price(product=starter, unit_amount=500, interval="week",
                                       created=T0 - 396 * DAY),
        "starter_daily": o.make_price(product=starter, unit_amount=100, interval="day",
                                      interval_count=2, created=T0 - 395 * DAY, active=False),
        "pro_monthly_jpy": o.make_price(product=pro, unit_amount=7000, currency="jpy",
                                        interval="month", created=T0 - 394 * DAY),
        "seats_graduated": o.make_price(product=pro, interval="month", created=T0 - 393 * DAY,
                                        tiers=[{"up_to": 5, "unit_amount": 1000},
                                               {"up_to": None, "unit_amount": 800,
                                                "flat_amount": 500}]),
        "seats_volume": o.make_price(product=pro, interval="year", created=T0 - 392 * DAY,
                                     tiers_mode="volume",
                                     tiers=[{"up_to": 10, "unit_amount": 9000},
                                            {"up_to": None, "unit_amount": 7000}]),
        "api_metered": o.make_price(product=usage, unit_amount=2, interval="month",
                                    usage_type="metered", created=T0 - 300 * DAY),
        "onboarding": o.make_price(product=setup, unit_amount=25000, created=T0 - 300 * DAY),
    }
    pro["default_price"] = prices["pro_monthly"]["id"]
    add(starter, pro, usage, setup, *prices.values())

    # Customers, one per subscription scenario.
    statuses = ["active", "active", "trialing", "past_due", "canceled", "unpaid", "incomplete",
                "active", "active", "active"]
    customers = [
        o.make_customer(email=f"owner{i}@example.com", name=f"Customer {i}",
                        created=T0 - (200 - i) * DAY, currency="jpy" if i == 9 else "usd",
                        metadata={"org_id": str(1000 + i)}, delinquent=statuses[i] == "past_due")
        for i in range(len(statuses))
    ]
    customers[1]["discount"] = o.make_discount(
        o.make_coupon(percent_off=10, duration="forever", created=T0 - 300 * DAY),
        start=T0 - 190 * DAY, customer=customers[1])
    add(*customers)

    coupons = [
        o.make_coupon(percent_off=25.5, duration="repeating", duration_in_months=3,
                      created=T0 - 300 * DAY),
        o.make_coupon(amount_off=1000, currency="usd", duration="once", created=T0 - 300 * DAY),
        o.make_coupon(percent_off=50, duration="forever", created=T0 - 300 * DAY),
    ]
    item_sets = [
        [(prices["pro_monthly"], 3), (prices["api_metered"], None)],
        [(prices["starter_monthly"], 1)],
        [(prices["pro_yearly"], 1)],
        [(prices["pro_quarterly"], 2)],
        [(prices["starter_weekly"], 1)],
        [(prices["seats_graduated"], 7)],
        [(prices["starter_monthly"], 1)],
        [(prices["seats_volume"], 12), (prices["starter_monthly"], 2)],
        [(prices["starter_daily"], 1)],
        [(prices["pro_monthly_jpy"], 1)],
    ]
    period_start = T0 - 10 * DAY
    subscriptions, invoices, charges, intents, txns = [], [], [], [], []
    for i, (customer, status, items) in enumerate(zip(customers, statuses, item_sets)):
        sub = o.make_subscription(
            customer=customer, items=items, status=status, created=T0 - (100 - i) * DAY,
            current_period_start=period_start if status != "trialing" else None,
            coupon=coupons[i] if i < len(coupons) else None,
            cancel_at_period_end=(i == 7), default_payment_method=None)
        invoice_status = {"active": "paid", "trialing": "paid", "past_due": "open",
                          "canceled": "void", "unpaid": "uncollectible",
                          "incomplete": "open"}[status]
        invoice_id, charge_id, intent_id = o.new_id("in"), o.new_id("ch"), o.new_id("pi")
        txn_id = o.new_id("txn")
        failed = invoice_status in ("open", "uncollectible")
        invoice = o.make_invoice(
            id=invoice_id, customer=customer, subscription=sub, status=invoice_status,
            created=period_start + i * 60, charge=charge_id, payment_intent=intent_id,
            prices=prices.values(), usage={prices["api_metered"]["id"]: 12000},
            billing_reason="subscription_create" if status == "incomplete" else None)
        sub["latest_invoice"] = invoice_id
        charge = o.make_charge(
            id=charge_id, amount=max(invoice["amount_due"], 50), currency=invoice["currency"],
            customer=customer, invoice=invoice_id, payment_intent=intent_id,
            status="failed" if failed else "succeeded",
            failure_code="insufficient_funds" if status == "unpaid" else None,
            balance_transaction=None if failed else txn_id, created=invoice["created"] + 60,
            receipt_email=customer["email"])
        intent = o.make_payment_intent(
            id=intent_id, amount=charge["amount"], currency=charge["currency"],
            customer=customer, invoice=invoice_id, latest_charge=charge_id,
            failure_code=charge["failure_code"], created=invoice["created"])
        subscriptions.append(sub)
        invoices.append(invoice)
        charges.append(charge)
        intents.append(intent)
        if not failed:
            txns.append(o.make_balance_transaction(
                id=txn_id, amount=charge["amount"], currency=charge["currency"],
                source=charge, created=charge["created"]))

    # A draft invoice with a one-off line, and a refunded and a disputed charge.
    invoices.append(o.make_invoice(
        customer=customers[0], status="draft", created=T0 - 2 * DAY,
        lines=[o.make_invoice_line(prices["onboarding"], 1, period=(T0 - 2 * DAY, T0 - 2 * DAY))]))
    refunded = charges[1]
    refunded["amount_refunded"], refunded["refunded"] = refunded["amount"], True
    refund_txn_id = o.new_id("txn")
    refund = o.make_refund(charge=refunded, created=refunded["created"] + DAY,
                           reason="requested_by_customer", balance_transaction=refund_txn_id)
    txns.append(o.make_balance_transaction(
        id=refund_txn_id, amount=-refund["amount"], currency=refund["currency"], type="refund",
        source=refund, created=refund["created"]))
    partial = charges[7]
    partial["amount_refunded"] = 1000
    partial_refund = o.make_refund(charge=partial, amount=1000, created=partial["created"] + DAY)
    disputed = charges[0]
    disputed["disputed"] = True
    dispute_id = o.new_id("dp")
    dispute_txn = o.make_balance_transaction(
        amount=-disputed["amount"], currency=disputed["currency"], type="adjustment",
        source=dispute_id, created=disputed["created"] + 3 * DAY)
    dispute = o.make_dispute(id=dispute_id, charge=disputed, reason="fraudulent",
                             created=disputed["created"] + 3 * DAY,
                             balance_transactions=[dispute_txn])
    won = charges[9]  # the JPY customer's
    won["disputed"] = True
    won_id = o.new_id("dp")
    won_txns = [
        o.make_balance_transaction(amount=-won["amount"], currency=won["currency"],
                                   type="adjustment", source=won_id, created=won["created"] + DAY),
        o.make_balance_transaction(amount=won["amount"], currency=won["currency"], fee=0,
                                   type="adjustment", source=won_id,
                                   created=won["created"] + 30 * DAY),
    ]
    won_dispute = o.make_dispute(id=won_id, charge=won, reason="product_not_received",
                                 status="won", created=won["created"] + DAY,
                                 balance_transactions=won_txns)
    txns += [dispute_txn, *won_txns]
    add(*subscriptions, *invoices, *charges, *intents, refund, partial_refund, dispute,
        won_dispute, *txns)

    # Checkout: a one-off payment and a subscription signup.
    sessions = [
        o.make_checkout_session(mode="payment", customer=customers[0], amount_total=25000,
                                payment_intent=intents[0], created=T0 - 5 * DAY,
                                metadata={"org_id": "1000", "credits": "500"}),
        o.make_checkout_session(mode="subscription", customer=customers[6], amount_total=1900,
                                subscription=subscriptions[6], invoice=invoices[6],
                                created=T0 - 4 * DAY, client_reference_id="org_1006"),
        o.make_checkout_session(mode="payment", customer=None, customer_email="guest@example.com",
                                amount_total=9900, payment_status="unpaid", status="expired",
                                created=T0 - 3 * DAY),
    ]
    add(*sessions)

    # Webhook endpoints: one healthy, one disabled on an older version.
    add(o.make_webhook_endpoint("https://app.example.com/stripe/webhook",
                                enabled_events=["checkout.session.completed", "invoice.*",
                                                "customer.subscription.*"],
                                created=T0 - 300 * DAY),
        o.make_webhook_endpoint("https://old.example.com/hooks", enabled_events=["*"],
                                status="disabled", api_version="2020-08-27",
                                created=T0 - 500 * DAY))

    # Events: each type the runbooks read, then a long tail for pagination.
    updated = dict(subscriptions[3], status="past_due")
    events = [
        o.make_event("checkout.session.completed", sessions[0], created=T0 - 5 * DAY + 5,
                     pending_webhooks=1, request_id=None),
        o.make_event("checkout.session.completed", sessions[1], created=T0 - 4 * DAY + 5),
        o.make_event("payment_intent.succeeded", intents[0], created=T0 - 5 * DAY + 4),
        o.make_event("payment_intent.payment_failed", intents[3], created=T0 - 3 * DAY,
                     pending_webhooks=2),
        o.make_event("invoice.paid", invoices[0], created=T0 - 2 * DAY),
        o.make_event("invoice.payment_failed", invoices[3], created=T0 - 2 * DAY + 10),
        o.make_event("customer.subscription.created", subscriptions[6], created=T0 - 4 * DAY + 6,
                     request_id="req_7tyv1i5WqYl0Ph", idempotency_key="2c1ae3d6-checkout"),
        o.make_event("customer.subscription.updated", updated, created=T0 - 2 * DAY + 20,
                     previous_attributes={"status": "active"}),
        o.make_event("customer.subscription.deleted", subscriptions[4], created=T0 - DAY),
        o.make_event("charge.refunded", refunded, created=refund["created"]),
        o.make_event("charge.dispute.created", dispute, created=dispute["created"]),
    ]
    for n in range(PAGINATION_EVENTS):
        # Pairs share a second, so the id tie-break is exercised.
        customer = customers[n % len(customers)]
        events.append(o.make_event(
            "customer.updated", dict(customer, metadata={**customer["metadata"], "seen": str(n)}),
            previous_attributes={"metadata": customer["metadata"]},
            created=T0 - 20 * DAY + n // 2, pending_webhooks=1 if n % 10 == 0 else 0))
    add(*events)
    return state


# --------------------------------------------------------------------------- emulator access


@contextlib.contextmanager
def running_emulator(state: dict[str, Any], directory: Path) -> Iterator[tuple[Any, str, Path]]:
    path = directory / "stripe-state.json"
    write_state(path, state)
    server, thread, base_url = start_emulator(path)
    try:
        yield server, base_url, path
    finally:
        stop(server, thread)


def client_for(base_url: str, api_key: str = SECRET_KEY, retries: int = 0,
               version: str | None = API_VERSION) -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": base_url},
                               stripe_version=version, max_network_retries=retries)


def control(base_url: str, method: str, name: str, body: dict | None = None) -> Any:
    """Call an /_emulator/ control endpoint."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url}/_emulator/{name}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def raw_get(base_url: str, path: str, api_key: str | None = SECRET_KEY,
            version: str | None = API_VERSION) -> tuple[int, Any]:
    """GET without the SDK: (status, JSON body)."""
    headers = {}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if version is not None:
        headers["Stripe-Version"] = version
    request = urllib.request.Request(base_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
