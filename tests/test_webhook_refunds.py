"""refunds_not_reversed on a scratch database: a fulfilled payment refunded in full or disputed, with
no reversal row, is named; a reversed one, a partial refund and an unfulfilled payment are not."""
from __future__ import annotations

import dataclasses
from pathlib import Path


from ops_lib.db import make_engine
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_emulator import objects as o
from ops_lib.webhooks.refunds import refunds_not_reversed

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
T0 = 1_700_000_000


def order(db, pi: str, n: int) -> None:
    db.execute("INSERT INTO orders (organization_id, stripe_event_id, stripe_payment_intent_id, amount, currency, status) "
               "VALUES (1, :e, :pi, 1900, 'usd', 'paid')", e=f"evt_checkout_{n}", pi=pi)


def refund_event(pi: str, n: int, *, refunded: int = 1900):
    charge = o.make_charge(id=f"ch_{n}", amount=1900, customer="cus_A", payment_intent=pi, created=T0,
                           amount_refunded=refunded)
    return o.make_event("charge.refunded", charge, id=f"evt_refund_{n}", created=T0 + n)


def dispute_event(pi: str, n: int):
    charge = o.make_charge(id=f"ch_{n}", amount=1900, customer="cus_A", payment_intent=pi, created=T0, disputed=True)
    return o.make_event("charge.dispute.created", o.make_dispute(charge=charge, id=f"dp_{n}", created=T0 + n),
                        id=f"evt_dispute_{n}", created=T0 + n)


def test_fulfilled_refunds_and_disputes_without_a_reversal_are_named(app_db):
    for n in range(5):
        order(app_db, f"pi_{n}", n)
    app_db.execute("INSERT INTO fulfilment_reversals (organization_id, stripe_event_id, stripe_payment_intent_id) "
                   "VALUES (1, 'evt_refund_2', 'pi_2')")
    events = [
        refund_event("pi_0", 0),                 # refunded in full, never reversed: named
        dispute_event("pi_1", 1),                # disputed, never reversed: named
        refund_event("pi_2", 2),                 # control: reversed
        refund_event("pi_3", 3, refunded=500),   # control: a partial refund
        refund_event("pi_never_fulfilled", 9),   # control: nothing was given, nothing to take back
        o.make_event("checkout.session.completed",
                     o.make_checkout_session(customer="cus_A", amount_total=1900, created=T0), created=T0),
    ]
    engine = make_engine(app_db.url)
    try:
        with engine.connect() as conn:
            found = refunds_not_reversed(conn, MAPPING, events)
            assert found.severity == "critical"
            assert sorted(found.items) == ["evt_dispute_1", "evt_refund_0"]
            assert {r["payment_intent"] for r in found.rows} == {"pi_0", "pi_1"}
            assert "1 partial refund" in found.note
            assert refunds_not_reversed(conn, MAPPING, events[2:]).severity == "ok"
            assert refunds_not_reversed(conn, MAPPING, []).severity == "ok"
    finally:
        engine.dispose()


def test_without_the_mapping_it_says_it_did_not_check(app_db):
    no_reversals = dataclasses.replace(MAPPING, entities={k: v for k, v in MAPPING.entities.items() if k != "reversals"})
    engine = make_engine(app_db.url)
    try:
        with engine.connect() as conn:
            found = refunds_not_reversed(conn, no_reversals, [refund_event("pi_0", 0)])
            assert found.severity == "info" and "reversals" in found.title
    finally:
        engine.dispose()
