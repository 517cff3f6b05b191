"""The app's own payment records, read through the schema mapping, reconciled with Stripe's charges.

Stripe's side: the charges that succeeded in the period. The app's side: its ``payments`` rows
paid in the period (in a "money received" status) plus any row naming one of those charges,
however the app dated it. They are matched by charge id (or, for a row without one, by invoice
id) and disagree when:

* a charge that succeeded in Stripe has no payment in the app (``missing in the app``);
* the app has a paid payment whose charge Stripe does not have within a day of the period, or
  which did not succeed in Stripe (``not paid in Stripe``);
* the amounts differ by more than the tolerance, or the currencies differ.

Stripe's charge amount is the gross amount charged; refunds do not change it (the app's row for a
refunded charge keeps its amount and may say ``refunded``).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

from sqlalchemy.engine import Connection

from ..db import select_all
from ..schema_map import SchemaMap
from ..utc import to_epoch
from . import money
from .data import StripeData, at, id_of, record_columns

# The app statuses that mean the money came in (the reference app writes "succeeded" and "refunded").
PAID_STATUSES = frozenset({"succeeded", "paid", "refunded", "partially_refunded", "complete", "completed", "captured"})

_COLUMNS = ("organisation_id", "stripe_charge_id", "stripe_invoice_id", "amount", "currency", "status", "paid_at")
_REQUIRED = ("stripe_charge_id", "amount", "currency", "paid_at")


def app_payments(conn: Connection, schema: SchemaMap, data: StripeData) -> list[dict]:
    """The app's payments paid in the period, or naming a charge or invoice of Stripe's period."""
    table = schema.table("payments")
    select = table.select_list(_COLUMNS, required=_REQUIRED)
    charge_ids = sorted({c["id"] for c in data.charges})
    where = [f"({table.col('paid_at')} >= :start AND {table.col('paid_at')} < :until)",
             f"{table.col('stripe_charge_id')} = ANY(:charges)"]
    params = {"start": data.period.start, "until": data.period.until, "charges": charge_ids}
    if table.has("stripe_invoice_id"):
        where.append(f"{table.col('stripe_invoice_id')} = ANY(:invoices)")
        params["invoices"] = sorted({id_of(c.get("invoice")) for c in data.charges if c.get("invoice")})
    sql = (f"SELECT {select} FROM {table.sql_table} WHERE {' OR '.join(where)} "
           f"ORDER BY {table.col('paid_at')}, {table.col('stripe_charge_id')}")
    return select_all(conn, sql, **params)


_ts = to_epoch


def _exceeds(difference, tolerated: Fraction, whole: int) -> bool:
    """``difference > tolerated``; for whole minor units, against the tolerance's whole part."""
    return difference > (whole if type(difference) is int else tolerated)


def reconcile(data: StripeData, payments: Sequence[Mapping], *, tolerance: float = 0.0) -> list[dict]:
    """Every disagreement between the app's payments and Stripe's charges of the period, oldest first."""
    wanted = data.currencies
    by_charge = {p["stripe_charge_id"]: p for p in payments if p.get("stripe_charge_id")}
    by_invoice = {p["stripe_invoice_id"]: p for p in payments if not p.get("stripe_charge_id") and p.get("stripe_invoice_id")}
    stripe_all = {c["id"]: c for c in data.charges}
    problems: dict[str, dict] = {}

    def report(key: str, charge: Mapping | None, app: Mapping | None, problem: str) -> None:
        currency = (charge or {}).get("currency") or (app or {}).get("currency") or ""
        currency = currency.lower()
        when = (charge or {}).get("created") or _ts((app or {}).get("paid_at"))
        problems.setdefault(key, {
            "charge": key, "when": at(when), "customer": id_of((charge or {}).get("customer")),
            "organisation_id": (app or {}).get("organisation_id"),
            "invoice": id_of((charge or {}).get("invoice")) or (app or {}).get("stripe_invoice_id"),
            "currency": currency,
            "stripe_amount": money.major(charge["amount"], currency) if charge else None,
            "app_amount": money.major(app["amount"], currency) if app and app.get("amount") is not None else None,
            "stripe_status": (charge or {}).get("status"), "app_status": (app or {}).get("status"),
            "problem": problem, "_ts": when or 0,
        })

    # The tolerance in each currency's minor units, and its whole part: a difference of whole minor
    # units exceeds the tolerance exactly when it exceeds its whole part (no Fraction to compare)
    allowed: dict[str, tuple[Fraction, int]] = {}

    def compare(charge: Mapping, app: Mapping) -> None:
        currency = charge["currency"].lower()
        if currency not in allowed:
            tolerated = money.minor(tolerance, currency)
            allowed[currency] = tolerated, math.floor(tolerated)
        if (app.get("currency") or "").lower() != currency:
            report(charge["id"], charge, app, f"currency differs: the app says {app.get('currency')}")
        elif _exceeds(abs(int(app["amount"]) - charge["amount"]), *allowed[currency]):
            report(charge["id"], charge, app, "amount differs")
        elif app.get("status") is not None and str(app["status"]).lower() not in PAID_STATUSES:
            report(charge["id"], charge, app, f"the app says {app['status']}")

    compared: dict[str, Mapping] = {}  # charge id -> the app's payment compared with it below
    charges = data.charges_in_period
    for charge, charge_id, status, invoice in zip(charges, *record_columns(charges, "id", "status", "invoice")):
        if status != "succeeded":
            continue
        charge_id = charge["id"] if charge_id is None else charge_id
        app = by_charge.get(charge_id) or by_invoice.get(id_of(invoice))
        if app is None:
            report(charge["id"], charge, None, "missing in the app")
        else:
            compare(charge, app)
            compared[charge_id] = app

    for app in payments:
        status = str(app.get("status") or "succeeded").lower()
        paid_at = _ts(app.get("paid_at"))
        if status not in PAID_STATUSES or not data.period.contains(paid_at):
            continue
        if wanted and (app.get("currency") or "").lower() not in wanted:
            continue
        charge_id = app.get("stripe_charge_id")
        if not charge_id:
            invoice = app.get("stripe_invoice_id")
            linked = next((c for c in data.charges if id_of(c.get("invoice")) == invoice and c.get("status") == "succeeded"), None) if invoice else None
            if linked is None:
                report(f"(payment without a charge id, invoice {invoice})", None, app,
                       "not paid in Stripe: no succeeded charge for its invoice")
            continue
        if charge_id in problems or compared.get(charge_id) is app:  # (the same comparison: the same outcome)
            continue
        charge = stripe_all.get(charge_id)
        if charge is None:
            report(charge_id, None, app, "not paid in Stripe: no such charge within a day of the period")
        elif charge.get("status") != "succeeded":
            report(charge_id, charge, app, f"not paid in Stripe: the charge {charge.get('status')}")
        else:
            compare(charge, app)

    rows = sorted(problems.values(), key=lambda r: (r["_ts"], r["charge"]))
    for row in rows:
        row.pop("_ts")
    return rows

