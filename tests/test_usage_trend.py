"""Usage trend (quota_audit): weekly usage per organisation and plan, and ``usage_surge``.

On a fresh database with the demo app's schema (``app_db``): events placed in known ISO weeks
must come back summed per week, organisation and plan, the current partial week left out; the
surge rule names an organisation whose last full week is far above its own median and leaves a
steady one, a small one and a new one alone.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib.db import sqlalchemy_url
from ops_lib.demo import quota_data, seed, stripe_account, usage_trend_data
from ops_lib.quota import trend
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_emulator import start_emulator, write_state

from .conftest import Database
from .demo_target import scratch_dir
from .test_quota_checks import API_KEY, QuotaTarget

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
NOW = datetime(2026, 11, 26, 15, 0, tzinfo=timezone.utc)   # a Thursday
THIS_WEEK = datetime(2026, 11, 23, tzinfo=timezone.utc)     # its Monday


def add_orgs(db, *orgs: tuple[int, str, str]) -> None:
    db.execute("INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) VALUES ('free', 'Free', 0, 1000, false) "
               "ON CONFLICT DO NOTHING")
    for org_id, name, plan in orgs:
        db.execute("INSERT INTO organizations (id, name, plan_code) VALUES (:id, :name, :plan)", id=org_id, name=name, plan=plan)


def add_week(db, org: int, weeks_ago: int, quantity: int, *, events: int = 1, day: int = 2) -> None:
    """``events`` events worth ``quantity`` in all, in the full week ``weeks_ago`` before the current one."""
    at = THIS_WEEK - timedelta(weeks=weeks_ago) + timedelta(days=day, hours=10)
    for n in range(events):
        db.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                   "VALUES (:org, 'api_call', :q, :key, :at)",
                   org=org, q=quantity // events + (1 if n < quantity % events else 0),
                   key=f"k-{org}-{weeks_ago}-{day}-{n}-{quantity}", at=at + timedelta(minutes=n))


def read(db, **kwargs) -> list[dict]:
    engine = sa.create_engine(sqlalchemy_url(db.url))
    try:
        with engine.connect() as conn:
            return trend.weekly_usage(conn, MAPPING, now=NOW, **kwargs)
    finally:
        engine.dispose()


def test_weekly_usage_sums_each_organisations_full_weeks_with_its_plan(app_db):
    add_orgs(app_db, (2, "Free Co", "free"))
    add_week(app_db, 1, 1, 30, events=3)
    add_week(app_db, 1, 1, 5, day=6)                 # Sunday: still last week
    add_week(app_db, 2, 2, 7)
    add_week(app_db, 1, 0, 999)                      # this (partial) week: not a full week, left out
    add_week(app_db, 1, 9, 999)                      # before the window of 8 weeks
    app_db.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                   "VALUES (1, 'api_call', 4, 'edge', :at)", at=THIS_WEEK - timedelta(weeks=8))  # the window's first instant
    rows = read(app_db)
    assert [(r["week_start"], r["organisation_id"], r["plan"], r["usage"], r["events"]) for r in rows] == [
        (THIS_WEEK - timedelta(weeks=8), 1, "pro", 4, 1),
        (THIS_WEEK - timedelta(weeks=2), 2, "free", 7, 1),
        (THIS_WEEK - timedelta(weeks=1), 1, "pro", 35, 4),
    ]
    assert rows[1]["name"] == "Free Co"
    assert read(app_db, weeks=1) == [rows[-1]]


def test_weeks_are_cut_at_monday_midnight_utc_whatever_the_session_time_zone(app_db):
    app_db.execute(f'ALTER DATABASE "{app_db.name}" SET timezone TO \'America/Los_Angeles\'')
    last_monday = THIS_WEEK - timedelta(weeks=1)
    for key, at, q in (("sun", last_monday - timedelta(seconds=1), 1), ("mon", last_monday, 10)):
        app_db.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                       "VALUES (1, 'x', :q, :key, :at)", q=q, key=key, at=at)
    assert {r["week_start"]: r["usage"] for r in read(app_db)} == {last_monday - timedelta(weeks=1): 1, last_monday: 10}


def test_per_plan_totals_add_up_the_organisations_of_each_plan():
    w1, w2 = THIS_WEEK - timedelta(weeks=2), THIS_WEEK - timedelta(weeks=1)
    rows = [{"week_start": w1, "organisation_id": 1, "plan": "pro", "usage": 10},
            {"week_start": w1, "organisation_id": 2, "plan": "pro", "usage": 5},
            {"week_start": w1, "organisation_id": 3, "plan": "free", "usage": 1},
            {"week_start": w2, "organisation_id": 1, "plan": "pro", "usage": 7}]
    assert trend.weekly_usage_by_plan(rows) == [
        {"week_start": w1, "plan": "free", "usage": 1, "active_organisations": 1},
        {"week_start": w1, "plan": "pro", "usage": 15, "active_organisations": 2},
        {"week_start": w2, "plan": "pro", "usage": 7, "active_organisations": 1},
    ]


def series(org: int, usages: list[int], plan: str = "pro") -> list[dict]:
    """Rows for ``org``: ``usages`` oldest first, the last one last full week; 0 means no row."""
    n = len(usages)
    return [{"week_start": THIS_WEEK - timedelta(weeks=n - i), "organisation_id": org, "name": f"Org {org}", "plan": plan,
             "usage": u, "events": u} for i, u in enumerate(usages) if u]


def test_usage_surge_names_the_organisation_far_above_its_own_median_and_no_other():
    rows = (series(1, [300, 320, 280, 310, 290, 305, 300, 2400])      # surged: 8× its median
            + series(2, [300, 320, 280, 310, 290, 305, 300, 800])     # up 2.6×: under the factor
            + series(3, [10, 12, 9, 11, 10, 10, 12, 300])             # 28× but only +289 units: too small to matter
            + series(4, [0, 0, 0, 0, 0, 0, 0, 5000])                  # new: no baseline to compare with
            + series(5, [3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000]))  # big and steady
    finding = trend.usage_surge(rows)
    assert finding.check == "usage_surge" and finding.severity == "info"
    assert finding.items == [1]
    assert finding.rows[0]["usage"] == 2400 and finding.rows[0]["trailing_median"] == 300 and finding.rows[0]["times_median"] == 8.0
    assert "median" in finding.note


def test_usage_surge_counts_weeks_without_usage_as_zero_in_the_median():
    # Used in only 3 of 7 earlier weeks: the median of the earlier weeks is 0, so no baseline.
    assert not trend.usage_surge(series(1, [900, 0, 900, 0, 900, 0, 0, 3000])
                                 + series(2, [100] * 8)).is_problem
    # Used in 4 of 7: the median is 900 and 3000 is under 3×.
    assert not trend.usage_surge(series(1, [900, 900, 0, 900, 0, 900, 0, 2600]) + series(2, [100] * 8)).is_problem
    assert trend.usage_surge(series(1, [900, 900, 0, 900, 0, 900, 0, 2700]) + series(2, [100] * 8)).items == [1]


def test_usage_surge_thresholds_are_parameters_and_too_little_history_is_ok():
    rows = series(1, [300] * 7 + [800]) + series(2, [100] * 8)
    assert not trend.usage_surge(rows).is_problem
    assert trend.usage_surge(rows, factor=2.5).items == [1]
    assert not trend.usage_surge(rows, factor=2.5, min_increase=600).is_problem
    assert trend.usage_surge(series(1, [5000])).severity == "ok"
    assert trend.usage_surge([]).severity == "ok"


# --------------------------------------------------------------------------- the demo's planted surge


@pytest.fixture(scope="module")
def demo_like(pg18):
    """The quota demo in small (as tests/test_quota_checks.py builds it), with the surge planted
    where the demo plants it: before ``quota_data.plant``."""
    db = Database(pg18)
    engine = sa.create_engine(sqlalchemy_url(db.url))
    data = seed.build(seed=7, scale=0.1)
    with engine.begin() as conn:
        seed.load(conn, data)
    seed.plant_slow_queries(engine)
    account, _ = stripe_account.build(data, api_key=API_KEY, receiver_url="http://127.0.0.1:9/stripe/webhook")
    surge_manifest = usage_trend_data.plant(engine, data)
    roles = quota_data.organisations(data)
    manifest = quota_data.plant(engine, data, account)
    state_dir = scratch_dir("trend-stripe")
    write_state(state_dir / "stripe.json", account)
    server, thread, base = start_emulator(state_dir / "stripe.json")
    target = QuotaTarget(db, engine, data, account, manifest, roles, base, server, thread, state_dir)
    yield target, surge_manifest
    target.close()


def demo_rows(target, now) -> list[dict]:
    with target.engine.connect() as conn:
        return trend.weekly_usage(conn, MAPPING, now=now)


def test_the_demo_surge_is_named_and_a_normal_subscriber_is_not(demo_like):
    target, planted = demo_like
    picked = usage_trend_data.organisations(target.data)
    assert planted == {"usage_surge": [picked["surge"]]}
    assert picked["surge"] not in set(target.roles.values()) | {1}
    finding = trend.usage_surge(demo_rows(target, target.data.now))
    assert picked["surge"] in finding.items
    assert picked["control"] not in finding.items
    # Whoever else is named carries a quota incident whose planted usage is a surge too (over/near limit).
    assert set(finding.items) - {picked["surge"]} <= set(target.roles.values())


def test_a_run_in_the_week_after_the_demo_was_built_still_finds_the_surge(demo_like):
    target, planted = demo_like
    finding = trend.usage_surge(demo_rows(target, target.data.now + timedelta(weeks=1)))
    assert planted["usage_surge"][0] in finding.items
    assert usage_trend_data.organisations(target.data)["control"] not in finding.items


def test_the_surge_disturbs_none_of_the_quota_checks(demo_like):
    target, _ = demo_like
    _, _, found = target.audit()
    assert {check: f.items for check, f in found.items() if f.is_problem} == target.manifest
