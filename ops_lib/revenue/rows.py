"""Revenue's Stripe objects as the rows the mirror keeps for it (``stripe_mirror.RowForm``).

At a million customers revenue_report lists two million objects (every subscription with its
customer, the invoices of the history, the period's charges and balance transactions). Decoding
each one's JSON and building its record from the dict took ~15–25 µs for a subscription or an
invoice: most of the report. The mirror keeps, for every object a form here describes, a row: the
values its record keeps, in the order of ``data.*_ROW``, made once when the object is written, so
a run decodes a short array and fills the record by position (``Compactor`` reads either).

A row describes only the shape Stripe sends for the object: every key the record keeps present,
references as ids, no discount, no discount amounts on an invoice, items and lines as Stripe's
lists of objects with a price object. Anything else (a discount, an expanded reference, a
missing key, a price that is not an object, a deleted customer…) makes no row, and the object is
served and projected as before. Prices travel as the JSON text of what is read of them
(``data.trimmed_price``), decoded once per distinct text per run and shared as the objects' are.

A form's name carries its version: change a layout here or in ``data``, and change the name, so
the mirror makes the rows again.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from ..stripe_mirror import RowForm
from .data import (BALANCE_TRANSACTION_ROW, CHARGE_ROW, CUSTOMER_ROW, INVOICE_ROW, ITEM_ROW, LINE_ROW,
                   SUBSCRIPTION_ROW, trimmed_price)

VERSION = "1"


def _keys(obj: Any, keys: Sequence[str]) -> bool:
    return type(obj) is dict and all(k in obj for k in keys)


def _ids(obj: dict, keys: Sequence[str]) -> bool:
    """The references are ids (or null), not expanded objects."""
    return all(obj[k] is None or type(obj[k]) is str for k in keys)


def _price(price: Any) -> str | None:
    return json.dumps(trimmed_price(price), separators=(",", ":"))


def _listing(listing: Any, row_of: Callable[[Any], list | None]) -> list | None:
    """Stripe's embedded list (``{"data": [...], "has_more": …}``) as ``[has_more, rows]``."""
    if not _keys(listing, ("data", "has_more")) or type(listing["data"]) is not list:
        return None
    rows = [row_of(item) for item in listing["data"]]
    return None if any(row is None for row in rows) else [listing["has_more"], rows]


def _item(item: Any) -> list | None:
    if not _keys(item, (*ITEM_ROW, "price")) or type(item["price"]) is not dict:
        return None
    return [*(item[k] for k in ITEM_ROW), _price(item["price"])]


def _line(line: Any) -> list | None:
    if not _keys(line, (*LINE_ROW, "period", "price")) or not _keys(line["period"], ("start", "end")):
        return None
    price = line["price"]
    if price is not None and type(price) is not dict:
        return None
    return [*(line[k] for k in LINE_ROW), line["period"]["start"], line["period"]["end"],
            _price(price) if price is not None else None]


def subscription_row(sub: dict, customer: dict | None) -> list | None:
    """``customer``: the stored customer it names (None: not in the mirror, the id stays)."""
    if not _keys(sub, (*SUBSCRIPTION_ROW, "discount", "items")) or sub["discount"] is not None \
            or not _ids(sub, ("id", "currency", "status", "customer")):
        return None
    items = _listing(sub["items"], _item)
    expanded = customer_row(customer) if customer is not None else None
    if items is None or (customer is not None and expanded is None):
        return None
    return [*(sub[k] for k in SUBSCRIPTION_ROW), *items, expanded]


def customer_row(customer: dict) -> list | None:
    if not _keys(customer, (*CUSTOMER_ROW, "discount")) or customer["discount"] is not None \
            or customer.get("deleted") or not _ids(customer, ("id",)):
        return None
    return [customer[k] for k in CUSTOMER_ROW]


def invoice_row(invoice: dict) -> list | None:
    if not _keys(invoice, (*INVOICE_ROW, "discount", "total_discount_amounts", "status_transitions", "lines")) \
            or invoice["discount"] is not None or invoice["total_discount_amounts"] != [] \
            or not _keys(invoice["status_transitions"], ("paid_at",)) \
            or not _ids(invoice, ("id", "status", "currency", "subscription", "customer", "charge")):
        return None
    lines = _listing(invoice["lines"], _line)
    if lines is None:
        return None
    return [*(invoice[k] for k in INVOICE_ROW), invoice["status_transitions"]["paid_at"], *lines]


def charge_row(charge: dict) -> list | None:
    if not _keys(charge, CHARGE_ROW) or not _ids(charge, ("id", "customer", "invoice")):
        return None
    return [charge[k] for k in CHARGE_ROW]


def balance_transaction_row(txn: dict) -> list | None:
    if not _keys(txn, BALANCE_TRANSACTION_ROW) or not _ids(txn, ("id", "source")):
        return None
    return [txn[k] for k in BALANCE_TRANSACTION_ROW]


FORMS: dict[str, RowForm] = {
    "subscriptions": RowForm(f"revenue.subscription.{VERSION}", subscription_row, expands_customer=True),
    "invoices": RowForm(f"revenue.invoice.{VERSION}", invoice_row),
    "charges": RowForm(f"revenue.charge.{VERSION}", charge_row),
    "balance_transactions": RowForm(f"revenue.balance_transaction.{VERSION}", balance_transaction_row),
}
