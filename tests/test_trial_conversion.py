"""Trial → paid conversion and retention (revenue_report), over hand-built Stripe subscription dicts.

Each case is one subscription as Stripe lists it (the fields the rules read: status,
trial_start, trial_end, created, canceled_at, ended_at, customer), with ``NOW`` fixed.
"""
from __future__ import annotations

from datetime import datetime, timezone

import shutil

import pytest

from ops_lib.demo import trial_incidents
from ops_lib.revenue import conversion as cv
from ops_lib.stripe_api import list_subscriptions, make_client
from ops_lib.stripe_emulator import objects as so
from ops_lib.stripe_emulator import start_emulator, stop_emulator, write_state
from ops_lib.stripe_emulator.state import add_objects, new_state

from .demo_target import scratch_dir

API_KEY = "sk_test_51OpsbookTrialConversion000000000abcd"

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)
DAY = 86400


def ts(y, m, d, h=0) -> int:
    return int(datetime(y, m, d, h, tzinfo=timezone.utc).timestamp())


def sub(status: str, trial_start: int | None, *, trial_days: int = 14, canceled_at: int | None = None,
        ended_at: int | None = None, id: str = "sub_x") -> dict:
    trial_end = None if trial_start is None else trial_start + trial_days * DAY
    return {"id": id, "object": "subscription", "customer": f"cus_{id}", "status": status,
            "created": trial_start or ts(2026, 1, 1), "trial_start": trial_start, "trial_end": trial_end,
            "canceled_at": canceled_at, "ended_at": ended_at if ended_at is not None else (canceled_at if status == "canceled" else None)}


JAN = ts(2026, 1, 10)


@pytest.mark.parametrize("subscription, outcome", [
    (sub("active", None), None),                                                       # no trial: not a trial
    (sub("canceled", None, canceled_at=ts(2026, 2, 1)), None),
    (sub("active", JAN), cv.CONVERTED),
    (sub("canceled", JAN, canceled_at=JAN + 3 * DAY), cv.LOST),                       # canceled during the trial
    (sub("canceled", JAN, canceled_at=JAN + 14 * DAY), cv.LOST),                      # ended by Stripe at trial end
    (sub("incomplete_expired", JAN), cv.LOST),
    (sub("canceled", JAN, canceled_at=ts(2026, 3, 20)), cv.CONVERTED),                # paid, then churned
    (sub("active", JAN, canceled_at=ts(2026, 6, 1)), cv.CONVERTED),                   # cancel at period end: still active
    (sub("trialing", ts(2026, 6, 10)), cv.IN_TRIAL),                                  # trial still running: not lost
    (sub("canceled", ts(2026, 6, 10), canceled_at=ts(2026, 6, 12)), cv.LOST),         # canceled in a running trial
    (sub("past_due", JAN), cv.PENDING_PAYMENT),                                       # first invoice unpaid
])
def test_each_trials_outcome(subscription, outcome):
    assert cv.trial_outcome(subscription, NOW) == outcome


def test_cohorts_by_trial_start_month_count_conversion_without_running_trials():
    subs = [
        sub("active", JAN, id="a"), sub("active", JAN + DAY, id="b"),
        sub("canceled", JAN, canceled_at=JAN + 2 * DAY, id="c"),
        sub("canceled", JAN, canceled_at=ts(2026, 3, 20), id="d"),                    # converted, churned in March
        sub("past_due", JAN, id="e"),
        sub("active", None, id="f"),                                                  # no trial: in no cohort
        sub("trialing", ts(2026, 6, 5), id="g"), sub("canceled", ts(2026, 6, 2), canceled_at=ts(2026, 6, 3), id="h"),
    ]
    jan, jun = cv.trial_cohorts(subs, NOW)
    assert (jan["cohort"], jan["trials"], jan["converted"], jan["lost"], jan["payment_pending"], jan["in_trial"]) == (
        "2026-01", 5, 3, 1, 1, 0)
    assert jan["conversion_pct"] == 75.0
    # Trials ended 2026-01-24/25; d ended 2026-03-20: kept 1 month, not 2.
    assert [(jan[f"retained_{k}m"], jan[f"retained_{k}m_of"]) for k in (1, 2, 3)] == [(3, 3), (2, 3), (2, 3)]
    assert jan["retained_2m_pct"] == 66.7
    assert (jun["cohort"], jun["trials"], jun["in_trial"], jun["lost"], jun["converted"]) == ("2026-06", 2, 1, 1, 0)
    assert jun["conversion_pct"] == 0.0 and jun["retained_1m_of"] == 0 and jun["retained_1m_pct"] is None


def test_retention_counts_only_subscriptions_old_enough_to_tell():
    may = ts(2026, 4, 20)   # trial ends 2026-05-04: one month has passed by NOW, not two
    (row,) = cv.trial_cohorts([sub("active", may, id="a"), sub("canceled", may, canceled_at=ts(2026, 5, 10), id="b")], NOW)
    assert (row["retained_1m"], row["retained_1m_of"]) == (1, 2)
    assert (row["retained_2m_of"], row["retained_2m_pct"]) == (0, None)


def test_trial_conversion_low_names_cohorts_under_the_rate_with_enough_decided_trials():
    cohorts = cv.trial_cohorts(
        [sub("canceled", ts(2026, 2, 3), canceled_at=ts(2026, 2, 5), id=f"lost{n}") for n in range(4)]
        + [sub("active", ts(2026, 2, 4), id="won")]                                     # Feb: 1 of 5 = 20 %
        + [sub("active", ts(2026, 3, 3), id=f"m{n}") for n in range(3)]                   # Mar: 3 of 3
        + [sub("canceled", ts(2026, 4, 3), canceled_at=ts(2026, 4, 4), id=f"a{n}") for n in range(2)]  # Apr: 2 decided
        + [sub("trialing", ts(2026, 6, 10), id=f"t{n}") for n in range(5)], NOW)         # Jun: undecided
    finding = cv.trial_conversion_low(cohorts, 25)
    assert finding.check == "trial_conversion_low" and finding.severity == "warning"
    assert finding.items == ["2026-02"]
    assert not cv.trial_conversion_low(cohorts, 20).is_problem, "exactly at the rate is not under it"
    assert cv.trial_conversion_low(cohorts, 25, min_decided=2).items == ["2026-02", "2026-04"]


def test_no_trials_is_ok():
    finding = cv.trial_conversion_low(cv.trial_cohorts([sub("active", None)], NOW), 50)
    assert finding.severity == "ok" and "enough" in finding.title


# --------------------------------------------------------------------------- the planted trials, through the emulator


@pytest.fixture(scope="module")
def served_trials():
    """The planted trial subscriptions in an emulator's account, listed as the revenue report lists them."""
    now = int(datetime.now(timezone.utc).timestamp())
    state = new_state([API_KEY])
    product = so.make_product(name="Pro", id="prod_trial_pro", created=now - 800 * DAY)
    price = so.make_price(product=product, unit_amount=2900, interval="month", id="price_trial_pro", created=now - 800 * DAY)
    add_objects(state, product, price)
    trial_incidents.add_subscriptions(state, now, price)
    state_dir = scratch_dir("trial-stripe")
    write_state(state_dir / "stripe.json", state)
    server, thread, base = start_emulator(state_dir / "stripe.json")
    try:
        yield now, list(list_subscriptions(make_client(API_KEY, base), status="all", expand_customer=True))
    finally:
        stop_emulator(server, thread)
        shutil.rmtree(state_dir, ignore_errors=True)


def test_the_planted_cohort_is_named_and_the_control_cohort_is_not(served_trials):
    now, subscriptions = served_trials
    assert len(subscriptions) == 13, "every planted subscription is served, canceled ones included"
    cohorts = {c["cohort"]: c for c in cv.trial_cohorts(subscriptions, now)}
    planted, control = trial_incidents.cohort(now, 3), trial_incidents.cohort(now, 4)
    assert (cohorts[planted]["converted"], cohorts[planted]["lost"]) == (1, 5)
    assert (cohorts[control]["converted"], cohorts[control]["lost"], cohorts[control]["conversion_pct"]) == (4, 1, 80.0)
    assert cohorts[control]["retained_3m"] == 3 and cohorts[control]["retained_1m"] == 4
    running = cohorts[datetime.fromtimestamp(now - 3 * DAY, timezone.utc).strftime("%Y-%m")]
    assert running["in_trial"] >= 1 and running["lost"] == 0
    assert sum(c["trials"] for c in cohorts.values()) == 12, "the subscription without a trial is in no cohort"
    finding = cv.trial_conversion_low(list(cohorts.values()))
    assert finding.items == trial_incidents.planted(now)["trial_conversion_low"]
