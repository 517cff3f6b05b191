"""Refunds and disputes of the demo's credit purchases, and which of them the app reversed.

Four of the last day's delivered (and fulfilled) credit purchases are refunded or disputed; the
app's webhook handler recorded every one of the events as processed, but took back only one:

* a full refund and a dispute with no reversal row: what ``refunds_not_reversed`` names;
* a full refund the app reversed, and a partial refund (left to the business): the controls.

Only the events are added to the Stripe account (their objects ride inside them), so the
revenue report's charges, refunds and disputes are untouched. Ids are fixed, so adding these
shifts no other object's id.
"""
from __future__ import annotations


import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..stripe_emulator import objects as so
from ..stripe_emulator.state import add_objects
from .app_records import record_event

# position in the plan's delivered purchases -> what happens to it
SCENARIOS = {2: "refund_not_reversed", 5: "dispute_not_reversed", 8: "refund_reversed", 11: "partial_refund"}


def add_events(state: dict, plan) -> None:
    """Refund and dispute events for some delivered purchases (``plan.refund_events``)."""
    for position, scenario in SCENARIOS.items():
        purchase = plan.delivered[position]
        session = purchase["data"]["object"]
        created = purchase["created"] + 300
        amount = session["amount_total"]
        charge = so.make_charge(
            id=f"ch_demo_refunded{position:02d}", amount=amount, currency=session["currency"],
            customer=session["customer"], payment_intent=session["payment_intent"], created=purchase["created"],
            amount_refunded=amount // 2 if scenario == "partial_refund" else (0 if scenario.startswith("dispute") else amount),
            disputed=scenario.startswith("dispute"),
        )
        if scenario.startswith("dispute"):
            dispute = so.make_dispute(charge=charge, id=f"dp_demo{position:02d}", created=created)
            event = so.make_event("charge.dispute.created", dispute, id=f"evt_demo_dispute{position:02d}", created=created)
        else:
            event = so.make_event("charge.refunded", charge, id=f"evt_demo_refund{position:02d}", created=created)
        plan.refund_events.append((scenario, session, event))
        add_objects(state, event)


def plant(plan, *, secret: str, admin: Engine) -> None:
    """The app processed every refund event (as its handler would record them); it reversed one."""
    with admin.begin() as conn:
        for scenario, session, event in plan.refund_events:
            record_event(conn, event, secret)
            if scenario == "refund_reversed":
                conn.execute(sa.text(
                    "INSERT INTO fulfilment_reversals (organization_id, stripe_event_id, stripe_payment_intent_id, "
                    "credits_reversed, created_at) VALUES (:org, :id, :pi, :credits, to_timestamp(:at + 2))"
                ), {"org": int(session["metadata"]["organization_id"]), "id": event["id"], "pi": session["payment_intent"],
                    "credits": int(session["metadata"]["credits"]), "at": event["created"]})


def planted(plan) -> list[str]:
    return [event["id"] for scenario, _, event in plan.refund_events if scenario.endswith("not_reversed")]
