"""The quota_audit runbook's helpers: who is over their plan, whose counters lie, and where the
app and Stripe disagree.

    plans    = load_plans(conn, ctx.schema, plans_file)          # limits + Stripe price -> plan
    app      = read_app(conn, ctx.schema)                         # organisations, subscriptions
    stripe   = fetch_stripe(ctx.stripe)                           # customers, subscriptions: once
    accounts = join_accounts(app, stripe, plans, now=...)         # joined by customer id, with periods
    usage    = recompute_usage(conn, ctx.schema, accounts)        # ONE statement for every period
    checks.over_limit(usage), checks.tier_mismatch(accounts), ...  # plain data in, Finding out
    remediation.reset_drifted_counters(usage, schema=..., apply=..., connect_for_changes=ctx.connect_for_changes)
"""
from .accounts import Accounts, calendar_month, fetch_stripe, join_accounts, read_app
from .plans import DEFAULT_PLANS_FILE, Plan, PlanBook, load_plans
from .usage import recompute_usage, usage_metrics

from .checks import CHECKS, run_all, run_checks  # check id -> function; run_all: the older spelling

__all__ = [
    "Accounts", "CHECKS", "DEFAULT_PLANS_FILE", "Plan", "PlanBook", "calendar_month", "fetch_stripe",
    "join_accounts", "load_plans", "read_app", "recompute_usage", "run_all", "run_checks", "usage_metrics",
]
