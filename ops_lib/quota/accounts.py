"""What the app believes and what Stripe says, joined per organisation by Stripe customer id.

The notebook reads each side once:

* ``read_app``: the app's organisations and subscriptions, through the schema mapping (two
  queries, whatever the number of customers);
* ``fetch_stripe``: every Stripe customer and every subscription, ``status=all`` pushed to the
  API (Stripe hides canceled subscriptions otherwise), as plain dicts;

and ``join_accounts`` joins them by customer id into one row per organisation, with the billing
period its usage is counted over. A million organisations are held as columns (``table.Table``:
arrays of positions and epoch microseconds, ``Texts``, labels), each one's ``OrganisationAccount``
built when it is read:

* a subscriber's period is its subscription's current period as Stripe reports it
  (``current_period_start``/``current_period_end``, UTC, half-open ``[start, end)``): Stripe
  bills by it. When Stripe has no live subscription but the app does (the app still grants
  access), the app's own record of the period is used;
* an organisation with no live subscription (a free one) is counted over the current UTC
  calendar month, ``[first day 00:00, first day of next month 00:00)``: it has no billing
  anchor of its own, and a calendar month is what people (and most apps) mean by "per month".
  An app that counts free usage otherwise should say so in its plans file's comment and in
  the counters it stores; a different period shows up here as counter drift.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice, repeat
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from sqlalchemy.engine import Connection

from ..db import select_tuples
from ..findings import Metrics
from ..schema_map import SchemaMap
from ..utc import as_utc, from_epoch
from ..stripe_api import (SHARED_PRICES_AT_MOST, customers_by_id, in_background, list_customer_ids, list_customers,
                          list_subscription_rows, list_subscriptions)
from .. import stripe_mirror
from ..bulk import Record, collector_paused
from .plans import PlanBook
from .scan import _Positions
from .table import (NO_MOMENT, UNIX_EPOCH, Computed, Labels, Moments, Table, Texts, Through, epoch_us, joined_texts, plain,
                    value_at)

# Stripe subscription statuses (API 2023-08-16).
STRIPE_LIVE = ("active", "trialing", "past_due")           # Stripe considers the customer subscribed
STRIPE_PAYING = ("active", "trialing")                      # ... and in good standing
STRIPE_NO_ACCESS = ("canceled", "unpaid", "incomplete", "incomplete_expired", "paused")
# The app's subscription statuses that grant access (the reference app mirrors Stripe's names).
APP_ACCESS = ("active", "trialing", "past_due")

PERIOD_STRIPE = "stripe subscription"
PERIOD_APP = "app subscription (Stripe has none live)"
PERIOD_CALENDAR = "calendar month (no subscription)"


# --------------------------------------------------------------------------- reading


# The app's rows, under opsbook's logical column names: read into columns (a million organisations).
AppOrganisation = Record.of("AppOrganisation", ("id", "name", "plan", "stripe_customer_id", "is_blocked"))
AppSubscription = Record.of("AppSubscription", (
    "organisation_id", "stripe_subscription_id", "stripe_price_id", "plan", "status",
    "current_period_start", "current_period_end"))

READ_CHUNK = 65_536  # rows turned into columns at a time


def read_app(conn: Connection, schema: SchemaMap) -> dict[str, Table]:
    """The app's organisations and subscriptions, under opsbook's logical column names, as
    ``Table``s read from the cursor a chunk at a time: no row is kept, integer ids are arrays,
    names and subscription ids ``Texts``, periods ``Moments``."""
    orgs = schema.table("organisations")
    subs = schema.table("subscriptions")
    org_select = orgs.select_list(AppOrganisation.__slots__, required=("id", "plan", "stripe_customer_id"))
    sub_cols = AppSubscription.__slots__
    optional = ("stripe_price_id", "plan", "current_period_start", "current_period_end")
    sub_select = subs.select_list(sub_cols, required=[c for c in sub_cols if c not in optional])
    with collector_paused():
        # (the customer ids stay objects: the join looks them up)
        organisations = Table(AppOrganisation, dict(zip(AppOrganisation.__slots__, _read_columns(
            select_tuples(conn, f"SELECT {org_select} FROM {orgs.sql_table} ORDER BY {orgs.col('id')}"),
            [(0, IDS), (1, TEXTS), (2, SHARED), (3, LIST), (4, LIST)]))))
        subscriptions = Table(AppSubscription, dict(zip(AppSubscription.__slots__, _read_columns(
            select_tuples(conn, f"SELECT {sub_select} FROM {subs.sql_table} ORDER BY {subs.col('organisation_id')}"),
            [(0, IDS), (1, TEXTS), (2, SHARED), (3, SHARED), (4, SHARED), (5, MOMENTS), (6, MOMENTS)]))))
    return {"organisations": organisations, "subscriptions": subscriptions}


# How ``_read_columns`` keeps a column: as a list; a list of one object per distinct value (plans,
# statuses, prices); ``Texts``; an int64 array when every value is an integer (else a list);
# ``Moments``. A function: an array it makes of each chunk's values.
LIST, SHARED, TEXTS, IDS, MOMENTS = "list", "shared", "texts", "ids", "moments"


def _read_columns(rows: Iterable[tuple], columns: list[tuple[int, Any]]) -> list:
    """``rows`` as columns, a chunk of rows at a time (no row is kept): for each ``(position in
    the row, kind)`` of ``columns``, the row's value there kept as ``kind`` says."""
    rows = iter(rows)
    parts: list[list] = [[] for _ in columns]
    one = {}.setdefault
    while chunk := list(islice(rows, READ_CHUNK)):
        values = list(zip(*chunk))
        del chunk
        for (at, kind), part in zip(columns, parts):
            if kind == LIST:
                part.extend(values[at])
            elif kind == SHARED:
                part.extend(map(one, values[at], values[at]))
            elif kind == TEXTS:
                part.append(Texts.of(values[at]))
            elif kind == IDS:
                part.append(np.fromiter(values[at], dtype=np.int64, count=len(values[at]))
                            if all(type(v) is int for v in values[at]) else values[at])
            elif kind == MOMENTS:
                part.append(_epoch_us(values[at]))
            else:
                part.append(kind(values[at]))
    return [_joined(kind, part) for (_, kind), part in zip(columns, parts)]


def _joined(kind, parts: list):
    if kind in (LIST, SHARED):
        return parts
    if kind == TEXTS:
        return joined_texts(parts) if all(isinstance(p, Texts) for p in parts) else [v for p in parts for v in plain(p)]
    if kind == IDS:
        if parts and all(isinstance(p, np.ndarray) for p in parts):
            return np.concatenate(parts)
        return [v for p in parts for v in plain(p)]
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return Moments(joined) if kind == MOMENTS else joined


_tzinfo = operator.attrgetter("tzinfo")
ONE_US = timedelta(microseconds=1)


def _epoch_us(moments: Sequence) -> np.ndarray:
    """Moments (datetimes, Stripe's epoch seconds, ISO texts; None) as int64 epoch microseconds
    (``NO_MOMENT``: None), each distinct value converted once."""
    kinds = set(map(type, moments))
    if kinds == {int}:  # (Stripe's: by C)
        return np.fromiter(moments, dtype=np.int64, count=len(moments)) * 1_000_000
    if kinds <= {datetime, type(None)} and None not in map(_tzinfo, filter(None, moments)):
        # (the database's, aware: each one's distance from the epoch, none alike)
        return np.fromiter((NO_MOMENT if m is None else (m - UNIX_EPOCH) // ONE_US for m in moments),
                           dtype=np.int64, count=len(moments))
    converted: dict = {}

    def us(value) -> int:
        if value is None:
            return NO_MOMENT
        got = converted.get(value)
        if got is None:
            if type(value) is int:
                got = value * 1_000_000
            else:
                moment = _utc(value)
                if not isinstance(moment, datetime):
                    raise TypeError(f"not a moment: {value!r}")
                got = epoch_us(moment)
            converted[value] = got
        return got

    return np.fromiter(map(us, moments), dtype=np.int64, count=len(moments))


# What the join and the checks read of each Stripe object: the rest is dropped as pages stream
# in, so memory grows with these fields only, not with whole objects.
CUSTOMER_FIELDS = ("id", "object", "email", "name", "created", "metadata", "deleted")
SUBSCRIPTION_FIELDS = ("id", "object", "customer", "status", "items", "current_period_start",
                       "current_period_end", "created", "start_date", "ended_at", "canceled_at",
                       "cancel_at_period_end", "trial_end", "metadata")


# ... and of each subscription item's price: what ``PlanBook.plan_for_price`` reads (a full price
# object is ~25 properties, repeated on every subscription that sells it).
ITEM_FIELDS = ("id", "object", "price", "quantity")
PRICE_FIELDS = ("id", "object", "product", "metadata", "lookup_key", "nickname")


def fetch_stripe(client) -> dict[str, list[dict]]:
    """Every customer and every subscription (any status), read once per run. Each
    subscription's items keep ``ITEM_FIELDS``, their prices ``PRICE_FIELDS`` (one dict per
    price, shared by the subscriptions that sell it)."""
    prices: dict[Any, dict] = {}
    with collector_paused():
        return {"customers": list(list_customers(client, fields=CUSTOMER_FIELDS)),
                "subscriptions": [_slim_items(s, prices) for s in
                                  list_subscriptions(client, status="all", fields=SUBSCRIPTION_FIELDS)]}


def stream_stripe(client) -> dict[str, Iterator[dict]]:
    """Stripe's customers and subscriptions as they stream in, read once by ``join_accounts``: it
    keeps of each what the checks use, so a million customers are never held at once (the
    runbook's way). Of subscriptions, only what the join reads, as rows (``fetch_stripe`` keeps
    more), from a mirror read from the call on by a thread of their own
    (``stripe_api.in_background``): call it before reading the app's rows."""
    rows = list_subscription_rows(client, status="all")
    return {
        # every customer's id, then the few no organisation points to read whole (by id)
        "customer_ids": list_customer_ids(client),
        "customers_by_id": lambda ids: customers_by_id(client, ids, fields=CUSTOMER_FIELDS),
        # what the join reads of every subscription, as tuples (``stripe_api.SUBSCRIPTION_ROW``);
        # from a mirror, read from now on by a thread while the app's rows are read (not from
        # Stripe itself: a listing left unread, the app's read having failed, would keep asking it)
        "subscription_rows": in_background(rows, "opsbook-stripe-subscriptions")
        if stripe_mirror.of(client) is not None else rows,
    }


def _slim_items(subscription: dict, prices: dict[Any, dict]) -> dict:
    items = subscription.get("items")
    if not isinstance(items, Mapping) or not isinstance(items.get("data"), list):
        return subscription
    data = []
    for item in items["data"]:
        if not isinstance(item, Mapping):
            data.append(item)
            continue
        item = {k: item[k] for k in ITEM_FIELDS if k in item}
        price = item.get("price")
        if isinstance(price, Mapping):
            price = {k: price[k] for k in PRICE_FIELDS if k in price}
            shared = prices.get(price.get("id"))
            if shared == price:
                price = shared
            elif shared is None:
                prices[price.get("id")] = price
            item["price"] = price
        data.append(item)
    subscription["items"] = {**{k: v for k, v in items.items() if k != "data"}, "data": data}
    return subscription


# --------------------------------------------------------------------------- periods


def calendar_month(moment: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing ``moment``: [first day 00:00, next first day 00:00)."""
    moment = _utc(moment)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _utc(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return from_epoch(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return as_utc(value)
    return value


def _customer_of(subscription: Mapping[str, Any]) -> str | None:
    customer = subscription.get("customer")
    if type(customer) is str:  # (as listed: an id; expanded, an object)
        return customer
    return customer.get("id") if isinstance(customer, Mapping) else customer


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the join


@dataclass
class Accounts:
    """One row per organisation (``organisations``, a ``Table`` of ``OrganisationAccount``s held
    as columns), plus what did not join."""

    organisations: "OrganisationTable"
    unlinked_customers: list[dict]         # Stripe customers no organisation points to
    orphan_subscriptions: Table            # Stripe subscriptions of such customers
    stripe_subscriptions: Table            # of StripeSubscription
    app_subscriptions: Table               # of AppSubscription
    unmapped: list[dict]                   # live Stripe subscriptions on a price no rule maps
    plans: PlanBook
    now: datetime
    stripe_customers: int = 0               # how many Stripe customers were read

    def by_id(self) -> dict[str, dict]:
        return {str(row["organisation_id"]): row for row in self.organisations}

    def metrics(self) -> Metrics:
        calendar = int((self.organisations.column("period_source").codes == CALENDAR).sum())
        stripe_live = sum(status in STRIPE_LIVE for status in self.stripe_subscriptions.column("status"))
        return Metrics(
            organisations=len(self.organisations),
            subscribers=len(self.organisations) - calendar,
            free_organisations=calendar,
            stripe_customers=self.stripe_customers,
            stripe_subscriptions=len(self.stripe_subscriptions),
            stripe_live_subscriptions=stripe_live,
            app_subscriptions=len(self.app_subscriptions),
            subscriptions_on_unmapped_prices=len(self.unmapped),
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.metrics()._repr_mimebundle_(include, exclude)


# A Stripe subscription as the join and the checks see it (500k at a million customers, held as
# columns); price ids as a tuple.
StripeSubscription = Record.of("StripeSubscription", (
    "id", "status", "plan", "price_ids", "current_period_start", "current_period_end", "customer"))

# One per organisation: what the app believes, what Stripe says, and the period usage is counted
# over. Empty subscription lists are one shared empty tuple.
OrganisationAccount = Record.of("OrganisationAccount", (
    "organisation_id", "name", "app_plan", "app_plan_paid", "is_blocked", "stripe_customer_id",
    "customer_exists", "stripe_subscriptions", "stripe_live", "app_subscriptions", "app_live",
    "stripe_plan", "stripe_status", "primary_subscription", "period_start", "period_end",
    "period_source", "usage_limit"))

_NONE: tuple = ()
PERIOD_SOURCES = (PERIOD_STRIPE, PERIOD_APP, PERIOD_CALENDAR)
STRIPE_PERIOD, APP_PERIOD, CALENDAR = range(3)  # period_source's codes


class Subscriptions:
    """Subscriptions (Stripe's or the app's, a ``Table``) grouped by the organisation they belong
    to, as positions: ``group`` is each subscription's organisation (the first one with its
    customer id, or its organisation id; -1: none), ``live`` whether its status is live, and
    ``primary`` per organisation the live one whose period started last (-1: none)."""

    def __init__(self, table: Table, group: np.ndarray, live: np.ndarray, organisations: int, id_key: str):
        self.table, self.group, self.live, self._id_key = table, group, live, id_key
        mine = group >= 0
        self.count = np.bincount(group[mine], minlength=organisations).astype(np.int32)
        self.live_count = np.bincount(group[mine & live], minlength=organisations).astype(np.int32)
        self.order = np.argsort(group, kind="stable")  # (by organisation, in the listing's order)
        self.sorted_group = group[self.order]
        self.primary = np.full(organisations, -1, dtype=np.int64)
        alone = np.flatnonzero(mine & live)
        alone = alone[self.live_count[group[alone]] == 1]
        self.primary[group[alone]] = alone
        for g in np.flatnonzero(self.live_count > 1).tolist():  # (a few: sorted as ever)
            self.primary[g] = self.positions(g, live_only=True)[0]

    def positions(self, g: int, *, live_only: bool = False) -> list[int]:
        """The positions of organisation ``g``'s subscriptions: in the listing's order, or its
        live ones, newest first."""
        if g < 0:
            return []
        lo, hi = np.searchsorted(self.sorted_group, [g, g + 1]).tolist()
        found = self.order[lo:hi].tolist()
        if not live_only:
            return found
        live = [n for n in found if self.live[n]]
        if len(live) < 2:
            return live
        starts, ids = self.table.column("current_period_start"), self.table.column(self._id_key)
        return sorted(live, key=lambda n: (starts[n] or _EPOCH, str(ids[n])), reverse=True)

    def of(self, g: int) -> list | tuple:
        return [self.table[n] for n in self.positions(g)] or _NONE

    def live_of(self, g: int) -> list | tuple:
        return [self.table[n] for n in self.positions(g, live_only=True)] or _NONE


class OrganisationTable(Table):
    """The accounts' organisations as columns, with how they join, per organisation:
    ``customer_group`` (the first organisation with its customer id; -1: none), ``customer_listed``
    (Stripe listed the customer), ``app_group`` (the first organisation with its id), ``stripe``
    and ``app`` (the subscriptions by organisation), ``stripe_primary`` and ``app_primary``
    (positions of the primary subscription on either side; -1: none), ``same_primary`` (both are
    the same subscription)."""

    def __init__(self, columns: Mapping[str, Any], *, customer_group: np.ndarray, customer_listed: np.ndarray,
                 app_group: np.ndarray, same_primary: np.ndarray, stripe: Subscriptions, app: Subscriptions,
                 stripe_primary: np.ndarray, app_primary: np.ndarray):
        super().__init__(OrganisationAccount, columns)
        self.same_primary = same_primary  # (both sides' primary subscriptions are the same one)
        self.customer_group, self.app_group, self.stripe, self.app = customer_group, app_group, stripe, app
        self.customer_listed = customer_listed  # (per organisation: Stripe listed its customer)
        self.stripe_primary, self.app_primary = stripe_primary, app_primary

    def stripe_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per organisation: how many Stripe subscriptions, and how many live."""
        g = np.maximum(self.customer_group, 0)
        has = self.customer_group >= 0
        return np.where(has, self.stripe.count[g], 0), np.where(has, self.stripe.live_count[g], 0)

    def app_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per organisation: how many app subscriptions, and how many live."""
        return self.app.count[self.app_group], self.app.live_count[self.app_group]


def join_accounts(app: Mapping[str, Sequence], stripe: Mapping[str, Any], plans: PlanBook, *,
                  now: datetime) -> Accounts:
    """The app's organisations joined with Stripe by customer id, each with its billing period.

    ``app``: ``read_app``'s tables (or lists of dicts, optional keys left out). ``stripe``:
    ``customers`` and ``subscriptions`` (lists or iterators of dicts, as ``fetch_stripe`` gives
    them), or ``stream_stripe``'s ``customer_ids`` and ``subscription_rows`` (tuples); with
    ``customers_by_id`` (``stream_stripe``'s), customers may be listed by id only, those no
    organisation points to being read whole through it.

    Per organisation: its Stripe subscriptions (any status) and live ones, the app's
    subscriptions, the *primary* subscription (the live Stripe one that started last, else the
    app's live one), the plan Stripe's price sells, and the period usage is counted over. Held as
    columns: a subscription or an organisation's record is built when read.
    """
    with collector_paused():
        return _join(app, stripe, plans, now=_utc(now))


def _join(app: Mapping[str, Sequence], stripe: Mapping[str, Any], plans: PlanBook, *, now: datetime) -> Accounts:
    orgs = Table.of_rows(AppOrganisation, app.get("organisations", []))
    n = len(orgs)
    org_ids = orgs.column("id")
    customers = [c or None for c in orgs.values("stripe_customer_id")]
    # Each customer id -> the first organisation pointing to it (the organisations join there).
    # (built and read in one pass: setdefault answers the first position)
    first_with: dict = {}
    customer_group = np.fromiter(map(first_with.setdefault, customers, range(n)), dtype=np.int64, count=n)
    if None in first_with:
        del first_with[None]
        customer_group[np.fromiter(map(operator.not_, customers), dtype=bool, count=n)] = -1

    # Stripe's customers, read once as they stream: only the unlinked ones are kept whole.
    listed = bytearray(n)  # by customer group: Stripe has the customer
    unlinked: dict[str, dict] = {}
    for customer_id in stripe.get("customer_ids", ()):
        k = first_with.get(customer_id)
        if k is None:
            unlinked.setdefault(customer_id, {"id": customer_id})
        else:
            listed[k] = 1
    for customer in stripe.get("customers", ()):
        k = first_with.get(customer["id"])
        if k is None:
            unlinked[customer["id"]] = customer
        else:
            listed[k] = 1
    whole = stripe.get("customers_by_id")
    if whole is not None and unlinked:
        found = {customer["id"]: customer for customer in whole(list(unlinked))}
        unlinked = {cid: found[cid] for cid in unlinked if cid in found}  # (one deleted meanwhile is gone)
    listed_groups = np.frombuffer(bytes(listed), dtype=np.uint8).astype(bool)

    stripe_subs, sub_group = (_stripe_rows(stripe["subscription_rows"], plans, first_with) if "subscription_rows" in stripe
                              else _stripe_dicts(stripe.get("subscriptions", ()), plans, first_with))
    del first_with
    stripe_live = np.fromiter((s in STRIPE_LIVE for s in stripe_subs.column("status")), dtype=bool,
                              count=len(stripe_subs))
    stripe_by_org = Subscriptions(stripe_subs, sub_group, stripe_live, n, "id")

    app_subs = _app_subscriptions(app.get("subscriptions", []))
    # Organisation ids compare as text (an app's subscriptions may store them as text); as they
    # are when both sides are integers.
    where = _Positions(org_ids)
    app_group = where.of(app_subs.column("organisation_id")) if len(app_subs) else np.zeros(0, dtype=np.int64)
    app_live = np.fromiter((s in APP_ACCESS for s in app_subs.column("status")), dtype=bool, count=len(app_subs))
    app_by_org = Subscriptions(app_subs, app_group, app_live, n, "stripe_subscription_id")
    org_app_group = where.of(org_ids) if n else np.zeros(0, dtype=np.int64)

    # The period: the primary Stripe subscription's, else the app's live one's, else the calendar month.
    sp = np.where(customer_group >= 0, stripe_by_org.primary[np.maximum(customer_group, 0)], -1)
    ap = app_by_org.primary[org_app_group] if n else np.zeros(0, dtype=np.int64)
    s_start, s_end = (_at(stripe_subs.column(k).us, sp) for k in ("current_period_start", "current_period_end"))
    a_start, a_end = (_at(app_subs.column(k).us, ap) for k in ("current_period_start", "current_period_end"))
    stripe_period = (s_start != NO_MOMENT) & (s_end != NO_MOMENT)
    app_period = (a_start != NO_MOMENT) & (a_end != NO_MOMENT)
    source = np.where(stripe_period, STRIPE_PERIOD, np.where(app_period, APP_PERIOD, CALENDAR)).astype(np.int8)
    calendar_start, calendar_end = (epoch_us(m) for m in calendar_month(now))
    starts = np.where(stripe_period, s_start, np.where(app_period, a_start, calendar_start))
    ends = np.where(stripe_period, s_end, np.where(app_period, a_end, calendar_end))

    has_customer = customer_group >= 0
    exists = listed_groups[np.maximum(customer_group, 0)] & has_customer
    # Whether both sides' primary subscriptions are the same one (what status_mismatch settles first).
    both = np.flatnonzero((sp >= 0) & (ap >= 0))
    same_primary = np.zeros(n, dtype=bool)
    stripe_ids, app_sub_ids = stripe_subs.column("id"), app_subs.column("stripe_subscription_id")
    if len(both):
        # (the ids as objects for a moment: a million texts sliced one by one take a second)
        app_texts, stripe_texts = plain(app_sub_ids), plain(stripe_ids)
        same_primary[both] = np.fromiter(map(operator.eq, map(app_texts.__getitem__, ap[both].tolist()),
                                             map(stripe_texts.__getitem__, sp[both].tolist())), dtype=bool, count=len(both))
        del app_texts, stripe_texts
    unmapped = _unmapped(customer_group, stripe_by_org, org_ids, customers)
    plan_codes: dict = {}
    plan_of = np.fromiter((plan_codes.setdefault(plan, len(plan_codes)) for plan in orgs.column("plan")),
                          dtype=np.int32, count=n)
    app_plans = list(plan_codes)
    blocked = np.fromiter((0 if b is None else 2 if b else 1 for b in orgs.column("is_blocked")), dtype=np.int8, count=n)
    columns = {
        "organisation_id": org_ids,
        "name": _texts(orgs.column("name")),
        "app_plan": Labels(plan_of, app_plans),
        "app_plan_paid": Labels(plan_of, [plans.is_paid(plan) for plan in app_plans]),
        "is_blocked": Labels(blocked, (None, False, True)),
        # (the texts of a million rows as one string: ~15 bytes a text instead of an object of ~65)
        "stripe_customer_id": Texts.of(customers),
        "customer_exists": Computed(n, lambda i: bool(exists[i]) if has_customer[i] else None),
        "stripe_subscriptions": Computed(n, lambda i: stripe_by_org.of(int(customer_group[i]))),
        "stripe_live": Computed(n, lambda i: stripe_by_org.live_of(int(customer_group[i]))),
        "app_subscriptions": Computed(n, lambda i: app_by_org.of(int(org_app_group[i]))),
        "app_live": Computed(n, lambda i: app_by_org.live_of(int(org_app_group[i]))),
        "stripe_plan": Through(sp, stripe_subs.column("plan")),
        "stripe_status": Through(sp, stripe_subs.column("status")),
        "primary_subscription": Computed(n, lambda i: stripe_ids[int(sp[i])] if sp[i] >= 0
                                         else app_sub_ids[int(ap[i])] if ap[i] >= 0 else None),
        "period_start": Moments(starts),
        "period_end": Moments(ends),
        "period_source": Labels(source, PERIOD_SOURCES),
        "usage_limit": Labels(plan_of, [plans.limit(plan) for plan in app_plans]),
    }
    del customers, orgs
    table = OrganisationTable(columns, customer_group=customer_group, customer_listed=exists, app_group=org_app_group,
                              same_primary=same_primary, stripe=stripe_by_org, app=app_by_org, stripe_primary=sp,
                              app_primary=ap)
    return Accounts(
        organisations=table,
        unlinked_customers=list(unlinked.values()),
        orphan_subscriptions=stripe_subs.take(np.flatnonzero(sub_group < 0)),
        stripe_subscriptions=stripe_subs,
        app_subscriptions=app_subs,
        unmapped=unmapped,
        plans=plans,
        now=now,
        stripe_customers=int(listed_groups.sum()) + len(unlinked),
    )


def _texts(column):
    """A text column as ``Texts`` (``read_app``'s already is; hand-built rows' is a list)."""
    return column if isinstance(column, Texts) else Texts.of(plain(column))


def _at(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``values[positions]``, ``NO_MOMENT`` where a position is -1."""
    if not len(values):
        return np.full(len(positions), NO_MOMENT, dtype=np.int64)
    return np.where(positions >= 0, values[np.maximum(positions, 0)], NO_MOMENT)


def _unmapped(customer_group: np.ndarray, stripe_by_org: Subscriptions, org_ids: list, customers: list) -> list[dict]:
    """Per organisation with live Stripe subscriptions, each live one on a price no rule maps."""
    unmapped = np.fromiter((plan is None for plan in stripe_by_org.table.column("plan")), dtype=bool,
                           count=len(stripe_by_org.table)) & stripe_by_org.live & (stripe_by_org.group >= 0)
    unmapped_groups = np.unique(stripe_by_org.group[unmapped])
    rows = []
    for i in np.flatnonzero(np.isin(customer_group, unmapped_groups)).tolist():
        for sub in stripe_by_org.live_of(int(customer_group[i])):
            if sub.plan is None:
                rows.append({"organisation_id": value_at(org_ids, i), "stripe_customer_id": customers[i],
                             "subscription": sub.id, "status": sub.status, "price_ids": ", ".join(sub.price_ids)})
    return rows


def _app_subscriptions(rows: Sequence) -> Table:
    """The app's subscriptions as a table whose periods are moments (``read_app``'s already are)."""
    table = Table.of_rows(AppSubscription, rows)
    columns = dict(table.columns)
    for key in ("current_period_start", "current_period_end"):
        if not isinstance(columns[key], Moments):
            columns[key] = Moments(_epoch_us(plain(columns[key])))
    return Table(AppSubscription, columns)


def _stripe_dicts(subs: Iterable[Mapping[str, Any]], plans: PlanBook, first_with: Mapping[str, int]) -> tuple[Table, np.ndarray]:
    """Stripe's subscriptions as dicts (``fetch_stripe``'s) as the join's table, and each one's
    organisation (see ``_stripe_rows``)."""
    seen: dict[tuple, tuple] = {}
    one = {}.setdefault
    ids, statuses, plan_of, price_ids, starts, ends, customers = ([] for _ in range(7))
    for sub in subs:
        plan, prices = plans.plan_for_subscription(sub)
        prices = tuple(prices)
        status = sub.get("status")
        ids.append(sub["id"])
        statuses.append(one(status, status))
        plan_of.append(plan)
        price_ids.append(seen.setdefault(prices, prices))
        starts.append(sub.get("current_period_start"))
        ends.append(sub.get("current_period_end"))
        customers.append(_customer_of(sub))
    group = np.fromiter(map(first_with.get, customers, repeat(-1)), dtype=np.int64, count=len(customers))
    return Table(StripeSubscription, {
        "id": Texts.of(ids), "status": statuses, "plan": plan_of, "price_ids": price_ids,
        "current_period_start": Moments(_epoch_us(starts)), "current_period_end": Moments(_epoch_us(ends)),
        "customer": Texts.of(customers)}), group


def _stripe_rows(rows: Iterable[tuple], plans: PlanBook, first_with: Mapping[str, int]) -> tuple[Table, np.ndarray]:
    """``stripe_api.list_subscription_rows``' tuples as the join's table, read a chunk at a time,
    and each one's organisation (``first_with``: a customer id's first organisation; -1: none).
    The plan is looked up once per distinct prices tuple (the rows share one per distinct prices)."""
    def organisation_of(customers: tuple) -> np.ndarray:
        return np.fromiter(map(first_with.get, customers, repeat(-1)), dtype=np.int64, count=len(customers))

    ids, customers, group, statuses, starts, ends, prices_of = _read_columns(rows, [
        (0, TEXTS), (1, TEXTS), (1, organisation_of), (2, SHARED), (3, MOMENTS), (4, MOMENTS), (5, LIST)])
    seen: dict[int, tuple] = {}  # id(prices) -> (prices, plan, price ids): the reference keeps the id unique
    plan_of, price_ids = [], []
    for prices in prices_of:
        known = seen.get(id(prices))
        if known is None:
            plan, ids_ = plans.plan_for_prices(prices)
            known = (prices, plan, tuple(ids_))
            if len(seen) < SHARED_PRICES_AT_MOST:  # (prices not shared are not kept)
                seen[id(prices)] = known
        plan_of.append(known[1])
        price_ids.append(known[2])
    del prices_of
    return Table(StripeSubscription, {"id": ids, "status": statuses, "plan": plan_of, "price_ids": price_ids,
                                      "current_period_start": starts, "current_period_end": ends,
                                      "customer": customers}), group
