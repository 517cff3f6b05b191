"""quota_audit holds a million organisations as columns (``ops_lib.quota.table``): the app's rows
are read from the cursor into arrays and ``Texts``, the join and the scan keep them so, and the
checks build a row only for what they report. What is read back equals what the records held."""
from __future__ import annotations

import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from ops_lib import quota
from ops_lib.db import make_engine
from ops_lib.quota import checks
from ops_lib.quota.scan import UsageRow
from ops_lib.quota.table import Labels, Moments, Optional, Table, Texts
from ops_lib.schema_map import SchemaMap

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
NOW = datetime(2026, 11, 26, 15, 0, tzinfo=timezone.utc)


def test_texts_read_back_every_value_and_keep_lists_they_cannot_hold():
    values = ["cus_1", "", None, "Zürich GmbH 🚀", "x" * 300]
    texts = Texts.of(values)
    assert isinstance(texts, Texts)
    assert [texts[i] for i in range(len(values))] == values and texts.tolist() == values
    assert texts.take(np.array([3, 0])).tolist() == ["Zürich GmbH 🚀", "cus_1"]
    assert Texts.of([]).tolist() == [] and Texts.of([None]).tolist() == [None]
    assert Texts.of(["a\0b", "c"]) == ["a\0b", "c"], "a NUL inside a text: kept as the list"
    assert Texts.of([1, "a"]) == [1, "a"], "not texts: kept as the list"


def test_a_table_reads_as_the_records_it_holds_as_columns():
    moments = Moments(np.array([0, np.iinfo(np.int64).min], dtype=np.int64))
    table = Table(UsageRow, {
        "organisation_id": np.array([7, 8]), "name": Texts.of(["A", None]), "plan": Labels(np.array([0, 1]), ["pro", "free"]),
        "usage_limit": [1000, None], "used": np.array([5, 0]), "stored": Optional(np.array([5, 0]), np.array([True, False])),
        "pct": [0.5, None], "events": np.array([1, 0]), "repeated": np.array([0, 0]), "counter_rows": np.array([1, 0]),
        "period_start": moments, "period_end": moments, "period_source": ["p", "q"], "is_blocked": [False, None]})
    first = {"organisation_id": 7, "name": "A", "plan": "pro", "usage_limit": 1000, "used": 5, "stored": 5, "pct": 0.5,
             "events": 1, "repeated": 0, "counter_rows": 1, "period_start": datetime(1970, 1, 1, tzinfo=timezone.utc),
             "period_end": datetime(1970, 1, 1, tzinfo=timezone.utc), "period_source": "p", "is_blocked": False}
    assert table[0] == first and type(table[0]["organisation_id"]) is int and type(table[0]["stored"]) is int
    assert table[1]["stored"] is None and table[1]["period_start"] is None and table[-1] == table[1]
    assert list(table) == [table[0], table[1]] and table == [first, dict(table[1])]
    assert table.values("plan") == ["pro", "free"] and table.take(np.array([1]))[0] == table[1]
    with pytest.raises(IndexError):
        table[2]


def test_a_predicate_over_a_column_holds_where_it_holds_of_each_value():
    from ops_lib.quota.table import Through, holds
    statuses = ["active", "canceled", "active", "past_due"]
    through = Through(np.array([2, -1, 1, 3, 0]), statuses)
    labels = Labels(np.array([1, 0, 1]), ["free", "pro"])
    for column in (through, labels, ["active", None, "x"], []):
        values = column.tolist() if hasattr(column, "tolist") else list(column)
        expected = [v in ("active", "pro") for v in values]
        assert holds(column, ("active", "pro").__contains__).tolist() == expected


def _usage(n: int, used: list[int], limits: list) -> list[dict]:
    return [{"organisation_id": i, "name": f"Org {i}", "plan": "pro", "usage_limit": limit, "used": u, "stored": u,
             "pct": round(100.0 * u / limit, 1) if limit else None, "events": 1, "repeated": 0, "counter_rows": 1,
             "period_start": NOW, "period_end": NOW, "period_source": "p", "is_blocked": False}
            for i, u, limit in zip(range(n), used, limits)]


def test_usage_metrics_over_columns_round_each_share_as_python_does():
    # shares just under 80 %, and at ...x5 where numpy's rounding (by scaling) and Python's differ
    used = [7995, 7994, 7996, 8000, 2675, 1005, 999, 0, 5]
    limits = [10_000, 10_000, 10_000, 10_000, 100_000, 1_000, 1_000, 0, None]
    rows = _usage(len(used), used, limits)
    as_dicts = dict(quota.usage_metrics(rows))
    pct = [r["pct"] for r in rows]
    columns = Table(UsageRow, {**Table.of_rows(UsageRow, rows).columns,
                               "used": np.array(used), "pct": quota.scan.Computed(len(used), lambda i: pct[i])})
    assert dict(quota.usage_metrics(columns)) == as_dicts
    assert as_dicts["organisations_at_80_pct_of_limit_or_more"] == sum(p is not None and p >= 80 for p in pct)


@pytest.fixture
def many_organisations(app_db):
    """20,000 organisations (half of them subscribers), a subscription each for the subscribers."""
    app_db.execute("DELETE FROM organizations")
    app_db.execute("INSERT INTO organizations (id, name, plan_code, stripe_customer_id) "
                   "SELECT g, 'Organisation number ' || g, 'pro', CASE WHEN g % 2 = 0 THEN 'cus_' || g END "
                   "FROM generate_series(1, 20000) g")
    app_db.execute("INSERT INTO subscriptions (organization_id, stripe_subscription_id, stripe_price_id, plan_code, status, "
                   "current_period_start, current_period_end) SELECT id, 'sub_' || id, 'price_pro', 'pro', 'active', "
                   "now() - interval '3 days', now() + interval '27 days' FROM organizations WHERE id % 2 = 0")
    return app_db


def test_the_app_is_read_from_the_cursor_into_columns(many_organisations):
    engine = make_engine(many_organisations.url)
    try:
        with engine.connect() as conn:
            app = quota.read_app(conn, MAPPING)
    finally:
        engine.dispose()
    orgs, subs = app["organisations"], app["subscriptions"]
    assert isinstance(orgs.column("id"), np.ndarray) and isinstance(orgs.column("name"), Texts)
    assert isinstance(subs.column("organisation_id"), np.ndarray) and isinstance(subs.column("current_period_start"), Moments)
    assert isinstance(subs.column("stripe_subscription_id"), Texts)
    assert orgs[1] == {"id": 2, "name": "Organisation number 2", "plan": "pro", "stripe_customer_id": "cus_2",
                       "is_blocked": False}
    assert orgs.values("plan")[0] is orgs.values("plan")[-1], "a plan is one string object"
    assert subs[0]["current_period_start"].tzinfo is timezone.utc and subs[0]["stripe_subscription_id"] == "sub_2"


def test_the_joined_accounts_hold_well_under_a_record_per_organisation(many_organisations):
    """The accounts of 20,000 organisations, as the runbook keeps them after the join: under 300
    bytes an organisation (~240 as columns; as records beside the tuples read, ~515)."""
    engine = make_engine(many_organisations.url)
    try:
        with engine.connect() as conn:
            plans = quota.load_plans(conn, MAPPING)
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            accounts = quota.join_accounts(quota.read_app(conn, MAPPING), {"customers": [], "subscriptions": []},
                                           plans, now=NOW)
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
    finally:
        engine.dispose()
    assert len(accounts.organisations) == 20_000
    assert held / 20_000 < 300, f"{held / 20_000:.0f} bytes an organisation"
    org = accounts.organisations[1]
    assert (org["organisation_id"], org["name"], org["period_source"]) == (2, "Organisation number 2", quota.accounts.PERIOD_APP)
    assert org["app_live"][0]["stripe_subscription_id"] == "sub_2" and org["stripe_subscriptions"] == ()


def test_the_scan_returns_its_usage_as_columns_and_the_checks_read_them(many_organisations):
    many_organisations.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                               "SELECT 1 + g % 20000, 'api_call', 1, 'k-' || g, now() - interval '1 hour' "
                               "FROM generate_series(1, 40000) g")
    many_organisations.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                               "SELECT 5, 'api_call', 200000, 'big', now() - interval '1 hour'")
    engine = make_engine(many_organisations.url)
    try:
        with engine.connect() as conn:
            plans = quota.load_plans(conn, MAPPING)
            accounts = quota.join_accounts(quota.read_app(conn, MAPPING), {"customers": [], "subscriptions": []},
                                           plans, now=datetime.now(timezone.utc))
            usage = quota.scan_usage(conn, MAPPING, accounts).usage
    finally:
        engine.dispose()
    assert isinstance(usage, Table) and isinstance(usage.column("used"), np.ndarray)
    assert usage.column("name") is accounts.organisations.column("name"), "the accounts' columns, not copies"
    over = checks.over_limit(usage)
    assert over.items == [5] and over == checks.over_limit([dict(r) for r in usage])
    assert checks.usage_counter_drift(usage) == checks.usage_counter_drift([dict(r) for r in usage])
