"""Everything the revenue report reads from Stripe, fetched once per kind per run.

| kind                 | filter pushed to Stripe                            | used for                          |
|----------------------|----------------------------------------------------|-----------------------------------|
| subscriptions        | status=all (canceled ones carry churn), customers expanded (their discounts) | MRR, its history |
| invoices             | created ≥ the history's first month − 1 year (a yearly invoice covers a year) | MRR history, revenue |
| charges              | created in the period ± 1 day (the slack matches the app's late records) | success rate, reconciliation |
| refunds, disputes    | created in the period                              | revenue                           |
| balance transactions | created in the period                              | fees and net                      |

The ``currencies`` parameter is applied here, to every kind: nothing outside it reaches a table.
Stripe filters one currency per request at most (and only some lists), so the selection is made
on our side rather than multiplying requests.

Each object is kept as a ``StripeRecord`` (below): only the keys the computations read, in slots, read
like the dict it stands for; ``fetch_stripe(..., compact=False)`` keeps the whole dicts instead
(the tests compare the two). ``gather`` does the same from any source of listings (the benchmark
and the tests feed ``synthetic.SyntheticAccount``). From the Stripe mirror, most objects come as
the rows it keeps of them for this report (``revenue.rows``), and their records are made from those.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter, is_
from typing import Callable, Iterable, Mapping, Sequence

from ..bulk import collector_paused
from ..findings import Metrics
from ..utc import from_epoch
from ..stripe_api import (list_balance_transactions, list_charges, list_disputes, list_invoices,
                          list_refunds, list_subscriptions)
from .period import Period, history_buckets

YEAR_LOOKBACK = timedelta(days=366)
CHARGE_SLACK = timedelta(days=1)


@dataclass
class StripeData:
    period: Period
    history_months: int
    currencies: tuple[str, ...]
    subscriptions: list[dict] = field(default_factory=list)
    invoices: list[dict] = field(default_factory=list)
    charges: list[dict] = field(default_factory=list)  # the period ± CHARGE_SLACK
    refunds: list[dict] = field(default_factory=list)
    disputes: list[dict] = field(default_factory=list)
    balance_transactions: list[dict] = field(default_factory=list)

    @property
    def history_start(self) -> datetime:
        first = history_buckets(self.period, self.history_months)[0][1]
        return from_epoch(first)

    @property
    def charges_in_period(self) -> list[dict]:
        contains = self.period.contains
        return [c for c, created in zip(self.charges, record_columns(self.charges, "created")[0]) if contains(created)]

    def metrics(self) -> Metrics:
        """What was read; embedded lists Stripe cut short (over 10 invoice lines or subscription items
        in a listing) are counted, as the history and MRR see only what was served."""
        truncated_lines = sum(1 for more in embedded_has_more(self.invoices, "lines") if more)
        truncated_items = sum(1 for more in embedded_has_more(self.subscriptions, "items") if more)
        return Metrics({
            "period_start": self.period.start,
            "period_until": self.period.until,
            "currencies": ", ".join(self.currencies) or "all",
            "stripe_subscriptions": len(self.subscriptions),
            "stripe_invoices": len(self.invoices),
            "stripe_charges_in_period": len(self.charges_in_period),
            "stripe_refunds_in_period": len(self.refunds),
            "stripe_disputes_in_period": len(self.disputes),
            "stripe_balance_transactions_in_period": len(self.balance_transactions),
            **({"invoices_with_more_lines_than_served": truncated_lines} if truncated_lines else {}),
            **({"subscriptions_with_more_items_than_served": truncated_items} if truncated_items else {}),
        })


def normalise_currencies(currencies: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(sorted({c.strip().lower() for c in currencies or () if c and c.strip()}))


def keep_currency(obj: dict, currencies: Sequence[str]) -> bool:
    return not currencies or (obj.get("currency") or "").lower() in currencies


def fetch_stripe(client, period: Period, *, history_months: int = 12,
                 currencies: Iterable[str] | None = None, compact: bool = True) -> StripeData:
    """One listing per kind, filters pushed to the API (see the module's table); each object kept
    with only the fields the computations read (``Compactor``), as it streams in (``compact=False``:
    whole, as Stripe sent them; the tests compare the two)."""
    from .rows import FORMS

    def listing(kind: str, since: datetime, until: datetime | None) -> Iterable[dict | list]:
        # (compact: only the fields the records keep are listed, the mirror dropping the rest in
        # SQLite, or serving the rows it keeps for the records: ``revenue.rows``)
        fields = _LISTED_FIELDS[kind] if compact else None
        form = {"form": FORMS[kind]} if compact and kind in FORMS else {}
        if kind == "subscriptions":
            return list_subscriptions(client, status="all", expand_customer=True, fields=fields,
                                      customer_fields=_listed(Customer) + ("deleted",) if compact else None, **form)
        if kind == "invoices":
            return list_invoices(client, created_since=since, fields=fields, **form)
        lister = {"charges": list_charges, "refunds": list_refunds, "disputes": list_disputes,
                  "balance_transactions": list_balance_transactions}[kind]
        return lister(client, since=since, until=until, fields=fields, **form)

    return gather(listing, period, history_months=history_months, currencies=currencies, compact=compact)


def _listed(cls: type[StripeRecord]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("id", "object", *cls.KEYS, *getattr(cls, "LISTINGS", ()))))


_LISTED_FIELDS: dict[str, tuple[str, ...]] = {}  # filled below, once the record classes exist


def gather(listing: Callable[[str, datetime | None, datetime | None], Iterable[dict]], period: Period, *,
           history_months: int = 12, currencies: Iterable[str] | None = None, compact: bool = True) -> StripeData:
    """``fetch_stripe`` from any source: ``listing(kind, since, until)`` yields the objects of one
    kind created in [since, until) (``None``: unbounded), as Stripe's listing would (the benchmark
    and the tests feed ``synthetic.SyntheticAccount.listing``)."""
    wanted = normalise_currencies(currencies)
    data = StripeData(period=period, history_months=history_months, currencies=wanted)
    since_invoices = data.history_start - YEAR_LOOKBACK
    until = period.until
    c = Compactor()

    def keep(objs, project):
        with collector_paused():
            if not compact:
                return [o for o in objs if keep_currency(o, wanted)] if wanted else list(objs)
            records = map(project, objs)  # (an object, or the mirror's row of it: see ``revenue.rows``)
            return [r for r in records if keep_currency(r, wanted)] if wanted else list(records)

    data.subscriptions = keep(listing("subscriptions", None, None), c.subscription)
    data.invoices = keep(listing("invoices", since_invoices, None), c.invoice)
    c.release("subscription")  # (no later kind names a subscription)
    data.charges = keep(listing("charges", period.start - CHARGE_SLACK, until + CHARGE_SLACK), c.charge)
    c.release("invoice", "customer")
    data.refunds = keep(listing("refunds", period.start, until), c.refund)
    data.disputes = keep(listing("disputes", period.start, until), c.dispute)
    data.balance_transactions = keep(listing("balance_transactions", period.start, until), c.balance_transaction)
    return data


def id_of(ref) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return ref.get("id")


at = from_epoch  # Stripe's epoch seconds as a UTC datetime (ops_lib.utc)


# --------------------------------------------------------------------------- compact objects
#
# Each object is kept with only the fields the computations read, as it streams in: the rest of a
# Stripe object (addresses, metadata, payment settings, the invoice's own copies of its customer's
# details…) is most of its size and was held for the whole run. What is kept is a ``StripeRecord``: a
# read-only mapping with the same keys and values as the trimmed dict it stands for (so every
# computation reads it as before: ``obj["id"]``, ``obj.get("status")``, ``"discount" in obj``,
# equality with that dict), its fields in ``__slots__`` (a 13-key dict is 632 bytes, its record 152).
# Embedded lists (a subscription's items, an invoice's lines) and a line's period are kept in slots
# of their own and rebuilt as dicts when read. Identical prices (the same price on every invoice
# line and subscription item) and coupons are one shared dict: read-only, never mutated; repeated
# strings, ids named by other objects (an invoice's charge, a charge's invoice, a balance
# transaction's source), amounts and an object's repeated timestamps are stored once. A
# subscription item keeps its id only when its price has no monthly amount (the one reader of it:
# the unpriced_items check). At 500k subscriptions and their invoices, charges and balance
# transactions: ~0.75 GB of records, against ~2 GB of trimmed dicts.


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()  # a key the object did not have (``None`` is a value Stripe sent)


class StripeRecord(Mapping):
    """A trimmed Stripe object: its kept keys, read like a dict (see above). Subclasses are made by
    ``record_class``; ``KEYS`` are stored in slots, ``LISTINGS`` are Stripe's embedded lists
    (``{"has_more": …, "data": [...]}``) stored as two slots and rebuilt when read."""

    __slots__ = ()
    KEYS: tuple[str, ...] = ()
    LISTINGS: tuple[str, ...] = ()
    VIRTUAL: tuple[str, ...] = ()  # the keys not in a slot of their own: LISTINGS and any a subclass adds
    INTS: tuple[str, ...] = ()  # the keys holding amounts or timestamps (each stored once: Compactor)
    _slot: dict = {}
    _read: dict = {}  # key -> its slot's reader (an attrgetter: a third quicker than the slot's __get__)

    def __getitem__(self, key):
        read = self._read.get(key)
        if read is not None:
            value = read(self)
            if value is not ABSENT:
                return value
        elif key in self.VIRTUAL:
            value = self._virtual(key)
            if value is not ABSENT:
                return value
        raise KeyError(key)

    def get(self, key, default=None):
        read = self._read.get(key)
        if read is not None:
            value = read(self)
            return default if value is ABSENT else value
        if key in self.VIRTUAL:
            value = self._virtual(key)
            return default if value is ABSENT else value
        return default

    def __contains__(self, key) -> bool:
        return self.get(key, ABSENT) is not ABSENT

    def __iter__(self):
        return (k for k in self.KEYS + self.VIRTUAL if k in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:  # (``discount or …``: without reading every key)
        for slot in self._slot.values():
            if slot.__get__(self) is not ABSENT:
                return True
        return any(k in self for k in self.VIRTUAL)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"

    def _virtual(self, key: str):
        """A key kept in other slots than its own (``LISTINGS`` by default)."""
        return self._listing(key)

    def _listing(self, key: str):
        more, data = getattr(self, f"_{key}_has_more"), getattr(self, f"_{key}_data")
        if more is ABSENT and data is ABSENT:
            return ABSENT
        if isinstance(more, _Raw):  # not a dict in Stripe's answer: kept as it was
            return more.value
        out = {} if more is ABSENT else {"has_more": more}
        if data is not ABSENT:
            out["data"] = list(data) if data is not None else None
        return out

    @classmethod
    def of(cls, values: Mapping, **extra) -> "StripeRecord":
        """A record of ``values``' kept keys (absent ones stay absent), ``extra`` overriding them."""
        record = cls.__new__(cls)
        for key in cls.KEYS:
            value = extra[key] if key in extra else values.get(key, ABSENT)
            cls._slot[key].__set__(record, value)
        for key in cls.LISTINGS:
            setattr(record, f"_{key}_has_more", ABSENT)
            setattr(record, f"_{key}_data", ABSENT)
        return record


class _Raw:
    """An embedded list that was not a dict (kept as Stripe sent it)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _listing_reader(key: str) -> Callable:
    """``StripeRecord._listing(key)`` for one key, its two slots read by attrgetter (``get("lines")``
    is read once per invoice by several tables)."""
    more_of, data_of = attrgetter(f"_{key}_has_more"), attrgetter(f"_{key}_data")

    def read(record):
        more, data = more_of(record), data_of(record)
        if more is ABSENT and data is ABSENT:
            return ABSENT
        if isinstance(more, _Raw):
            return more.value
        out = {} if more is ABSENT else {"has_more": more}
        if data is not ABSENT:
            out["data"] = list(data) if data is not None else None
        return out
    return read


_INT_KEYS = frozenset({"created", "start_date", "current_period_start", "ended_at", "canceled_at", "trial_start",
                       "trial_end", "amount", "amount_paid", "quantity", "fee", "net", "start", "end", "paid_at"})


def record_class(name: str, keys: Sequence[str], listings: Sequence[str] = ()) -> type[StripeRecord]:
    slots = tuple(f"_{k}" for k in keys) + tuple(f"_{k}_{part}" for k in listings for part in ("has_more", "data"))
    cls = type(name, (StripeRecord,), {"__slots__": slots, "KEYS": tuple(keys), "LISTINGS": tuple(listings),
                                 "VIRTUAL": tuple(listings), "INTS": tuple(k for k in keys if k in _INT_KEYS),
                                 "__module__": __name__})
    cls._slot = {k: cls.__dict__[f"_{k}"] for k in keys}
    cls._read = {k: attrgetter(f"_{k}") for k in keys}
    cls._read.update({k: _listing_reader(k) for k in listings})
    # ``of`` as straight-line code (a loop over the slots' descriptors is ~3× slower): one
    # assignment per key, each key a Stripe field name (an identifier).
    assert all(k.isidentifier() for k in keys + tuple(listings))
    lines = ["def of(cls, values, **extra):", "    record = _new(cls)", "    get = values.get"]
    lines += [f"    record._{k} = extra['{k}'] if '{k}' in extra else get('{k}', ABSENT)" for k in keys]
    lines += [f"    record._{k}_{part} = ABSENT" for k in listings for part in ("has_more", "data")]
    lines += ["    return record"]
    namespace = {"_new": object.__new__, "ABSENT": ABSENT}
    exec("\n".join(lines), namespace)  # noqa: S102 - code made above from the fixed key names
    namespace["of"].__doc__ = StripeRecord.of.__doc__
    cls.of = classmethod(namespace["of"])
    return cls


_AMOUNT_KEYS = frozenset({"amount", "amount_paid", "quantity", "fee", "net"})
_RECURRING = ("interval", "interval_count", "usage_type")
_COUPON = ("id", "duration", "duration_in_months", "percent_off", "amount_off", "currency")
_SUB_FIELDS = ("id", "currency", "status", "created", "start_date", "current_period_start", "ended_at",
               "canceled_at", "trial_start", "trial_end", "cancel_at_period_end", "pause_collection")
_INVOICE_FIELDS = ("id", "status", "currency", "created", "amount_paid")
_LINE_FIELDS = ("type", "proration", "amount", "quantity")
_CHARGE_FIELDS = ("id", "created", "status", "amount", "currency", "failure_code", "failure_message")
_REFUND_FIELDS = ("id", "created", "status", "amount", "currency")
_DISPUTE_FIELDS = ("id", "created", "status", "amount", "currency")
_BALANCE_FIELDS = ("id", "created", "type", "reporting_category", "amount", "fee", "net", "currency")

Subscription = record_class("Subscription", _SUB_FIELDS + ("customer", "discount"), ("items",))
Customer = record_class("Customer", ("id", "name", "discount"))
Discount = record_class("Discount", ("start", "end", "coupon"))
Item = record_class("Item", ("id", "quantity", "price"))
Invoice = record_class("Invoice", _INVOICE_FIELDS + ("subscription", "customer", "charge", "discount",
                                                     "total_discount_amounts", "status_transitions"), ("lines",))


class Line(record_class("_Line", _LINE_FIELDS + ("price",))):
    """An invoice line; its ``period`` (``{"start", "end"}``) is kept in two slots, not a dict."""

    __slots__ = ("_period_start", "_period_end")  # (a period that was not a dict: _Raw in the first)
    VIRTUAL = ("period",)

    @classmethod
    def of(cls, values: Mapping, **extra) -> "Line":
        line = super().of(values, **extra)
        line._keep_period(values, extra)
        return line

    def _keep_period(self, values: Mapping, extra: Mapping) -> None:
        period = extra["period"] if "period" in extra else values.get("period", ABSENT)
        if isinstance(period, dict) and ("start" in period or "end" in period):
            self._period_start, self._period_end = period.get("start", ABSENT), period.get("end", ABSENT)
        elif isinstance(period, dict):
            self._period_start, self._period_end = _Raw({}), ABSENT
        else:
            self._period_start, self._period_end = (ABSENT if period is ABSENT else _Raw(period)), ABSENT

    def _virtual(self, key: str):
        start, end = self._period_start, self._period_end
        if isinstance(start, _Raw):
            return dict(start.value) if isinstance(start.value, dict) else start.value
        if start is ABSENT and end is ABSENT:
            return ABSENT
        out = {}
        if start is not ABSENT:
            out["start"] = start
        if end is not ABSENT:
            out["end"] = end
        return out

# The rows the mirror keeps of these kinds (``revenue.rows``): the leading keys, in order, of each
# row; after them, a subscription's items (has_more, its item rows), an invoice's paid_at and lines
# (has_more, its line rows), an item's and a line's price text.
SUBSCRIPTION_ROW = _SUB_FIELDS + ("customer",)
CUSTOMER_ROW = ("id", "name")
ITEM_ROW = ("id", "quantity")
INVOICE_ROW = _INVOICE_FIELDS + ("subscription", "customer", "charge")
LINE_ROW = _LINE_FIELDS
CHARGE_ROW = _CHARGE_FIELDS + ("customer", "invoice")
BALANCE_TRANSACTION_ROW = _BALANCE_FIELDS + ("source",)

Transitions = record_class("Transitions", ("paid_at",))
Amount = record_class("Amount", ("amount",))  # one of an invoice's total_discount_amounts
Charge = record_class("Charge", _CHARGE_FIELDS + ("customer", "invoice"))
Refund = record_class("Refund", _REFUND_FIELDS + ("charge",))
Dispute = record_class("Dispute", _DISPUTE_FIELDS + ("charge",))
# (a balance transaction's own id is listed, and in its row, but never read: half a million of them
# at a million customers, ~37 MB of id strings)
BalanceTransaction = record_class("BalanceTransaction", tuple(k for k in BALANCE_TRANSACTION_ROW if k != "id"))


def record_columns(objs: Sequence[Mapping], *keys: str) -> list[list]:
    """Per key, ``[obj.get(key) for obj in objs]``: read by C from the slots of records of one kind
    (a record's ``get`` is a Python call: 0.4 µs, ten times a slot's read)."""
    kind = type(objs[0]) if objs else None
    if kind is not None and issubclass(kind, StripeRecord) and all(key in kind._slot for key in keys) \
            and _all_of(objs, kind):
        out = []
        for key in keys:
            values = list(map(attrgetter(f"_{key}"), objs))
            if any(map(is_, values, repeat(ABSENT))):  # (looked for by C: most columns have no absent key)
                values = [None if value is ABSENT else value for value in values]
            out.append(values)
        return out
    return [[obj.get(key) for obj in objs] for key in keys]


def embedded_has_more(objs: Sequence[Mapping], key: str) -> list:
    """Per object, ``(obj.get(key) or {}).get("has_more")``: whether Stripe cut its embedded list short."""
    kind = type(objs[0]) if objs else None
    if kind is None or not issubclass(kind, StripeRecord) or key not in kind.LISTINGS or not _all_of(objs, kind):
        return [(obj.get(key) or {}).get("has_more") for obj in objs]
    out = list(map(attrgetter(f"_{key}_has_more"), objs))
    for i, more in enumerate(out):
        if more is ABSENT or type(more) is _Raw:  # (absent, or not a dict: read as a dict would)
            out[i] = (objs[i].get(key) or {}).get("has_more")
    return out


def _all_of(objs: Sequence, kind: type) -> bool:
    return set(map(type, objs)) <= {kind}


def embedded_items(objs: Sequence[Mapping], key: str) -> list[Sequence]:
    """Per object, the items of its embedded list ``key``: ``(obj.get(key) or {}).get("data") or []``,
    read by C from the slots of records of one kind (a tuple each, not a rebuilt dict and list)."""
    kind = type(objs[0]) if objs else None
    if kind is None or not issubclass(kind, StripeRecord) or key not in kind.LISTINGS or not _all_of(objs, kind):
        return [(obj.get(key) or {}).get("data") or [] for obj in objs]
    out = list(map(attrgetter(f"_{key}_data"), objs))
    for i, data in enumerate(out):
        if data is ABSENT or data is None:  # (no list, or one that was not a dict: read as a dict would)
            out[i] = (objs[i].get(key) or {}).get("data") or []
    return out


def nested_column(values: Sequence[Mapping | None], key: str) -> list:
    """Per value (a mapping, or None), ``(value or {}).get(key)``: ``record_columns`` of the values
    that are there (an invoice's ``status_transitions``' ``paid_at``)."""
    present = [i for i, value in enumerate(values) if value is not None]
    if len(present) == len(values):
        return record_columns(values, key)[0]
    out = [None] * len(values)
    for i, value in zip(present, record_columns([values[i] for i in present], key)[0]):
        out[i] = value
    return out


def line_periods(lines: Sequence[Mapping]) -> list[tuple]:
    """Per invoice line, its period's ``(start, end)`` as ``(line.get("period") or {}).get(...)``
    reads them; a ``Line`` record's from its two slots, by C."""
    if not _all_of(lines, Line):
        return [_period_of(line) for line in lines]
    out = list(zip(map(_PERIOD_START, lines), map(_PERIOD_END, lines)))
    for i, (start, end) in enumerate(out):
        if start is ABSENT or end is ABSENT or type(start) is _Raw:
            out[i] = _period_of(lines[i])
    return out


def _period_of(line: Mapping) -> tuple:
    period = line.get("period") or {}
    return period.get("start"), period.get("end")


_PERIOD_START, _PERIOD_END = attrgetter("_period_start"), attrgetter("_period_end")
_LINE_PRICE, _LINE_AMOUNT = attrgetter("_price"), attrgetter("_amount")


def lines_key(lines: Sequence[Mapping]) -> tuple:
    """What an invoice's lines bill, as a key: each line's price by identity (the compact objects
    share their prices) and amount. Equal keys, equal lines as far as prices and amounts go."""
    if type(lines) is tuple and _all_of(lines, Line):  # (records: read by C)
        return tuple(zip(map(id, map(_LINE_PRICE, lines)), map(_LINE_AMOUNT, lines)))
    return tuple((id(line.get("price")), line.get("amount")) for line in lines)


def _pick(obj: dict, keys: Sequence[str]) -> dict:
    return {k: obj[k] for k in keys if k in obj}


def trimmed_price(price: dict) -> dict:
    """What the computations read of a price (its plan, amount, interval, product…)."""
    out = _pick(price, ("id", "billing_scheme", "tiers_mode", "unit_amount", "unit_amount_decimal",
                        "nickname", "lookup_key"))
    if "recurring" in price:
        recurring = price["recurring"]
        out["recurring"] = _pick(recurring, _RECURRING) if isinstance(recurring, dict) else recurring
    if "metadata" in price:
        metadata = price["metadata"]
        out["metadata"] = ({"plan": metadata["plan"]} if "plan" in metadata else {}) \
            if isinstance(metadata, dict) else metadata
    if "product" in price:
        product = price["product"]
        out["product"] = _pick(product, ("id", "name")) if isinstance(product, dict) else product
    return out


_PROJECTORS: dict[tuple, Callable] = {}  # (record class, shared keys, ids) -> Compactor._record's work


def _projector(cls: type[StripeRecord], shared: Sequence[str], ids: Mapping[str, str],
               layout: Sequence[str] | None = None) -> Callable:
    """``Compactor._record`` for one record class, shared keys and ids, as straight-line code (a
    loop over the keys per object took a third of the fetch): each key's value, from ``extra``
    else the object, stored once (a shared string, an id, an amount, a timestamp of the object).
    With a ``layout`` (the keys of a row, in order: ``revenue.rows``), ``values`` is such a row: a
    key is read at its position, a key not in the layout only from ``extra``."""
    lines = ["def project(compactor, values, extra):", "    record = _new(cls)",
             *(["    get = values.get"] if layout is None else []),
             "    strings, amounts, same = compactor._strings, compactor._amounts, compactor._same"]
    lines += [f"    ids_{kind} = compactor._ids['{kind}']" for kind in sorted(set(ids.values()))]
    assert all(k.isidentifier() for k in cls.KEYS + tuple(ids.values()))
    for k in cls.KEYS:
        if layout is None:
            lines.append(f"    value = extra['{k}'] if '{k}' in extra else get('{k}', ABSENT)")
        elif k in layout:
            lines.append(f"    value = extra['{k}'] if '{k}' in extra else values[{list(layout).index(k)}]")
        else:
            lines.append(f"    value = extra.get('{k}', ABSENT)")
        if k in shared:
            lines.append("    if isinstance(value, str): value = strings.setdefault(value, value)")
        elif k in ids:
            lines.append(f"    if isinstance(value, str): value = ids_{ids[k]}.setdefault(value, value)")
        elif k in cls.INTS:  # (small ints are one object already)
            lines.append(f"    if '{k}' not in extra and type(value) is int and not -5 <= value <= 256: "
                         f"value = {'amounts' if k in _AMOUNT_KEYS else 'same'}.setdefault(value, value)")
        lines.append(f"    record._{k} = value")
    lines += [f"    record._{k}_{part} = ABSENT" for k in cls.LISTINGS for part in ("has_more", "data")]
    if hasattr(cls, "_keep_period") and layout is None:
        lines.append("    record._keep_period(values, extra)")
    lines.append("    return record")
    namespace = {"_new": object.__new__, "ABSENT": ABSENT, "cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - code made above from the fixed key names
    return namespace["project"]


MOMENTS_SHARED = 65_536


class Compactor:
    """Projects the objects of one fetch into records, sharing identical prices and coupons between
    them, and one copy of each repeated string (currencies, statuses; a subscription's and
    customer's ids on every invoice of theirs). Lives as long as the fetch."""

    def __init__(self):
        self._shared: dict = {}
        self._strings: dict[str, str] = {}
        # One copy of each id that other objects name (an invoice names its subscription, customer
        # and charge; a charge its invoice; a balance transaction its source), by the kind it is the
        # id of: ``release`` drops a kind once nothing listed later can name it.
        self._ids: dict[str, dict[str, str]] = {kind: {} for kind in ("subscription", "customer", "invoice",
                                                                      "charge", "source")}
        self._amounts: dict[int, int] = {}  # one copy of each amount (prices repeat)
        self._priced: dict[int, bool] = {}  # id of a shared price -> whether it has a monthly amount
        self._same: dict[int, int] = {}  # one copy of each timestamp (``_next_object``)
        # one record for equal invoice lines, one tuple for equal lists of them, one for each paid_at
        # (``_shared_lines``; started over with the timestamps' table)
        self._lines: dict[tuple, Line] = {}
        self._line_sets: dict[tuple, tuple] = {}
        self._paid: dict[int, StripeRecord] = {}
        self._prices: dict = {}  # price id -> (the last price read under it, its shared trimmed copy)
        self._price_texts: dict[str, dict] = {}  # a row's price text -> its shared trimmed copy
        self._item_sets: dict[tuple, tuple] = {}  # what a subscription's priced items bill -> one tuple of them

    def _next_object(self) -> None:
        """Called as each object begins. Its timestamps are one copy each, and so are those repeated
        between objects (a billing run's second, a period shared by a subscription and its invoice:
        at a million customers the demo's 4M timestamps hold ~1,400 distinct values, 32 bytes each
        copy) among the last ``MOMENTS_SHARED`` distinct ones: where they hardly repeat, the table
        starts over rather than growing with them."""
        if len(self._same) > MOMENTS_SHARED:
            self._same = {}
        if len(self._lines) > MOMENTS_SHARED or len(self._paid) > MOMENTS_SHARED:
            self._lines, self._line_sets, self._paid = {}, {}, {}

    def _share(self, value):
        key = repr(value)  # small dicts, lists and records of str/int/None: their repr is a faithful key
        return self._shared.setdefault(key, value)

    def release(self, *kinds: str) -> None:
        for kind in kinds:
            self._ids[kind] = {}

    def _str(self, value):
        return self._strings.setdefault(value, value) if isinstance(value, str) else value

    def _id(self, kind: str, value):
        return self._ids[kind].setdefault(value, value) if isinstance(value, str) else value

    def _record(self, cls: type[StripeRecord], obj: Mapping, shared: Sequence[str] = (),
                ids: Mapping[str, str] | None = None, **extra) -> StripeRecord:
        """``cls.of(obj, **extra)`` with one copy of the strings under ``shared`` (statuses,
        currencies…) and of the ids under ``ids`` (key -> the kind it names), of each amount, and
        of each timestamp repeated within the object (``_projector``: a function of its own for
        each kind of record)."""
        return _projection(cls, shared, ids)(self, obj, extra)

    @staticmethod
    def _embed(record: StripeRecord, key: str, listing, item) -> None:
        """Stripe's embedded list ``listing`` (``{"data": [...], "has_more": …}``) into ``record``."""
        if listing is ABSENT:
            return
        if not isinstance(listing, dict):
            setattr(record, f"_{key}_has_more", _Raw(listing))
            return
        setattr(record, f"_{key}_has_more", listing.get("has_more", ABSENT))
        if "data" in listing:
            data = listing["data"]
            setattr(record, f"_{key}_data", tuple(map(item, data or ())) if data is not None else None)

    def price(self, price):
        if not isinstance(price, dict):
            return price
        # A price sold on many subscriptions and invoices arrives equal each time: the first one's
        # trimmed copy is returned for any price equal to it (one dict comparison, no repr).
        seen = self._prices.get(price.get("id"))
        if seen is not None and seen[0] == price:
            return seen[1]
        out = self._trimmed_price(price)
        self._prices[price.get("id")] = (price, out)
        return out

    def _trimmed_price(self, price: dict):
        return self._share(trimmed_price(price))

    def _price_of_text(self, text: str):
        """A row's price (the JSON of its ``trimmed_price``): the shared copy ``price`` gives an equal one."""
        found = self._price_texts.get(text)
        if found is None:
            found = self._price_texts[text] = self._share(json.loads(text))
        return found

    def discount(self, discount):
        if not isinstance(discount, dict):
            return discount
        coupon = discount.get("coupon", ABSENT)
        if isinstance(coupon, dict):
            coupon = self._share(_pick(coupon, _COUPON))
        return Discount.of(discount, coupon=coupon)

    def subscription(self, sub: dict | list) -> Subscription:
        if type(sub) is list:
            return self._subscription_row(sub)
        self._next_object()
        extra = {}
        if "customer" in sub:
            customer = sub["customer"]
            if isinstance(customer, dict):
                discount = customer.get("discount", ABSENT)
                customer = _CUSTOMER(self, customer,
                                     {"discount": self.discount(discount)} if isinstance(discount, dict) else {})
            extra["customer"] = customer
        if "discount" in sub:
            extra["discount"] = self.discount(sub["discount"])
        out = _SUBSCRIPTION(self, sub, extra)
        items = sub.get("items", ABSENT)
        if type(items) is dict and type(items.get("data")) is list:  # (as Stripe sends it)
            out._items_has_more = items.get("has_more", ABSENT)
            out._items_data = self._shared_items(tuple(map(self._item, items["data"])))
        else:
            self._embed(out, "items", items, self._item)
        return out

    def _shared_items(self, items: tuple) -> tuple:
        """A subscription's items, one tuple for all the subscriptions whose items bill the same
        (shared) prices and quantities: a priced item keeps no id (``_item_price``), so equal ones
        are the same record. Half a million subscriptions, most on a few plans: ~60 MB."""
        key = []
        for item in items:
            quantity = item._quantity
            if item._id is not ABSENT or type(item._price) is not dict or not (quantity is None or type(quantity) is int
                                                                               or quantity is ABSENT):
                return items  # (an item that names itself, or what is not a plain count of a shared price: its own)
            key.append((id(item._price), quantity))
        return self._item_sets.setdefault(tuple(key), items)

    def _item(self, item):
        if "price" not in item:
            return _ITEM(self, item, {})
        return _ITEM(self, item, self._item_price(self.price(item["price"])))

    def _item_price(self, price) -> dict:
        """An item's ``extra``: its (shared) price, and no id when the price can be priced (an
        item's id is read only when it cannot: the unpriced_items check names it)."""
        priced = self._priced.get(id(price)) if isinstance(price, dict) else None
        if priced is None:
            from .mrr import unpriced_reason
            priced = isinstance(price, dict) and unpriced_reason(price) is None
            if isinstance(price, dict):
                self._priced[id(price)] = priced  # (prices are shared: held by self._shared)
        return {"price": price, "id": ABSENT} if priced else {"price": price}

    def invoice(self, invoice: dict | list) -> Invoice:
        if type(invoice) is list:
            return self._invoice_row(invoice)
        self._next_object()
        extra = {ref: id_of(invoice[ref]) for ref in ("subscription", "customer", "charge") if ref in invoice}
        if "discount" in invoice:
            extra["discount"] = self.discount(invoice["discount"])
        if "total_discount_amounts" in invoice:
            amounts = invoice["total_discount_amounts"]
            extra["total_discount_amounts"] = [_AMOUNT(self, a, {}) for a in amounts] if amounts else \
                self._share(amounts)  # (the empty list: one for all)
        if "status_transitions" in invoice:
            transitions = invoice["status_transitions"]
            if isinstance(transitions, dict):
                transitions = _TRANSITIONS(self, transitions, {})
                unpaid = transitions._paid_at is None or transitions._paid_at is ABSENT
                transitions = self._share(transitions) if unpaid else self._paid_at(transitions)
            extra["status_transitions"] = transitions
        out = _INVOICE(self, invoice, extra)
        lines = invoice.get("lines", ABSENT)
        if type(lines) is dict and type(lines.get("data")) is list:  # (as Stripe sends it)
            out._lines_has_more = lines.get("has_more", ABSENT)
            out._lines_data = self._shared_lines(tuple(map(self._line, lines["data"])))
        else:
            self._embed(out, "lines", lines, self._line)
        return out

    def _paid_at(self, transitions: StripeRecord) -> StripeRecord:
        """One ``status_transitions`` record for the invoices paid at the same second."""
        paid_at = transitions._paid_at
        return self._paid.setdefault(paid_at, transitions) if type(paid_at) is int else transitions

    def _shared_lines(self, lines: tuple) -> tuple:
        """An invoice's lines: each one record for the equal lines of many invoices (the same type,
        price, amount, quantity and period: one billing run's renewals), and one tuple for equal
        lists of them. At a million customers, ~80 MB of lines and tuples."""
        lines = tuple(map(self._shared_line, lines))
        return self._line_sets.setdefault(tuple(map(id, lines)), lines)

    def _shared_line(self, line: Line) -> Line:
        start, end, quantity, price = line._period_start, line._period_end, line._quantity, line._price
        if type(line._type) is not str or type(line._proration) is not bool or type(line._amount) is not int \
                or type(start) is not int or type(end) is not int or not (quantity is None or type(quantity) is int) \
                or not (price is None or type(price) is dict):
            return line  # (only the shape Stripe sends is compared by value: no 1 taken for True)
        return self._lines.setdefault((line._type, line._proration, line._amount, quantity, start, end, id(price)), line)

    def _line(self, line):
        extra = {}
        if "type" in line:
            extra["type"] = self._str(line["type"])
        if "period" in line:
            period = line["period"]
            if isinstance(period, dict):  # (its timestamps: one copy with the invoice's)
                same = self._same
                period = {k: same.setdefault(v, v) if type(v) is int else v
                          for k, v in period.items() if k in ("start", "end")}
            extra["period"] = period
        if "price" in line:
            extra["price"] = self.price(line["price"])
        return _LINE(self, line, extra)

    def _with_refs(self, cls: type[StripeRecord], obj: dict, refs: Sequence[str], ids: Mapping[str, str], **extra) -> StripeRecord:
        self._next_object()
        extra.update({ref: id_of(obj[ref]) for ref in refs if ref in obj})
        return self._record(cls, obj, _REFERRING_SHARED, ids, **extra)

    def charge(self, charge: dict | list) -> Charge:
        self._next_object()
        if type(charge) is list:
            return _ROW_CHARGE(self, charge, _NOTHING)
        extra = {ref: id_of(charge[ref]) for ref in ("customer", "invoice") if ref in charge}
        return _CHARGE(self, charge, extra)

    def refund(self, refund: dict) -> Refund:
        return self._with_refs(Refund, refund, ("charge",), {"id": "source", "charge": "charge"})

    def dispute(self, dispute: dict) -> Dispute:
        return self._with_refs(Dispute, dispute, ("charge",), {"id": "source", "charge": "charge"})

    def balance_transaction(self, txn: dict | list) -> BalanceTransaction:
        self._next_object()
        if type(txn) is list:
            source = txn[len(BALANCE_TRANSACTION_ROW) - 1]
        elif "source" not in txn:
            return _BALANCE_TRANSACTION(self, txn, {})
        else:
            source = id_of(txn["source"])
        if isinstance(source, str):
            source = self._ids["charge"].get(source) or self._ids["source"].get(source) or source
        return (_ROW_BALANCE_TRANSACTION if type(txn) is list else _BALANCE_TRANSACTION)(self, txn, {"source": source})

    # Records from the mirror's rows (``revenue.rows``), made as the methods above make them from
    # the objects the rows describe (the tests compare the two)

    def _subscription_row(self, row: list) -> Subscription:
        self._next_object()
        n = len(SUBSCRIPTION_ROW)
        expanded = row[n + 2]  # (its customer's row; None: not in the mirror, its id stays)
        customer = _ROW_CUSTOMER(self, expanded, _NO_DISCOUNT) if expanded is not None else row[n - 1]
        out = _ROW_SUBSCRIPTION(self, row, {"customer": customer, "discount": None})
        out._items_has_more = row[n]
        out._items_data = self._shared_items(tuple(map(self._item_row, row[n + 1])))
        return out

    def _item_row(self, row: list) -> Item:
        return _ROW_ITEM(self, row, self._item_price(self._price_of_text(row[len(ITEM_ROW)])))

    def _invoice_row(self, row: list) -> Invoice:
        self._next_object()
        n = len(INVOICE_ROW)
        transitions = _TRANSITIONS(self, {"paid_at": row[n]}, _NOTHING)
        transitions = self._share(transitions) if row[n] is None else self._paid_at(transitions)
        out = _ROW_INVOICE(self, row, {"discount": None, "total_discount_amounts": self._share([]),
                                       "status_transitions": transitions})
        out._lines_has_more = row[n + 1]
        out._lines_data = self._shared_lines(tuple(map(self._line_row, row[n + 2])))
        return out

    def _line_row(self, row: list) -> Line:
        n = len(LINE_ROW)
        text = row[n + 2]
        line = _ROW_LINE(self, row, {"type": self._str(row[0]),
                                     "price": self._price_of_text(text) if text is not None else None})
        same, start, end = self._same, row[n], row[n + 1]
        line._period_start = same.setdefault(start, start) if type(start) is int else start
        line._period_end = same.setdefault(end, end) if type(end) is int else end
        return line


_REFERRING_SHARED = ("currency", "status", "type", "reporting_category")


def _projection(cls: type[StripeRecord], shared: Sequence[str] = (), ids: Mapping[str, str] | None = None,
                layout: Sequence[str] | None = None) -> Callable:
    """``_projector(cls, shared, ids, layout)``, made once."""
    key = (cls, tuple(shared), tuple(ids.items()) if ids else (), tuple(layout) if layout is not None else None)
    project = _PROJECTORS.get(key)
    if project is None:
        project = _PROJECTORS[key] = _projector(cls, tuple(shared), ids or {}, layout)
    return project


# Each kind's projection, called directly per object (no lookup of it, no keyword arguments)
_SUBSCRIPTION = _projection(Subscription, ("currency", "status"), {"id": "subscription", "customer": "customer"})
_CUSTOMER = _projection(Customer, (), {"id": "customer"})
_ITEM = _projection(Item)
_INVOICE = _projection(Invoice, ("currency", "status"), {"id": "invoice", "subscription": "subscription",
                                                         "customer": "customer", "charge": "charge"})
_LINE = _projection(Line)
_AMOUNT = _projection(Amount)
_TRANSITIONS = _projection(Transitions)
_CHARGE = _projection(Charge, _REFERRING_SHARED, {"id": "charge", "customer": "customer", "invoice": "invoice"})
_BALANCE_TRANSACTION = _projection(BalanceTransaction, _REFERRING_SHARED, {})
# ... and from their rows
_ROW_SUBSCRIPTION = _projection(Subscription, ("currency", "status"), {"id": "subscription", "customer": "customer"},
                                SUBSCRIPTION_ROW)
_ROW_CUSTOMER = _projection(Customer, (), {"id": "customer"}, CUSTOMER_ROW)
_ROW_ITEM = _projection(Item, layout=ITEM_ROW)
_ROW_INVOICE = _projection(Invoice, ("currency", "status"), {"id": "invoice", "subscription": "subscription",
                                                             "customer": "customer", "charge": "charge"}, INVOICE_ROW)
_ROW_LINE = _projection(Line, layout=LINE_ROW)
_ROW_CHARGE = _projection(Charge, _REFERRING_SHARED, {"id": "charge", "customer": "customer", "invoice": "invoice"},
                          CHARGE_ROW)
_ROW_BALANCE_TRANSACTION = _projection(BalanceTransaction, _REFERRING_SHARED, {}, BALANCE_TRANSACTION_ROW)
_NOTHING: dict = {}  # (an ``extra`` read, never written)
_NO_DISCOUNT = {"discount": None}


_LISTED_FIELDS.update({
    "subscriptions": _listed(Subscription), "invoices": _listed(Invoice), "charges": _listed(Charge),
    "refunds": _listed(Refund), "disputes": _listed(Dispute), "balance_transactions": _listed(BalanceTransaction),
})
