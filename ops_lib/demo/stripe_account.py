"""The demo's Stripe account, consistent with the demo database, and its webhook incidents.

``build`` turns the data set into the emulator's state (customers, products, prices,
subscriptions, the last day's events, webhook endpoints) plus a plan of what the app received:
which events are delivered to the demo app's endpoint, which fail there, which were stored by an
older app version under a rotated-away secret, and which never arrive. ``deliver`` carries the
plan out through the real endpoint, so the app's tables hold exactly what a real app would.
"""
from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..stripe_emulator import objects as so
from ..stripe_emulator.state import add_objects, new_state
from ..stripe_emulator.store import SqliteStateWriter
from ..webhooks.event_types import HANDLED_EVENT_TYPES
from ..webhooks.signature import sign
from . import payment_intent_incidents, refund_incidents
from .app_records import record_event
from .billing_history import BULK
from .seed import Dataset

PLAN_PRICES = {"pro": 2_900, "team": 9_900}
CREDIT_PACK = {"amount": 1_900, "credits": "1000"}

# Its endpoint is subscribed to too few of the types the app handles (planted).
ENDPOINT_EVENT_TYPES = [t for t in HANDLED_EVENT_TYPES if t not in ("invoice.payment_failed", "checkout.session.async_payment_succeeded")]


# A large account keeps in memory only the customers the planting code reads or changes; of the
# others, what their invoices copy (billing_history), under state[SLIM_CUSTOMERS].
SLIM_CUSTOMER = ("id", "object", "email", "name", "invoice_prefix")
SLIM_CUSTOMERS = "_slim_customers"


def kept_organisations(data: Dataset, buyers: list[int]) -> set[int]:
    """Organisations whose Stripe customer stays in memory in a large account: the first (its
    customer is the model of quota_data's unlinked one), the quota and usage-trend incidents and
    controls, and the credit buyers."""
    from . import quota_data, usage_trend_data

    return ({1} | set(quota_data.organisations(data).values())
            | set(usage_trend_data.organisations(data).values()) | set(buyers))


@dataclass
class WebhookPlan:
    delivered: list[dict] = field(default_factory=list)        # sent to the app, processed
    fails_at_app: list[dict] = field(default_factory=list)     # sent while the org lacks its customer id
    stored_with_old_secret: list[dict] = field(default_factory=list)
    never_delivered: list[dict] = field(default_factory=list)
    stuck: list[dict] = field(default_factory=list)            # acknowledged (2xx), never processed
    refund_events: list[tuple] = field(default_factory=list)    # refund_incidents: (scenario, session, event)
    payment_intent_events: list[tuple] = field(default_factory=list)  # payment_intent_incidents: (scenario, session, event)
    orphan_org_ids: list[int] = field(default_factory=list)
    endpoint_id: str = ""
    disabled_endpoint_id: str = ""


def build(data: Dataset, *, api_key: str, receiver_url: str, store: str | Path | None = None) -> tuple[dict, WebhookPlan]:
    """The account and the webhook plan. With ``store`` (a large account), the bulk — the
    background events here, the seeded billing history in billing_history — is streamed into a
    SQLite state there (``state[BULK]``, a SqliteStateWriter; ``finish(state)`` completes it);
    what the planting code looks at and changes stays in ``state["objects"]``."""
    so.seed_ids(f"opsbook-demo-{data.seed}")
    rng = random.Random(data.seed + 1)
    now = int(data.now.timestamp())
    state = new_state([api_key])
    if store is not None:
        state[BULK] = SqliteStateWriter(store)
    plan = WebhookPlan()

    bulk = state.get(BULK)
    org_ids = [o["id"] for o in data.organizations]
    buyers = rng.sample(org_ids, 30)  # the last day's credit purchases (below)
    keep = kept_organisations(data, buyers) if bulk is not None else None
    customers: dict[int, dict] = {}
    background: list[dict] = []
    owners: dict[int, dict] = {}  # each org's first user (one pass: seeding stays linear)
    for user in data.users:
        owners.setdefault(user["organization_id"], user)
    for index, org in enumerate(data.organizations):
        owner = owners[org["id"]]
        customer = so.make_customer(
            id=org["stripe_customer_id"], email=owner["email"], name=org["name"],
            created=int(org["created_at"].timestamp()), metadata={"organization_id": str(org["id"])},
        )
        # Background load (benchmarks): delivered events of a type the app does not handle, over
        # the last 30 days, each about one customer (made with it: a large account streams both).
        for n in range(index, data.stripe_events, len(org_ids)):
            created = now - 3_600 - (n * 2_591_000) // max(1, data.stripe_events)
            event = so.make_event("customer.updated", customer, created=created)
            event["pending_webhooks"] = 0
            if bulk is not None:
                bulk.add(event)
            else:
                background.append(event)
        if bulk is not None and org["id"] not in keep:
            bulk.add(customer)  # streamed; what invoices need of it stays
            customer = {k: customer[k] for k in SLIM_CUSTOMER}
        customers[org["id"]] = customer
    add_objects(state, *(c for org_id, c in customers.items() if keep is None or org_id in keep))
    if bulk is not None:
        state[SLIM_CUSTOMERS] = {c["id"]: c for org_id, c in customers.items() if org_id not in keep}

    products = {
        "pro": so.make_product(name="Pro", id="prod_demo_pro", created=now - 800 * 86400),
        "team": so.make_product(name="Team", id="prod_demo_team", created=now - 800 * 86400),
        "credits": so.make_product(name="1,000 credits", id="prod_demo_credits", created=now - 800 * 86400),
    }
    prices = {
        plan_code: so.make_price(product=products[plan_code], unit_amount=amount, interval="month",
                                 id=f"price_demo_{plan_code}_monthly", created=now - 800 * 86400)
        for plan_code, amount in PLAN_PRICES.items()
    }
    prices["credits"] = so.make_price(product=products["credits"], unit_amount=CREDIT_PACK["amount"],
                                      id="price_demo_credits", created=now - 800 * 86400)
    add_objects(state, *products.values(), *prices.values())

    for sub in data.subscriptions:
        add_objects(state, so.make_subscription(
            id=sub["stripe_subscription_id"], customer=customers[sub["organization_id"]],
            items=[(prices[sub["plan_code"]], 1)], status=sub["status"], created=int(sub["created_at"].timestamp()),
            current_period_start=int(sub["current_period_start"].timestamp()),
            current_period_end=int(sub["current_period_end"].timestamp()),
        ))

    # The last day's credit purchases: most delivered and fulfilled, some not (planted).
    purchases = []
    for n, org_id in enumerate(buyers):
        age = 600 + n * 2_700  # spread over the last ~23 hours, oldest last
        created = now - age
        session = so.make_checkout_session(
            mode="payment", customer=customers[org_id], amount_total=CREDIT_PACK["amount"], currency="usd",
            created=created, metadata={"credits": CREDIT_PACK["credits"], "organization_id": str(org_id)},
        )
        purchases.append((org_id, session))
    events = []
    for org_id, session in purchases:
        event = so.make_event("checkout.session.completed", session, created=session["created"] + 2)
        events.append((org_id, event))

    # Planted: index → fate. Ages: 0 is 10 min old, 29 is ~22 h old.
    never = {0, 1, 17}        # two still within test mode's retry window, one long past it
    fails = {5}               # the org's customer id was saved after the payment
    old_secret = {9, 12}      # stored by the previous app version, signed with the old secret
    stuck = {22}              # acknowledged, then the worker crashed before processing it
    for i, (org_id, event) in enumerate(events):
        if i in never:
            event["pending_webhooks"] = 1
            plan.never_delivered.append(event)
        elif i in fails:
            event["pending_webhooks"] = 1
            plan.fails_at_app.append(event)
            plan.orphan_org_ids.append(org_id)
        elif i in stuck:
            event["pending_webhooks"] = 0  # Stripe got its 2xx: it will not send this again
            plan.stuck.append(event)
        elif i in old_secret:
            event["pending_webhooks"] = 1
            plan.stored_with_old_secret.append(event)
        else:
            plan.delivered.append(event)
        add_objects(state, event)

    add_objects(state, *background)

    endpoint = so.make_webhook_endpoint(
        receiver_url, enabled_events=ENDPOINT_EVENT_TYPES, created=now - 400 * 86400,
        description="demo app: orders, credits, subscriptions",
    )
    legacy = so.make_webhook_endpoint(
        receiver_url.replace("/stripe/webhook", "/legacy/credits-webhook"), enabled_events=["checkout.session.completed"],
        status="disabled", created=now - 700 * 86400, description="credits service (retired?)",
    )
    plan.endpoint_id, plan.disabled_endpoint_id = endpoint["id"], legacy["id"]
    add_objects(state, endpoint, legacy)
    refund_incidents.add_events(state, plan)
    payment_intent_incidents.add_events(state, plan)
    return state, plan


def post_event(url: str, event: dict, secret: str, timestamp: int | None = None) -> int:
    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Stripe-Signature": sign(body, secret, timestamp),
    })
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def deliver(plan: WebhookPlan, *, url: str, secret: str, old_secret: str, admin: Engine) -> None:
    """Carry out the plan through the app's real endpoint (and, for the old-secret rows, its table)."""
    for event in plan.delivered:
        status = post_event(url, event, secret)
        if status != 200:
            raise RuntimeError(f"the demo app refused {event['id']}: HTTP {status}")
    with admin.begin() as conn:
        conn.execute(sa.text("UPDATE organizations SET stripe_customer_id = NULL WHERE id = ANY(:ids)"),
                     {"ids": plan.orphan_org_ids})
    for event in plan.fails_at_app:
        post_event(url, event, secret)  # answered 500: recorded as failed
    with admin.begin() as conn:
        conn.execute(sa.text(
            "UPDATE organizations SET stripe_customer_id = 'cus_demo' || lpad(id::text, 6, '0') WHERE id = ANY(:ids)"
        ), {"ids": plan.orphan_org_ids})
        # Delivered just now, but as Stripe would have: seconds after each event happened.
        for event in plan.delivered + plan.fails_at_app:
            conn.execute(sa.text(
                "UPDATE webhook_events SET received_at = to_timestamp(:at), "
                "processed_at = CASE WHEN processed_at IS NULL THEN NULL ELSE to_timestamp(:at + 1) END "
                "WHERE stripe_event_id = :id"
            ), {"id": event["id"], "at": event["created"] + 3})
            conn.execute(sa.text("UPDATE orders SET created_at = to_timestamp(:at) WHERE stripe_event_id = :id"),
                         {"id": event["id"], "at": event["created"] + 4})
            conn.execute(sa.text("UPDATE credit_grants SET created_at = to_timestamp(:at) WHERE stripe_event_id = :id"),
                         {"id": event["id"], "at": event["created"] + 4})
        for event in plan.stored_with_old_secret:
            body = json.dumps(event)
            conn.execute(sa.text(
                """
                INSERT INTO webhook_events (stripe_event_id, type, status, error, raw_body, signature_header, received_at)
                VALUES (:id, :type, 'failed', 'No signatures found matching the expected signature for payload',
                        :body, :header, to_timestamp(:at))
                """
            ), {"id": event["id"], "type": event["type"], "body": body,
                "header": sign(body, old_secret, event["created"] + 3), "at": event["created"] + 3})
    plant_stuck(plan, secret=secret, admin=admin)
    refund_incidents.plant(plan, secret=secret, admin=admin)
    payment_intent_incidents.plant(plan, secret=secret, admin=admin)


def plant_stuck(plan: WebhookPlan, *, secret: str, admin: Engine) -> None:
    """Events the app acknowledged and recorded as 'received', then never processed (a crash
    between the 2xx and the work): what stuck_events names. Signed with the current secret."""
    with admin.begin() as conn:
        for event in plan.stuck:
            record_event(conn, event, secret, processed=False)


def planted(plan: WebhookPlan) -> dict:
    ids = lambda events: [e["id"] for e in events]  # noqa: E731
    not_processed = plan.never_delivered + plan.fails_at_app + plan.stored_with_old_secret
    return {
        "missing_events": ids(plan.never_delivered),
        "failed_events": ids(plan.fails_at_app + plan.stored_with_old_secret),
        "signature_mismatch": ids(plan.stored_with_old_secret),
        "undelivered_events": ids(not_processed),
        "unfulfilled_payments": ids(not_processed + plan.stuck) + payment_intent_incidents.planted(plan),
        "stuck_events": ids(plan.stuck),
        "unfulfilled_payments_ignored_by_the_app": payment_intent_incidents.planted(plan),
        "refunds_not_reversed": refund_incidents.planted(plan),
        "endpoint_missing_event_types": [plan.endpoint_id],
        "endpoint_disabled": [plan.disabled_endpoint_id],
    }
