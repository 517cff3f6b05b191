"""Refunds that took nothing back: a fully refunded or disputed payment whose fulfilment (an
order, a credit grant) the app did not reverse.

Why in webhook_failure: the app learns of a refund or a dispute only from its webhook
(``charge.refunded``, ``charge.dispute.created``), exactly as it learns of a payment from
``checkout.session.completed``; a reversal that did not happen is the mirror image of a payment
that was not fulfilled, read from the same window of Stripe events and the same mapped tables.

The link is the payment's PaymentIntent: a fulfilment table that maps
``stripe_payment_intent_id`` says which payments were fulfilled, and the ``reversals`` entity
(optional in the mapping) says which were taken back. Partial refunds are left out: whether a
partial refund takes anything back is the business's decision, not an incident.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Connection

from ..db import select_all
from ..errors import SchemaMappingError
from ..findings import Finding
from ..schema_map import SchemaMap, TableMap
from .checks import _event_order, _when

REVERSAL_EVENT_TYPES = ("charge.refunded", "charge.dispute.created")


def _id(value) -> str | None:
    return value.get("id") if isinstance(value, Mapping) else value


def _payment_intents(conn: Connection, tables: Sequence[TableMap], pis: list[str]) -> set[str]:
    found: set[str] = set()
    for table in tables:
        column = table.col("stripe_payment_intent_id")
        rows = select_all(
            conn,
            f"SELECT DISTINCT {column} AS pi FROM {table.sql_table} WHERE {column} = ANY(CAST(:pis AS text[]))",
            pis=pis,
        )
        found.update(row["pi"] for row in rows)
    return found


def refunds_not_reversed(conn: Connection, schema: SchemaMap, events: Sequence[Mapping]) -> Finding:
    """Full refunds and disputes in the window whose payment was fulfilled and never reversed."""
    check = "refunds_not_reversed"
    fulfilled_by = [t for t in schema.tables("fulfilments") if t.has("stripe_payment_intent_id")]
    if not fulfilled_by:
        return Finding(check, "info", "Not checked: no fulfilment table maps stripe_payment_intent_id",
                       note="Map fulfilments[].columns.stripe_payment_intent_id (the payment an order or grant was for) "
                       "and the reversals entity in the schema mapping to check refunds.")
    try:
        reversed_by = schema.tables("reversals")
    except SchemaMappingError:
        return Finding(check, "info", "Not checked: the schema mapping has no reversals entity",
                       note="Map entities.reversals (the table where the app records what it took back for a refund "
                       "or dispute, with its stripe_payment_intent_id) to check refunds.")
    candidates, partial = [], 0
    for event in sorted(events, key=_event_order):
        if event.get("type") not in REVERSAL_EVENT_TYPES:
            continue
        obj = (event.get("data") or {}).get("object") or {}
        if event["type"] == "charge.refunded" and not obj.get("refunded"):
            partial += 1
            continue
        pi = _id(obj.get("payment_intent"))
        if pi:
            candidates.append((event, obj, pi))
    note = f"{partial} partial refund(s) in the window are left out." if partial else None
    if not candidates:
        return Finding(check, "ok", "No full refund or dispute of a payment in the window", note=note)
    pis = sorted({pi for _, _, pi in candidates})
    fulfilled = _payment_intents(conn, fulfilled_by, pis)
    taken_back = _payment_intents(conn, reversed_by, pis)
    rows = []
    for event, obj, pi in candidates:
        if pi not in fulfilled or pi in taken_back:
            continue
        refund = event["type"] == "charge.refunded"
        rows.append({
            "event_id": event["id"],
            "type": event["type"],
            "payment_intent": pi,
            "charge": obj.get("id") if refund else _id(obj.get("charge")),
            "customer": _id(obj.get("customer")),
            "amount": obj.get("amount_refunded") if refund else obj.get("amount"),
            "currency": obj.get("currency"),
            "reason": obj.get("reason"),
            "created": _when(event["created"]),
        })
    names = ", ".join(t.table for t in reversed_by)
    checked = sum(pi in fulfilled for _, _, pi in candidates)
    return Finding.from_rows(
        check, rows, severity="critical",
        title=f"{len(rows)} refunded or disputed payment(s) kept what they bought: no reversal in {names}",
        ok_title=f"Every refunded or disputed payment that was fulfilled ({checked}) was reversed",
        item="event_id", note=note,
        remediation="Take back what each payment was given (cancel the order, revoke the credits still unspent) "
        "and record it in the reversals table; then find why the app's charge.refunded / charge.dispute.created "
        "handler did not (failed_events, endpoint_missing_event_types).",
    )
