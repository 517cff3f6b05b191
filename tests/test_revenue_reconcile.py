"""The app's payments against Stripe's charges: read from a real PostgreSQL by the ids Stripe names,
and reconciled the same way whether the payments are the tuples read or plain dicts."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ops_lib.bulk import Rows
from ops_lib import db
from ops_lib.db import array_literal
from ops_lib.revenue import payments
from ops_lib.revenue.data import StripeData
from ops_lib.revenue.period import Period
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_emulator import objects as o

from .conftest import REPO

MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
NOV = Period(start=datetime(2026, 11, 1, tzinfo=timezone.utc), end=datetime(2026, 12, 1, tzinfo=timezone.utc),
             now=datetime(2026, 12, 1, 9, tzinfo=timezone.utc), label="2026-11")
HOSTILE = ['plain', 'a"quote', 'back\\slash', 'comma,inside', '{braces}', 'NULL', '', ' spaced ', 'ünïcode ✓',
           'new\nline', '\\"both', "it's"]


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def paid(charge: dict, **changes) -> dict:
    row = {"organisation_id": 1, "stripe_charge_id": charge["id"], "stripe_invoice_id": charge.get("invoice"),
           "amount": charge["amount"], "currency": charge["currency"], "status": "succeeded",
           "paid_at": datetime.fromtimestamp(charge["created"], timezone.utc)}
    return {**row, **changes}


def as_rows(dicts: list[dict]) -> Rows:
    """The dicts as ``app_payments`` returns rows: ``Payment`` tuples."""
    return Rows(payments.Payment, [tuple(d.get(k) for k in payments.Payment.__slots__) for d in dicts])


def test_app_payments_hold_stripes_own_ids_and_one_copy_of_each_currency_and_status(app_db):
    """Half a million payments at a million customers: each id Stripe's charges already hold is
    that same string (not one more per payment), each repeated currency and status one object."""
    charges = [o.make_charge(amount=2_900, customer="cus_A", invoice=f"in_{n}",
                             created=ts(datetime(2026, 11, 2 + n, tzinfo=timezone.utc))) for n in range(4)]
    data = StripeData(period=NOV, history_months=1, currencies=(), charges=charges)
    for charge in charges:
        app_db.execute("INSERT INTO payments (organization_id, stripe_invoice_id, stripe_charge_id, amount, currency, status, "
                       "paid_at) VALUES (:organisation_id, :stripe_invoice_id, :stripe_charge_id, :amount, :currency, "
                       ":status, :paid_at)", **paid(charge))
    engine = db.make_engine(app_db.url)
    with db.connect(engine) as conn:
        found = payments.app_payments(conn, MAPPING, data)
    engine.dispose()
    assert [p["stripe_charge_id"] for p in found] == [c["id"] for c in charges]
    assert all(p["stripe_charge_id"] is c["id"] and p["stripe_invoice_id"] is c["invoice"]
               for p, c in zip(found, charges))
    assert len({id(p["currency"]) for p in found}) == len({id(p["status"]) for p in found}) == 1
    assert payments.reconcile(data, found) == []


@pytest.mark.parametrize("values", [HOSTILE, ["ch_1", "ch_2"], [], [5, "x"]])
def test_an_array_literal_reaches_postgresql_as_the_values_it_was_made_of(database18, values):
    with database18.admin.connect() as conn:
        got = conn.execute(sa.text("SELECT unnest(CAST(:values AS text[]))"), {"values": array_literal(values)}).scalars()
        assert list(got) == [str(v) for v in values]


def test_app_payments_are_found_by_the_period_and_by_the_charges_and_invoices_stripe_names(app_db):
    """A payment dated a year away is still found when it names a charge of the period (or, with no
    charge id, the charge's invoice), whatever its id holds; an id PostgreSQL cannot hold (NUL) is
    left out rather than failing the statement."""
    odd, by_invoice, plain = (o.make_charge(amount=2_900, customer="cus_A", created=ts(datetime(2026, 11, d, tzinfo=timezone.utc)))
                              for d in (2, 3, 4))
    odd["id"], by_invoice["invoice"] = 'ch_"odd,{x}\\', 'in_"inv,1'
    nul = {**o.make_charge(amount=100, customer="cus_A", created=ts(datetime(2026, 11, 5, tzinfo=timezone.utc))),
           "id": "ch_nul\x00"}
    data = StripeData(period=NOV, history_months=1, currencies=(), charges=[odd, by_invoice, plain, nul])
    long_ago = datetime(2025, 6, 1, tzinfo=timezone.utc)
    rows = [paid(odd, paid_at=long_ago), paid(by_invoice, stripe_charge_id=None, paid_at=long_ago), paid(plain),
            {"organisation_id": 1, "stripe_charge_id": "ch_unrelated", "stripe_invoice_id": None, "amount": 5,
             "currency": "usd", "status": "succeeded", "paid_at": long_ago}]
    for row in rows:
        app_db.execute("INSERT INTO payments (organization_id, stripe_invoice_id, stripe_charge_id, amount, currency, status, "
                       "paid_at) VALUES (:organisation_id, :stripe_invoice_id, :stripe_charge_id, :amount, :currency, "
                       ":status, :paid_at)", **row)
    engine = db.make_engine(app_db.url)  # (read-only, as a runbook's)
    with db.connect(engine) as conn:
        found = payments.app_payments(conn, MAPPING, data)
    engine.dispose()
    assert isinstance(found, payments.Payments)
    assert sorted(p["stripe_charge_id"] or p["stripe_invoice_id"] for p in found) == sorted(
        [odd["id"], by_invoice["invoice"], plain["id"]])
    assert [r["charge"] for r in payments.reconcile(data, found)] == [nul["id"]]  # (missing in the app)
    assert payments.reconcile(data, found) == payments.reconcile(data, [dict(p) for p in found])


def test_reconcile_finds_each_planted_disagreement_from_rows_and_from_dicts():
    """Hundreds of charges with planted disagreements (amounts, currencies, statuses, missing rows,
    duplicates, payments by invoice, payments Stripe never saw on both sides of the period's edges,
    in UTC, another zone and without one): each found, the same from tuples as from dicts."""
    rng = random.Random(20261201)
    start, until = NOV.start, NOV.until
    charges, app, expected = [], [], {}
    for n in range(400):
        created = start + timedelta(seconds=rng.randrange(int((until - start).total_seconds())))
        charge = o.make_charge(amount=rng.choice((900, 2_900, 4_900)), customer=f"cus_{n}", created=ts(created),
                               invoice=f"in_{n}", currency=rng.choice(("usd", "usd", "jpy")))
        charges.append(charge)
        fate = rng.randrange(8)
        if fate == 0:
            expected[charge["id"]] = "missing in the app"
        elif fate == 1:
            app.append(paid(charge, amount=charge["amount"] + 7))
            expected[charge["id"]] = "amount differs"
        elif fate == 2:
            app.append(paid(charge, currency="eur"))
            expected[charge["id"]] = "currency differs: the app says eur"
        elif fate == 3:
            app.append(paid(charge, status="Failed"))
            expected[charge["id"]] = "the app says Failed"
        elif fate == 4:
            app.append(paid(charge, stripe_charge_id=None))  # (found by its invoice)
        elif fate == 5:
            app += [paid(charge), paid(charge, amount=charge["amount"] + 1)]  # (the second row decides)
            expected[charge["id"]] = "amount differs"
        else:
            naive = datetime.fromtimestamp(charge["created"], timezone.utc).replace(tzinfo=None)
            app.append(paid(charge, paid_at=rng.choice((naive, None))))
    failed = o.make_charge(amount=2_900, customer="cus_F", created=ts(start + timedelta(days=3)), status="failed")
    charges.append(failed)
    app.append(paid(failed))
    expected[failed["id"]] = "not paid in Stripe: the charge failed"
    plus5 = timezone(timedelta(hours=5))
    for k, moment in enumerate((start - timedelta(microseconds=1), start, until - timedelta(microseconds=1), until)):
        inside = start <= moment < until
        for form, when in (("utc", moment), ("plus5", moment.astimezone(plus5)), ("naive", moment.replace(tzinfo=None))):
            ghost = f"ch_ghost_{k}_{form}"
            app.append({"organisation_id": 2, "stripe_charge_id": ghost, "stripe_invoice_id": None, "amount": 100,
                        "currency": "usd", "status": "succeeded", "paid_at": when})
            if inside:
                expected[ghost] = "not paid in Stripe: no such charge within a day of the period"
    app.append({"organisation_id": 3, "stripe_charge_id": None, "stripe_invoice_id": "in_nobody", "amount": 100,
                "currency": "usd", "status": "paid", "paid_at": start + timedelta(days=1)})
    expected["(payment without a charge id, invoice in_nobody)"] = "not paid in Stripe: no succeeded charge for its invoice"
    data = StripeData(period=NOV, history_months=1, currencies=(), charges=charges)

    from_dicts = payments.reconcile(data, app)
    assert {r["charge"]: r["problem"] for r in from_dicts} == expected
    assert payments.reconcile(data, as_rows(app)) == from_dicts
    assert payments.reconcile(data, payments.Payments.read(as_rows(app).tuples)) == from_dicts
    assert [r["charge"] for r in payments.reconcile(data, as_rows(app), tolerance=1_000)] == [
        r["charge"] for r in from_dicts if r["problem"] != "amount differs"]


def test_payments_made_at_the_same_moment_hold_one_datetime():
    """A billing run's payments share their second: one datetime for all of them, as read."""
    def moment():
        return datetime(2026, 11, 3, 12, tzinfo=timezone.utc)
    found = payments.Payments.read([(n, f"ch_{n}", None, 100, "usd", "succeeded", moment()) for n in range(3)])
    assert [p["paid_at"] for p in found] == [moment()] * 3
    assert len({id(p["paid_at"]) for p in found}) == 1
