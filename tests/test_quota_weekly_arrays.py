"""quota_audit's weekly series held as arrays (``scan.WeeklyUsage``): the same rows, the same
per-plan totals and the same ``usage_surge`` as the list of row dicts it replaces.

At a million organisations the weekly series was 3.5M dicts; ``scan_usage`` now returns the
pass's weekly columns as two integer arrays, and ``trend`` reads them directly. Here the
array answers are compared with the row answers, which ``tests/test_usage_trend.py`` pins
down rule by rule: on seeded random series (ties, weeks nobody used, plans without a name,
text ids) and on the demo's quota data read through the real pass.
"""
from __future__ import annotations

import random
from datetime import timedelta

import numpy as np
import pytest

from ops_lib.quota import scan as quota_scan
from ops_lib.quota import trend
from ops_lib.quota.scan import WeeklyUsage

from .test_usage_trend import MAPPING, THIS_WEEK, demo_like  # noqa: F401 (the fixture)

WEEKS = [THIS_WEEK - timedelta(weeks=8 - i) for i in range(8)]


def arrays_and_rows(ids: list, seed: int, *, empty_weeks: tuple[int, ...] = ()) -> tuple[WeeklyUsage, list[dict]]:
    """Random weekly usage for ``ids`` (already in id order) as WeeklyUsage and as the rows
    ``scan`` used to build: one per (week, organisation) with events, by week then id."""
    rnd = random.Random(seed)
    plans = [rnd.choice(["free", "pro", "team", None]) for _ in ids]
    units = np.zeros((len(ids), len(WEEKS)), dtype=np.int64)
    events = np.zeros_like(units)
    for n in range(len(ids)):
        base = rnd.choice([0, 50, 300, 1000])
        for i in range(len(WEEKS)):
            if i in empty_weeks or rnd.random() < 0.25:
                continue
            events[n, i] = rnd.randint(1, 5)
            units[n, i] = max(0, int(rnd.gauss(base, base / 4 + 1)))
        if rnd.random() < 0.15 and len(WEEKS) - 1 not in empty_weeks:   # a surge, or not quite one
            events[n, -1] = 1
            units[n, -1] = rnd.choice([3, 4, 10]) * base + rnd.choice([0, 400, 600])
    keep = [n for n in range(len(ids)) if events[n].any()]
    weekly = WeeklyUsage(WEEKS, [ids[n] for n in keep], [f"Org {ids[n]}" for n in keep], [plans[n] for n in keep],
                         units[keep], events[keep])
    rows = [{"week_start": WEEKS[i], "organisation_id": ids[n], "name": f"Org {ids[n]}", "plan": plans[n],
             "usage": int(units[n, i]), "events": int(events[n, i])}
            for i in range(len(WEEKS)) for n in keep if events[n, i]]
    return weekly, rows


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("empty_weeks", [(), (3,), (0, 5), (7,)])
def test_arrays_answer_what_the_rows_answer(seed, empty_weeks):
    ids = list(range(1, 400)) if seed % 2 else [f"org_{n:04d}" for n in range(400)]
    weekly, rows = arrays_and_rows(ids, seed, empty_weeks=empty_weeks)
    assert list(weekly) == rows and len(weekly) == len(rows) and weekly == rows
    assert trend.weekly_usage_by_plan(weekly) == trend.weekly_usage_by_plan(rows)
    named = 0
    for factor, min_increase in ((3.0, 500), (2.0, 100), (1.2, 0), (4.0, 1000)):
        arrays = trend.usage_surge(weekly, factor=factor, min_increase=min_increase)
        listed = trend.usage_surge(rows, factor=factor, min_increase=min_increase)
        assert (arrays.severity, arrays.title, arrays.items, arrays.rows, arrays.note) == \
            (listed.severity, listed.title, listed.items, listed.rows, listed.note)
        named += len(listed.items)
    assert named > 0, "the series must contain surges for the comparison to mean anything"


def test_no_weeks_and_one_week_are_ok_as_with_rows():
    weekly, rows = arrays_and_rows(list(range(1, 20)), 1, empty_weeks=tuple(range(8)))
    assert len(weekly) == 0 and rows == [] and list(weekly) == []
    assert trend.weekly_usage_by_plan(weekly) == [] and trend.usage_surge(weekly).severity == "ok"
    weekly, rows = arrays_and_rows(list(range(1, 20)), 1, empty_weeks=tuple(range(7)))
    assert trend.usage_surge(weekly).title == trend.usage_surge(rows).title == "Not enough full weeks of usage to compare"


def test_the_pass_gives_the_same_trend_as_arrays_and_as_rows(demo_like):
    target, planted = demo_like
    now = target.data.now
    accounts, _, _ = target.audit(now=now)
    with target.engine.connect() as conn:
        scanned = quota_scan.scan_usage(conn, MAPPING, accounts, now=now)
        rows = trend.weekly_usage(conn, MAPPING, now=now)
    assert isinstance(scanned.weekly, WeeklyUsage)
    assert [(r["week_start"], r["organisation_id"], r["usage"], r["events"]) for r in scanned.weekly] == \
        [(r["week_start"], r["organisation_id"], r["usage"], r["events"]) for r in rows]
    assert trend.weekly_usage_by_plan(scanned.weekly) == trend.weekly_usage_by_plan(list(scanned.weekly))
    arrays, listed = trend.usage_surge(scanned.weekly), trend.usage_surge(list(scanned.weekly))
    assert arrays.items == listed.items and arrays.rows == listed.rows
    assert planted["usage_surge"][0] in arrays.items
