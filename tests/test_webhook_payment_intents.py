"""unfulfilled_payments from PaymentIntents: the mapping's fulfilled_by says which paid types a table answers."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ops_lib.db import make_engine
from ops_lib.errors import SchemaMappingError
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_emulator import objects as o
from ops_lib.webhooks import checks

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
T0 = 1_700_000_000


def pi_event(pi_id, n, status="succeeded"):
    pi = o.make_payment_intent(id=pi_id, amount=4900, customer="cus_A", status=status, created=T0,
                               payment_method="pm_x")
    return o.make_event("payment_intent.succeeded", pi, id=f"evt_pi_{n}", created=T0 + n)


def test_paid_payment_intents_are_fulfilled_by_event_or_by_payment_intent(app_db):
    session = o.make_checkout_session(customer="cus_A", amount_total=4900, created=T0, payment_intent="pi_checkout")
    checkout = o.make_event("checkout.session.completed", session, id="evt_checkout", created=T0)
    app_db.execute("INSERT INTO orders (organization_id, stripe_event_id, stripe_payment_intent_id, amount, currency, status) "
                   "VALUES (1, 'evt_checkout', 'pi_checkout', 4900, 'usd', 'paid'), "
                   "(1, 'evt_pi_2', 'pi_direct_done', 4900, 'usd', 'paid')")
    events = [
        checkout,                                    # control: fulfilled by its event
        pi_event("pi_checkout", 1),                  # control: the checkout's own PaymentIntent, one order answers both
        pi_event("pi_direct_done", 2),               # control: a direct payment with its order
        pi_event("pi_direct_missing", 3),            # named: paid, nothing made
        pi_event("pi_unpaid", 4, status="processing"),  # control: not paid yet
    ]
    engine = make_engine(app_db.url)
    try:
        with engine.connect() as conn:
            found = checks.unfulfilled_payments(conn, MAPPING, events)
            assert found.severity == "critical" and found.items == ["evt_pi_3"]
            assert found.rows[0]["payment_intent"] == "pi_direct_missing" and found.rows[0]["expected_in"] == "orders"
            # without fulfilled_by (the old mapping shape), only Checkout Sessions are checked
            plain = SchemaMap(MAPPING.path, {**MAPPING.entities, "fulfilments": tuple(
                dataclasses.replace(t, fulfilled_by=()) for t in MAPPING.tables("fulfilments"))})
            assert checks.unfulfilled_payments(conn, plain, events).severity == "ok"
    finally:
        engine.dispose()


def test_fulfilled_by_must_be_a_list_of_types(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("entities:\n  fulfilments:\n    table: orders\n    columns: {stripe_event_id: id}\n    fulfilled_by: invoice.paid\n")
    with pytest.raises(SchemaMappingError, match="fulfilled_by"):
        SchemaMap.load(bad)
