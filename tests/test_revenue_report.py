"""revenue_report end to end: the demo's data (seed 7, scale 0.1, its billing history and revenue
scenarios) on a real PostgreSQL 18, the Stripe emulator through the real stripe SDK, and the
notebook itself under papermill.

The MRR is recomputed here from the emulator's raw JSON (plain HTTP, none of ops_lib.revenue) and
must match to the cent; the checks and the notebook's displayed findings must equal what
``billing_history.plant`` says it planted.

The demo's data is built relative to a moment (``seed.build(now=...)``) and the report of "the
current month so far" depends on where in its month that moment falls: on the 1st at 00:05 the
month so far is five minutes long. So the module runs at the real clock and again at moments that
are hard for it (a month's first minutes, its last second, after a short February), with the
report's period resolved at the data's moment; and a sweep over the moments of a month checks the
data set's shape without a database.
"""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib import stripe_mirror
from ops_lib.db import make_engine
from ops_lib.demo import billing_history, seed, stripe_account
from ops_lib.findings import FINDING_MIME, METRICS_MIME
from ops_lib.revenue import checks, conversion, data as rdata, money, movements, mrr, payments, revenue
from ops_lib.revenue.period import resolve_period
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_api import API_VERSION, make_client
from ops_lib.stripe_emulator import start_emulator, stop_emulator, write_state

from .conftest import Database

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
API_KEY = "sk_test_51OpsbookRevenueReport0000000wxyz"
DAY = 86_400
UTC = timezone.utc

# The moments the whole module runs at: the real clock (what CI meets) and fixed ones a clock may
# meet any month. In the past, so that nothing is dated after the real now either.
MOMENTS = {
    "now": None,
    "1st-00:05": datetime(2026, 11, 1, 0, 5, tzinfo=UTC),
    "1st-00:01:30": datetime(2026, 9, 1, 0, 1, 30, tzinfo=UTC),
    "15th-noon": datetime(2026, 11, 15, 12, 0, tzinfo=UTC),
    "31st-23:59": datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC),
    "march-1st-after-february": datetime(2026, 3, 1, 1, 0, tzinfo=UTC),
}

# MRR (minor units) of each scenario organisation at the demo's "now", worked out by hand.
EXPECTED_MRR = {
    "Annual Analytics": ("usd", Fraction(99_000, 12)),                # yearly ÷ 12
    "Weekly Wonders": ("usd", Fraction(700 * 52, 12)),               # weekly × 52/12
    "Quarterly Quants": ("usd", Fraction(27_000, 3) * Fraction(9, 10)),  # ÷ interval_count 3, customer's 10 % off
    "Percent Partners": ("usd", Fraction(2_900) * Fraction(8, 10)),  # 20 % off forever
    "Amount Associates": ("usd", Fraction(9_900 - 1_000)),           # $10 off, repeating, still running
    "Tokyo Tsubasa KK": ("jpy", Fraction(4_900)),                    # zero-decimal: ¥4,900
    "Trial Troupe": ("usd", Fraction(0)),                            # trialing
    "Leaving Logistics": ("usd", Fraction(2_900)),                   # cancels at period end: still counts
    "Tiered Telemetry": ("usd", Fraction(2_900)),                    # the tiered add-on left out
    "Metered Mailers": ("usd", Fraction(9_900)),                     # the metered add-on left out
    "Lapsed Labs": ("usd", Fraction(0)),                             # past_due 40 days > 30
    "Late Payments Ltd": ("usd", Fraction(2_900)),                   # past_due within the grace
    "Seats Galore": ("usd", Fraction(5 * 2_900)),                    # 5 seats
    "Downsized Digital": ("usd", Fraction(2_900)),
    "Churned Chairs": ("usd", Fraction(0)),
    "Fresh Foods": ("usd", Fraction(2_900 - 500)),                   # $5 once, in its first period
    "Two Teams Trading": ("usd", Fraction(2_900)),
    "Comeback Coffee": ("usd", Fraction(9_900)),
}


# --------------------------------------------------------------------------- the demo-like target


@pytest.fixture(scope="module", params=list(MOMENTS))
def target(request, pg18, tmp_path_factory):
    db = Database(pg18)
    data = seed.build(seed=7, scale=0.1, now=MOMENTS[request.param])
    with db.admin.connect() as conn:
        seed.load(conn, data)
    account, _plan = stripe_account.build(data, api_key=API_KEY, receiver_url="http://127.0.0.1:9/stripe/webhook")
    manifest = billing_history.plant(db.admin, data, account)
    state_path = tmp_path_factory.mktemp("revenue-stripe") / "stripe.json"
    write_state(state_path, account)
    server, thread, api_base = start_emulator(state_path)
    engine = make_engine(db.url, runbook="revenue_report", run_id="test")
    try:
        yield {"db": db, "data": data, "account": account, "manifest": manifest, "api_base": api_base,
               "engine": engine, "server": server}
    finally:
        engine.dispose()
        stop_emulator(server, thread)
        db.drop()


@pytest.fixture(scope="module")
def report(target):
    """What the notebook computes, through the library and the real SDK, for the current month so
    far at the data's moment (the real clock may have moved on into the next month since)."""
    client = make_client(API_KEY, target["api_base"])
    period = resolve_period(now=target["data"].now)
    target["server"].emulator.requests.clear()
    stripe_data = rdata.fetch_stripe(client, period)
    requests = dict(target["server"].emulator.requests)
    book = mrr.MRRBook(stripe_data.subscriptions, stripe_data.invoices, grace_days=30)
    at_end = book.closing(period.until_ts)
    with target["engine"].connect() as conn:
        app = payments.app_payments(conn, MAPPING, stripe_data)
    return {"period": period, "data": stripe_data, "book": book, "at_end": at_end, "app": app,
            "totals": mrr.mrr_by_currency(at_end), "requests": requests}


def test_the_stripe_mirror_gives_the_records_stripe_lists_from_its_rows(target, report, tmp_path, monkeypatch):
    """Mirrored (cold, then warm), every kind's records are those read from Stripe directly, the
    subscriptions, invoices, charges and balance transactions made from the mirror's rows."""
    monkeypatch.setenv("OPSBOOK_HOME", str(tmp_path))
    monkeypatch.setenv(stripe_mirror.MIRROR_VARIABLE, "on")  # (the emulator is mirrored only when asked)
    from_rows: dict[str, int] = defaultdict(int)

    def counted(kind, build):
        def counting(*args):
            from_rows[kind] += 1
            return build(*args)
        return counting

    monkeypatch.setattr(rdata.Compactor, "_subscription_row", counted("subscriptions", rdata.Compactor._subscription_row))
    monkeypatch.setattr(rdata.Compactor, "_invoice_row", counted("invoices", rdata.Compactor._invoice_row))
    monkeypatch.setattr(rdata, "_ROW_CHARGE", counted("charges", rdata._ROW_CHARGE))
    monkeypatch.setattr(rdata, "_ROW_BALANCE_TRANSACTION",
                        counted("balance_transactions", rdata._ROW_BALANCE_TRANSACTION))
    for _run in ("cold", "warm"):
        from_rows.clear()
        mirrored = rdata.fetch_stripe(make_client(API_KEY, target["api_base"]), report["period"])
        for kind in ("subscriptions", "invoices", "charges", "refunds", "disputes", "balance_transactions"):
            assert getattr(mirrored, kind) == getattr(report["data"], kind), kind
        for kind, count in from_rows.items():
            assert count >= len(getattr(mirrored, kind)) // 2, (kind, count)
        assert set(from_rows) == {"subscriptions", "invoices", "charges", "balance_transactions"} or \
            not report["data"].charges


def raw_list(api_base: str, path: str, **params) -> list[dict]:
    """Every object of a Stripe list, over plain HTTP: JSON as the API serves it."""
    objects, after = [], None
    while True:
        query = dict(params, limit=100, **({"starting_after": after} if after else {}))
        request = urllib.request.Request(f"{api_base}{path}?{urllib.parse.urlencode(query)}", headers={
            "Authorization": f"Bearer {API_KEY}", "Stripe-Version": API_VERSION})
        with urllib.request.urlopen(request) as response:
            page = json.load(response)
        objects += page["data"]
        if not page["has_more"]:
            return objects
        after = page["data"][-1]["id"]


# --------------------------------------------------------------------------- an independent MRR


def independent_mrr(subscriptions: list[dict], customers: dict[str, dict], now: int, grace_days: int = 30):
    """MRR per currency and per customer, written from the definitions, not from ops_lib.revenue."""
    per_month = {"day": Fraction(365, 12), "week": Fraction(52, 12), "month": Fraction(1), "year": Fraction(1, 12)}
    totals, by_customer = defaultdict(Fraction), defaultdict(Fraction)
    for sub in subscriptions:
        if sub["status"] == "past_due":
            if now - sub["current_period_start"] > grace_days * DAY:
                continue
        elif sub["status"] != "active" or sub["pause_collection"]:
            continue
        amount, factor = Fraction(0), None
        for item in sub["items"]["data"]:
            price = item["price"]
            if price["recurring"]["usage_type"] == "metered" or price["unit_amount"] is None:
                continue
            f = per_month[price["recurring"]["interval"]] / price["recurring"]["interval_count"]
            factor = factor or f
            amount += price["unit_amount"] * item["quantity"] * f
        discount = sub["discount"] or customers[sub["customer"]]["discount"]
        if discount and discount["start"] <= now:
            coupon = discount["coupon"]
            live = (coupon["duration"] == "forever"
                    or coupon["duration"] == "repeating" and now < discount["end"]
                    or coupon["duration"] == "once" and discount["start"] >= sub["current_period_start"])
            if live and coupon["percent_off"] is not None:
                amount -= amount * Fraction(str(coupon["percent_off"])) / 100
            elif live:
                amount = max(Fraction(0), amount - coupon["amount_off"] * factor)
        totals[sub["currency"]] += amount
        by_customer[sub["customer"]] += amount
    return totals, by_customer


def test_mrr_per_currency_matches_an_independent_computation_to_the_cent(target, report):
    api_base = target["api_base"]
    subscriptions = raw_list(api_base, "/v1/subscriptions", status="all")
    customers = {c["id"]: c for c in raw_list(api_base, "/v1/customers")}
    expected, by_customer = independent_mrr(subscriptions, customers, report["period"].until_ts - 1)
    got = {row["currency"]: row for row in report["totals"]}
    assert set(got) == set(expected) == {"usd", "jpy"}
    for currency, amount in expected.items():
        assert money.round_minor(got[currency]["mrr_minor"]) == money.round_minor(amount), currency
        assert got[currency]["mrr"] == money.major(amount, currency)
        assert got[currency]["arr"] == money.major(amount * 12, currency)
    assert got["jpy"]["mrr"] == 4900.0  # not ¥49

    # The scenario organisations, one rule each, against hand-worked figures.
    names = {c["name"]: c["id"] for c in customers.values()}
    for name, (currency, amount) in EXPECTED_MRR.items():
        assert by_customer[names[name]] == amount, name
        mine = sum((r.amount for r in report["at_end"] if r.customer == names[name]), Fraction(0))
        assert mine == amount, name


def test_stripe_is_read_once_per_kind_with_filters_pushed(report):
    calls = report["requests"]
    assert calls["/v1/charges"] == 1 and calls["/v1/refunds"] == 1
    assert calls["/v1/disputes"] == 1 and calls["/v1/balance_transactions"] == 1
    for path, objects in (("/v1/invoices", report["data"].invoices), ("/v1/subscriptions", report["data"].subscriptions)):
        assert calls[path] == max(1, -(-len(objects) // 100)), path  # pages of 100, nothing fetched twice
    period = report["period"]
    assert all(c["created"] >= period.start_ts - DAY for c in report["data"].charges)
    assert all(period.contains(r["created"]) for r in report["data"].refunds + report["data"].disputes)


def test_the_history_adds_up_ends_at_the_current_mrr_and_shows_every_movement(report):
    history = movements.history(report["book"], report["period"], months=12)
    assert checks.mrr_identity_broken(history, report["totals"]).severity == "ok"
    last = {r["currency"]: r for r in history if r["month"] == report["period"].label}
    for total in report["totals"]:
        assert last[total["currency"]]["end"] == total["mrr_minor"]
    assert all(movements.identity_gap(r) == 0 for r in history)

    moves = movements.customer_movements(report["book"], report["period"].start_ts, report["period"].until_ts)
    names = {c["id"]: c["name"] for c in (s["customer"] for s in report["data"].subscriptions)}
    kinds = defaultdict(set)
    for m in moves:
        kinds[m["movement"]].add(names[m["customer"]])
    assert kinds["new"] == {"Fresh Foods"}
    assert kinds["expansion"] == {"Seats Galore"}
    assert kinds["reactivation"] == {"Comeback Coffee"}
    assert kinds["contraction"] == {"Downsized Digital", "Two Teams Trading"}  # Two Teams keeps its Pro: not a churn
    assert "Churned Chairs" in kinds["churn"] and kinds["churn"] <= {"Churned Chairs", "Lapsed Labs"}


def test_the_periods_mrr_movements_are_metrics_equal_to_the_table_that_add_up(report):
    metrics = movements.movement_metrics(report["book"], report["period"])
    history = movements.history_table(movements.history(report["book"], report["period"], months=2))
    totals = {t["currency"]: t for t in report["totals"]}
    assert {key.rsplit("_", 1)[1] for key in metrics} == set(totals) == {"usd", "jpy"}
    for currency, total in totals.items():
        this, before = (next(r for r in history if r["currency"] == currency and r["month"] == month)
                        for month in (report["period"].label, history[0]["month"]))
        m = {k: metrics[f"mrr_{k}_{currency}"] for k in ("opening", "closing", *movements.MOVEMENTS)}
        # what the movements table shows (contraction and churn there with their sign)
        assert m["opening"] == this["start_mrr"] == before["end_mrr"]
        assert m["closing"] == this["end_mrr"] == total["mrr"]  # the MRR metric, mrr_<currency>
        for movement in movements.MOVEMENTS:
            assert m[movement] == abs(this[movement]) and m[movement] >= 0, movement
        half_cent = 0.5 / 10 ** money.exponent(currency)  # each figure is rounded on its own
        assert abs(m["opening"] + m["new"] + m["expansion"] + m["reactivation"] - m["contraction"] - m["churn"]
                   - m["closing"]) <= 6 * half_cent
    # against the hand-worked figures: Fresh Foods is the period's only new customer, Comeback Coffee
    # the only one reactivated; the yen account did not move
    assert metrics["mrr_new_usd"] == money.major(EXPECTED_MRR["Fresh Foods"][1], "usd") == 24.0
    assert metrics["mrr_reactivation_usd"] == money.major(EXPECTED_MRR["Comeback Coffee"][1], "usd") == 99.0
    assert metrics["mrr_opening_jpy"] == metrics["mrr_closing_jpy"] == 4900.0 and metrics["mrr_new_jpy"] == 0
    assert metrics["mrr_churn_usd"] > 0 and metrics["mrr_contraction_usd"] > 0 and metrics["mrr_expansion_usd"] > 0


def test_revenue_by_plan_against_the_raw_objects(target, report):
    period, api_base = report["period"], target["api_base"]
    rows = revenue.revenue_by_plan(report["data"])
    totals = {t["currency"]: t for t in revenue.revenue_totals(rows)}
    invoices = raw_list(api_base, "/v1/invoices", status="paid")
    charges = raw_list(api_base, "/v1/charges")
    txns = [t for t in raw_list(api_base, "/v1/balance_transactions") if period.contains(t["created"])]
    for currency in ("usd", "jpy"):
        gross = sum(i["amount_paid"] for i in invoices if i["currency"] == currency
                    and period.contains(i["status_transitions"]["paid_at"]))
        gross += sum(c["amount"] for c in charges if c["currency"] == currency and c["status"] == "succeeded"
                     and not c["invoice"] and period.contains(c["created"]))
        assert totals[currency]["gross"] == gross
        assert totals[currency]["fees"] == sum(t["fee"] for t in txns if t["currency"] == currency)
        assert totals[currency]["net"] == sum(t["net"] for t in txns if t["currency"] == currency)
    refunds = [r for r in raw_list(api_base, "/v1/refunds") if period.contains(r["created"])]
    disputes = [d for d in raw_list(api_base, "/v1/disputes") if period.contains(d["created"])]
    assert len(refunds) == 2 and len(disputes) == 1
    assert totals["usd"]["refunded"] == sum(r["amount"] for r in refunds)
    assert totals["usd"]["disputed"] == disputes[0]["amount"]
    plans = {r["plan"] for r in rows if r["currency"] == "usd"}
    assert {"pro", "team", "API calls (tiered)", "Campaign sends (metered)"} <= plans
    assert [r for r in rows if r["currency"] == "jpy"][0]["gross"] == 4_900  # minor units of JPY: yen


def test_every_check_finds_what_was_planted(target, report):
    planted, data = target["manifest"], report["data"]
    found = {
        "unpriced_items": checks.unpriced_items(report["at_end"]),
        "payment_success_rate_low": checks.payment_success_rate_low(data.charges_in_period),
        "revenue_mismatch": checks.revenue_mismatch(payments.reconcile(data, report["app"])),
        "mrr_identity_broken": checks.mrr_identity_broken(movements.history(report["book"], report["period"]),
                                                          report["totals"]),
        "trial_conversion_low": conversion.trial_conversion_low(conversion.trial_cohorts(data.subscriptions, data.period.until_ts)),
    }
    assert set(found) == set(planted)
    for check, finding in found.items():
        assert finding.items == planted[check], check
        assert finding.severity == ("ok" if not planted[check] else {"unpriced_items": "info"}.get(check, "warning"))
    stats = revenue.success_rate(data.charges_in_period)
    assert stats["success_rate_pct"] < 99 and stats["pending"] == 1
    codes = {r["failure_code"] for r in revenue.failures_by_code(data.charges_in_period)}
    assert {"card_declined", "insufficient_funds", "expired_card", "incorrect_cvc"} <= codes
    problems = {r["charge"]: r["problem"] for r in found["revenue_mismatch"].rows}
    assert sorted(problems.values()) == ["amount differs", "missing in the app"]


def test_each_check_is_healthy_once_its_problem_is_gone(target, report):
    data = report["data"]
    assert checks.payment_success_rate_low(data.charges_in_period, threshold_pct=50).severity == "ok"
    # The app's records, corrected: the missing payment recorded, the wrong amount fixed.
    by_id = {c["id"]: c for c in data.charges}
    fixed = [dict(p) for p in report["app"]]
    for charge_id in target["manifest"]["revenue_mismatch"]:
        charge = by_id[charge_id]
        row = next((p for p in fixed if p["stripe_charge_id"] == charge_id), None)
        if row is None:
            fixed.append({"organisation_id": None, "stripe_charge_id": charge_id, "stripe_invoice_id": charge["invoice"],
                          "amount": charge["amount"], "currency": charge["currency"], "status": "succeeded",
                          "paid_at": datetime.fromtimestamp(charge["created"], timezone.utc)})
        else:
            row["amount"] = charge["amount"]
    assert checks.revenue_mismatch(payments.reconcile(data, fixed)).severity == "ok"
    # A tolerance above the proration credit hides the wrong amount, not the missing payment.
    assert len(payments.reconcile(data, report["app"], tolerance=1_000)) == 1
    paying = [r for r in report["at_end"] if not r.unpriced]
    assert checks.unpriced_items(paying).severity == "ok"


def test_the_database_agrees_with_stripe_for_every_organisation(target):
    """Other runbooks (quota_audit) compare the app's plans and subscriptions with Stripe: no drift here."""
    subs = {s["id"]: s for s in raw_list(target["api_base"], "/v1/subscriptions", status="all")}
    prices = {p["id"]: p for p in raw_list(target["api_base"], "/v1/prices")}
    with target["db"].admin.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT o.id, o.plan_code AS org_plan, o.stripe_customer_id, s.stripe_subscription_id, s.stripe_price_id, "
            "s.plan_code, s.status, s.current_period_start, s.current_period_end, s.cancel_at_period_end "
            "FROM subscriptions s JOIN organizations o ON o.id = s.organization_id")).mappings().all()
        orgs = conn.execute(sa.text("SELECT id, plan_code, stripe_customer_id FROM organizations")).mappings().all()
    assert {r["stripe_subscription_id"] for r in rows} == set(subs)
    for row in rows:
        sub = subs[row["stripe_subscription_id"]]
        assert sub["customer"] == row["stripe_customer_id"]
        assert (sub["status"], sub["items"]["data"][0]["price"]["id"]) == (row["status"], row["stripe_price_id"])
        assert prices[row["stripe_price_id"]]["metadata"]["plan"] == row["plan_code"]
        assert int(row["current_period_start"].timestamp()) == sub["current_period_start"]
        assert int(row["current_period_end"].timestamp()) == sub["current_period_end"]
        assert row["cancel_at_period_end"] == sub["cancel_at_period_end"]
    live = defaultdict(set)
    for sub in subs.values():
        if sub["status"] in ("active", "trialing", "past_due"):
            live[sub["customer"]].add(prices[sub["items"]["data"][0]["price"]["id"]]["metadata"]["plan"])
    for org in orgs:
        assert {org["plan_code"]} == (live[org["stripe_customer_id"]] or {"free"}), org["id"]
    # The app's payments match Stripe's charges, except the planted mismatches.
    with target["db"].admin.connect() as conn:
        paid = {r[0]: r[1] for r in conn.execute(sa.text("SELECT stripe_charge_id, amount FROM payments"))}
    charges = {c["id"]: c for c in raw_list(target["api_base"], "/v1/charges") if c["status"] == "succeeded"}
    differs = {cid for cid, c in charges.items() if paid.get(cid) != c["amount"]}
    assert differs == set(target["manifest"]["revenue_mismatch"])


@pytest.mark.parametrize("target", ["now"], indirect=True)  # a notebook runs on the real clock
def test_the_notebook_displays_exactly_the_planted_findings(target, tmp_path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("DATABASE_URL", target["db"].url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", target["api_base"])
    for name in ("STRIPE_WEBHOOK_SECRET", "OPSBOOK_WEBHOOK_URL", "OPSBOOK_SCHEMA", "OPSBOOK_DEMO"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "revenue_report.ipynb"
    parameters = {"run_id": "revenue_report-test"}
    built_in = target["data"].now.strftime("%Y-%m")
    if datetime.now(UTC).strftime("%Y-%m") != built_in:  # a new month began since the data was built
        parameters["period"] = built_in
    pm.execute_notebook(str(REPO / "notebooks" / "revenue_report.ipynb"), str(out), kernel_name="python3",
                        parameters=parameters, progress_bar=False, cwd=str(REPO / "notebooks"))
    nb = json.loads(out.read_text())
    findings = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            if FINDING_MIME in output.get("data", {}):
                finding = output["data"][FINDING_MIME]
                findings[finding["check"]] = finding
    assert {check: finding.get("items", []) for check, finding in findings.items()} == target["manifest"]
    metrics = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            metrics.update(output.get("data", {}).get(METRICS_MIME, {}))
    for cur in ("usd", "jpy"):  # the period's movements, in the run's JSON, ending at the MRR metric
        m = {k: metrics[f"mrr_{k}_{cur}"] for k in ("opening", "new", "expansion", "reactivation", "contraction",
                                                     "churn", "closing")}
        assert m["closing"] == metrics[f"mrr_{cur}"]
        assert abs(m["opening"] + m["new"] + m["expansion"] + m["reactivation"] - m["contraction"] - m["churn"]
                   - m["closing"]) <= 0.03
    assert metrics["mrr_new_usd"] == 24.0 and metrics["mrr_reactivation_usd"] == 99.0  # Fresh Foods, Comeback Coffee
    figures = sum(1 for cell in nb["cells"] for output in cell.get("outputs", []) if "image/png" in output.get("data", {}))
    assert figures == 3
    assert API_KEY not in out.read_text()


def test_a_past_month_and_a_currency_filter(target, report):
    client = make_client(API_KEY, target["api_base"])
    previous = rdata.fetch_stripe(client, resolve_period("previous", now=target["data"].now))
    book = mrr.MRRBook(previous.subscriptions, previous.invoices)
    closed = mrr.mrr_by_currency(book.closing(previous.period.until_ts))
    history = movements.history(book, previous.period, months=6)
    assert checks.mrr_identity_broken(history, closed).severity == "ok"
    # Last month's close, rebuilt from invoices, is where this month's report starts.
    this_month = {r["currency"]: r for r in movements.history(report["book"], report["period"], months=1)}
    for total in closed:
        assert this_month[total["currency"]]["start"] == total["mrr_minor"], total["currency"]

    yen = rdata.fetch_stripe(client, report["period"], currencies=["JPY"])
    assert {s["currency"] for s in yen.subscriptions} == {"jpy"} and yen.charges
    assert [r["currency"] for r in mrr.mrr_by_currency(mrr.MRRBook(yen.subscriptions, yen.invoices).closing(
        yen.period.until_ts))] == ["jpy"]
    assert checks.payment_success_rate_low(yen.charges_in_period).severity == "ok"
    assert payments.reconcile(yen, report["app"]) == []  # the USD mismatches are not in a JPY report
    assert {r["currency"] for r in revenue.revenue_by_plan(yen)} == {"jpy"}


def test_the_stripe_objects_are_consistent_with_each_other(target):
    api_base = target["api_base"]
    charges = {c["id"]: c for c in raw_list(api_base, "/v1/charges")}
    for refund in raw_list(api_base, "/v1/refunds"):
        assert charges[refund["charge"]]["amount_refunded"] >= refund["amount"]
    assert [charges[d["charge"]]["disputed"] for d in raw_list(api_base, "/v1/disputes")] == [True]
    invoices = {i["id"]: i for i in raw_list(api_base, "/v1/invoices")}
    for charge in charges.values():
        if charge["status"] == "succeeded":
            assert charge["balance_transaction"] and charge["invoice"] in invoices
    for sub in raw_list(api_base, "/v1/subscriptions", status="all"):
        latest = invoices[sub["latest_invoice"]]
        assert latest["subscription"] == sub["id"] and latest["created"] == max(
            i["created"] for i in invoices.values() if i["subscription"] == sub["id"])
    customers = {c["id"]: c for c in raw_list(api_base, "/v1/customers")}
    for sub in raw_list(api_base, "/v1/subscriptions", status="all"):
        assert customers[sub["customer"]]["created"] <= sub["created"]


@pytest.mark.parametrize("path, params", [
    ("/v1/subscriptions", {"status": "all", "expand[]": "data.customer"}), ("/v1/invoices", {}),
    ("/v1/charges", {}), ("/v1/refunds", {}), ("/v1/disputes", {}), ("/v1/balance_transactions", {}),
    ("/v1/prices", {"expand[]": "data.tiers"}), ("/v1/customers", {}),
])
def test_the_planted_objects_have_stripes_shapes(target, path, params):
    """Every object billing_history adds, as the emulator serves it, validates against the 2023-08-16 spec."""
    from .stripe_spec import load_spec

    spec = load_spec()
    validator = spec.response_validator(path)
    objects = raw_list(target["api_base"], path, **params)
    for start in range(0, len(objects), 100):
        page = {"object": "list", "data": objects[start:start + 100], "has_more": False, "url": path}
        assert spec.errors(validator, page) == []


# --------------------------------------------------------------------------- any moment of a month


def sweep_moments() -> list[datetime]:
    """Moments across a 31-day month (a step that visits every hour of the day in turn), its
    first minutes and last second, and the last second of months of every length."""
    october = datetime(2026, 10, 1, tzinfo=UTC)
    moments = [october + timedelta(seconds=s) for s in (30, 90, 300, 1_800, 3_600)]
    moment = october + timedelta(hours=11, minutes=17)
    while moment.month == 10:
        moments.append(moment)
        moment += timedelta(hours=11, minutes=17)
    moments += [datetime(*day, 23, 59, 59, tzinfo=UTC) for day in
                ((2026, 10, 31), (2026, 2, 28), (2024, 2, 29), (2026, 4, 30), (2026, 9, 30))]
    return moments + [datetime(2026, 3, 1, 0, 5, tzinfo=UTC), datetime(2025, 1, 1, 0, 2, tzinfo=UTC)]


def test_the_demo_has_a_month_so_far_to_report_at_any_moment():
    """For every moment of a month, the demo's Stripe data (built for that moment, without a
    database) has what the report of the month so far shows, and nothing dated after the moment."""
    for moment in sweep_moments():
        data = seed.build(seed=7, scale=0.1, now=moment)
        account, _plan = stripe_account.build(data, api_key=API_KEY, receiver_url="http://127.0.0.1:9/stripe/webhook")
        manifest = billing_history.plant(None, data, account)
        check_the_month_so_far(account["objects"], manifest, int(moment.timestamp()), str(moment))


def check_the_month_so_far(objects: dict, manifest: dict, now: int, moment: str) -> None:
    start = int(datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0).timestamp())
    in_month = lambda ts: ts is not None and start <= ts < now  # noqa: E731
    for kind, items in objects.items():
        for obj in items:
            assert obj["created"] <= now, (moment, kind, obj["id"])
    invoices = {i["id"]: i for i in objects["invoice"]}
    charges = {c["id"]: c for c in objects["charge"]}
    for invoice in invoices.values():
        paid_at = invoice["status_transitions"]["paid_at"]
        assert paid_at is None or invoice["created"] <= paid_at < now, (moment, invoice["id"])
    for charge in charges.values():
        if charge["invoice"]:
            assert charge["created"] >= invoices[charge["invoice"]]["created"], (moment, charge["id"])
    for refund in objects["refund"] + objects["dispute"]:
        assert refund["created"] >= charges[refund["charge"]]["created"], (moment, refund["id"])

    month = [c for c in charges.values() if in_month(c["created"])]
    succeeded = [c for c in month if c["status"] == "succeeded"]
    failed = [c for c in month if c["status"] == "failed"]
    assert {c["currency"] for c in succeeded} == {"usd", "jpy"}, moment
    assert {"card_declined", "insufficient_funds", "expired_card", "incorrect_cvc"} <= {
        c["failure_code"] for c in failed}, moment
    assert 100 * len(succeeded) / (len(succeeded) + len(failed)) < 99, moment
    assert [c["status"] for c in month].count("pending") == 1, moment
    assert sum(in_month(r["created"]) for r in objects["refund"]) == 2, moment
    assert sum(in_month(d["created"]) for d in objects["dispute"]) == 1, moment
    paid = [i for i in invoices.values() if in_month(i["status_transitions"]["paid_at"])]
    assert [i["currency"] for i in paid].count("jpy") == 1, moment
    prices = {line["price"]["id"] for i in paid for line in i["lines"]["data"]}
    assert {"price_demo_api_calls_tiered", "price_demo_sends_metered", "price_demo_pro_monthly",
            "price_demo_team_monthly"} <= prices, moment
    assert manifest["payment_success_rate_low"] == [c["id"] for c in sorted(failed, key=lambda c: (c["created"], c["id"]))]
    assert len(manifest["revenue_mismatch"]) == 2 and all(in_month(charges[c]["created"]) for c in manifest["revenue_mismatch"])
    assert len(manifest["unpriced_items"]) == 2, moment
    for sub in objects["subscription"]:
        if sub["status"] in ("active", "trialing", "past_due"):
            assert sub["current_period_start"] <= now < sub["current_period_end"], (moment, sub["id"])


def test_the_window_lies_in_the_month_so_far_at_any_moment():
    for moment in sweep_moments():
        now = int(moment.timestamp())
        month_start = int(moment.replace(day=1, hour=0, minute=0, second=0).timestamp())
        win_start, win_end = billing_history.window(now)
        assert month_start < win_start <= win_end < now, moment
        assert win_end - win_start >= min(now - month_start, 20 * DAY) - 2 * 120 - 2, moment
