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
from datetime import datetime
from fractions import Fraction
from itertools import chain, islice
from typing import Iterable, Iterator, Mapping, Sequence

from sqlalchemy.engine import Connection

from ..bulk import Record, Rows, collector_paused
from ..db import array_literal, select_tuples
from ..schema_map import SchemaMap
from ..utc import to_epoch
from . import money
from .data import StripeData, at, id_of, record_columns

# The app statuses that mean the money came in (the reference app writes "succeeded" and "refunded").
PAID_STATUSES = frozenset({"succeeded", "paid", "refunded", "partially_refunded", "complete", "completed", "captured"})

_COLUMNS = ("organisation_id", "stripe_charge_id", "stripe_invoice_id", "amount", "currency", "status", "paid_at")
_REQUIRED = ("stripe_charge_id", "amount", "currency", "paid_at")


Payment = Record.of("Payment", _COLUMNS, "One of the app's payment rows, as ``app_payments`` reads it.")


def app_payments(conn: Connection, schema: SchemaMap, data: StripeData) -> "Payments":
    """The app's payments paid in the period, or naming a charge or invoice of Stripe's period
    (``Payments``: half a million of them at a million customers, held as columns). The charges'
    and invoices' ids go as one array literal each (``array_literal``), read as a set by
    ``IN (SELECT unnest(...))``: against ``= ANY(...)`` of the array the planner estimated each
    of half a million elements (0.27 s of planning, 4 ms this way; the answer is the same)."""
    table = schema.table("payments")
    select = table.select_list(_COLUMNS, required=_REQUIRED)
    charge_ids, invoices = record_columns(data.charges, "id", "invoice")
    invoice_ids = [id_of(invoice) for invoice in invoices if invoice] if table.has("stripe_invoice_id") else []
    where = [f"({table.col('paid_at')} >= :start AND {table.col('paid_at')} < :until)",
             f"{table.col('stripe_charge_id')} IN (SELECT unnest(CAST(:charges AS text[])))"]
    params = {"start": data.period.start, "until": data.period.until, "charges": _literal(charge_ids)}
    if table.has("stripe_invoice_id"):
        where.append(f"{table.col('stripe_invoice_id')} IN (SELECT unnest(CAST(:invoices AS text[])))")
        params["invoices"] = _literal(invoice_ids)
    sql = (f"SELECT {select} FROM {table.sql_table} WHERE {' OR '.join(where)} "
           f"ORDER BY {table.col('paid_at')}, {table.col('stripe_charge_id')}")
    rows = select_tuples(conn, sql, work_mem=SORT_WORK_MEM, fetch_rows=_BATCH, **params)
    del params
    with collector_paused():
        first = list(islice(rows, 1))  # (the cursor declared: the server has the ids, their literals go)
        # Stripe's ids as the app's rows will name them: each row's id is replaced by Stripe's equal
        # string, already held by the charges (one copy, not one more per payment)
        stripe_ids = {i: i for i in chain(charge_ids, invoice_ids) if type(i) is str}
        del charge_ids, invoices, invoice_ids
        return Payments.read(chain(first, rows), stripe_ids)


# The server's memory for sorting the payments: half a million rows sort in ~70 MB; with the
# default 4 MB they went to disk (3.7 s against 1.1 s at a million customers)
SORT_WORK_MEM = "256MB"


def _literal(values) -> str:
    """Stripe's ids as an array literal; a NUL cannot be in a PostgreSQL text (nor equal one), so
    an id holding one is left out rather than failing the statement."""
    texts = [v if type(v) is str else str(v) for v in values if v is not None]
    if "\x00" in "".join(texts):
        texts = [t for t in texts if "\x00" not in t]
    return array_literal(texts)


class Payments(Sequence):
    """The app's payments as columns, one list per ``_COLUMNS`` key, each payment a ``Payment``
    when read alone. Half a million rows read as tuples held ~500 bytes each: the tuple, and a
    string of its own per row for the currency, the status and the ids. Here the repeated values
    (currencies, statuses, amounts, the moments payments were made at: a billing run's second)
    are one object each, and the ids Stripe's objects hold are theirs."""

    __slots__ = ("columns",)

    def __init__(self, columns: list[list]):
        self.columns = columns

    @classmethod
    def read(cls, rows: Iterable[tuple], known_ids: Mapping[str, str] | None = None) -> "Payments":
        """The rows (``_COLUMNS``' values each), read a batch at a time; an id in ``known_ids``
        is kept as its value there."""
        known = known_ids or {}
        repeated = [{} for _ in _COLUMNS]
        columns: list[list] = [[] for _ in _COLUMNS]
        moments = repeated[6]
        shared = {"stripe_charge_id": known, "stripe_invoice_id": known, "currency": repeated[4],
                  "status": repeated[5], "amount": repeated[3], "paid_at": moments}
        rows = iter(rows)
        while batch := list(islice(rows, _BATCH)):
            for key, column, values in zip(_COLUMNS, columns, zip(*batch)):
                same = shared.get(key)
                if same is None:
                    column.extend(values)
                elif same is known:  # (an id Stripe does not hold stays the row's own)
                    column.extend(map(known.get, values, values))
                else:
                    column.extend(map(same.setdefault, values, values))
            if len(moments) > _BATCH:  # (where they hardly repeat, the table starts over)
                moments.clear()
        return cls(columns)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Payments([column[index] for column in self.columns])
        return Payment(*(column[index] for column in self.columns))

    def __iter__(self) -> Iterator:
        return map(Payment, *self.columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # (mutable-looking, like a list)

    def __repr__(self) -> str:
        return f"Payments({len(self)} rows)"


# (a payment's row is ~500 bytes as read, of which ~80 are kept: a small batch is a small transient)
_BATCH = 8_192


_ts = to_epoch


def _exceeds(difference, tolerated: Fraction, whole: int) -> bool:
    """``difference > tolerated``; for whole minor units, against the tolerance's whole part."""
    return difference > (whole if type(difference) is int else tolerated)


def _payment_columns(payments: Sequence[Mapping]) -> list[list]:
    """Per ``_COLUMNS`` key, each payment's ``get(key)``: ``app_payments``' own columns, or by C
    from ``Rows``' tuples."""
    if isinstance(payments, Payments):
        return payments.columns
    if isinstance(payments, Rows) and payments.record.__slots__ == _COLUMNS:
        return [list(values) for values in zip(*payments.tuples)] if payments.tuples else [[] for _ in _COLUMNS]
    return [[p.get(key) for p in payments] for key in _COLUMNS]


def _paid_invoices(charges: Sequence[Mapping]) -> set:
    """The invoices (ids) of the charges that succeeded."""
    invoices, statuses = record_columns(charges, "invoice", "status")
    return {id_of(invoice) for invoice, status in zip(invoices, statuses) if status == "succeeded"} - {None}


def reconcile(data: StripeData, payments: Sequence[Mapping], *, tolerance: float = 0.0) -> list[dict]:
    """Every disagreement between the app's payments and Stripe's charges of the period, oldest first.

    The payments are read as columns and known by their index (half a million of each side at a
    million customers: no record per payment, one pass over each side)."""
    wanted = data.currencies
    _, app_charge, app_invoice, app_amount, app_currency, app_status, app_paid = _payment_columns(payments)
    by_charge = {charge_id: i for i, charge_id in enumerate(app_charge) if charge_id}
    by_invoice = {invoice: i for i, (charge_id, invoice) in enumerate(zip(app_charge, app_invoice))
                  if not charge_id and invoice}
    problems: dict[str, dict] = {}

    def report(key: str, charge: Mapping | None, index: int | None, problem: str) -> None:
        app = payments[index] if index is not None else None
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

    def compare(charge: Mapping, i: int, currency: str | None = None, amount=None) -> None:
        """``currency`` and ``amount``: the charge's, when already read (a str and an int)."""
        if currency is None or type(amount) is not int:
            currency, amount = charge["currency"], charge["amount"]
        currency = currency.lower()
        if currency not in allowed:
            tolerated = money.minor(tolerance, currency)
            allowed[currency] = tolerated, math.floor(tolerated)
        if (app_currency[i] or "").lower() != currency:
            report(charge["id"], charge, i, f"currency differs: the app says {app_currency[i]}")
        elif _exceeds(abs(int(app_amount[i]) - amount), *allowed[currency]):
            report(charge["id"], charge, i, "amount differs")
        elif app_status[i] is not None and str(app_status[i]).lower() not in PAID_STATUSES:
            report(charge["id"], charge, i, f"the app says {app_status[i]}")

    # whether each payment was compared below with the charge its charge id names (a flag per
    # payment: a dict of half a million charge ids was ~40 MB)
    compared = bytearray(len(app_charge))
    charges = data.charges_in_period
    for charge, charge_id, status, invoice, currency, amount in zip(
            charges, *record_columns(charges, "id", "status", "invoice", "currency", "amount")):
        if status != "succeeded":
            continue
        charge_id = charge["id"] if charge_id is None else charge_id
        i = by_charge.get(charge_id)
        if i is None:
            i = by_invoice.get(id_of(invoice))
        if i is None:
            report(charge["id"], charge, None, "missing in the app")
        else:
            compare(charge, i, currency if type(currency) is str else None, amount)
            compared[i] = 1

    # The period as aware datetimes at its whole seconds: ``contains(_ts(paid_at))`` for an aware
    # paid_at after 1970 (the seconds truncated), without an epoch per payment
    low, high = at(data.period.start_ts), at(data.period.until_ts)
    contains = data.period.contains
    # The app's payments of the period left to check: those compared above had the same outcome
    left = []
    for i, (charge_id, status, paid_at, currency) in enumerate(zip(app_charge, app_status, app_paid, app_currency)):
        status = str(status or "succeeded").lower()
        if status not in PAID_STATUSES:
            continue
        if type(paid_at) is datetime and paid_at.tzinfo is not None and paid_at.year >= 1970:
            if not low <= paid_at < high:
                continue
        elif not contains(_ts(paid_at)):
            continue
        if wanted and (currency or "").lower() not in wanted:
            continue
        if not charge_id or not compared[i]:
            left.append(i)
    # Stripe's charges these name (the last listed of an id, as a dict of all of them kept it)
    named = {app_charge[i] for i in left if app_charge[i]}
    stripe_named = {charge_id: charge for charge, charge_id in zip(data.charges, record_columns(data.charges, "id")[0])
                    if charge_id in named}
    paid_invoices: set | None = None  # (the invoices a charge of Stripe's succeeded for: once asked)
    for i in left:
        charge_id, invoice = app_charge[i], app_invoice[i]
        if not charge_id:
            if paid_invoices is None:
                paid_invoices = _paid_invoices(data.charges)
            if not invoice or invoice not in paid_invoices:
                report(f"(payment without a charge id, invoice {invoice})", None, i,
                       "not paid in Stripe: no succeeded charge for its invoice")
            continue
        if charge_id in problems:
            continue
        charge = stripe_named.get(charge_id)
        if charge is None:
            report(charge_id, None, i, "not paid in Stripe: no such charge within a day of the period")
        elif charge.get("status") != "succeeded":
            report(charge_id, charge, i, f"not paid in Stripe: the charge {charge.get('status')}")
        else:
            compare(charge, i)

    rows = sorted(problems.values(), key=lambda r: (r["_ts"], r["charge"]))
    for row in rows:
        row.pop("_ts")
    return rows
