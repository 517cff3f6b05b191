"""What the app believes and what Stripe says, joined per organisation by Stripe customer id.

The notebook reads each side once:

* ``read_app``: the app's organisations and subscriptions, through the schema mapping (two
  queries, whatever the number of customers);
* ``fetch_stripe``: every Stripe customer and every subscription, ``status=all`` pushed to the
  API (Stripe hides canceled subscriptions otherwise), as plain dicts;

and ``join_accounts`` joins them in Python by customer id into one row per organisation, with
the billing period its usage is counted over:

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

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from sqlalchemy.engine import Connection

from ..db import select_tuples
from ..findings import Metrics
from ..schema_map import SchemaMap
from ..utc import as_utc, from_epoch
from ..stripe_api import (SHARED_PRICES_AT_MOST, customers_by_id, in_background, list_customer_ids, list_customers,
                          list_subscription_rows, list_subscriptions)
from .. import stripe_mirror
from ..bulk import Record, Rows, collector_paused, columns
from .plans import PlanBook

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


# The app's rows, under opsbook's logical column names (a million organisations: Records, not dicts).
AppOrganisation = Record.of("AppOrganisation", ("id", "name", "plan", "stripe_customer_id", "is_blocked"))
AppSubscription = Record.of("AppSubscription", (
    "organisation_id", "stripe_subscription_id", "stripe_price_id", "plan", "status",
    "current_period_start", "current_period_end"))


def read_app(conn: Connection, schema: SchemaMap) -> dict[str, list[AppOrganisation | AppSubscription]]:
    """The app's organisations and subscriptions, under opsbook's logical column names."""
    orgs = schema.table("organisations")
    subs = schema.table("subscriptions")
    org_select = orgs.select_list(AppOrganisation.__slots__, required=("id", "plan", "stripe_customer_id"))
    sub_cols = AppSubscription.__slots__
    optional = ("stripe_price_id", "plan", "current_period_start", "current_period_end")
    sub_select = subs.select_list(sub_cols, required=[c for c in sub_cols if c not in optional])
    # Plans, statuses and prices repeat on every row: one string object each, not one per row (a
    # million organisations: ~140 MB of copies). The organisations stay the tuples read (the join
    # reads them by column; the plan is made one string there).
    one = {}.setdefault
    with collector_paused():
        organisations = Rows(AppOrganisation, list(select_tuples(
            conn, f"SELECT {org_select} FROM {orgs.sql_table} ORDER BY {orgs.col('id')}")))
        subscriptions = [
            AppSubscription(org, sub, one(price, price), one(plan, plan), one(status, status),
                            start if type(start) is datetime and start.tzinfo is timezone.utc else _utc(start),
                            end if type(end) is datetime and end.tzinfo is timezone.utc else _utc(end))
            for org, sub, price, plan, status, start, end in select_tuples(
                conn, f"SELECT {sub_select} FROM {subs.sql_table} ORDER BY {subs.col('organisation_id')}")]
    return {"organisations": organisations, "subscriptions": subscriptions}


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


def _live(subs: list, statuses: tuple[str, ...]) -> list | tuple:
    """Those of one organisation's subscriptions (Stripe's or the app's) whose status is in
    ``statuses``, the one whose period started last first (most organisations have one
    subscription: it is its own list when live)."""
    if len(subs) == 1:
        return subs if subs[0].get("status") in statuses else _NONE
    return _newest_first([s for s in subs if s.get("status") in statuses], "current_period_start")


def _app_period(app_live: list | tuple) -> tuple | None:
    """The period of the app's primary live subscription, when it records one."""
    first = app_live[0]
    start, end = first.get("current_period_start"), first.get("current_period_end")
    return (start, end, PERIOD_APP) if start and end else None


def _newest_first(subs: Iterable[dict], start_key: str) -> list[dict]:
    subs = list(subs)
    if len(subs) < 2:  # (most organisations: nothing to sort)
        return subs
    return sorted(subs, key=lambda s: (s.get(start_key) or _EPOCH, str(s.get("id") or s.get("stripe_subscription_id"))),
                  reverse=True)


# --------------------------------------------------------------------------- the join


def _read(rows: list, keys: tuple[str, ...]) -> Iterable[tuple]:
    """``keys`` of each row, read by C from ``Record``s (what ``read_app`` gives); ``.get`` of
    anything else (hand-built dicts may leave optional keys out)."""
    if rows and isinstance(rows[0], Record):
        return columns(rows, *keys)
    return (tuple(row.get(k) for k in keys) for row in rows)


@dataclass
class Accounts:
    """One row per organisation (``organisations``), plus what did not join."""

    organisations: list[dict]
    unlinked_customers: list[dict]         # Stripe customers no organisation points to
    orphan_subscriptions: list[dict]       # Stripe subscriptions of such customers
    stripe_subscriptions: list[dict]
    app_subscriptions: list[dict]
    unmapped: list[dict]                   # live Stripe subscriptions on a price no rule maps
    plans: PlanBook
    now: datetime
    stripe_customers: int = 0               # how many Stripe customers were read

    def by_id(self) -> dict[str, dict]:
        return {str(row["organisation_id"]): row for row in self.organisations}

    def metrics(self) -> Metrics:
        orgs = self.organisations
        return Metrics(
            organisations=len(orgs),
            subscribers=sum(1 for o in orgs if o["period_source"] != PERIOD_CALENDAR),
            free_organisations=sum(1 for o in orgs if o["period_source"] == PERIOD_CALENDAR),
            stripe_customers=self.stripe_customers,
            stripe_subscriptions=len(self.stripe_subscriptions),
            stripe_live_subscriptions=sum(1 for s in self.stripe_subscriptions if s.get("status") in STRIPE_LIVE),
            app_subscriptions=len(self.app_subscriptions),
            subscriptions_on_unmapped_prices=len(self.unmapped),
        )

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.metrics()._repr_mimebundle_(include, exclude)


# A Stripe subscription as the join and the checks see it (one per subscription: 500k at a
# million customers); price ids as a tuple.
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


def _stripe_view(sub: Mapping[str, Any], plans: PlanBook, price_ids_seen: dict[tuple, tuple]) -> StripeSubscription:
    plan, price_ids = plans.plan_for_subscription(sub)
    price_ids = tuple(price_ids)
    start, end = sub.get("current_period_start"), sub.get("current_period_end")
    return StripeSubscription(
        sub["id"], sub.get("status"), plan, price_ids_seen.setdefault(price_ids, price_ids),
        from_epoch(start) if type(start) is int else _utc(start),
        from_epoch(end) if type(end) is int else _utc(end), _customer_of(sub))


def _stripe_rows(rows: Iterable[tuple], plans: PlanBook) -> list[StripeSubscription]:
    """``stripe_api.list_subscription_rows``' tuples as the join's subscriptions: the plan is looked
    up once per distinct prices tuple (the rows share one per distinct prices)."""
    seen: dict[int, tuple] = {}  # id(prices) -> (prices, plan, price ids): the reference keeps the id unique
    # Periods start and end on the same few seconds (a billing anchor repeats): one datetime and
    # one status string each, not one per subscription.
    moments: dict[int, datetime] = {}
    one = {}.setdefault
    subs = []
    for sub_id, customer, status, start, end, prices in rows:
        known = seen.get(id(prices))
        if known is None:
            plan, price_ids = plans.plan_for_prices(prices)
            known = (prices, plan, tuple(price_ids))
            if len(seen) < SHARED_PRICES_AT_MOST:  # (prices not shared are not kept)
                seen[id(prices)] = known
        subs.append(StripeSubscription(sub_id, one(status, status), known[1], known[2], _moment(start, moments),
                                       _moment(end, moments), customer))
    return subs


def _moment(value: Any, seen: dict[int, datetime]) -> Any:
    """Epoch seconds as a UTC datetime, one per distinct second (anything else as ``_utc`` reads it)."""
    if type(value) is not int:
        return _utc(value)
    moment = seen.get(value)
    if moment is None:
        moment = seen[value] = from_epoch(value)
    return moment


def join_accounts(app: Mapping[str, list[dict]], stripe: Mapping[str, list[dict]], plans: PlanBook, *,
                  now: datetime) -> Accounts:
    """The app's organisations joined with Stripe by customer id, each with its billing period.

    ``stripe``: ``customers`` and ``subscriptions`` (lists or iterators of dicts, as
    ``fetch_stripe`` gives them), or ``stream_stripe``'s ``customer_ids`` and
    ``subscription_rows`` (tuples); with ``customers_by_id`` (``stream_stripe``'s), customers may
    be listed by id only, those no organisation points to being read whole through it.

    Per organisation: its Stripe subscriptions (any status) and live ones, the app's
    subscriptions, the *primary* subscription (the live Stripe one that started last, else the
    app's live one), the plan Stripe's price sells, and the period usage is counted over.
    """
    with collector_paused():
        return _join(app, stripe, plans, now=_utc(now))


def _join(app: Mapping[str, list[dict]], stripe: Mapping[str, Iterable[dict]], plans: PlanBook, *,
          now: datetime) -> Accounts:
    # Customer id -> whether Stripe has it, for every id an organisation points to; Stripe's
    # customers are read once, as they stream: only the unlinked ones are kept whole.
    organisations = app.get("organisations", [])
    org_fields = list(_read(organisations, ("id", "name", "plan", "stripe_customer_id", "is_blocked")))
    # (sets and comprehensions: a million customers on each side are C loops, not Python ones)
    linked = {customer_id for _id, _name, _plan, customer_id, _blocked in org_fields if customer_id}
    listed: set = set()  # every customer Stripe listed
    unlinked: dict[str, dict] = {}
    if "customer_ids" in stripe:
        ids = list(stripe["customer_ids"])
        listed.update(ids)
        unlinked = {customer_id: {"id": customer_id} for customer_id in ids if customer_id not in linked}
        del ids
    for customer in stripe.get("customers", ()):
        listed.add(customer["id"])
        if customer["id"] not in linked:
            unlinked[customer["id"]] = customer
    whole = stripe.get("customers_by_id")
    if whole is not None and unlinked:
        found = {customer["id"]: customer for customer in whole(list(unlinked))}
        unlinked = {cid: found[cid] for cid in unlinked if cid in found}  # (one deleted meanwhile is gone)
    price_ids: dict[tuple, tuple] = {}
    stripe_subs = (_stripe_rows(stripe["subscription_rows"], plans) if "subscription_rows" in stripe
                   else [_stripe_view(s, plans, price_ids) for s in stripe.get("subscriptions", ())])
    subs_by_customer: dict[str, list[dict]] = {}
    for sub in stripe_subs:
        subs_by_customer.setdefault(sub.customer, []).append(sub)
    # Organisation ids compare as text (an app's subscriptions may store them as text); as they
    # are when both sides are integers (a million str() calls fewer).
    app_subscriptions = app.get("subscriptions", [])
    sub_orgs = [org_id for (org_id,) in _read(app_subscriptions, ("organisation_id",))]
    same_keys = all(type(v) is int for v in sub_orgs) and all(type(f[0]) is int for f in org_fields)
    app_subs_by_org: dict[Any, list[dict]] = {}
    for org_id, sub in zip(sub_orgs, app_subscriptions):
        app_subs_by_org.setdefault(org_id if same_keys else str(org_id), []).append(sub)

    rows = []
    unmapped = []
    calendar_start, calendar_end = calendar_month(now)
    # per app plan: (the plan as one string object, whether it is paid, its limit)
    plan_facts: dict[Any, tuple] = {}
    row = OrganisationAccount
    for org_id, name, app_plan, customer_id, blocked in org_fields:
        facts = plan_facts.get(app_plan)
        if facts is None:
            facts = plan_facts[app_plan] = (app_plan, plans.is_paid(app_plan), plans.limit(app_plan))
        if blocked is not None and type(blocked) is not bool:  # (a mapped integer or text flag)
            blocked = bool(blocked)
        if customer_id:
            exists = customer_id in listed
            s_subs = subs_by_customer.get(customer_id, _NONE)
            s_live = _live(s_subs, STRIPE_LIVE) if s_subs else _NONE
        else:
            customer_id = exists = None
            s_subs = s_live = _NONE
        a_subs = app_subs_by_org.get(org_id if same_keys else str(org_id), _NONE) if app_subs_by_org else _NONE
        a_live = _live(a_subs, APP_ACCESS) if a_subs else _NONE
        if s_live:
            primary = s_live[0]
            for sub in s_live:
                if sub.plan is None:
                    unmapped.append({"organisation_id": org_id, "stripe_customer_id": customer_id,
                                     "subscription": sub.id, "status": sub.status,
                                     "price_ids": ", ".join(sub.price_ids)})
            if primary.current_period_start and primary.current_period_end:
                period = primary.current_period_start, primary.current_period_end, PERIOD_STRIPE
            else:
                period = _app_period(a_live) or (calendar_start, calendar_end, PERIOD_CALENDAR)
            rows.append(row(org_id, name, facts[0], facts[1], blocked, customer_id, exists, s_subs, s_live,
                            a_subs, a_live, primary.plan, primary.status, primary.id, *period, facts[2]))
        else:
            period = (_app_period(a_live) if a_live else None) or (calendar_start, calendar_end, PERIOD_CALENDAR)
            rows.append(row(org_id, name, facts[0], facts[1], blocked, customer_id, exists, s_subs, s_live,
                            a_subs, a_live, None, None, a_live[0]["stripe_subscription_id"] if a_live else None,
                            *period, facts[2]))
    orphan_subs = [s for s in stripe_subs if s.customer not in linked]
    return Accounts(
        organisations=rows,
        unlinked_customers=list(unlinked.values()),
        orphan_subscriptions=orphan_subs,
        stripe_subscriptions=stripe_subs,
        app_subscriptions=list(app_subscriptions),
        unmapped=unmapped,
        plans=plans,
        now=now,
        stripe_customers=len(listed & linked) + len(unlinked),
    )
