"""The webhook_failure checks and replay, against a real PostgreSQL 18 with the demo schema, the
demo app's real webhook receiver, and the Stripe emulator through the real stripe SDK.

Each check has a deliberate problem and a healthy case: the pure ones on built Stripe objects,
and all of them end to end on a small account where some paid checkouts were delivered, some
were not, one failed in the app, and one delivery was signed with a rotated-away secret.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib.audit import AuditLog
from ops_lib.db import make_engine
from ops_lib.demo.receiver import start_receiver, stop_receiver
from ops_lib.errors import ConfigurationError
from ops_lib.findings import Finding
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_api import make_client
from ops_lib.stripe_emulator import add_objects, new_state, start_emulator, stop_emulator, write_state
from ops_lib.stripe_emulator import objects as o
from ops_lib.webhooks import checks, plots
from ops_lib.webhooks.replay import USER_AGENT, plan_replay, replay_candidates, replay_events
from ops_lib.webhooks.signature import sign_with

REPO = Path(__file__).resolve().parent.parent
SCHEMA_SQL = REPO / "ops_lib" / "demo" / "schema.sql"
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
API_KEY = "sk_test_51OpsbookWebhookChecks000000wxyz"
SECRET = "whsec_" + "currentCurrentCurrentSecret01"  # made up; split so no scan takes it for a real one
OLD_SECRET = "whsec_" + "rolledAwayRolledAwaySecret02"
HOUR = 3600
RECEIVER_LOG = "opsbook.demo.webhooks"


# --------------------------------------------------------------------------- helpers


def ids(finding: Finding) -> set[str]:
    return set(finding.items)


def no_secret_in(*things) -> None:
    text = json.dumps([t.to_dict() if hasattr(t, "to_dict") else t for t in things], default=str)
    for secret in (SECRET, OLD_SECRET, SECRET[6:], OLD_SECRET[6:]):
        assert secret not in text


def paid_checkout(customer, *, created, credits="100", payment_status="paid", amount=4900):
    return o.make_checkout_session(customer=customer, amount_total=amount, currency="usd", created=created,
                                   payment_status=payment_status,
                                   metadata={"credits": credits} if credits else {})


def endpoint(url, events=checks.DEFAULT_EVENT_TYPES, status="enabled"):
    return o.make_webhook_endpoint(url, enabled_events=events, status=status)


def query(db, sql: str, **params) -> list[tuple]:
    with db.admin.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql), params)]


def deliveries(caplog, settle: float = 0.5) -> int:
    """POSTs the receiver answered (it logs one line per delivery, just after answering: so the
    count is read again until it stops changing)."""
    def count() -> int:
        return sum(1 for r in caplog.records if r.name == RECEIVER_LOG and " -> " in r.getMessage())

    seen = count()
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now != seen:
            seen, deadline = now, time.monotonic() + settle
    return seen


# --------------------------------------------------------------------------- configuration


def test_webhook_secret_configured():
    missing = checks.webhook_secret_configured(None, mode="live")
    assert missing.severity == "critical"
    assert "STRIPE_WEBHOOK_SECRET" in missing.remediation and "Signing secret" in missing.remediation
    assert "Developers → Webhooks" in missing.remediation
    assert checks.webhook_secret_configured("  ", mode="test").severity == "critical"

    api_key = checks.webhook_secret_configured(API_KEY, mode="test")
    assert api_key.severity == "warning" and "sk_test_" in api_key.title
    assert API_KEY[len("sk_test_"):] not in json.dumps(api_key.to_dict())

    junk = checks.webhook_secret_configured("0123456789abcdef0123", mode="test")
    assert junk.severity == "warning" and "whsec_" in junk.title and "0123" not in json.dumps(junk.to_dict())
    assert checks.webhook_secret_configured("whsec_abc", mode="test").severity == "warning"  # truncated
    assert checks.webhook_secret_configured(SECRET + "\n", mode="test").severity == "warning"

    good = checks.webhook_secret_configured(SECRET, mode="live")
    assert good.severity == "ok"
    no_secret_in(missing, api_key, junk, good)


def test_endpoint_disabled():
    app_url = "https://app.example.com/stripe/webhook"
    app = endpoint(app_url)
    app_off = endpoint(app_url + "/", status="disabled")
    other_off = endpoint("https://old.example.com/hooks", events=["*"], status="disabled")

    assert checks.endpoint_disabled([]).severity == "critical"
    none_enabled = checks.endpoint_disabled([app_off, other_off])
    assert none_enabled.severity == "critical" and ids(none_enabled) == {app_off["id"], other_off["id"]}

    app_is_off = checks.endpoint_disabled([app_off, endpoint("https://other.example.com/x")], webhook_url=app_url)
    assert app_is_off.severity == "critical" and ids(app_is_off) == {app_off["id"]}
    assert "app's webhook endpoint is disabled" in app_is_off.title

    no_app = checks.endpoint_disabled([endpoint("https://other.example.com/x")], webhook_url=app_url)
    assert no_app.severity == "critical" and no_app.count == 1

    others_off = checks.endpoint_disabled([app, other_off], webhook_url="HTTPS://APP.example.com:443/stripe/webhook/")
    assert others_off.severity == "info" and ids(others_off) == {other_off["id"]}
    assert checks.endpoint_disabled([app, other_off]).severity == "warning"  # app's URL unknown

    assert checks.endpoint_disabled([app], webhook_url=app_url).severity == "ok"
    assert checks.endpoint_disabled([app]).severity == "ok"


def test_endpoint_missing_event_types():
    app_url = "https://app.example.com/stripe/webhook"
    required = checks.DEFAULT_EVENT_TYPES
    partial = endpoint(app_url, events=["checkout.session.completed", "invoice.*"])
    finding = checks.endpoint_missing_event_types([partial], required, webhook_url=app_url)
    assert finding.severity == "critical" and ids(finding) == {partial["id"]}
    missing = finding.rows[0]["missing_types"]
    assert "checkout.session.async_payment_succeeded" in missing and "customer.subscription.updated" in missing
    assert "invoice.paid" not in missing and "checkout.session.completed" not in missing

    no_payment_intents = endpoint(app_url, events=[t for t in required if not t.startswith("payment_intent.")])
    assert checks.endpoint_missing_event_types([no_payment_intents], required).severity == "warning"

    # Only the app's enabled endpoint counts when its URL is known.
    other = endpoint("https://crm.example.com/hook", events=["customer.created"])
    assert checks.endpoint_missing_event_types([endpoint(app_url, events=["*"]), other], required,
                                               webhook_url=app_url).severity == "ok"
    assert ids(checks.endpoint_missing_event_types([endpoint(app_url, events=["*"]), other], required)) == {other["id"]}
    assert checks.endpoint_missing_event_types([endpoint(app_url, events=list(required))], required).severity == "ok"
    assert checks.endpoint_missing_event_types([endpoint(app_url, status="disabled")], required).severity == "ok"


# --------------------------------------------------------------------------- delivery, on built events


def _built_window(now: int):
    customer = o.make_customer(email="a@example.com")
    events = {
        "processed": o.make_event("checkout.session.completed", paid_checkout(customer, created=now - 5 * HOUR),
                                  created=now - 5 * HOUR, pending_webhooks=1),
        "failed": o.make_event("checkout.session.completed", paid_checkout(customer, created=now - 2 * HOUR),
                               created=now - 2 * HOUR, pending_webhooks=1),
        "retrying": o.make_event("payment_intent.payment_failed",
                                 o.make_payment_intent(amount=100, customer=customer, failure_code="card_declined"),
                                 created=now - HOUR, pending_webhooks=1),
        "exhausted": o.make_event("payment_intent.succeeded", o.make_payment_intent(amount=4900, customer=customer),
                                  created=now - 80 * HOUR, pending_webhooks=1),
        "quiet": o.make_event("payment_intent.succeeded", o.make_payment_intent(amount=900, customer=customer),
                              created=now - 3 * HOUR, pending_webhooks=0),
    }
    received = [
        {"stripe_event_id": events["processed"]["id"], "type": "checkout.session.completed", "status": "processed",
         "error": None, "received_at": datetime.fromtimestamp(now - 5 * HOUR, timezone.utc)},
        {"stripe_event_id": events["failed"]["id"], "type": "checkout.session.completed", "status": "failed",
         "error": "no organization for customer cus_x", "received_at": datetime.fromtimestamp(now - 2 * HOUR, timezone.utc)},
    ]
    return events, received


def test_delivery_checks_on_built_events():
    now = int(time.time())
    events, received = _built_window(now)
    window = list(events.values())
    at = datetime.fromtimestamp(now, timezone.utc)

    undelivered = checks.undelivered_events(window, received, now=at, retry_window_hours=72)
    assert undelivered.severity == "critical"
    assert ids(undelivered) == {events[k]["id"] for k in ("failed", "retrying", "exhausted")}
    assert {r["event_id"]: r["state"] for r in undelivered.rows}[events["exhausted"]["id"]] == "retries exhausted"
    assert "1 past Stripe's 72 h retry window" in undelivered.title and "2 still retrying" in undelivered.title
    only_retrying = checks.undelivered_events([events["retrying"], events["failed"]], received, now=at,
                                              retry_window_hours=72)
    assert only_retrying.severity == "warning"
    # Test mode retries for hours only: the failed event, 2 h old, is past a 1 h window.
    short = checks.undelivered_events([events["failed"]], received, now=at, retry_window_hours=1)
    assert short.severity == "critical" and short.rows[0]["app_status"] == "failed"
    assert checks.undelivered_events([events["processed"], events["quiet"]], received, now=at).severity == "ok"

    missing = checks.missing_events(window, received)
    assert missing.severity == "critical"
    assert missing.items == [events[k]["id"] for k in ("exhausted", "quiet", "retrying")]  # oldest first
    assert checks.missing_events([events["processed"], events["failed"]], received).severity == "ok"

    failed = checks.failed_events(received)
    assert failed.severity == "critical" and failed.items == [events["failed"]["id"]]
    assert failed.rows[0]["error"] == "no organization for customer cus_x"
    assert checks.failed_events(received[:1]).severity == "ok"

    by_hour = checks.events_by_hour(window, received, now=at, retry_window_hours=72)
    totals = Counter()
    for row in by_hour:
        totals[row["outcome"]] += row["count"]
    assert totals == {"processed": 1, "received, not processed": 1, "not received, Stripe retrying": 1,
                      "not received, retries over": 2}
    assert totals["not received, Stripe retrying"] + totals["not received, retries over"] == missing.count
    assert all(r["hour"].minute == 0 for r in by_hour)
    metrics = checks.window_metrics(window, received, [endpoint("https://x.example.com")], now=at,
                                    retry_window_hours=72)
    assert metrics["events_in_window"] == 5 and metrics["events_processed"] == 1
    # a metric named after a check counts what its finding counts
    assert metrics["missing_events"] == missing.count == 3  # the retrying one too: the app has no record of it
    assert metrics["failed_events"] == failed.count == 1
    assert metrics["undelivered_events"] == undelivered.count == 3
    assert (metrics["undelivered_events_retrying"], metrics["undelivered_events_retries_exhausted"]) == (2, 1)
    assert not {"events_missing", "events_failed", "events_retrying"} & set(metrics)

    for rows in (by_hour, []):
        fig = plots.plot_events_by_hour(rows)
        fig.savefig(io.BytesIO(), format="png")

    plan = plan_replay(window, received, url="https://app.example.com/hook?token=abc")
    assert [a.target for a in plan] == [events[k]["id"] for k in ("exhausted", "quiet", "failed", "retrying")]
    assert all(a.detail["url"] == "https://app.example.com/hook?***" and not a.applied for a in plan)


def test_signature_mismatch_on_stored_deliveries():
    def stored(n, secrets, minute):
        body = json.dumps({"id": f"evt_{n}", "object": "event", "type": "invoice.paid"})
        return {"stripe_event_id": f"evt_{n}", "type": "invoice.paid", "status": "processed", "error": None,
                "received_at": datetime(2024, 5, 1, 12, minute, tzinfo=timezone.utc),
                "raw_body": body, "signature_header": sign_with(body, secrets, timestamp=1714564800 + minute)}

    rolled = [stored(1, [OLD_SECRET], 1), stored(2, [OLD_SECRET, SECRET], 2), stored(3, [SECRET], 3)]
    older = checks.signature_mismatch(rolled, SECRET)
    assert older.severity == "info" and older.items == ["evt_1"]
    assert older.rows[0]["reason"] == "no signature matches the secret"

    wrong_secret = checks.signature_mismatch(rolled, OLD_SECRET)
    assert wrong_secret.severity == "critical" and wrong_secret.items == ["evt_3"]

    tampered = dict(stored(4, [SECRET], 4), raw_body='{"id": "evt_4", "amount": 1}')
    assert checks.signature_mismatch(rolled[1:] + [tampered], SECRET).items == ["evt_4"]
    malformed = dict(stored(5, [SECRET], 5), signature_header="garbage")
    assert checks.signature_mismatch([malformed], SECRET).rows[0]["reason"] == "malformed header"

    assert checks.signature_mismatch(rolled[1:], SECRET).severity == "ok"
    assert checks.signature_mismatch([], SECRET).severity == "ok"
    unmapped = [{k: v for k, v in r.items() if k not in ("raw_body", "signature_header")} for r in rolled]
    not_mapped = checks.signature_mismatch(unmapped, SECRET)
    assert not_mapped.severity == "ok" and "raw_body" in not_mapped.note
    assert checks.signature_mismatch(rolled, None).severity == "info"
    no_secret_in(older, wrong_secret, not_mapped)


def test_replay_refuses_without_url_or_secret():
    event = o.make_event("payment_intent.succeeded", o.make_payment_intent(amount=100, customer="cus_x"))
    with pytest.raises(ConfigurationError) as no_url:
        replay_events([event], url=None, secret=SECRET, conn=None, schema=MAPPING, apply=True, audit=None, reason="t")
    assert "OPSBOOK_WEBHOOK_URL" in str(no_url.value) and "STRIPE_WEBHOOK_SECRET" not in str(no_url.value)
    with pytest.raises(ConfigurationError) as no_secret:
        replay_events([event], url="http://127.0.0.1:9/stripe/webhook", secret="", conn=None, schema=MAPPING,
                      apply=True, audit=None, reason="t")
    assert "STRIPE_WEBHOOK_SECRET" in str(no_secret.value) and "\n" not in str(no_secret.value)
    with pytest.raises(ConfigurationError) as both:
        replay_events([event], url="", secret=None, conn=None, schema=MAPPING, apply=True, audit=None, reason="t")
    assert "OPSBOOK_WEBHOOK_URL" in str(both.value) and "STRIPE_WEBHOOK_SECRET" in str(both.value)


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def app_db(database18):
    with database18.admin.connect() as conn:
        conn.exec_driver_sql(SCHEMA_SQL.read_text())
    database18.execute("INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) "
                       "VALUES ('pro', 'Pro', 4900, 100000, true)")
    return database18


@pytest.fixture
def receiver(app_db):
    # The app verifies with both secrets (a roll in progress), so a delivery signed only with
    # the old one is accepted and stored.
    server, _thread, url = start_receiver(app_db.url, [SECRET, OLD_SECRET])
    yield url
    stop_receiver(server)


def _post_as_stripe(url: str, event: dict, secrets: list[str]) -> int:
    import urllib.error
    import urllib.request

    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Stripe-Signature": sign_with(body, secrets)})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_end_to_end_find_and_replay(app_db, receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=RECEIVER_LOG)
    now = int(time.time())
    since = datetime.fromtimestamp(now - 24 * HOUR, timezone.utc)

    # The account: three customers; the app knows A and B, not yet C.
    o.seed_ids("webhook-checks-e2e")
    cus_a, cus_b, cus_c = (o.make_customer(email=f"{n}@example.com", name=n) for n in ("a", "b", "c"))
    for name, customer in (("A", cus_a), ("B", cus_b)):
        app_db.execute("INSERT INTO organizations (name, plan_code, stripe_customer_id) VALUES (:n, 'pro', :c)",
                       n=name, c=customer["id"])

    def checkout(customer, hours_ago, *, type="checkout.session.completed", pending=0, **kw):
        created = now - int(hours_ago * HOUR)
        return o.make_event(type, paid_checkout(customer, created=created - 60, **kw), created=created,
                            pending_webhooks=pending)

    ev = {
        "old_signed": checkout(cus_b, 3),                       # delivered, signed with the old secret only
        "ok": checkout(cus_a, 2, credits="500"),               # delivered
        "unpaid": checkout(cus_a, 1.5, payment_status="unpaid"),  # delivered, nothing to fulfil
        "fail": checkout(cus_c, 1, pending=1),                 # delivered, the app fails it (unknown customer)
        "retry": checkout(cus_a, 0.5, pending=1),              # not delivered, Stripe still retrying
        "lost": checkout(cus_b, 6, type="checkout.session.async_payment_succeeded", pending=1),  # retries exhausted
        "quiet": o.make_event("payment_intent.succeeded", o.make_payment_intent(amount=900, customer=cus_a),
                              created=now - 4 * HOUR),        # not delivered, Stripe not retrying
        "outside": checkout(cus_a, 30, pending=1),             # before the window
        "other_type": o.make_event("customer.updated", cus_a, created=now - HOUR, pending_webhooks=1),
    }
    app_endpoint = endpoint(receiver)
    old_endpoint = endpoint("https://old.example.com/hooks", events=["*"], status="disabled")
    state = new_state([API_KEY])
    add_objects(state, cus_a, cus_b, cus_c, *ev.values(), app_endpoint, old_endpoint)
    state_path = tmp_path / "stripe.json"
    write_state(state_path, state)
    server, thread, api_base = start_emulator(state_path)
    engine = make_engine(app_db.url, runbook="webhook_failure", run_id="test")
    try:
        client = make_client(API_KEY, api_base)
        window = checks.fetch_stripe_window(client, since=since, event_types=checks.DEFAULT_EVENT_TYPES)
        events, endpoints = window["events"], window["endpoints"]
        assert [e["id"] for e in events] == [ev[k]["id"] for k in ("lost", "quiet", "old_signed", "ok", "unpaid",
                                                                   "fail", "retry")]
        assert server.emulator.requests["/v1/events"] == 1  # filters pushed to Stripe: one page
        assert {e["id"] for e in endpoints} == {app_endpoint["id"], old_endpoint["id"]}

        # Stripe's deliveries, as Stripe sends them (the event JSON as the API returns it).
        api_event = {e["id"]: e for e in events}
        assert _post_as_stripe(receiver, api_event[ev["old_signed"]["id"]], [OLD_SECRET]) == 200
        for key in ("ok", "unpaid"):
            assert _post_as_stripe(receiver, api_event[ev[key]["id"]], [SECRET]) == 200
        assert _post_as_stripe(receiver, api_event[ev["fail"]["id"]], [SECRET]) == 500
        assert deliveries(caplog) == 4

        with engine.connect() as conn:
            received = checks.received_events(conn, MAPPING, since=since)
            assert [r["stripe_event_id"] for r in received] == [ev[k]["id"] for k in ("old_signed", "ok", "unpaid", "fail")]
            assert {"raw_body", "signature_header"} <= set(received[0])

            at = datetime.fromtimestamp(now, timezone.utc)
            found = {
                f.check: f for f in (
                    checks.webhook_secret_configured(SECRET, mode="emulator"),
                    checks.endpoint_disabled(endpoints, webhook_url=receiver),
                    checks.endpoint_missing_event_types(endpoints, checks.DEFAULT_EVENT_TYPES, webhook_url=receiver),
                    checks.undelivered_events(events, received, now=at, retry_window_hours=3),
                    checks.missing_events(events, received),
                    checks.failed_events(received),
                    checks.signature_mismatch(received, SECRET),
                    checks.unfulfilled_payments(conn, MAPPING, events),
                )
            }
            assert {c: f.severity for c, f in found.items()} == {
                "webhook_secret_configured": "ok",
                "endpoint_disabled": "info",
                "endpoint_missing_event_types": "ok",
                "undelivered_events": "critical",
                "missing_events": "critical",
                "failed_events": "critical",
                "signature_mismatch": "info",
                "unfulfilled_payments": "critical",
            }
            assert ids(found["endpoint_disabled"]) == {old_endpoint["id"]}
            assert ids(found["undelivered_events"]) == {ev[k]["id"] for k in ("lost", "fail", "retry")}
            assert {r["event_id"] for r in found["undelivered_events"].rows
                    if r["state"] == "retries exhausted"} == {ev["lost"]["id"]}
            assert ids(found["missing_events"]) == {ev[k]["id"] for k in ("lost", "quiet", "retry")}
            assert ids(found["failed_events"]) == {ev["fail"]["id"]}
            assert f"no organization for customer {cus_c['id']}" in found["failed_events"].rows[0]["error"]
            assert ids(found["signature_mismatch"]) == {ev["old_signed"]["id"]}
            assert checks.signature_mismatch(received, OLD_SECRET).severity == "critical"  # the runbook's secret is stale
            unfulfilled = found["unfulfilled_payments"]
            # the mapping says orders are also made for paid PaymentIntents: "quiet" got nothing either
            assert ids(unfulfilled) == {ev[k]["id"] for k in ("lost", "fail", "retry", "quiet")}
            row = next(r for r in unfulfilled.rows if r["event_id"] == ev["fail"]["id"])
            assert (row["customer"], row["amount_total"], row["currency"]) == (cus_c["id"], 4900, "usd")
            assert row["session_id"] == ev["fail"]["data"]["object"]["id"]
            no_secret_in(*found.values())

            # A mapping without raw bodies: the signature check says so instead of guessing.
            table = MAPPING.table("webhook_events")
            bare = dataclasses.replace(table, columns={k: v for k, v in table.columns.items()
                                                       if k not in ("raw_body", "signature_header", "error")})
            no_bodies = SchemaMap(MAPPING.path, {**MAPPING.entities, "webhook_events": (bare,)})
            unmapped = checks.received_events(conn, no_bodies, since=since)
            assert "raw_body" not in unmapped[0] and unmapped[0]["error"] is None
            assert checks.signature_mismatch(unmapped, SECRET).severity == "ok"

            by_hour = checks.events_by_hour(events, received, now=at, retry_window_hours=3)
            totals = Counter()
            for r in by_hour:
                totals[r["outcome"]] += r["count"]
            assert totals == {"processed": 3, "received, not processed": 1, "not received, Stripe retrying": 1,
                              "not received, retries over": 2}
            plots.plot_events_by_hour(by_hour).savefig(io.BytesIO(), format="png")

            # The plan: the missing and failed events, oldest first; a dry run sends nothing.
            candidates = replay_candidates(events, received)
            expected_order = [ev[k]["id"] for k in ("lost", "quiet", "fail", "retry")]
            assert [e["id"] for e in candidates] == expected_order
            plan = plan_replay(events, received, url=receiver)
            assert [a.target for a in plan] == expected_order
            assert plan[0].detail == {"type": "checkout.session.async_payment_succeeded",
                                      "created": datetime.fromtimestamp(ev["lost"]["created"], timezone.utc),
                                      "url": receiver, "app_status": "not received"}
            dry = replay_events(candidates, url=receiver, secret=SECRET, conn=conn, schema=MAPPING, apply=False,
                                audit=None, reason="test")
            assert [(a.target, a.outcome, a.applied) for a in dry] == [(i, "planned", False) for i in expected_order]
            assert deliveries(caplog) == 4

            # An unreachable app: the outcome says so (and nothing reached the receiver).
            dead = replay_events(candidates[:1], url="http://127.0.0.1:9/stripe/webhook", secret=SECRET, conn=conn,
                                 schema=MAPPING, apply=True, audit=None, reason="test", timeout=2)
            assert dead[0].outcome.startswith("unreachable:") and dead[0].applied
            assert deliveries(caplog) == 4

            # Apply while customer C still has no organisation: the app answers 500 for it.
            audit = AuditLog("webhook_failure-test", "webhook_failure", "test-db", path=tmp_path / "audit.jsonl")
            first = replay_events(candidates, url=receiver, secret=SECRET, conn=conn, schema=MAPPING, apply=True,
                                  audit=audit, reason="incident 42")
            outcomes = {a.target: a.outcome for a in first}
            assert outcomes.pop(ev["fail"]["id"]) == f"app answered HTTP 500: no organization for customer {cus_c['id']}"
            assert set(outcomes.values()) == {"delivered (HTTP 200)"}
            assert deliveries(caplog) == 8
            no_secret_in(*first)

            # Fix the cause, apply again: only the failed event is sent.
            app_db.execute("INSERT INTO organizations (name, plan_code, stripe_customer_id) VALUES ('C', 'pro', :c)",
                           c=cus_c["id"])
            second = replay_events(candidates, url=receiver, secret=SECRET, conn=conn, schema=MAPPING, apply=True,
                                   audit=audit, reason="incident 42")
            assert {a.target: a.outcome for a in second} == {
                **{i: "already processed" for i in expected_order}, ev["fail"]["id"]: "delivered (HTTP 200)"}
            assert deliveries(caplog) == 9

            # The checks re-run clean of them.
            received = checks.received_events(conn, MAPPING, since=since)
            assert checks.missing_events(events, received).severity == "ok"
            assert checks.failed_events(received).severity == "ok"
            assert checks.undelivered_events(events, received, now=at, retry_window_hours=3).severity == "ok"
            # the app's handler ignores payment_intent.succeeded: processed, still nothing made for it
            assert ids(checks.unfulfilled_payments(conn, MAPPING, events)) == {ev["quiet"]["id"]}
            assert ids(checks.signature_mismatch(received, SECRET)) == {ev["old_signed"]["id"]}  # untouched
            assert replay_candidates(events, received) == []
            assert len(plan_replay(events, received, url=receiver)) == 0

            # Applying the same replay once more sends nothing.
            third = replay_events(candidates, url=receiver, secret=SECRET, conn=conn, schema=MAPPING, apply=True,
                                  audit=audit, reason="incident 42")
            assert {a.outcome for a in third} == {"already processed"} and not any(a.applied for a in third)
            assert deliveries(caplog) == 9
            dry_after = replay_events(candidates, url=receiver, secret=SECRET, conn=conn, schema=MAPPING, apply=False)
            assert {a.outcome for a in dry_after} == {"would skip: already processed"}

        # The app fulfilled each paid checkout once; the audit log holds every send, no secret.
        grants = dict(query(app_db, "SELECT stripe_event_id, credits FROM credit_grants"))
        assert grants == {ev[k]["id"]: 100 for k in ("old_signed", "fail", "retry", "lost")} | {ev["ok"]["id"]: 500}
        entries = audit.entries()
        assert [(e["target"], e["outcome"]) for e in entries] == [(a.target, a.outcome) for a in first] + [
            (ev["fail"]["id"], "delivered (HTTP 200)")]
        assert all(e["action"] == "replay_webhook_event" and e["reason"] == "incident 42" for e in entries)
        audit_text = (tmp_path / "audit.jsonl").read_text()
        assert SECRET not in audit_text and SECRET[6:] not in audit_text
    finally:
        engine.dispose()
        stop_emulator(server, thread)


def test_unfulfilled_payments_query_per_table(app_db):
    """One query per fulfilment table with the ids as a bound array: a credit grant alone counts."""
    app_db.execute("INSERT INTO organizations (name, plan_code, stripe_customer_id) VALUES ('A', 'pro', 'cus_A')")
    org = query(app_db, "SELECT id FROM organizations")[0][0]
    paid = [o.make_event("checkout.session.completed", paid_checkout("cus_A", created=1_700_000_000 + i))
            for i in range(3)]
    app_db.execute("INSERT INTO orders (organization_id, stripe_event_id, amount, currency, status) "
                   "VALUES (:o, :e, 4900, 'usd', 'paid')", o=org, e=paid[0]["id"])
    app_db.execute("INSERT INTO credit_grants (organization_id, stripe_event_id, credits) VALUES (:o, :e, 5)",
                   o=org, e=paid[1]["id"])
    statements = []
    engine = make_engine(app_db.url)
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        with engine.connect() as conn:
            finding = checks.unfulfilled_payments(conn, MAPPING, paid)
            assert finding.severity == "critical" and finding.items == [paid[2]["id"]]
            assert "paid, but no order or credit grant" in finding.title
            ours = [s for s in statements if "stripe_event_id" in s]
            assert len(ours) == 2 and all("= ANY(" in s for s in ours)
            assert checks.unfulfilled_payments(conn, MAPPING, paid[:2]).severity == "ok"
            assert checks.unfulfilled_payments(conn, MAPPING, []).severity == "ok"
    finally:
        engine.dispose()
