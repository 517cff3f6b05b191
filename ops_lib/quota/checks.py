"""The quota_audit checks: plain data in (``Accounts``, the recomputed usage), a ``Finding`` out.

No check reads the database: ``duplicate_usage_events`` reads what ``scan.scan_usage`` found in
its one pass over the usage events (or ``scan.find_duplicates``). Items are stable ids: the organisation id for the per-organisation checks, the Stripe
customer id for ``missing_customer_mapping`` and ``multiple_active_subscriptions``, the
idempotency key for ``duplicate_usage_events``.

The limit that applies to an organisation is its plan's *in the app* (what the app enforces);
where the app's plan differs from what Stripe sells the customer, ``tier_mismatch`` says so.
"""
from __future__ import annotations

import operator
from datetime import datetime
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np

from sqlalchemy.engine import Connection

from ..findings import Finding
from ..findings import run_checks as _run_checks
from ..schema_map import SchemaMap
from .accounts import APP_ACCESS, STRIPE_LIVE, STRIPE_NO_ACCESS, STRIPE_PAYING, Accounts
from .scan import Duplicates, find_duplicates, usage_table
from .table import Table, holds, integers

DEFAULT_NEAR_LIMIT_PCT = 80.0


def _sorted_ids(values: Iterable) -> list:
    return sorted(values, key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else str(v)))


def _period(row: dict) -> dict:
    return {"period_start": row["period_start"], "period_end": row["period_end"]}


# --------------------------------------------------------------------------- usage against limits


def _limits(usage: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(used, limit, whether the plan has a limit: not None) as arrays."""
    used, _ = integers(usage.column("used"))
    limit, has_limit = integers(usage.column("usage_limit"))
    return used, limit, has_limit


def over_limit(usage: list[dict]) -> Finding:
    """Recomputed usage above the plan's hard limit: the app let usage through past the limit."""
    usage = usage_table(usage)
    used, limit, limited = _limits(usage)
    over = np.flatnonzero(limited & (used > limit))  # (0 is a limit too: nothing may be used)
    rows = [
        {"organisation_id": r["organisation_id"], "name": r["name"], "plan": r["plan"], "usage_limit": r["usage_limit"],
         "used": r["used"], "pct": r["pct"], "stored_counter": r["stored"], "is_blocked": r["is_blocked"], **_period(r)}
        for r in map(usage.__getitem__, over.tolist())
    ]
    rows.sort(key=lambda r: -(r["pct"] or 0))
    return Finding.from_rows(
        "over_limit", rows, severity="warning",
        title=f"{len(rows)} organisation(s) used more than their plan's limit this period: enforcement leaked",
        ok_title="No organisation has used more than its plan allows this period",
        items=_sorted_ids(r["organisation_id"] for r in rows),
        remediation="Find why the app accepted usage past the limit (a counter that lags the events, a code path "
        "that does not check the limit, a plan change mid-period). Then upgrade the customer or enforce the limit; "
        "a counter that drifted is reset below.",
    )


def near_limit(usage: list[dict], threshold_pct: float = DEFAULT_NEAR_LIMIT_PCT) -> Finding:
    """At or above ``threshold_pct`` of the limit and not over it: worth a heads-up (info)."""
    usage = usage_table(usage)
    used, limit, limited = _limits(usage)
    # (in floats as Python compares them: an int64 converts to the same double)
    near = limited & (limit != 0) & (used <= limit) & (used * 100.0 >= threshold_pct * limit.astype(np.float64))
    rows = [
        {"organisation_id": r["organisation_id"], "name": r["name"], "plan": r["plan"], "usage_limit": r["usage_limit"],
         "used": r["used"], "pct": r["pct"], **_period(r)}
        for r in map(usage.__getitem__, np.flatnonzero(near).tolist())
    ]
    rows.sort(key=lambda r: -(r["pct"] or 0))
    return Finding.from_rows(
        "near_limit", rows, severity="info",
        title=f"{len(rows)} organisation(s) have used {threshold_pct:g} % of their limit or more this period",
        ok_title=f"No organisation is at {threshold_pct:g} % of its limit or more",
        items=_sorted_ids(r["organisation_id"] for r in rows),
        remediation="Tell them before they hit the limit (and offer the next plan): a block they did not see coming is a support ticket.",
    )


def drifted_positions(usage: Table, tolerance: int = 0) -> np.ndarray:
    """Where the stored counter differs from the recomputed usage by more than ``tolerance``
    (no counter: recomputed usage above it)."""
    used, _ = integers(usage.column("used"))
    stored, has_counter = integers(usage.column("stored"))
    return np.flatnonzero(np.where(has_counter, np.abs(stored - used) > tolerance, used > tolerance))


def usage_counter_drift(usage: list[dict], tolerance: int = 0) -> Finding:
    """The app's stored counter differs from the usage recomputed from the events (both shown)."""
    usage = usage_table(usage)
    rows = []
    for r in map(usage.__getitem__, drifted_positions(usage, tolerance).tolist()):
        stored, used = r["stored"], r["used"]
        if stored is None:
            what = "no counter for this period: the app counts from zero"
        elif stored > used:
            what = "counter too high: the app blocks or bills for usage that did not happen"
        else:
            what = "counter too low: usage goes unenforced and unbilled"
        rows.append({"organisation_id": r["organisation_id"], "name": r["name"], "plan": r["plan"],
                     "stored": stored, "recomputed": used, "difference": None if stored is None else stored - used,
                     "usage_limit": r["usage_limit"], "what": what, **_period(r)})
    return Finding.from_rows(
        "usage_counter_drift", rows, severity="warning",
        title=f"{len(rows)} stored usage counter(s) disagree with the usage recomputed from the events",
        ok_title="Every stored usage counter matches the usage recomputed from the events",
        items=_sorted_ids(r["organisation_id"] for r in rows),
        remediation="Reset each counter to the recomputed value (the remediation below: dry run by default, apply=True "
        "writes in one transaction and audits each change); then find the writer that drifts (lost increments, "
        "double counting of retried events, a reset at the wrong period boundary).",
        note=f"tolerance {tolerance}" if tolerance else None,
    )


# --------------------------------------------------------------------------- app against Stripe


def paying_user_blocked(accounts: Accounts, usage: list[dict]) -> Finding:
    """Stripe says active on a paid plan, yet the app blocks them or limits them as a free plan."""
    plans = accounts.plans
    orgs = accounts.organisations
    paying = [orgs[i] for i in np.flatnonzero(
        holds(orgs.column("stripe_status"), STRIPE_PAYING.__contains__)
        & (holds(orgs.column("is_blocked"), bool) | holds(orgs.column("app_plan_paid"), partial(operator.is_, False)))
        & holds(orgs.column("stripe_plan"), lambda plan: bool(plans.is_paid(plan)))).tolist()]
    ids = {str(org["organisation_id"]) for org in paying}
    # (usage rows carry the accounts' ids: matched as they are, by column; as text when their type differs)
    same = {org["organisation_id"] for org in paying}
    usage = usage_table(usage)
    usage_ids = usage.values("organisation_id")
    used = {str(org_id): usage[k] for k, org_id in enumerate(usage_ids) if org_id in same}
    if len(used) < len(ids):
        used = {key: usage[k] for k, org_id in enumerate(usage_ids) if (key := str(org_id)) in ids}
    rows = []
    for org in paying:
        u = used.get(str(org["organisation_id"]), {})
        paid_limit = plans.limit(org["stripe_plan"])
        real = u.get("used")
        reasons = []
        if org["is_blocked"] and (paid_limit is None or real is None or real < paid_limit):
            reason = f"blocked, though real usage {real} is under the {org['stripe_plan']} limit {paid_limit}"
            stored = u.get("stored")
            if stored is not None and paid_limit is not None and stored >= paid_limit and stored != real:
                reason += f" (the stored counter says {stored}: see usage_counter_drift)"
            reasons.append(reason)
        if org["app_plan_paid"] is False:
            reasons.append(f"the app has them on the unpaid plan {org['app_plan']!r}")
        if reasons:
            rows.append({"organisation_id": org["organisation_id"], "name": org["name"],
                         "stripe_customer_id": org["stripe_customer_id"], "subscription": org["primary_subscription"],
                         "stripe_status": org["stripe_status"], "stripe_plan": org["stripe_plan"],
                         "app_plan": org["app_plan"], "is_blocked": org["is_blocked"],
                         "used": real, "stored": u.get("stored"), "why": "; ".join(reasons)})
    return Finding.from_rows(
        "paying_user_blocked", rows, severity="critical",
        title=f"{len(rows)} paying customer(s) blocked or limited as free by the app",
        ok_title="No paying customer is blocked or limited as free by the app",
        items=_sorted_ids(r["organisation_id"] for r in rows),
        remediation="Unblock them now (they pay for access); if a drifted counter tripped the block, reset it (below). "
        "Then sync the plan from Stripe and find the missed webhook or the enforcement bug.",
    )


def tier_mismatch(accounts: Accounts) -> Finding:
    """The app's plan differs from the plan of the price Stripe bills (live subscriptions)."""
    rows = []
    orgs = accounts.organisations
    # (a plan from Stripe means a live subscription: its primary one's)
    differ = [i for i, (stripe_plan, app_plan) in enumerate(zip(orgs.values("stripe_plan"), orgs.values("app_plan")))
              if stripe_plan is not None and stripe_plan != app_plan]
    for org in map(orgs.__getitem__, differ):
        primary = org["stripe_live"][0]
        app_sub = next((s for s in org["app_subscriptions"] if s.get("stripe_subscription_id") == primary["id"]), None)
        rows.append({"organisation_id": org["organisation_id"], "name": org["name"],
                     "stripe_customer_id": org["stripe_customer_id"], "subscription": primary["id"],
                     "stripe_status": primary["status"], "stripe_price": ", ".join(primary["price_ids"]),
                     "stripe_plan": org["stripe_plan"], "app_plan": org["app_plan"],
                     "app_subscription_plan": app_sub.get("plan") if app_sub else None,
                     "app_subscription_price": app_sub.get("stripe_price_id") if app_sub else None})
    note = _unmapped_note(accounts)
    return Finding.from_rows(
        "tier_mismatch", rows, severity="warning",
        title=f"{len(rows)} organisation(s) on a different plan in the app than the one Stripe bills",
        ok_title="Every subscriber's plan in the app matches the plan Stripe bills",
        items=_sorted_ids(r["organisation_id"] for r in rows),
        remediation="Stripe is what the customer pays for: set the app's plan from the subscription's price (replay the "
        "missed customer.subscription.updated event, or update the plan by hand and log it), or fix the subscription "
        "in Stripe if the app is right.",
        note=note,
    )


def _unmapped_note(accounts: Accounts) -> str | None:
    if not accounts.unmapped:
        return None
    prices = sorted({p for row in accounts.unmapped for p in row["price_ids"].split(", ") if p})
    return (f"{len(accounts.unmapped)} live subscription(s) are on price(s) the plans file does not map "
            f"({', '.join(prices)}): their tier cannot be checked — add them under stripe.prices or stripe.products")


def status_mismatch(accounts: Accounts) -> Finding:
    """Access in the app against the subscription's status in Stripe, both directions."""
    rows = []
    orgs = accounts.organisations
    for org in map(orgs.__getitem__, np.flatnonzero(_may_disagree(accounts)).tolist()):
        stripe_by_id = {s["id"]: s for s in org["stripe_subscriptions"]}
        app_by_id = {s.get("stripe_subscription_id"): s for s in org["app_subscriptions"]}
        for sub in org["app_live"]:
            in_stripe = stripe_by_id.get(sub.get("stripe_subscription_id"))
            stripe_status = in_stripe["status"] if in_stripe else None
            if in_stripe is None or stripe_status in STRIPE_NO_ACCESS:
                rows.append(_status_row(org, sub.get("stripe_subscription_id"), sub.get("status"),
                                        stripe_status or "no such subscription",
                                        "app active, Stripe not: free access"))
        app_grants = bool(org["app_live"])
        for sub in org["stripe_live"]:
            in_app = app_by_id.get(sub["id"])
            if in_app is not None and in_app.get("status") not in APP_ACCESS:
                rows.append(_status_row(org, sub["id"], in_app.get("status"), sub["status"],
                                        "Stripe active, app not: charged for nothing"))
            elif in_app is None and not app_grants:
                rows.append(_status_row(org, sub["id"], "no such subscription", sub["status"],
                                        "Stripe active, app not: charged for nothing"))
    free = sum(1 for r in rows if r["direction"].endswith("free access"))
    charged = len(rows) - free
    return Finding.from_rows(
        "status_mismatch", rows, severity="critical",
        title=f"{len(rows)} subscription(s) where the app and Stripe disagree on access: "
              f"{free} with free access, {charged} charged for nothing",
        ok_title="Subscription status agrees between the app and Stripe",
        items=_sorted_ids({r["organisation_id"] for r in rows}),
        remediation="Free access: end access in the app (the customer.subscription.deleted/updated event was missed — "
        "replay it). Charged for nothing: restore access, or cancel the subscription in Stripe and refund the period "
        "the customer could not use.",
    )


def _may_disagree(accounts: Accounts) -> np.ndarray:
    """The organisations with a live subscription on either side, but for the common case, which
    agrees without a look at each subscription: one subscription on each side, the same one, live
    on both (a live app status grants access; a live Stripe one is not a no-access one)."""
    orgs = accounts.organisations
    stripe_subs, stripe_live = orgs.stripe_counts()
    app_subs, app_live = orgs.app_counts()
    simple = np.flatnonzero((stripe_subs == 1) & (app_subs == 1) & (stripe_live == 1) & (app_live == 1))
    agree = np.zeros(len(orgs), dtype=bool)
    agree[simple] = orgs.same_primary[simple]
    return ((stripe_live > 0) | (app_live > 0)) & ~agree


def _status_row(org: dict, subscription: str | None, app_status, stripe_status, direction: str) -> dict:
    return {"organisation_id": org["organisation_id"], "name": org["name"],
            "stripe_customer_id": org["stripe_customer_id"], "subscription": subscription,
            "app_status": app_status, "stripe_status": stripe_status, "app_plan": org["app_plan"],
            "direction": direction}


def missing_customer_mapping(accounts: Accounts) -> Finding:
    """Stripe customers no organisation points to, and organisations pointing to no customer."""
    rows = []
    live_by_customer: dict[str, int] = {}  # (an unlinked customer's subscriptions are orphans: few)
    orphans = accounts.orphan_subscriptions
    for status, customer in zip(orphans.column("status"), orphans.column("customer")):
        if status in STRIPE_LIVE:
            live_by_customer[customer] = live_by_customer.get(customer, 0) + 1
    for customer in accounts.unlinked_customers:
        rows.append({"stripe_customer_id": customer["id"], "organisation_id": None,
                     "email": customer.get("email"), "live_subscriptions": live_by_customer.get(customer["id"], 0),
                     "direction": "Stripe customer that no organisation points to"})
    orgs = accounts.organisations
    for org in map(orgs.__getitem__, np.flatnonzero((orgs.customer_group >= 0) & ~orgs.customer_listed).tolist()):
        rows.append({"stripe_customer_id": org["stripe_customer_id"], "organisation_id": org["organisation_id"],
                     "email": None, "live_subscriptions": 0,
                     "direction": "organisation whose Stripe customer does not exist"})
    rows.sort(key=lambda r: r["stripe_customer_id"])
    return Finding.from_rows(
        "missing_customer_mapping", rows, severity="warning",
        title=f"{len(rows)} customer mapping(s) broken between the app and Stripe",
        ok_title="Every Stripe customer maps to an organisation and back",
        items=sorted({r["stripe_customer_id"] for r in rows}),
        remediation="A Stripe customer without an organisation: find its organisation (email, metadata) and store the "
        "customer id on it — its payments reach nobody until then. An organisation whose customer does not exist: "
        "the customer was deleted or the id is from another Stripe account or mode (test/live); clear or correct it.",
    )


def multiple_active_subscriptions(accounts: Accounts) -> Finding:
    """A customer with more than one live subscription to a plan: usually billed twice."""
    subs, orgs = accounts.stripe_subscriptions, accounts.organisations
    stripe = orgs.stripe
    plan_subs = stripe.live & np.fromiter((plan is not None for plan in subs.column("plan")), dtype=bool,
                                          count=len(subs))
    # (by organisation where the customer has one; a customer none points to, by id: few)
    per_org = np.bincount(stripe.group[plan_subs & (stripe.group >= 0)], minlength=len(orgs))
    maybe = plan_subs & ((stripe.group < 0) | (per_org[np.maximum(stripe.group, 0)] > 1))
    by_customer: dict[str, list[dict]] = {}
    for n in np.flatnonzero(maybe).tolist():
        sub = subs[n]
        by_customer.setdefault(sub["customer"], []).append(sub)
    twice = {customer: subs for customer, subs in by_customer.items() if len(subs) > 1}
    # (the last organisation pointing to each such customer, as a dict built in order keeps it)
    pointing = np.flatnonzero(np.isin(orgs.customer_group, stripe.group[maybe & (stripe.group >= 0)]))
    org_of = {customer: orgs[i] for i in pointing.tolist()
              if (customer := orgs.column("stripe_customer_id")[i]) in twice}
    rows = []
    for customer, subs in sorted(twice.items()):
        org = org_of.get(customer)
        rows.append({"stripe_customer_id": customer, "organisation_id": org["organisation_id"] if org else None,
                     "name": org["name"] if org else None, "live_subscriptions": len(subs),
                     "subscriptions": ", ".join(s["id"] for s in subs),
                     "plans": ", ".join(s["plan"] for s in subs), "statuses": ", ".join(s["status"] for s in subs)})
    return Finding.from_rows(
        "multiple_active_subscriptions", rows, severity="critical",
        title=f"{len(rows)} customer(s) with more than one live plan subscription: likely billed twice",
        ok_title="No customer has more than one live plan subscription",
        item="stripe_customer_id",
        remediation="Keep the subscription the app uses, cancel the other in Stripe (prorated) and refund what was billed "
        "twice; then make checkout refuse a second plan subscription for a customer who has one.",
    )


# --------------------------------------------------------------------------- usage events


def duplicate_usage_events(duplicates: Duplicates) -> Finding:
    """Usage events recorded more than once under the same idempotency key since ``duplicates.since``
    (found by ``scan.scan_usage`` or ``scan.find_duplicates``; none when a unique index refuses them)."""
    rows, since = duplicates.rows, duplicates.since
    return Finding.from_rows(
        "duplicate_usage_events", rows, severity="warning",
        title=f"{len(rows)} idempotency key(s) recorded more than once: retried events counted twice",
        ok_title="No idempotency key was recorded twice in the lookback window",
        items=sorted(r["idempotency_key"] for r in rows),
        remediation="The recomputation above counts each key once. Delete the later copies (keep the first id), and make "
        "the key unique (CREATE UNIQUE INDEX CONCURRENTLY … after the cleanup; an INVALID one left by a failed build "
        "must be dropped first) so retries are refused.",
        note=f"since {since:%Y-%m-%d %H:%M} UTC" + (
            f"; the valid unique index {duplicates.unique_index} refuses a repeated key, so none was looked for"
            if duplicates.unique_index else ""),
    )


#: check id -> function, in the order the runbook reports them.
CHECKS: dict[str, Callable[..., Finding]] = {
    "over_limit": over_limit,
    "near_limit": near_limit,
    "usage_counter_drift": usage_counter_drift,
    "paying_user_blocked": paying_user_blocked,
    "tier_mismatch": tier_mismatch,
    "status_mismatch": status_mismatch,
    "missing_customer_mapping": missing_customer_mapping,
    "multiple_active_subscriptions": multiple_active_subscriptions,
    "duplicate_usage_events": duplicate_usage_events,
}


def run_checks(conn: Connection, schema: SchemaMap, accounts: Accounts, usage: list[dict], *, since: datetime,
               options: dict[str, dict[str, Any]] | None = None, duplicates: Duplicates | None = None) -> list[Finding]:
    """Every check in ``CHECKS``, in order, with its keyword options from ``options[check_id]``
    (``since``: where ``duplicate_usage_events`` starts looking; ``duplicates``: what
    ``scan_usage`` already found, else it is looked for here)."""
    if duplicates is None:
        duplicates = find_duplicates(conn, schema, since=since)
    inputs = {"conn": conn, "schema": schema, "accounts": accounts, "usage": usage, "since": since,
              "duplicates": duplicates}
    return _run_checks(CHECKS, inputs, options)


def run_all(conn: Connection, schema: SchemaMap, accounts: Accounts, usage: list[dict], *,
            near_limit_pct: float = DEFAULT_NEAR_LIMIT_PCT, drift_tolerance: int = 0,
            duplicates_since: datetime, duplicates: Duplicates | None = None) -> dict[str, Finding]:
    """Every check, by id (the older spelling of ``run_checks``, kept for scripts)."""
    options = {"near_limit": {"threshold_pct": near_limit_pct}, "usage_counter_drift": {"tolerance": drift_tolerance}}
    findings = run_checks(conn, schema, accounts, usage, since=duplicates_since, options=options, duplicates=duplicates)
    return {f.check: f for f in findings}
