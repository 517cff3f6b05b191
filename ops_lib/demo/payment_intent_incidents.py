"""Payments made without Checkout (a PaymentIntent confirmed by the app's own payment form), for
unfulfilled_payments' PaymentIntent half (the seeds' "order not created after a paid
PaymentIntent").

* a PaymentIntent paid directly that the app recorded as processed but fulfilled nothing for (its
  handler acts on Checkout Sessions only): what unfulfilled_payments names;
* controls: a PaymentIntent paid directly whose order exists (keyed by its event), and the
  ``payment_intent.succeeded`` of a Checkout purchase (its order, keyed by the session's event,
  names the same PaymentIntent).

Only events go into the Stripe account, with fixed ids, so nothing else shifts.
"""
from __future__ import annotations


import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..stripe_emulator import objects as so
from ..stripe_emulator.state import add_objects
from .app_records import record_event

AMOUNT = 4_900
# scenario -> position in the plan's delivered purchases whose organisation (and, for the checkout
# control, PaymentIntent) it uses
SCENARIOS = {"direct_unfulfilled": 3, "direct_fulfilled": 6, "checkout_payment_intent": 4}


def add_events(state: dict, plan) -> None:
    for scenario, position in SCENARIOS.items():
        purchase = plan.delivered[position]
        session = purchase["data"]["object"]
        created = purchase["created"] + 60
        if scenario == "checkout_payment_intent":
            pi = so.make_payment_intent(id=session["payment_intent"], amount=session["amount_total"],
                                        currency=session["currency"], customer=session["customer"],
                                        created=purchase["created"], payment_method="pm_demo_checkout",
                                        metadata=session.get("metadata"))
        else:
            pi = so.make_payment_intent(id=f"pi_demo_direct{position:02d}", amount=AMOUNT, customer=session["customer"],
                                        created=created, payment_method=f"pm_demo_direct{position:02d}",
                                        description="Annual onboarding package",
                                        metadata={"organization_id": session["metadata"]["organization_id"]})
        event = so.make_event("payment_intent.succeeded", pi, id=f"evt_demo_pi{position:02d}", created=created)
        plan.payment_intent_events.append((scenario, session, event))
        add_objects(state, event)


def plant(plan, *, secret: str, admin: Engine) -> None:
    with admin.begin() as conn:
        for scenario, session, event in plan.payment_intent_events:
            record_event(conn, event, secret)
            if scenario == "direct_fulfilled":
                pi = event["data"]["object"]
                conn.execute(sa.text(
                    "INSERT INTO orders (organization_id, stripe_event_id, stripe_payment_intent_id, amount, currency, "
                    "status, created_at) VALUES (:org, :id, :pi, :amount, :currency, 'paid', to_timestamp(:at))"
                ), {"org": int(pi["metadata"]["organization_id"]), "id": event["id"], "pi": pi["id"],
                    "amount": pi["amount"], "currency": pi["currency"], "at": event["created"] + 4})


def planted(plan) -> list[str]:
    return [event["id"] for scenario, _, event in plan.payment_intent_events if scenario == "direct_unfulfilled"]
