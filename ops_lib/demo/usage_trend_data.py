"""The usage trend part of the demo: one organisation whose usage surged last week (``usage_surge``).

``plant(engine, data)`` runs while the demo is built, *before* ``quota_data.plant``, so that the
usage counters that module writes already include the surge (no counter drift is planted here).
It picks, deterministically, the first subscriber of the base set that carries no quota incident
(never organisation 1, which the slow_queries incidents keep locked) and adds events worth
``SURGE_TIMES`` × its usual weekly usage + ``usage_surge``'s minimum increase to each of two
weeks, the last full week before ``data.now`` and ``data.now``'s own week: a run in the week after the
demo was built still finds it (the surge is then last week's), and the earlier surge week is one
week of eight, which leaves the median unchanged.

The next such subscriber is the control: a normal organisation the check must not name.
Subscribers only (pro/team limits are 50,000+ a period), so the surge keeps them far below
``near_limit``; free organisations' usage is thinned by ``quota_data`` and would lose the events.
"""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..quota.trend import DEFAULT_SURGE_MIN_INCREASE, week_start
from . import quota_data
from .seed import Dataset

SURGE_TIMES = 6
EVENT_KEY = "trend-demo-{org}-{n}"


def organisations(data: Dataset) -> dict[str, int]:
    """``{"surge": org, "control": org}``: subscribers that carry no quota incident, never organisation 1."""
    taken = set(quota_data.organisations(data).values()) | {quota_data.LOCKED_ORG}
    subscribed = sorted({s["organization_id"] for s in data.subscriptions} - taken)
    return dict(zip(("surge", "control"), subscribed))


def plant(engine: Engine, data: Dataset) -> dict:
    """Plant the surge; returns ``{"usage_surge": [org]}`` (the planted organisation, not every one named)."""
    org = organisations(data)["surge"]
    this_week = week_start(data.now)
    last_week = this_week - timedelta(weeks=1)
    with engine.begin() as conn:
        quota_data._quietly(conn)
        usual = conn.execute(sa.text(
            "SELECT coalesce(sum(quantity), 0) FROM usage_events "
            "WHERE organization_id = :org AND occurred_at >= :since AND occurred_at < :until"
        ), {"org": org, "since": last_week - timedelta(weeks=7), "until": last_week}).scalar() / 7
        total = int(SURGE_TIMES * usual) + DEFAULT_SURGE_MIN_INCREASE
        moments = [last_week + timedelta(days=3), this_week + (data.now - this_week) / 2]
        rows = []
        for week, at in enumerate(moments):
            for n in range(10):  # ten events a week: a client looping, not one bulk import
                rows.append({"org": org, "quantity": total // 10, "key": EVENT_KEY.format(org=org, n=week * 10 + n),
                             "at": at + timedelta(minutes=n)})
        conn.execute(sa.text(
            "INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
            "VALUES (:org, 'api_call', :quantity, :key, :at)"
        ), rows)
    return {"usage_surge": [org]}
