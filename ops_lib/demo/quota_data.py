"""The quota_audit part of the demo: stored usage counters, and planted quota incidents.

``plant(engine, data, account)`` runs while the demo is built, after the Stripe account is
(``stripe_account.build``) and before its state file is written. It

1. keeps free organisations' usage light: the seed spreads usage events evenly over every
   organisation, which would put each free one (1,000 units a month) near or over its limit
   as the month goes on. A free organisation's latest events in the current calendar month
   beyond a budget of 15-60 % of its limit are removed (never the seed's planted duplicate),
   so whatever the day of the month, the healthy majority is healthy;
2. plants one incident per check on organisations of the base set (ids 1..N, never 1, which the
   slow_queries live incidents keep locked), chosen deterministically from the seed, changing
   the database and the emulator's Stripe state together except where the incident *is* a
   disagreement between them;
3. writes every organisation's usage counter for its current billing period, equal to the
   usage recomputed from the events (with ``ops_lib.quota``'s own period and recomputation
   rules), then makes the planted counters drift.

It returns the manifest ``{check_id: [items]}``, items exactly as the checks report them, sorted
(organisation ids; Stripe customer ids for ``missing_customer_mapping`` and
``multiple_active_subscriptions``; idempotency keys for ``duplicate_usage_events``).
``organisations(data)`` says which organisation carries which incident. ``data`` is updated to
mirror the database changes (``subscriptions``, ``plan_code``, ``is_blocked``).

What changes where, for other runbooks' authors (all on base organisations, never 1):

==========================  =====================================  ===============================
role                        the database                           Stripe
==========================  =====================================  ===============================
paid over/near limit        usage events added (campaign_send)     —
paid paying_user_blocked    is_blocked, counter over the limit     —
paid tier_mismatch          organisation's plan_code changed       —
paid free_access            —                                      subscription canceled 3 days ago
paid charged_for_nothing    subscription status 'canceled'         —
paid multiple_subscriptions a second subscription row              a second subscription (…b)
paid drift_down             usage event added, counter lowered     —
free over/near limit        usage events added (one twice)         —
free customer_deleted       —                                      the customer removed
free drift_up               counter raised                         —
(none)                      —                                      customer cus_demoquota01 added
every free organisation     latest events of the month thinned     —
every organisation          usage_counters for its period          —
==========================  =====================================  ===============================
"""
from __future__ import annotations

import copy
import random
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .. import paths
from ..quota.accounts import calendar_month, join_accounts, read_app
from ..quota.plans import load_plans
from ..quota.usage import recompute_usage
from ..schema_map import SchemaMap
from .seed import Dataset

# Which organisation gets which incident: paid roles on subscribers, free ones on free orgs.
# In priority order: with few organisations, the first roles are planted first.
PAID_ROLES = ("over_limit", "paying_user_blocked", "tier_mismatch", "free_access", "charged_for_nothing",
              "multiple_subscriptions", "near_limit", "drift_down")
FREE_ROLES = ("over_limit", "customer_deleted", "drift_up", "near_limit")
LOCKED_ORG = 1  # held by ops_lib.demo.incidents while the demo runs

FREE_BUDGET_SHARE = (0.15, 0.6)  # each free organisation keeps at most a share of its limit in this range
OVER_BY = {"paid": 1_200, "free": 150}
NEAR_SHARE = {"paid": 0.85, "free": 0.90}
DRIFT_UP_BY = 120              # a counter that counted retried events twice
DRIFT_DOWN_BY = 450            # a counter that lost increments
DRIFT_DOWN_MIN_USAGE = 600
BLOCKED_OVER_BY = 240          # the blocked customer's counter, this much over the limit
UNLINKED_CUSTOMER = "cus_demoquota01"
DUPLICATE_LOOKBACK_DAYS = 90   # the runbook's default duplicate_lookback_days
EVENT_KEY = "quota-demo-{org}-{n}"


def plant(engine: Engine, data: Dataset, account: dict) -> dict:
    """Counters for everyone, one incident per check; returns the manifest (see the module doc)."""
    schema = SchemaMap.load(paths.params_dir() / "schema" / "reference.yaml")
    now = data.now
    rng = random.Random(f"opsbook-quota-{data.seed}-usage")
    subs_by_org = {}
    for sub in data.subscriptions:
        subs_by_org.setdefault(sub["organization_id"], sub)
    chosen = organisations(data)
    paid = {role.split(":", 1)[1]: org for role, org in chosen.items() if role.startswith("paid:")}
    free = {role.split(":", 1)[1]: org for role, org in chosen.items() if role.startswith("free:")}
    first_user = {}
    for n, user in enumerate(data.users, start=1):
        first_user.setdefault(user["organization_id"], n)
    objects = account["objects"]
    customers = {c["id"]: c for c in objects["customer"]}
    stripe_subs = {s["id"]: s for s in objects["subscription"]}
    org_by_id = {o["id"]: o for o in data.organizations}

    with engine.begin() as conn:
        _quietly(conn)
        plans = load_plans(conn, schema)
        free_start, free_end = calendar_month(now)
        free_ids = [o["id"] for o in data.organizations if o["id"] not in subs_by_org]
        budgets = [int(plans.limit("free") * rng.uniform(*FREE_BUDGET_SHARE)) for _ in free_ids]
        _thin_free_usage(conn, free_ids, budgets, free_start, free_end)

        # --- the app and Stripe, changed together or (for the disagreements) apart
        if "paying_user_blocked" in paid:
            org = paid["paying_user_blocked"]
            conn.execute(sa.text("UPDATE organizations SET is_blocked = true WHERE id = :id"), {"id": org})
            org_by_id[org]["is_blocked"] = True
        if "tier_mismatch" in paid:  # the app's plan changed, Stripe still bills the old one (a missed sync)
            org = paid["tier_mismatch"]
            other = "team" if subs_by_org[org]["plan_code"] != "team" else "pro"
            conn.execute(sa.text("UPDATE organizations SET plan_code = :plan WHERE id = :id"), {"plan": other, "id": org})
            org_by_id[org]["plan_code"] = other
        if "free_access" in paid:  # canceled in Stripe; the app still has it active
            sub = stripe_subs[subs_by_org[paid["free_access"]]["stripe_subscription_id"]]
            ended = int((now - timedelta(days=3)).timestamp())
            sub.update(status="canceled", canceled_at=ended, ended_at=ended,
                       cancellation_details={"comment": None, "feedback": None, "reason": "payment_failed"})
        if "charged_for_nothing" in paid:  # canceled in the app; Stripe keeps billing
            sub = subs_by_org[paid["charged_for_nothing"]]
            conn.execute(sa.text("UPDATE subscriptions SET status = 'canceled' WHERE stripe_subscription_id = :id"),
                         {"id": sub["stripe_subscription_id"]})
            sub["status"] = "canceled"
        if "multiple_subscriptions" in paid:  # a second checkout: two live plan subscriptions
            org = paid["multiple_subscriptions"]
            first = subs_by_org[org]
            second = _second_subscription(stripe_subs[first["stripe_subscription_id"]], org, now)
            objects["subscription"].append(second)
            row = {**first, "stripe_subscription_id": second["id"], "status": "active",
                   "current_period_start": _at(second["current_period_start"]),
                   "current_period_end": _at(second["current_period_end"]), "created_at": _at(second["created"])}
            conn.execute(sa.text(
                "INSERT INTO subscriptions (organization_id, stripe_subscription_id, stripe_price_id, plan_code, status, "
                "current_period_start, current_period_end, created_at) VALUES (:organization_id, :stripe_subscription_id, "
                ":stripe_price_id, :plan_code, :status, :current_period_start, :current_period_end, :created_at)"
            ), row)
            data.subscriptions.append(row)
        if "customer_deleted" in free:  # the organisation points to a customer Stripe no longer has
            gone = org_by_id[free["customer_deleted"]]["stripe_customer_id"]
            objects["customer"][:] = [c for c in objects["customer"] if c["id"] != gone]
        unlinked = copy.deepcopy(next(iter(customers.values())))
        unlinked.update(id=UNLINKED_CUSTOMER, email="billing@unlinked-checkout.example", name="Checkout without an organisation",
                        created=int((now - timedelta(days=5)).timestamp()), metadata={})
        objects["customer"].append(unlinked)

        # --- usage: recomputed with the runbook's own rules, then topped up where planted
        stripe_view = {"customers": objects["customer"], "subscriptions": objects["subscription"]}
        accounts = join_accounts(read_app(conn, schema), stripe_view, plans, now=now)
        usage = {r["organisation_id"]: r for r in recompute_usage(conn, schema, accounts)}
        targets = {}
        for kind, roles in (("paid", paid), ("free", free)):
            for role in ("over_limit", "near_limit"):
                if role in roles:
                    org = roles[role]
                    limit = usage[org]["usage_limit"]
                    targets[org] = limit + OVER_BY[kind] if role == "over_limit" else int(limit * NEAR_SHARE[kind])
        if "drift_down" in paid:
            org = paid["drift_down"]
            targets[org] = max(usage[org]["used"], DRIFT_DOWN_MIN_USAGE)
        for org, target in targets.items():
            _add_usage(conn, org, first_user.get(org), target - usage[org]["used"], usage[org], now)
        if "over_limit" in free:  # a retried client: one planted event delivered twice
            duplicated = EVENT_KEY.format(org=free["over_limit"], n=0)
            conn.execute(sa.text(
                "INSERT INTO usage_events (organization_id, user_id, kind, quantity, idempotency_key, occurred_at) "
                "SELECT organization_id, user_id, kind, quantity, idempotency_key, occurred_at + interval '2 seconds' "
                "FROM usage_events WHERE idempotency_key = :key"
            ), {"key": duplicated})
        usage = {r["organisation_id"]: r for r in recompute_usage(conn, schema, accounts)}

        # --- every organisation's counter, equal to its usage; then the planted drifts
        conn.execute(sa.text(
            "INSERT INTO usage_counters (organization_id, period_start, period_end, used, updated_at) "
            "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]), "
            "CAST(:used AS integer[]), CAST(:at AS timestamptz[])) "
            "ON CONFLICT (organization_id, period_start) DO UPDATE SET used = EXCLUDED.used, period_end = EXCLUDED.period_end"
        ), {"ids": [r["organisation_id"] for r in usage.values()], "starts": [r["period_start"] for r in usage.values()],
            "ends": [r["period_end"] for r in usage.values()], "used": [r["used"] for r in usage.values()],
            "at": [now] * len(usage)})
        drifts = {}
        if "drift_up" in free:
            drifts[free["drift_up"]] = usage[free["drift_up"]]["used"] + DRIFT_UP_BY
        if "drift_down" in paid:
            drifts[paid["drift_down"]] = usage[paid["drift_down"]]["used"] - DRIFT_DOWN_BY
        if "paying_user_blocked" in paid:
            blocked = usage[paid["paying_user_blocked"]]
            drifts[blocked["organisation_id"]] = blocked["usage_limit"] + BLOCKED_OVER_BY
        for org, value in drifts.items():
            conn.execute(sa.text("UPDATE usage_counters SET used = :used WHERE organization_id = :id AND period_start = :start"),
                         {"used": value, "id": org, "start": usage[org]["period_start"]})
        duplicate_keys = conn.execute(sa.text(
            "SELECT idempotency_key FROM usage_events WHERE occurred_at >= :since GROUP BY 1 HAVING count(*) > 1"
        ), {"since": now - timedelta(days=DUPLICATE_LOOKBACK_DAYS)}).scalars().all()

    return _manifest(paid, free, org_by_id, duplicate_keys, drifts)


def _manifest(paid: dict, free: dict, org_by_id: dict, duplicate_keys: list[str], drifts: dict) -> dict[str, list]:
    def orgs(*picks):
        return sorted(p for p in picks if p is not None)

    customer = lambda org: org_by_id[org]["stripe_customer_id"]  # noqa: E731
    manifest = {
        "over_limit": orgs(paid.get("over_limit"), free.get("over_limit")),
        "near_limit": orgs(paid.get("near_limit"), free.get("near_limit")),
        "usage_counter_drift": sorted(drifts),
        "paying_user_blocked": orgs(paid.get("paying_user_blocked")),
        "tier_mismatch": orgs(paid.get("tier_mismatch")),
        "status_mismatch": orgs(paid.get("free_access"), paid.get("charged_for_nothing")),
        "missing_customer_mapping": sorted(
            [UNLINKED_CUSTOMER] + ([customer(free["customer_deleted"])] if "customer_deleted" in free else [])),
        "multiple_active_subscriptions": [customer(paid["multiple_subscriptions"])] if "multiple_subscriptions" in paid else [],
        "duplicate_usage_events": sorted(duplicate_keys),
    }
    return {check: items for check, items in manifest.items() if items}


def organisations(data: Dataset) -> dict[str, int]:
    """Which base organisation carries which incident: ``{"paid:over_limit": 17, "free:near_limit": 4, …}``.

    Deterministic for a data set (its seed and organisations); the same before and after
    ``plant``. Never organisation 1. With too few organisations, the last roles go unplanted.
    """
    rng = random.Random(f"opsbook-quota-{data.seed}")
    subscribed = {s["organization_id"] for s in data.subscriptions}
    base = sorted(o["id"] for o in data.organizations if o["id"] != LOCKED_ORG)
    paid_pool = [i for i in base if i in subscribed]
    free_pool = [i for i in base if i not in subscribed]
    rng.shuffle(paid_pool)
    rng.shuffle(free_pool)
    return {f"paid:{role}": org for role, org in zip(PAID_ROLES, paid_pool)} | {
        f"free:{role}": org for role, org in zip(FREE_ROLES, free_pool)}


def _quietly(conn) -> None:
    """Keep the demo's own set-up statements out of pg_stat_statements (slow_queries reads it)."""
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("SET LOCAL pg_stat_statements.track = 'none'")
    except sa.exc.DBAPIError:
        pass


def _thin_free_usage(conn, free_ids: list[int], budgets: list[int], start, end) -> None:
    """Remove each free organisation's events of the period beyond its budget (latest first)."""
    conn.execute(sa.text(
        """
        DELETE FROM usage_events WHERE id IN (
            SELECT id FROM (
                SELECT e.id, b.budget,
                       sum(e.quantity) OVER (PARTITION BY e.organization_id ORDER BY e.occurred_at, e.id) AS running
                FROM usage_events e
                JOIN unnest(CAST(:ids AS bigint[]), CAST(:budgets AS integer[])) AS b(organization_id, budget)
                  ON b.organization_id = e.organization_id
                WHERE e.occurred_at >= :start AND e.occurred_at < :end
                  AND e.idempotency_key NOT IN (SELECT idempotency_key FROM usage_events
                                                GROUP BY idempotency_key HAVING count(*) > 1)
            ) ranked
            WHERE running > budget
        )
        """
    ), {"ids": free_ids, "budgets": budgets, "start": start, "end": end})


def _add_usage(conn, org: int, user_id: int | None, amount: int, usage: dict, now) -> None:
    """``amount`` more units for ``org`` in its current period, as a few events before ``now``."""
    if amount <= 0:
        return
    start = usage["period_start"]
    parts = max(1, min(8, amount // 500))
    base, extra = divmod(amount, parts)
    span = max((now - start).total_seconds(), 0)
    rows = []
    for n in range(parts):
        rows.append({"org": org, "user": user_id, "quantity": base + (1 if n < extra else 0),
                     "key": EVENT_KEY.format(org=org, n=n),
                     "at": start + timedelta(seconds=int(span * (n + 1) / (parts + 1)))})
    conn.execute(sa.text(
        "INSERT INTO usage_events (organization_id, user_id, kind, quantity, idempotency_key, occurred_at) "
        "VALUES (:org, :user, 'campaign_send', :quantity, :key, :at)"
    ), rows)


def _second_subscription(first: dict, org: int, now) -> dict:
    second = copy.deepcopy(first)
    sub_id = f"{first['id']}b"
    start = now - timedelta(days=2)
    created = int(start.timestamp())
    end = int((start + timedelta(days=30)).timestamp())
    second.update(id=sub_id, created=created, start_date=created, billing_cycle_anchor=created,
                  current_period_start=created, current_period_end=end, latest_invoice=None)
    second["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    for n, item in enumerate(second["items"]["data"]):
        item.update(id=f"si_demoquota{org:06d}{n}", subscription=sub_id, created=created)
    return second


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)
