"""The quota_audit runbook's helpers: who is over their plan, whose counters lie, and where the
app and Stripe disagree.

    plans    = load_plans(conn, ctx.schema, plans_file)          # limits + Stripe price -> plan
    stripe   = stream_stripe(ctx.stripe)                          # customers, subscriptions: once, read by a thread
    app      = read_app(conn, ctx.schema)                         # organisations, subscriptions (meanwhile)
    accounts = join_accounts(app, stripe, plans, now=...)         # joined by customer id, with periods
    scan     = scan_usage(conn, ctx.schema, accounts, duplicates_since=..., now=...)  # ONE pass over the events:
    usage, weekly = scan.usage, scan.weekly                       #   usage per period, weekly series, repeated keys
    checks.over_limit(usage), checks.duplicate_usage_events(scan.duplicates), ...  # plain data in, Finding out
    remediation.reset_drifted_counters(usage, schema=..., apply=..., connect_for_changes=ctx.connect_for_changes)
"""
from .accounts import Accounts, calendar_month, fetch_stripe, join_accounts, read_app, stream_stripe
from .plans import DEFAULT_PLANS_FILE, Plan, PlanBook, load_plans
from .scan import Duplicates, UsageScan, find_duplicates, scan_usage
from .usage import recompute_usage, usage_metrics

from .checks import CHECKS, run_all, run_checks  # check id -> function; run_all: the older spelling

__all__ = [
    "Accounts", "CHECKS", "DEFAULT_PLANS_FILE", "Duplicates", "Plan", "PlanBook", "UsageScan", "calendar_month",
    "fetch_stripe", "find_duplicates", "join_accounts", "load_plans", "read_app", "recompute_usage", "run_all",
    "run_checks", "scan_usage", "stream_stripe", "usage_metrics",
]
