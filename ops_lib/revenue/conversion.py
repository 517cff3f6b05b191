"""Trial → paid conversion, and retention of the converted, by the month trials started.

Read from the Stripe subscription objects the revenue report already fetched
(``StripeData.subscriptions``, every status): no extra request. Pure functions over the dicts.

What happened to each trial, as of ``now`` (Stripe's fields: ``trial_start``, ``trial_end``,
``status``, ``canceled_at``, ``ended_at``; all Unix seconds):

* **in trial**: the trial has not ended yet (``trial_end > now``) and the subscription is alive.
  Not counted as lost, nor in the rate: nobody has decided yet;
* **lost**: it ended (``canceled``, ``incomplete_expired``) at or before its trial's end:
  canceled during the trial, or canceled by Stripe when the trial ended without a payment method;
* **converted**: the trial ended and the subscription lived on past it (``active``, or ended
  after the trial's end — a customer who paid and churned later converted);
* **payment pending**: the trial ended and the first invoice is not paid (``past_due``,
  ``incomplete``, ``unpaid``, ``paused``): undecided, outside the rate, shown apart.

The conversion rate is ``converted / (converted + lost)``. Retention after *k* months: of the
converted subscriptions whose trial ended at least *k* calendar months before ``now``, the share
not ended *k* months after the trial's end (a subscription still alive, or ended later).
Subscriptions without a trial are not trials and are ignored.
"""
from __future__ import annotations

import calendar
from datetime import datetime, timezone
from typing import Iterable, Mapping

from ..findings import Finding

RETENTION_MONTHS = (1, 2, 3)
DEFAULT_MIN_CONVERSION_PCT = 20.0
DEFAULT_MIN_DECIDED = 3   # a cohort with fewer decided trials says nothing about a rate
ENDED = ("canceled", "incomplete_expired")
PENDING = ("past_due", "incomplete", "unpaid", "paused")

IN_TRIAL, LOST, CONVERTED, PENDING_PAYMENT = "in trial", "lost", "converted", "payment pending"
_COLUMN = {IN_TRIAL: "in_trial", LOST: "lost", CONVERTED: "converted", PENDING_PAYMENT: "payment_pending"}


def _ts(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(value)


def _add_months(ts: int, months: int) -> int:
    """The same day and time ``months`` calendar months later (clamped to the month's last day)."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def ended_at(sub: Mapping) -> int | None:
    """When the subscription stopped, or None while it lives. ``canceled_at`` alone is not an end:
    a cancellation scheduled for the period's end sets it on a subscription that is still active."""
    if sub.get("status") not in ENDED:
        return None
    return _ts(sub.get("ended_at")) or _ts(sub.get("canceled_at")) or _ts(sub.get("trial_end"))


def trial_outcome(sub: Mapping, now: datetime | int) -> str | None:
    """``in trial``, ``lost``, ``converted``, ``payment pending``; None for a subscription without a trial."""
    trial_end = _ts(sub.get("trial_end"))
    if trial_end is None:
        return None
    now_ts = _ts(now)
    end = ended_at(sub)
    if end is not None and end <= trial_end:
        return LOST
    if trial_end > now_ts:
        return IN_TRIAL
    if end is not None:
        return CONVERTED  # lived past its trial, ended later: paid, then churned
    return PENDING_PAYMENT if sub.get("status") in PENDING else CONVERTED


def trial_cohorts(subscriptions: Iterable[Mapping], now: datetime | int) -> list[dict]:
    """One row per month (UTC, ``YYYY-MM``) in which trials started, oldest first.

    ``trials`` started, then ``in_trial``, ``lost``, ``converted``, ``payment_pending``,
    ``conversion_pct`` (None when nothing was decided), and per k in 1, 2, 3:
    ``retained_{k}m`` (count), ``retained_{k}m_of`` (converted subscriptions old enough to tell)
    and ``retained_{k}m_pct`` (None when none is old enough).
    """
    now_ts = _ts(now)
    cohorts: dict[str, dict] = {}
    for sub in subscriptions:
        outcome = trial_outcome(sub, now_ts)
        if outcome is None:
            continue
        started = _ts(sub.get("trial_start")) or _ts(sub.get("created"))
        month = datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m")
        row = cohorts.setdefault(month, {
            "cohort": month, "trials": 0, "in_trial": 0, "lost": 0, "converted": 0, "payment_pending": 0,
            **{f"retained_{k}m{suffix}": 0 for k in RETENTION_MONTHS for suffix in ("", "_of")},
        })
        row["trials"] += 1
        row[_COLUMN[outcome]] += 1
        if outcome != CONVERTED:
            continue
        trial_end, end = _ts(sub["trial_end"]), ended_at(sub)
        for k in RETENTION_MONTHS:
            mark = _add_months(trial_end, k)
            if mark > now_ts:
                continue  # too young to tell whether it stays k months
            row[f"retained_{k}m_of"] += 1
            row[f"retained_{k}m"] += end is None or end > mark
    rows = [cohorts[m] for m in sorted(cohorts)]
    for row in rows:
        decided = row["converted"] + row["lost"]
        row["conversion_pct"] = round(100.0 * row["converted"] / decided, 1) if decided else None
        for k in RETENTION_MONTHS:
            of = row[f"retained_{k}m_of"]
            row[f"retained_{k}m_pct"] = round(100.0 * row[f"retained_{k}m"] / of, 1) if of else None
    return rows


def trial_conversion_low(cohorts: list[dict], min_rate_pct: float = DEFAULT_MIN_CONVERSION_PCT, *,
                         min_decided: int = DEFAULT_MIN_DECIDED) -> Finding:
    """Trial cohorts whose conversion rate is under ``min_rate_pct``.

    Rule: a cohort (trial-start month) is named when at least ``min_decided`` of its trials are
    decided (converted or lost; trials still running and unpaid first invoices are not) and
    ``converted / (converted + lost) < min_rate_pct``. Severity warning.
    """
    rule = f"conversion under {min_rate_pct:g} % in a month with at least {min_decided} decided trial(s)"
    low = [
        {"cohort": c["cohort"], "trials": c["trials"], "converted": c["converted"], "lost": c["lost"],
         "in_trial": c["in_trial"], "payment_pending": c["payment_pending"], "conversion_pct": c["conversion_pct"]}
        for c in cohorts
        if c["converted"] + c["lost"] >= min_decided and c["conversion_pct"] < min_rate_pct
    ]
    return Finding.from_rows(
        "trial_conversion_low", low, severity="warning", item="cohort",
        title=f"{len(low)} trial cohort(s) converted under {min_rate_pct:g} % to paid",
        ok_title=f"Every trial cohort with enough decided trials converted at {min_rate_pct:g} % or more"
        if any(c["converted"] + c["lost"] >= min_decided for c in cohorts) else "No trial cohort has enough decided trials to judge",
        remediation="Look at where the lost trials stopped: canceled during the trial (onboarding, the product) or at its "
        "end without a payment method (the checkout asks for a card too late, trial-end reminders not sent).",
        note=rule,
    )
