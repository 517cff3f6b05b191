"""Trial subscriptions for ``trial_conversion_low``: a cohort that converted badly, and controls.

The demo's Stripe account has one trial (``billing_history``'s "Trial Troupe", still running):
nothing a conversion rate can be computed from. ``add_subscriptions(state, now)`` adds, on
customers of their own (ids ``cus_demotrial…``):

* the planted incident: six trials started on the 5th of the month three months before ``now``'s,
  one converted, three canceled during the trial, two canceled by Stripe at the trial's end (no
  payment method): 1 of 6, 16.7 %;
* the control: five trials started on the 5th of the month four months before, four converted
  (one of them churned six weeks after its trial), one canceled during the trial: 80 %;
* a trial started three days before ``now`` and still running (not lost: undecided), and a
  subscription without a trial (no cohort).

Trial months are calendar months before ``now``'s, at fixed days, so the cohorts are the same
whatever day of the month the demo is built. Ids are fixed, so adding these shifts no other
object's id.
"""
from __future__ import annotations

from datetime import datetime, timezone

from ..stripe_emulator import objects as so
from ..stripe_emulator.state import add_objects

DAY = 86_400
TRIAL_DAYS = 14
# cohort (months before now's month) -> the trials' fates, in order
COHORTS = {
    3: ("converted", "canceled_in_trial", "canceled_in_trial", "canceled_in_trial", "canceled_at_trial_end",
        "canceled_at_trial_end"),
    4: ("converted", "converted", "converted", "converted_then_churned", "canceled_in_trial"),
}
PLANTED_COHORT, CONTROL_COHORT = 3, 4


def _month_start(now: int, months_before: int) -> datetime:
    moment = datetime.fromtimestamp(now, timezone.utc)
    month0 = moment.year * 12 + moment.month - 1 - months_before
    return datetime(month0 // 12, month0 % 12 + 1, 1, tzinfo=timezone.utc)


def cohort(now: int, months_before: int) -> str:
    """The cohort's name as ``trial_cohorts`` shows it (``YYYY-MM``)."""
    return _month_start(now, months_before).strftime("%Y-%m")


def _trial(customer: dict, price: dict, fate: str, *, start: int, now: int, id: str) -> dict:
    trial_end = start + TRIAL_DAYS * DAY
    if fate == "trialing":
        return so.make_subscription(id=id, customer=customer, items=[(price, 1)], status="trialing", created=start,
                                    trial_end=trial_end)
    if fate.startswith("canceled"):
        ended = start + 4 * DAY if fate == "canceled_in_trial" else trial_end
        sub = so.make_subscription(id=id, customer=customer, items=[(price, 1)], status="canceled", created=start,
                                   current_period_start=start, current_period_end=trial_end, canceled_at=ended)
    elif fate == "converted_then_churned":
        ended = trial_end + 42 * DAY
        sub = so.make_subscription(id=id, customer=customer, items=[(price, 1)], status="canceled", created=start,
                                   current_period_start=trial_end + 30 * DAY, canceled_at=ended)
    else:  # converted, still paying
        sub = so.make_subscription(id=id, customer=customer, items=[(price, 1)], status="active", created=start,
                                   current_period_start=now - 10 * DAY)
    # make_subscription sets trial fields only on a trialing subscription; these had one
    sub.update(trial_start=start, trial_end=trial_end)
    return sub


def build(now: int, price: dict) -> list[dict]:
    """The customers and subscriptions (Stripe objects) described in the module doc."""
    objects = []
    n = 0

    def add(fate: str, start: int) -> None:
        nonlocal n
        n += 1
        customer = so.make_customer(id=f"cus_demotrial{n:02d}", email=f"trial{n}@trials.example", name=f"Trial {n}",
                                    created=start)
        objects.extend([customer, _trial(customer, price, fate, start=start, now=now, id=f"sub_demotrial{n:02d}")])

    for months_before, fates in COHORTS.items():
        start = int(_month_start(now, months_before).timestamp()) + 4 * DAY  # the 5th, 00:00 UTC
        for k, fate in enumerate(fates):
            add(fate, start + k * 3600)
    add("trialing", now - 3 * DAY)
    n += 1
    customer = so.make_customer(id=f"cus_demotrial{n:02d}", email=f"trial{n}@trials.example", name="No trial",
                                created=now - 60 * DAY)
    objects.extend([customer, so.make_subscription(id=f"sub_demotrial{n:02d}", customer=customer, items=[(price, 1)],
                                                   created=now - 60 * DAY, current_period_start=now - 5 * DAY)])
    return objects


def add_subscriptions(state: dict, now: int, price: dict) -> None:
    add_objects(state, *build(now, price))


def planted(now: int) -> dict:
    """What ``trial_conversion_low`` (default rate 20 %) must name: the planted cohort only."""
    return {"trial_conversion_low": [cohort(now, PLANTED_COHORT)]}
