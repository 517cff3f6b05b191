"""The quota_audit checks on real PostgreSQL 18 and the Stripe emulator (through the real SDK).

The module builds the demo's state in small (seed 7, scale 0.1): the seeded app, the demo's
Stripe account, the slow_queries plantings (which leave a duplicated usage event) and
``quota_data.plant``. Every check is then run against it: together they must report exactly the
planted manifest. Each check also gets a deliberate problem and a healthy case on small built
data, where the edges (thresholds, statuses, unknown prices) are easy to see.
"""
from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib import quota
from ops_lib.db import make_engine, sqlalchemy_url
from ops_lib.demo import quota_data, seed, stripe_account
from ops_lib.errors import ConfigurationError
from ops_lib.findings import Finding
from ops_lib.quota import checks, plots
from ops_lib.quota.accounts import PERIOD_APP, PERIOD_CALENDAR, PERIOD_STRIPE
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_api import make_client
from ops_lib.stripe_emulator import objects as o
from ops_lib.stripe_emulator import start_emulator, stop_emulator, write_state

from .conftest import Database
from .demo_target import scratch_dir

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
API_KEY = "sk_test_51OpsbookQuotaAudit0000000000qrst"
DAY = 86400


# --------------------------------------------------------------------------- the demo-like target


@dataclass
class QuotaTarget:
    db: Database
    engine: sa.engine.Engine
    data: seed.Dataset
    account: dict
    manifest: dict
    roles: dict
    api_base: str
    server: object
    thread: object
    state_dir: Path

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def planted(self) -> dict:
        return self.manifest

    def client(self):
        return make_client(API_KEY, self.api_base)

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.db.url, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": self.api_base}

    def audit(self, now: datetime | None = None, **options):
        """The runbook's steps, as the notebook runs them: (accounts, usage, findings by check)."""
        now = now or datetime.now(timezone.utc)
        engine = make_engine(self.db.url)
        try:
            with engine.connect() as conn:
                plans = quota.load_plans(conn, MAPPING)
                accounts = quota.join_accounts(quota.read_app(conn, MAPPING), quota.fetch_stripe(self.client()), plans, now=now)
                # as the notebook does: one pass over the usage events for usage, trend and duplicates
                scan = quota.scan_usage(conn, MAPPING, accounts, duplicates_since=now - timedelta(days=90), now=now)
                usage = scan.usage
                found = checks.run_all(conn, MAPPING, accounts, usage, duplicates_since=scan.duplicates.since,
                                       duplicates=scan.duplicates, **options)
        finally:
            engine.dispose()
        return accounts, usage, found

    def query(self, sql: str, **params) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]

    def close(self) -> None:
        stop_emulator(self.server, self.thread)
        self.engine.dispose()
        self.db.drop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def build_quota_target(cluster) -> QuotaTarget:
    db = Database(cluster)
    engine = sa.create_engine(sqlalchemy_url(db.url))
    data = seed.build(seed=7, scale=0.1)
    with engine.begin() as conn:
        seed.load(conn, data)
    seed.plant_slow_queries(engine)  # as the demo does: it leaves one usage event recorded twice
    account, _ = stripe_account.build(data, api_key=API_KEY, receiver_url="http://127.0.0.1:9/stripe/webhook")
    roles = quota_data.organisations(data)
    manifest = quota_data.plant(engine, data, account)
    assert quota_data.organisations(data) == roles, "the roles are the same before and after planting"
    state_dir = scratch_dir("quota-stripe")
    write_state(state_dir / "stripe.json", account)
    server, thread, base = start_emulator(state_dir / "stripe.json")
    return QuotaTarget(db, engine, data, account, manifest, roles, base, server, thread, state_dir)


@pytest.fixture(scope="module")
def target(pg18):
    t = build_quota_target(pg18)
    yield t
    t.close()


@pytest.fixture(scope="module")
def audited(target):
    return target.audit()


def problems(found: dict[str, Finding]) -> dict[str, list]:
    return {check: f.items for check, f in found.items() if f.is_problem}


def healthy_org(target: QuotaTarget, plan: str) -> int:
    """An organisation of the base set on ``plan`` that no incident was planted on."""
    planted = set(target.roles.values()) | {1}
    return next(o["id"] for o in target.data.organizations if o["plan_code"] == plan and o["id"] not in planted)


# --------------------------------------------------------------------------- the whole set


def test_every_check_has_a_planted_incident(target):
    assert set(target.planted) == set(quota.CHECKS)
    assert all(target.planted.values())
    assert all(items == sorted(items) for items in target.planted.values())
    assert set(target.roles) == {f"paid:{r}" for r in quota_data.PAID_ROLES} | {f"free:{r}" for r in quota_data.FREE_ROLES}
    assert len(set(target.roles.values())) == len(target.roles), "one incident role per organisation"
    assert 1 not in target.roles.values(), "org 1 is held locked by the live incidents"
    n = len(target.data.organizations)
    assert all(1 <= org <= n for org in target.roles.values())


def test_all_checks_together_find_exactly_the_planted_incidents(target, audited):
    _, _, found = audited
    assert set(found) == set(quota.CHECKS)
    assert problems(found) == target.planted


def test_the_healthy_majority_is_healthy(target, audited):
    accounts, usage, found = audited
    flagged = {item for f in found.values() for item in f.items if isinstance(item, int)}
    assert len(flagged) < len(accounts.organisations) / 2
    assert all(r["stored"] == r["used"] for r in usage if r["organisation_id"] not in flagged)
    free = [r for r in usage if r["plan"] == "free" and r["organisation_id"] not in flagged]
    assert free and all(r["pct"] <= 60 for r in free), "free organisations stay well under their limit"


# --------------------------------------------------------------------------- periods and the recomputation


def test_billing_periods_come_from_stripe_and_free_organisations_get_the_calendar_month(target, audited):
    accounts, _, _ = audited
    orgs = {o["organisation_id"]: o for o in accounts.organisations}
    subscriber = orgs[healthy_org(target, "pro")]
    stripe_sub = next(s for s in target.account["objects"]["subscription"] if s["customer"] == subscriber["stripe_customer_id"])
    assert subscriber["period_source"] == PERIOD_STRIPE
    assert subscriber["period_start"] == datetime.fromtimestamp(stripe_sub["current_period_start"], timezone.utc)
    assert subscriber["period_end"] == datetime.fromtimestamp(stripe_sub["current_period_end"], timezone.utc)

    free = orgs[healthy_org(target, "free")]
    start, end = quota.calendar_month(accounts.now)
    assert (free["period_source"], free["period_start"], free["period_end"]) == (PERIOD_CALENDAR, start, end)
    assert start.tzinfo is not None and start.day == 1 and start.hour == 0 and end > accounts.now >= start

    # canceled in Stripe, still active in the app: the app's period
    assert orgs[target.roles["paid:free_access"]]["period_source"] == PERIOD_APP
    # two live subscriptions: the newer one's period
    double = orgs[target.roles["paid:multiple_subscriptions"]]
    assert double["primary_subscription"].endswith("b") and len(double["stripe_live"]) == 2


def test_calendar_month_edges():
    assert quota.calendar_month(datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc)) == (
        datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert quota.calendar_month(datetime(2026, 3, 1, tzinfo=timezone.utc))[0] == datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_usage_is_recomputed_in_one_pass_over_half_open_periods(target, audited):
    accounts, usage, _ = audited
    org = healthy_org(target, "pro")
    row = next(r for r in usage if r["organisation_id"] == org)
    statements = []
    with target.engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", lambda *args: statements.append(args[2]))
        with conn.begin() as trans:
            add = "INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) VALUES (:o, 'api_call', :q, :k, :at)"
            conn.execute(sa.text(add), {"o": org, "q": 7, "k": "edge-start", "at": row["period_start"]})   # counted
            conn.execute(sa.text(add), {"o": org, "q": 1000, "k": "edge-end", "at": row["period_end"]})   # not: half-open
            conn.execute(sa.text(add), {"o": org, "q": 7, "k": "edge-start", "at": row["period_start"]})  # same key: once
            statements.clear()
            again = {r["organisation_id"]: r for r in quota.recompute_usage(conn, MAPPING, accounts)}
            trans.rollback()
    assert again[org]["used"] == row["used"] + 7
    assert again[org]["repeated"] == row["repeated"] + 1
    reads = [s for s in statements if "usage_events" in s and not s.startswith("EXPLAIN")]
    # one scan for every organisation (not one per customer), key hashes included, and the rows of
    # the repeated keys (the seed's retried event and the new 'edge-start')
    assert len(reads) == 2, "a fixed number of statements, whatever the number of organisations"
    # and the time zone, the unique-index and column-type look-ups (of the events and of the
    # counters), the scan's size estimate, its chunks fetched and the cursor closed, the counters
    # (the server's version is psycopg2's, read when it connected)
    assert len(statements) <= 12


def test_stripe_is_read_once_with_status_all(target):
    base = target.api_base + "/_emulator/requests"
    urllib.request.urlopen(urllib.request.Request(base, method="DELETE")).close()
    fetched = quota.fetch_stripe(target.client())
    counts = json.load(urllib.request.urlopen(base))
    assert counts == {"/v1/customers": 1, "/v1/subscriptions": 1}
    canceled = [s["id"] for s in fetched["subscriptions"] if s["status"] == "canceled"]
    assert canceled, "status=all is pushed to the API: canceled subscriptions are listed too"


def test_the_join_reads_stripe_as_it_streams_with_the_same_accounts_as_from_lists(target):
    now = datetime.now(timezone.utc)
    engine = make_engine(target.db.url)
    try:
        with engine.connect() as conn:
            plans = quota.load_plans(conn, MAPPING)
            app = quota.read_app(conn, MAPPING)
    finally:
        engine.dispose()
    lists = quota.fetch_stripe(target.client())
    streamed = quota.stream_stripe(target.client())
    assert not isinstance(streamed["customer_ids"], list) and not isinstance(streamed["subscription_rows"], list)
    from_lists = quota.join_accounts(app, lists, plans, now=now)
    from_stream = quota.join_accounts(app, streamed, plans, now=now)
    for part in ("organisations", "unlinked_customers", "orphan_subscriptions", "stripe_subscriptions", "unmapped"):
        assert getattr(from_stream, part) == getattr(from_lists, part), part
    assert from_stream.metrics() == from_lists.metrics()
    assert from_lists.stripe_customers == len({c["id"] for c in lists["customers"]})
    # A customer listed twice (a page boundary moving under the listing) is one customer.
    unlinked = from_lists.unlinked_customers[0] if from_lists.unlinked_customers else None
    doubled = {"customers": lists["customers"] + lists["customers"][:3] + ([unlinked] if unlinked else []),
               "subscriptions": lists["subscriptions"]}
    again = quota.join_accounts(app, doubled, plans, now=now)
    assert again.stripe_customers == from_lists.stripe_customers
    assert again.unlinked_customers == from_lists.unlinked_customers


# --------------------------------------------------------------------------- each check: planted problem, healthy case


def _by_org(finding: Finding) -> dict:
    return {r["organisation_id"]: r for r in finding.rows}


def test_over_limit(target, audited):
    _, usage, found = audited
    finding = found["over_limit"]
    assert finding.severity == "warning" and finding.items == target.planted["over_limit"]
    for row in finding.rows:
        assert row["used"] > row["usage_limit"] and row["is_blocked"] is False
    assert healthy_org(target, "pro") not in finding.items
    at_limit = [{**_usage_row(1, used=1000), "usage_limit": 1000}, _usage_row(2, used=1001), _usage_row(3, used=10**9, limit=None)]
    assert checks.over_limit(at_limit).items == [2]
    assert checks.over_limit([_usage_row(1, used=10)]).severity == "ok"


def test_near_limit(target, audited):
    _, _, found = audited
    finding = found["near_limit"]
    assert finding.severity == "info" and finding.items == target.planted["near_limit"]
    assert {r["pct"] for r in finding.rows} == {85.0, 90.0}
    rows = [_usage_row(1, used=799), _usage_row(2, used=800), _usage_row(3, used=1000), _usage_row(4, used=1001)]
    assert checks.near_limit(rows).items == [2, 3]
    assert checks.near_limit(rows, threshold_pct=99.9).items == [3]
    assert checks.near_limit([_usage_row(1, used=10)]).severity == "ok"


def test_usage_counter_drift_shows_both_values(target, audited):
    _, usage, found = audited
    finding = found["usage_counter_drift"]
    assert finding.severity == "warning" and finding.items == target.planted["usage_counter_drift"]
    rows = _by_org(finding)
    roles = target.roles
    assert rows[roles["free:drift_up"]]["difference"] == quota_data.DRIFT_UP_BY
    assert rows[roles["paid:drift_down"]]["difference"] == -quota_data.DRIFT_DOWN_BY
    blocked = rows[roles["paid:paying_user_blocked"]]
    assert blocked["stored"] == blocked["usage_limit"] + quota_data.BLOCKED_OVER_BY and blocked["recomputed"] < blocked["usage_limit"]
    assert all(r["stored"] is not None and r["recomputed"] is not None for r in finding.rows)
    # healthy: equal; no counter and no usage; within the tolerance
    assert checks.usage_counter_drift([_usage_row(1, used=5, stored=5), _usage_row(2, used=0, stored=None)]).severity == "ok"
    missing = checks.usage_counter_drift([_usage_row(1, used=5, stored=None)])
    assert missing.items == [1] and "no counter" in missing.rows[0]["what"]
    assert checks.usage_counter_drift([_usage_row(1, used=5, stored=8)], tolerance=3).severity == "ok"
    assert checks.usage_counter_drift([_usage_row(1, used=5, stored=9)], tolerance=3).items == [1]


def test_paying_user_blocked(target, audited):
    _, _, found = audited
    finding = found["paying_user_blocked"]
    assert finding.severity == "critical" and finding.items == target.planted["paying_user_blocked"]
    assert "usage_counter_drift" in finding.rows[0]["why"], "the drifted counter is named as the likely cause"

    pro = _price("pro")
    def case(*, blocked=False, app_plan="pro", status="active", used=10):
        accounts = _accounts([_org(1, app_plan, blocked=blocked)], [_sub("cus_1", pro, status=status)], app_subs=[])
        return checks.paying_user_blocked(accounts, [_usage_row(1, used=used, plan=app_plan, blocked=blocked)])
    assert case(blocked=True).items == [1]
    assert case(app_plan="free").items == [1]                          # paying for pro, limited as free
    assert case().severity == "ok"                                     # healthy
    assert case(blocked=True, used=60_000).severity == "ok"            # over the paid limit: blocking is right
    assert case(blocked=True, status="canceled").severity == "ok"      # not paying


def test_tier_mismatch(target, audited):
    _, _, found = audited
    finding = found["tier_mismatch"]
    assert finding.severity == "warning" and finding.items == target.planted["tier_mismatch"]
    row = finding.rows[0]
    billed = next(s for s in target.data.subscriptions if s["organization_id"] == row["organisation_id"])
    assert row["stripe_plan"] == billed["plan_code"] != row["app_plan"]
    assert row["app_subscription_price"] == row["stripe_price"] == billed["stripe_price_id"]

    pro, team = _price("pro"), _price("team")
    assert checks.tier_mismatch(_accounts([_org(1, "pro")], [_sub("cus_1", team)])).items == [1]
    assert checks.tier_mismatch(_accounts([_org(1, "pro")], [_sub("cus_1", pro)])).severity == "ok"
    # a price on a mapped product (a yearly price) maps too
    yearly = o.make_price(product="prod_demo_team", unit_amount=99_000, interval="year", id="price_team_yearly")
    assert checks.tier_mismatch(_accounts([_org(1, "pro")], [_sub("cus_1", yearly)])).items == [1]
    # canceled in Stripe: no live price to compare with
    assert checks.tier_mismatch(_accounts([_org(1, "pro")], [_sub("cus_1", team, status="canceled")])).severity == "ok"


def test_an_unknown_price_is_reported_not_guessed():
    mystery = o.make_price(product="prod_enterprise", unit_amount=49_900, interval="month", id="price_enterprise")
    accounts = _accounts([_org(1, "pro")], [_sub("cus_1", mystery)])
    assert accounts.metrics()["subscriptions_on_unmapped_prices"] == 1
    finding = checks.tier_mismatch(accounts)
    assert finding.severity == "ok" and "price_enterprise" in finding.note and "stripe.prices" in finding.note
    assert checks.multiple_active_subscriptions(_accounts(
        [_org(1, "pro")], [_sub("cus_1", _price("pro")), _sub("cus_1", mystery)])).severity == "ok"
    assert checks.paying_user_blocked(accounts, [_usage_row(1, used=1, blocked=True)]).severity == "ok"
    by_metadata = o.make_price(product="prod_x", unit_amount=1, interval="month", id="price_x", metadata={"plan": "team"})
    assert checks.tier_mismatch(_accounts([_org(1, "pro")], [_sub("cus_1", by_metadata)])).items == [1]


def test_status_mismatch_in_both_directions(target, audited):
    _, _, found = audited
    finding = found["status_mismatch"]
    assert finding.severity == "critical" and finding.items == target.planted["status_mismatch"]
    roles = target.roles
    rows = _by_org(finding)
    assert rows[roles["paid:free_access"]]["direction"].endswith("free access")
    assert (rows[roles["paid:free_access"]]["app_status"], rows[roles["paid:free_access"]]["stripe_status"]) == ("active", "canceled")
    assert rows[roles["paid:charged_for_nothing"]]["direction"].endswith("charged for nothing")
    assert "1 with free access, 1 charged for nothing" in finding.title

    pro = _price("pro")
    def case(app_status, stripe_status, *, in_stripe=True, in_app=True):
        sub = _sub("cus_1", pro, status=stripe_status, id="sub_1")
        app_subs = [_app_sub(1, "sub_1", app_status)] if in_app else []
        return checks.status_mismatch(_accounts([_org(1, "pro")], [sub] if in_stripe else [], app_subs=app_subs))
    for stripe_status in ("canceled", "unpaid", "incomplete_expired"):
        assert case("active", stripe_status).items == [1], stripe_status
    assert "no such subscription" in case("active", "active", in_stripe=False).rows[0]["stripe_status"]
    assert case("canceled", "active").rows[0]["direction"].endswith("charged for nothing")
    assert case("canceled", "active", in_app=False).items == [1]
    for same in ("active", "past_due", "trialing", "canceled"):
        assert case(same, same).severity == "ok", same


def test_missing_customer_mapping_in_both_directions(target, audited):
    _, _, found = audited
    finding = found["missing_customer_mapping"]
    assert finding.severity == "warning" and finding.items == target.planted["missing_customer_mapping"]
    directions = {r["stripe_customer_id"]: r["direction"] for r in finding.rows}
    assert directions[quota_data.UNLINKED_CUSTOMER].startswith("Stripe customer that no organisation")
    deleted = target.data.organizations[target.roles["free:customer_deleted"] - 1]["stripe_customer_id"]
    assert directions[deleted].startswith("organisation whose Stripe customer does not exist")
    assert checks.missing_customer_mapping(_accounts([_org(1, "free")], [])).severity == "ok"
    no_customer = _org(2, "free")
    no_customer["stripe_customer_id"] = None  # a free organisation that never paid: nothing to map
    assert checks.missing_customer_mapping(_accounts([_org(1, "free"), no_customer], [])).severity == "ok"


def test_multiple_active_subscriptions(target, audited):
    _, _, found = audited
    finding = found["multiple_active_subscriptions"]
    assert finding.severity == "critical" and finding.items == target.planted["multiple_active_subscriptions"]
    assert finding.rows[0]["live_subscriptions"] == 2
    pro = _price("pro")
    assert checks.multiple_active_subscriptions(_accounts(
        [_org(1, "pro")], [_sub("cus_1", pro), _sub("cus_1", pro, status="past_due")])).items == ["cus_1"]
    assert checks.multiple_active_subscriptions(_accounts(
        [_org(1, "pro")], [_sub("cus_1", pro), _sub("cus_1", pro, status="canceled")])).severity == "ok"


def test_duplicate_usage_events(target, audited):
    _, _, found = audited
    finding = found["duplicate_usage_events"]
    assert finding.severity == "warning" and finding.items == target.planted["duplicate_usage_events"]
    seeded = target.query("SELECT idempotency_key FROM usage_events WHERE id = 1")[0][0]
    assert seeded in finding.items, "the seed's retried event (usage_events id 1, twice)"
    assert all(r["copies"] == 2 for r in finding.rows)
    with target.engine.connect() as conn:
        later = checks.duplicate_usage_events(quota.find_duplicates(conn, MAPPING, since=datetime.now(timezone.utc) + timedelta(days=1)))
    assert later.severity == "ok"


# --------------------------------------------------------------------------- plans


def test_plans_from_the_target_table_and_the_file(target, tmp_path):
    with target.engine.connect() as conn:
        book = quota.load_plans(conn, MAPPING)
        assert book.source.startswith("the target's plan table")
        assert {c: p.usage_limit for c, p in book.plans.items()} == {c: lim for c, _, _, lim, _ in seed.PLANS}
        assert not book.notes
        assert book.plan_for_price("price_demo_team_monthly") == "team"

        other = tmp_path / "plans.yaml"
        other.write_text("plans:\n  pro: {usage_limit: 40000, paid: true}\n  scale: {usage_limit: null, paid: true}\n"
                         "stripe:\n  prices: {price_scale: scale, price_gone: legacy}\n")
        mixed = quota.load_plans(conn, MAPPING, other)
        assert mixed.limit("pro") == 50_000 and mixed.limit("scale") is None
        assert any("'pro'" in n and "40000" in n for n in mixed.notes)
        assert any("legacy" in n for n in mixed.notes)
        only_file = quota.load_plans(conn, MAPPING, other, limits="params")
        assert only_file.limit("pro") == 40_000 and only_file.get("free") is None
    without_table = SchemaMap(MAPPING.path, {k: v for k, v in MAPPING.entities.items() if k != "plans"})
    assert quota.load_plans(None, without_table).source.endswith("plans.yaml")
    with pytest.raises(ConfigurationError, match="plan_limits=database needs"):
        quota.load_plans(None, without_table, limits="database")
    with pytest.raises(ConfigurationError, match="does not exist"):
        quota.load_plans(None, without_table, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("plans:\n  pro: {usage_limit: lots}\n")
    with pytest.raises(ConfigurationError, match="usage_limit must be a whole number"):
        quota.load_plans(None, without_table, bad)


def test_plots_draw(target, audited):
    accounts, usage, _ = audited
    limited = [r for r in usage if r["usage_limit"]]
    scatter = plots.usage_against_limit(usage).axes[0]
    assert sum(len(c.get_offsets()) for c in scatter.collections) == len(limited), "one dot per limited organisation"
    bars = plots.customers_by_plan(accounts).axes[0]
    assert bars.patches and sum(p.get_width() for p in bars.patches) == len(accounts.organisations)
    for empty, says in ((plots.usage_against_limit([]), "No organisation is on a plan with a usage limit"),
                        (plots.customers_by_plan(_accounts([], [])), "No organisations")):
        assert [t.get_text() for t in empty.axes[0].texts] == [says]
    for fig in (plots.usage_against_limit(usage), plots.customers_by_plan(accounts)):
        fig.savefig(__import__("io").BytesIO(), format="png")


def test_a_plan_with_more_organisations_than_dots_draws_everyone_near_the_limit_and_a_sample_of_the_rest():
    many = plots.MAX_DOTS_PER_PLAN * 3
    usage = [{"organisation_id": n, "plan": "pro", "usage_limit": 1000, "used": n % 700} for n in range(many)]
    usage += [{"organisation_id": f"near-{n}", "plan": "pro", "usage_limit": 1000, "used": 850 + n} for n in range(5)]
    usage += [{"organisation_id": "over", "plan": "pro", "usage_limit": 1000, "used": 1500},
              {"organisation_id": "small", "plan": "team", "usage_limit": 10, "used": 1}]
    ax = plots.usage_against_limit(usage, near_limit_pct=80).axes[0]
    ys = [y for c in ax.collections for _, y in c.get_offsets()]
    assert len(ys) == plots.MAX_DOTS_PER_PLAN + 5 + 1 + 1
    assert sum(1 for y in ys if y >= 80) == 6, "every organisation at or over the line is drawn"
    assert {t.get_text().strip() for t in ax.texts} == {"over", *(f"near-{n}" for n in range(5))}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("team") and "drawn" not in ticks[0]
    assert f"{plots.MAX_DOTS_PER_PLAN:,} of {many:,} under 80 % drawn" in ticks[1] and f"{many + 6:,} org(s)" in ticks[1]
    again = plots.usage_against_limit(usage, near_limit_pct=80).axes[0]
    assert [list(c.get_offsets().ravel()) for c in again.collections] == \
        [list(c.get_offsets().ravel()) for c in ax.collections], "the same picture for the same data"


# --------------------------------------------------------------------------- built data


PLANS = None


def _plans():
    global PLANS
    if PLANS is None:
        without_table = SchemaMap(MAPPING.path, {k: v for k, v in MAPPING.entities.items() if k != "plans"})
        PLANS = quota.load_plans(None, without_table)
    return PLANS


def _price(plan: str) -> dict:
    return o.make_price(product=f"prod_demo_{plan}", unit_amount=2900, interval="month", id=f"price_demo_{plan}_monthly")


def _sub(customer: str, price: dict, *, status: str = "active", id: str | None = None) -> dict:
    return o.make_subscription(customer=customer, items=[(price, 1)], status=status, id=id, created=1_700_000_000)


def _org(org_id: int, plan: str, *, blocked: bool = False) -> dict:
    return {"id": org_id, "name": f"Org {org_id}", "plan": plan, "stripe_customer_id": f"cus_{org_id}", "is_blocked": blocked}


def _app_sub(org_id: int, sub_id: str, status: str) -> dict:
    return {"organisation_id": org_id, "stripe_subscription_id": sub_id, "stripe_price_id": "price_demo_pro_monthly",
            "plan": "pro", "status": status, "current_period_start": datetime(2026, 1, 1, tzinfo=timezone.utc),
            "current_period_end": datetime(2026, 2, 1, tzinfo=timezone.utc)}


def _accounts(orgs: list[dict], subs: list[dict], *, app_subs: list[dict] | None = None):
    customers = [o.make_customer(id=org["stripe_customer_id"]) for org in orgs if org["stripe_customer_id"]]
    if app_subs is None:
        app_subs = [_app_sub(int(s["customer"].split("_")[1]), s["id"], s["status"]) for s in subs]
    return quota.join_accounts({"organisations": orgs, "subscriptions": app_subs},
                               {"customers": customers, "subscriptions": subs}, _plans(),
                               now=datetime(2026, 1, 15, tzinfo=timezone.utc))


def _usage_row(org_id: int, *, used: int, stored=..., limit: int | None = 1000, plan: str = "free",
               blocked: bool = False) -> dict:
    """A recompute_usage row; ``stored`` defaults to ``used`` (no drift), None means no counter."""
    stored = used if stored is ... else stored
    if plan != "free" and limit == 1000:
        limit = _plans().limit(plan)
    return {"organisation_id": org_id, "name": f"Org {org_id}", "plan": plan, "usage_limit": limit, "used": used,
            "stored": stored,
            "pct": round(100.0 * used / limit, 1) if limit else None, "events": 1, "repeated": 0, "counter_rows": 1,
            "period_start": datetime(2026, 1, 1, tzinfo=timezone.utc), "period_end": datetime(2026, 2, 1, tzinfo=timezone.utc),
            "period_source": PERIOD_CALENDAR, "is_blocked": blocked}
