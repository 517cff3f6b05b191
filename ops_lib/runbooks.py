"""The runbooks opsbook knows: their notebook, parameters, and what of the target each one reads.

The notebook's ``parameters`` cell holds the same defaults (a test keeps the two in step); this
registry is what lets the CLI list and validate parameters without starting a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import paths
from .errors import InvalidInvocation
from .parameters import Param, ParamSpec
from .webhooks.event_types import HANDLED_EVENT_TYPES

SLOW_QUERY_ACTIONS = ("cancel_long_running", "cancel_root_blockers", "reset_statement_stats")
# Every number parameter declares a range an operator could mean; the rest is refused (exit 3).
WEEK_S = 7 * 24 * 3600
STRIPE_EVENT_TYPE = r"[a-z0-9_]+(\.[a-z0-9_]+)+"
CURRENCY_CODE = r"[A-Za-z]{3}"


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    question: str
    params: ParamSpec
    entities: tuple[str, ...] = ()  # schema-mapping entities it reads; checked before the run
    optional_entities: tuple[str, ...] = ()  # read when the mapping names them; then checked too
    uses_stripe: bool = False
    # one cheap read the runbook's key must be allowed, made before the kernel starts
    stripe_probe: str = "list_webhook_endpoints"
    # checks of parameters against each other and the target, before the kernel starts (exit 3)
    validate: Callable[[dict[str, Any], Any], None] | None = None

    @property
    def notebook(self) -> Path:
        return paths.notebooks_dir() / f"{self.name}.ipynb"

    def parameter_sets(self) -> list[Path]:
        return sorted((paths.params_dir() / self.name).glob("*.yaml"))


SLOW_QUERIES = Runbook(
    name="slow_queries",
    title="Slow queries, blocked sessions and index health",
    question="Which statements cost the most, who is stuck or blocking, are connections saturated, "
    "which indexes are unused, duplicated, invalid or missing?",
    params=ParamSpec((
        Param("min_mean_ms", float, 20.0, "a statement is slow at this mean time (PgHero: 20 ms)", minimum=0, maximum=3_600_000),
        Param("min_calls", int, 100, "…and at least this many calls (PgHero: 100)", minimum=1, maximum=1_000_000_000),
        Param("top_n", int, 10, "statements to list by total and by mean time", minimum=1, maximum=100),
        Param("long_running_seconds", int, 60, "a query running longer than this is long-running", minimum=1, maximum=WEEK_S),
        Param("idle_in_transaction_seconds", int, 60, "a session idle in a transaction this long holds locks and snapshots", minimum=1, maximum=WEEK_S),
        Param("connection_warn_pct", float, 80.0, "warn when this share of usable connections is taken", minimum=1, maximum=100),
        Param("min_cache_hit_ratio", float, 0.99, "tables and indexes should be served from memory this often", minimum=0, maximum=1),
        Param("sequence_warn_pct", float, 75.0, "warn when a sequence has used this share of its column's range", minimum=1, maximum=100),
        Param("explain_top", int, 3, "plans to show for the worst statements", minimum=0, maximum=20),
        Param("remediate", list, [], "remediations to plan (and, with apply, perform)", choices=SLOW_QUERY_ACTIONS),
        Param("apply", bool, False, "perform the planned remediations (default: dry run)"),
    )),
)


def _validate_webhook_failure(params: dict, target) -> None:
    if params["apply"]:
        from .webhooks.replay import require_replay_target

        require_replay_target(target.webhook_url, target.stripe_webhook_secret)


def _validate_revenue_report(params: dict, target) -> None:
    from .revenue.period import resolve_period

    resolve_period(params["period"], params["start_date"], params["end_date"])


def _validate_quota_audit(params: dict, target) -> None:
    from .quota.plans import read_plans_file

    read_plans_file(params["plans_file"])


WEBHOOK_FAILURE = Runbook(
    name="webhook_failure",
    title="Stripe webhooks failing: missing events, unfulfilled payments, and a safe replay",
    question="Is the webhook secret right, is the endpoint enabled and subscribed, which events in the window "
    "never arrived or failed, which paid customers got nothing — and replay them safely.",
    params=ParamSpec((
        Param("since_hours", int, 24, "the window to examine, in hours (Stripe keeps events 30 days)", minimum=1, maximum=720),
        Param("event_types", list, list(HANDLED_EVENT_TYPES), "the event types the app must receive",
              pattern=STRIPE_EVENT_TYPE, pattern_hint="a Stripe event type like invoice.paid"),
        Param("apply", bool, False, "replay the missing and failed events to OPSBOOK_WEBHOOK_URL (default: dry run)"),
    )),
    entities=("webhook_events", "fulfilments"),
    uses_stripe=True,
    validate=_validate_webhook_failure,
)

REVENUE_REPORT = Runbook(
    name="revenue_report",
    title="Revenue report: MRR and its movements, revenue, fees and payment success, reconciled with Stripe",
    question="What are MRR and ARR per currency and how did they move (new, expansion, reactivation, contraction, "
    "churn), what came in by plan after refunds, disputes and fees, how many payments succeed, and do the app's "
    "payment records agree with Stripe?",
    params=ParamSpec((
        Param("period", str, "", 'the month to report, "YYYY-MM" or "previous" (UTC); empty: the current month so far'),
        Param("start_date", str, "", 'or a range of days: its first day, "YYYY-MM-DD" (UTC); overrides period'),
        Param("end_date", str, "", 'the range\'s last day, included, "YYYY-MM-DD" (UTC); empty: up to now'),
        Param("currencies", list, [], 'currencies to include, e.g. ["usd", "eur"]; empty: all',
              pattern=CURRENCY_CODE, pattern_hint="a three-letter currency code like usd"),
        Param("past_due_grace_days", int, 30, "a past_due subscription still counts as MRR this many days into its unpaid period", minimum=0, maximum=365),
        Param("history_months", int, 12, "months of MRR history to chart, ending with the period's month", minimum=1, maximum=60),
        Param("min_success_rate_pct", float, 99.0, "warn when fewer charges than this succeed: succeeded ÷ (succeeded + failed), in %", minimum=0, maximum=100),
        Param("revenue_tolerance", float, 0.0, "largest amount difference, in major units (e.g. 0.50 for 50 cents), between a payment in the app and its Stripe charge that is not yet a mismatch", minimum=0, maximum=1_000_000),
    )),
    entities=("payments",),
    uses_stripe=True,
    stripe_probe="list_charges",
    validate=_validate_revenue_report,
)

QUOTA_AUDIT = Runbook(
    name="quota_audit",
    title="Quota audit: usage against plan limits, drifted counters, the app against Stripe",
    question="Who is over or near their plan's limit, whose stored usage counter drifted from real usage, whose plan or "
    "subscription status in the app disagrees with Stripe, which customers do not map, who is billed twice — and reset "
    "drifted counters safely.",
    params=ParamSpec((
        Param("near_limit_pct", float, 80.0, "report an organisation as near its limit from this share of it, in % (info)", minimum=1, maximum=100),
        Param("drift_tolerance", int, 0, "a stored counter may differ from the recomputed usage by this many units before it is drift", minimum=0, maximum=1_000_000_000),
        Param("duplicate_lookback_days", int, 90, "how many days back to look for usage events recorded twice under one idempotency key", minimum=1, maximum=3650),
        Param("plans_file", str, "params/quota/plans.yaml", "plan limits and the Stripe price -> plan mapping (relative to the project, or absolute)"),
        Param("plan_limits", str, "auto", "where limits come from: auto (the target's plan table if the mapping names one, else plans_file), database or params", choices=("auto", "database", "params")),
        Param("apply", bool, False, "reset the drifted usage counters to the recomputed values (default: dry run)"),
    )),
    entities=("organisations", "subscriptions", "usage_events", "usage_counters"),
    # read when the mapping names them, so a target without them still runs
    optional_entities=("plans", "audit_log"),
    uses_stripe=True,
    stripe_probe="list_customers",
    validate=_validate_quota_audit,
)

RUNBOOKS: dict[str, Runbook] = {rb.name: rb for rb in (SLOW_QUERIES, WEBHOOK_FAILURE, QUOTA_AUDIT, REVENUE_REPORT)}


def get(name: str) -> Runbook:
    try:
        return RUNBOOKS[name]
    except KeyError:
        raise InvalidInvocation(f"unknown runbook {name!r}; known: {', '.join(RUNBOOKS)} (see `opsbook list`)") from None
