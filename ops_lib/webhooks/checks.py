"""Checks for the webhook_failure runbook: is the secret right, is the endpoint enabled and
subscribed, which Stripe events in the window never arrived or failed, and which paid customers
got nothing.

The notebook gathers its data once — the window's Stripe events and the webhook endpoints
(``fetch_stripe_window``), and the webhook events the app recorded (``received_events``) — and
hands that plain data to one function per check. Only ``unfulfilled_payments`` reads the
database again (one query per fulfilment table, with the event ids as a bound array).

Vocabulary, per Stripe event in the window:

* *processed*: the app recorded it with status ``processed``;
* *failed*: the app recorded it with another status (``failed``, or ``received`` left behind by
  a crash): Stripe's delivery reached the app, fulfilment did not finish;
* *stuck*: acknowledged but never finished — recorded with a status that is neither
  ``processed`` nor ``failed`` (``received``) for longer than a grace period. Stripe advises
  acknowledging first and processing after; younger ones are *in flight* and not named. Stripe
  got its 2xx, so it never sends a stuck event again: only a replay finishes it;
* *missing*: the app has no record of it at all;
* *undelivered*: Stripe has not had a 2xx for it from some endpoint (``pending_webhooks > 0``)
  and the app has not processed it. Stripe retries with backoff for up to 3 days in live mode
  (a few hours in test mode); after that only a replay delivers it.

``pending_webhooks`` counts every endpoint of the account that has not acknowledged the event,
not only the app's: an event another endpoint is failing on, but which the app processed, is not
reported here.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Finding, Metrics
from ..schema_map import SchemaMap
from ..utc import as_utc, from_epoch
from ..stripe_api import list_events, list_webhook_endpoints
from .signature import SignatureError, parse_header
from .event_types import HANDLED_EVENT_TYPES
from .signature import check as check_signature

# The event types the app handles (the runbook's default `event_types`).
DEFAULT_EVENT_TYPES = HANDLED_EVENT_TYPES
# Events whose delivery is what gives a paying customer what they bought.
FULFILMENT_EVENT_TYPES = ("checkout.session.completed", "checkout.session.async_payment_succeeded")

# The app's webhook_events.status values (the demo app's; see ops_lib/demo/schema.sql).
STATUS_PROCESSED = "processed"
STATUS_FAILED = "failed"
# How long an acknowledged event may stay unprocessed before it counts as stuck (the runbook's
# default `stuck_grace_minutes`): a queue worker normally finishes within seconds.
DEFAULT_STUCK_GRACE_MINUTES = 15

# Stripe retries a failed delivery with exponential backoff for up to 3 days in live mode and
# for a few hours in test mode (docs.stripe.com/webhooks#retries).
RETRY_WINDOW_HOURS = {"live": 72, "test": 3, "emulator": 3}


def retry_window_hours(mode: str | None) -> float:
    """How long Stripe keeps retrying a delivery in this mode (live when unknown: the longest)."""
    return RETRY_WINDOW_HOURS.get(mode or "live", RETRY_WINDOW_HOURS["live"])
STRIPE_EVENT_RETENTION_HOURS = 720  # events are listed for 30 days
MAX_TYPES_PER_REQUEST = 20  # Stripe's limit on `types[]`

# App clocks and Stripe's differ a little: the app's table is read from a bit before `since`.
RECEIVED_CLOCK_SKEW = timedelta(minutes=5)

SECRET_VARIABLE = "STRIPE_WEBHOOK_SECRET"
URL_VARIABLE = "OPSBOOK_WEBHOOK_URL"
_SECRET_SHAPE = re.compile(r"whsec_[A-Za-z0-9_+/=]{8,}")
_KNOWN_PREFIXES = ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "pk_live_", "pk_test_", "whsec_")


# --------------------------------------------------------------------------- data gathering


def fetch_stripe_window(client, *, since: datetime, event_types: Sequence[str] | None = None) -> dict:
    """The window's events (oldest first) and the account's webhook endpoints, read once.

    ``created[gte]`` and the types are pushed to Stripe; more than 20 types (Stripe's limit on
    ``types[]``) are asked for in groups and merged.
    """
    types = list(dict.fromkeys(event_types or []))
    if not types:
        groups: list[list[str] | None] = [None]
    elif any(t.endswith("*") for t in types):
        groups = [types]  # list_events fans wildcards out itself
    else:
        groups = [types[i:i + MAX_TYPES_PER_REQUEST] for i in range(0, len(types), MAX_TYPES_PER_REQUEST)]
    events: dict[str, dict] = {}
    for group in groups:
        for event in list_events(client, since, types=group):
            events.setdefault(event["id"], event)
    return {
        "events": sorted(events.values(), key=_event_order),
        "endpoints": list(list_webhook_endpoints(client)),
    }


def received_events(conn: Connection, schema: SchemaMap, *, since: datetime, with_bodies: bool = True) -> list[dict]:
    """The webhook events the app recorded since ``since`` (a few minutes of clock skew
    included), oldest first: stripe_event_id, type, status, error, received_at, and
    raw_body/signature_header when the mapping has them (and ``with_bodies``)."""
    table = schema.table("webhook_events")
    select = [table.select_list(["stripe_event_id", "type", "status", "error", "received_at"],
                                required=("stripe_event_id", "status", "received_at"))]
    if with_bodies:  # only when mapped: no column at all, rather than NULL, when the mapping has none
        select += [f"{table.col(c)} AS {c}" for c in ("raw_body", "signature_header") if table.has(c)]
    sql = (
        f"SELECT {', '.join(select)} FROM {table.sql_table} "
        f"WHERE {table.col('received_at')} >= :since "
        f"ORDER BY {table.col('received_at')}, {table.col('stripe_event_id')}"
    )
    return select_all(conn, sql, since=_aware(since) - RECEIVED_CLOCK_SKEW)


# --------------------------------------------------------------------------- configuration


def webhook_secret_configured(secret: str | None, *, mode: str | None = None) -> Finding:
    """Is STRIPE_WEBHOOK_SECRET set, and shaped like a signing secret? Never shows it."""
    check = "webhook_secret_configured"
    where = _secret_location(mode)
    if not secret or not secret.strip():
        return Finding(
            check, "critical", f"{SECRET_VARIABLE} is not set: signatures cannot be checked and events cannot be replayed",
            remediation=f"Copy the endpoint's signing secret from {where} (Reveal; it starts with whsec_) and "
            f"export {SECRET_VARIABLE}=whsec_... where the runbook runs; it must be the same secret the app verifies with.",
        )
    stripped = secret.strip()
    if stripped != secret:
        return Finding(
            check, "warning", f"{SECRET_VARIABLE} has leading or trailing whitespace (a copy-paste newline?)",
            remediation=f"Set {SECRET_VARIABLE} again without the surrounding whitespace: signatures are computed "
            "over the exact secret, so every check and replay with this value fails.",
        )
    if not _SECRET_SHAPE.fullmatch(secret):
        prefix = next((p for p in _KNOWN_PREFIXES if secret.startswith(p)), None)
        if prefix and prefix != "whsec_":
            what = f"starts with {prefix}: that is an API key, not a webhook signing secret"
        elif prefix == "whsec_":
            what = "starts with whsec_ but is too short or has characters a signing secret does not have (truncated?)"
        else:
            what = "does not start with whsec_, so it is not a Stripe webhook signing secret"
        return Finding(
            check, "warning", f"{SECRET_VARIABLE} {what}",
            remediation=f"Set {SECRET_VARIABLE} to the endpoint's signing secret from {where} (it starts with whsec_).",
        )
    note = f"It must be the secret of the {mode}-mode endpoint the app uses." if mode in ("live", "test") else None
    return Finding(check, "ok", f"{SECRET_VARIABLE} is set and shaped like a signing secret (whsec_…)", note=note)


def _secret_location(mode: str | None) -> str:
    if mode == "emulator":
        return "the demo (`opsbook demo env` prints it)"
    dashboard = "Dashboard → Developers → Webhooks → your endpoint → Signing secret"
    if mode == "test":
        return f"{dashboard} (with Test mode on)"
    if mode == "live":
        return f"{dashboard} (in live mode)"
    return dashboard


def endpoint_disabled(endpoints: Sequence[Mapping], *, webhook_url: str | None = None) -> Finding:
    """Disabled endpoints; none enabled at all (or none for the app's URL) is critical."""
    check = "endpoint_disabled"
    enabled = [e for e in endpoints if e.get("status") == "enabled"]
    disabled = [e for e in endpoints if e.get("status") != "enabled"]
    rows = [_endpoint_row(e, webhook_url) for e in disabled]
    items = [e["id"] for e in disabled]
    remediation = (
        "Stripe disables an endpoint that keeps failing (or someone disabled it): fix what made deliveries fail "
        "(see failed_events and the endpoint's delivery log), then enable it in Dashboard → Developers → Webhooks "
        "→ the endpoint → ⋯ → Enable, and replay what it missed (apply=True)."
    )
    if not endpoints:
        return Finding(
            check, "critical", "The Stripe account has no webhook endpoint: no event is sent to the app",
            remediation="Add the app's endpoint in Dashboard → Developers → Webhooks → Add endpoint, subscribed to "
            "the event types the app handles, and set the app's signing secret to its whsec_ secret.",
            count=1,
        )
    if not enabled:
        return Finding(check, "critical", f"No webhook endpoint is enabled ({len(disabled)} disabled): no event is sent",
                       items=items, rows=rows, remediation=remediation)
    if webhook_url:
        app_enabled = [e for e in enabled if same_url(e.get("url"), webhook_url)]
        app_disabled = [e for e in disabled if same_url(e.get("url"), webhook_url)]
        if not app_enabled:
            if app_disabled:
                title = "The app's webhook endpoint is disabled: Stripe sends it nothing"
            else:
                title = f"No enabled webhook endpoint sends to the app's URL ({URL_VARIABLE})"
                rows = rows + [{"id": None, "url": _display_url(webhook_url), "status": "no endpoint", "app_endpoint": True}]
            return Finding(
                check, "critical", title, items=items, rows=rows, count=max(1, len(items)),
                remediation=remediation if app_disabled else (
                    f"Check {URL_VARIABLE} against the endpoints' URLs below; if the app's endpoint is missing, add it in "
                    "Dashboard → Developers → Webhooks → Add endpoint and replay what it missed (apply=True)."),
            )
        if not disabled:
            return Finding(check, "ok", "The app's webhook endpoint is enabled")
        return Finding(check, "info", f"The app's endpoint is enabled; {len(disabled)} other endpoint(s) are disabled",
                       items=items, rows=rows,
                       remediation="Nothing to do for the app; delete or re-enable the other endpoints if they are still needed.")
    if not disabled:
        return Finding(check, "ok", f"All {len(enabled)} webhook endpoint(s) are enabled",
                       note=f"Set {URL_VARIABLE} to check that the app's own endpoint is among them.")
    return Finding(check, "warning", f"{len(disabled)} of {len(endpoints)} webhook endpoints are disabled",
                   items=items, rows=rows, remediation=remediation,
                   note=f"Set {URL_VARIABLE} to tell whether the app's endpoint is one of them.")


def endpoint_missing_event_types(endpoints: Sequence[Mapping], required_types: Iterable[str], *,
                                 webhook_url: str | None = None) -> Finding:
    """Enabled endpoints (the app's when ``webhook_url`` is known) not subscribed to every
    required type: Stripe never sends those events to them."""
    check = "endpoint_missing_event_types"
    required = list(dict.fromkeys(required_types))
    enabled = [e for e in endpoints if e.get("status") == "enabled"]
    if webhook_url:
        relevant = [e for e in enabled if same_url(e.get("url"), webhook_url)]
        scope = "the app's endpoint"
    else:
        relevant = enabled
        scope = "enabled endpoints"
    if not relevant:
        return Finding(check, "ok", f"No {scope} to check", note="See endpoint_disabled.")
    rows = []
    for endpoint in relevant:
        subscribed = list(endpoint.get("enabled_events") or [])
        missing = [t for t in required if not covers(subscribed, t)]
        if missing:
            rows.append({**_endpoint_row(endpoint, webhook_url), "missing_types": missing})
    if not rows:
        return Finding(check, "ok", f"{'The app' if webhook_url else 'Every enabled endpoint'} is subscribed to all "
                                    f"{len(required)} event types the app handles")
    missing_all = {t for row in rows for t in row["missing_types"]}
    severity = "critical" if missing_all & set(FULFILMENT_EVENT_TYPES) else "warning"
    return Finding(
        check, severity,
        f"{len(rows)} endpoint(s) are not subscribed to {len(missing_all)} event type(s) the app handles",
        items=[row["id"] for row in rows], rows=rows,
        remediation="Add the missing types in Dashboard → Developers → Webhooks → the endpoint → Update details → "
        "Select events (or via the API: webhook_endpoints.update enabled_events); events Stripe did not send can be "
        "replayed once the endpoint is subscribed (apply=True).",
        note=None if webhook_url else f"Without {URL_VARIABLE} every enabled endpoint is checked, including ones "
        "that are not the app's.",
    )


def covers(subscribed: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint's ``enabled_events`` include ``event_type`` (``*``, ``family.*``)."""
    for entry in subscribed:
        if entry == "*" or entry == event_type:
            return True
        if entry.endswith(".*") and event_type.startswith(entry[:-1]):
            return True
    return False


# --------------------------------------------------------------------------- delivery


def undelivered_events(events: Sequence[Mapping], received: Sequence[Mapping], *, now: datetime | None = None,
                       retry_window_hours: float = RETRY_WINDOW_HOURS["live"]) -> Finding:
    """Stripe events not yet delivered successfully (``pending_webhooks > 0``) that the app has
    not processed: still retrying (warning) or past Stripe's retry window (critical)."""
    check = "undelivered_events"
    now_ts = _aware(now or datetime.now(timezone.utc)).timestamp()
    by_id = _by_event_id(received)
    rows = []
    for event in sorted(events, key=_event_order):
        if (event.get("pending_webhooks") or 0) <= 0:
            continue
        app = by_id.get(event["id"])
        if app is not None and app.get("status") == STATUS_PROCESSED:
            continue
        age_h = (now_ts - event["created"]) / 3600
        rows.append({
            "event_id": event["id"],
            "type": event["type"],
            "created": _when(event["created"]),
            "age_hours": round(age_h, 1),
            "pending_webhooks": event["pending_webhooks"],
            "app_status": app.get("status") if app else "not received",
            "state": "retrying" if age_h < retry_window_hours else "retries exhausted",
        })
    if not rows:
        return Finding(check, "ok", "Every event Stripe is still delivering has been processed by the app")
    rows.sort(key=lambda r: (r["state"] != "retries exhausted", r["created"], r["event_id"]))
    exhausted = sum(r["state"] == "retries exhausted" for r in rows)
    retrying = len(rows) - exhausted
    parts = ([f"{exhausted} past Stripe's {retry_window_hours:g} h retry window"] if exhausted else []) + (
        [f"{retrying} still retrying"] if retrying else [])
    remediation = (
        "Fix why deliveries fail (endpoint_disabled, endpoint_missing_event_types, failed_events, "
        "signature_mismatch). Events still retrying arrive on Stripe's next attempt once fixed; "
        + ("events past the retry window will not be sent again: replay them (apply=True)." if exhausted
           else "or replay them now (apply=True).")
    )
    return Finding(
        check, "critical" if exhausted else "warning",
        f"{len(rows)} event(s) not delivered to the app: {', '.join(parts)}",
        items=[r["event_id"] for r in rows], rows=rows, remediation=remediation,
        note="pending_webhooks counts every endpoint of the account, not only the app's.",
    )


def missing_events(events: Sequence[Mapping], received: Sequence[Mapping]) -> Finding:
    """Stripe events in the window that the app has no record of at all."""
    by_id = _by_event_id(received)
    rows = [
        {"event_id": e["id"], "type": e["type"], "created": _when(e["created"]),
         "pending_webhooks": e.get("pending_webhooks")}
        for e in sorted(events, key=_event_order) if e["id"] not in by_id
    ]
    return Finding.from_rows(
        "missing_events", rows, severity="critical",
        title=f"{len(rows)} Stripe event(s) in the window never reached the app",
        ok_title=f"The app recorded every one of the window's {len(events)} Stripe events",
        item="event_id",
        remediation="Check the endpoint (endpoint_disabled, endpoint_missing_event_types) and the app's logs for "
        "rejected deliveries (a wrong signing secret is answered 400 and stores nothing), then replay the missing "
        "events (apply=True).",
    )


def failed_events(received: Sequence[Mapping]) -> Finding:
    """Deliveries the app recorded as failed, with the error it stored."""
    rows = [
        {"event_id": r["stripe_event_id"], "type": r.get("type"), "received_at": r.get("received_at"),
         "status": r.get("status"), "error": r.get("error")}
        for r in received if r.get("status") == STATUS_FAILED
    ]
    return Finding.from_rows(
        "failed_events", rows, severity="critical",
        title=f"{len(rows)} webhook event(s) failed in the app",
        ok_title="No webhook event failed in the app",
        item="event_id",
        remediation="Fix the cause named in `error` (e.g. save the Stripe customer id on the organisation it "
        "belongs to), then replay the events (apply=True): the app fulfils a failed event when it is delivered again.",
    )


def stuck_events(received: Sequence[Mapping], *, now: datetime | None = None,
                 grace_minutes: float = DEFAULT_STUCK_GRACE_MINUTES) -> Finding:
    """Events the app acknowledged (recorded) but never finished processing, older than the
    grace period; younger ones are in flight and not named.

    A status that is neither processed nor failed (the demo app's ``received``) is "acknowledged,
    not finished". Stripe got a 2xx for the delivery, so it will not retry it.
    """
    check = "stuck_events"
    now_dt = _aware(now or datetime.now(timezone.utc))
    cutoff = now_dt - timedelta(minutes=grace_minutes)
    rows, in_flight = [], 0
    for r in received:
        if r.get("status") in (STATUS_PROCESSED, STATUS_FAILED):
            continue
        received_at = r.get("received_at")
        if isinstance(received_at, datetime):
            received_at = as_utc(received_at)  # a timestamp without time zone: UTC
        if isinstance(received_at, datetime) and received_at > cutoff:
            in_flight += 1
            continue
        age = (now_dt - received_at).total_seconds() / 60 if isinstance(received_at, datetime) else None
        rows.append({"event_id": r["stripe_event_id"], "type": r.get("type"), "status": r.get("status"),
                     "received_at": received_at, "stuck_minutes": None if age is None else round(age, 1)})
    note = (f"{in_flight} acknowledged event(s) younger than {grace_minutes:g} min are in flight and not named."
            if in_flight else None)
    return Finding.from_rows(
        check, rows, severity="critical",
        title=f"{len(rows)} webhook event(s) acknowledged but never processed (stuck for over {grace_minutes:g} min)",
        ok_title=f"No acknowledged event has been waiting for processing longer than {grace_minutes:g} min",
        item="event_id", note=note,
        remediation="Stripe got a 2xx for these and will not send them again. Find why the app's worker stopped "
        "(a crash between acknowledging and processing, a dead queue consumer, a deploy mid-event), then replay "
        "them (apply=True): the app finishes each once.",
    )


def signature_mismatch(received: Sequence[Mapping], secret: str | None) -> Finding:
    """Stored deliveries whose ``Stripe-Signature`` does not verify with the current secret.

    If the newest stored delivery does not verify, the secret the runbook was given is not the
    one Stripe signs with now (critical: replays would be rejected). If only older ones fail,
    they were signed with a secret rotated away since (info).
    """
    check = "signature_mismatch"
    if not received:
        return Finding(check, "ok", "No stored deliveries in the window to check")
    if "raw_body" not in received[0] or "signature_header" not in received[0]:
        return Finding(check, "ok", "Not checked: the app does not store raw bodies and signature headers",
                       note="Map webhook_events.raw_body and signature_header in the schema mapping to check "
                       "stored deliveries against the current secret.")
    if not secret or not secret.strip():
        return Finding(check, "info", f"Not checked: {SECRET_VARIABLE} is not set",
                       note="See webhook_secret_configured.")
    stored = [r for r in received if r.get("raw_body") and r.get("signature_header")]
    if not stored:
        return Finding(check, "ok", "No stored delivery has both its raw body and its signature header")
    rows = []
    for r in stored:
        reason = check_signature(r["raw_body"], r["signature_header"], secret, tolerance=None)
        if reason is None:
            continue
        try:
            signed_at = _when(parse_header(r["signature_header"]).timestamp)
        except SignatureError:
            signed_at = None
        rows.append({"event_id": r["stripe_event_id"], "type": r.get("type"), "received_at": r.get("received_at"),
                     "signed_at": signed_at, "reason": reason})
    if not rows:
        return Finding(check, "ok", f"All {len(stored)} stored deliveries verify with the current secret")
    newest = max(stored, key=lambda r: (r.get("received_at") is not None, r.get("received_at") or 0))
    newest_fails = any(row["event_id"] == newest["stripe_event_id"] for row in rows)
    if newest_fails:
        return Finding(
            check, "critical",
            f"{len(rows)} of {len(stored)} stored deliveries do not verify with {SECRET_VARIABLE}, the newest among "
            "them: the runbook's secret is not the one Stripe signs with",
            items=[r["event_id"] for r in rows], rows=rows,
            remediation=f"Set {SECRET_VARIABLE} to the signing secret of the app's endpoint (Dashboard → Developers → "
            "Webhooks → the endpoint → Signing secret); if the app itself uses another secret, it rejects Stripe's "
            "deliveries with 400 too: give both the current secret.",
        )
    return Finding(
        check, "info",
        f"{len(rows)} older stored deliveries were signed with a secret other than the current one (rotated since?)",
        items=[r["event_id"] for r in rows], rows=rows,
        remediation="Nothing to fix if the secret was rolled on purpose: newer deliveries verify. Otherwise, find "
        "out who rolled the endpoint's secret, and make sure the app verifies with the current one.",
    )


# --------------------------------------------------------------------------- fulfilment


def is_paid(event: Mapping) -> bool:
    """Whether a paid-event type's object says the money arrived: a Checkout Session's
    ``payment_status`` is ``paid``; a PaymentIntent, charge or invoice is ``succeeded`` / ``paid``."""
    obj = _session(event)
    if "payment_status" in obj:
        return obj.get("payment_status") == "paid"
    return obj.get("status") in ("succeeded", "paid")


def fulfilment_types(schema: SchemaMap) -> dict[str, tuple]:
    """Paid event type → the fulfilment tables that fulfil it (``fulfilled_by`` in the mapping;
    a table without it fulfils paid Checkout Sessions)."""
    by_type: dict[str, list] = {}
    for table in schema.tables("fulfilments"):
        for event_type in table.fulfilled_by or FULFILMENT_EVENT_TYPES:
            by_type.setdefault(event_type, []).append(table)
    return {t: tuple(tables) for t, tables in by_type.items()}


def unfulfilled_payments(conn: Connection, schema: SchemaMap, events: Sequence[Mapping]) -> Finding:
    """Paid events in the window (the types the mapping's ``fulfilled_by`` names: Checkout
    Sessions, PaymentIntents, …) with nothing in any fulfilment table for them.

    A payment counts as fulfilled when a table that fulfils its type has a row for its event id,
    or any fulfilment table that maps ``stripe_payment_intent_id`` has a row for its PaymentIntent
    (a Checkout payment also sends ``payment_intent.succeeded``: one order answers both).
    One query per table, with the ids as bound arrays.
    """
    check = "unfulfilled_payments"
    by_type = fulfilment_types(schema)
    tables = schema.tables("fulfilments")
    names = ", ".join(t.table for t in tables)
    paid = [e for e in sorted(events, key=_event_order) if e.get("type") in by_type and is_paid(e)]
    if not paid:
        return Finding(check, "ok", "No paid checkout or payment in the window",
                       note=f"Paid event types checked: {', '.join(by_type)}.")
    pis = sorted({pi for pi in map(_payment_intent, paid) if pi})
    fulfilled: dict[str, set[str]] = {}  # table → event ids found in it
    fulfilled_pis: set[str] = set()
    for table in tables:
        column = table.col("stripe_event_id")
        wanted = [e["id"] for e in paid if table in by_type[e["type"]]]
        if wanted:
            found = select_all(
                conn,
                f"SELECT DISTINCT {column} AS stripe_event_id FROM {table.sql_table} "
                f"WHERE {column} = ANY(CAST(:ids AS text[]))",
                ids=wanted,
            )
            fulfilled[table.table] = {row["stripe_event_id"] for row in found}
        if pis and table.has("stripe_payment_intent_id"):
            pi_column = table.col("stripe_payment_intent_id")
            found = select_all(
                conn,
                f"SELECT DISTINCT {pi_column} AS pi FROM {table.sql_table} WHERE {pi_column} = ANY(CAST(:pis AS text[]))",
                pis=pis,
            )
            fulfilled_pis.update(row["pi"] for row in found)
    done = set().union(*fulfilled.values()) if fulfilled else set()
    rows = []
    for event in paid:
        if event["id"] in done or (_payment_intent(event) in fulfilled_pis):
            continue
        obj = _session(event)
        customer = obj.get("customer")
        checkout = event["type"].startswith("checkout.session.")
        rows.append({
            "event_id": event["id"],
            "type": event["type"],
            "session_id": obj.get("id") if checkout else None,
            "payment_intent": _payment_intent(event),
            "customer": customer.get("id") if isinstance(customer, Mapping) else customer,
            "customer_email": ((obj.get("customer_details") or {}).get("email") or obj.get("customer_email")
                               or obj.get("receipt_email")),
            "amount_total": obj.get("amount_total") if checkout else obj.get("amount_received", obj.get("amount")),
            "currency": obj.get("currency"),
            "created": _when(event["created"]),
            "expected_in": ", ".join(t.table for t in by_type[event["type"]]),
        })
    kinds = sorted({r["type"] for r in rows})
    return Finding.from_rows(
        check, rows, severity="critical",
        title=f"{len(rows)} paid checkout(s) or payment(s) got nothing: paid, but no order or credit grant ({names})",
        ok_title=f"All {len(paid)} paid checkouts and payments in the window were fulfilled",
        item="event_id",
        note=f"Paid event types checked (the mapping's fulfilled_by): {', '.join(by_type)}." if rows else None,
        remediation="Fix why the app did not fulfil them (missing_events, failed_events, stuck_events), then replay "
        "these events (apply=True): the app fulfils each once. An event the app recorded as processed but did not "
        "fulfil (its handler ignores that type"
        + (", e.g. " + ", ".join(kinds) if kinds else "")
        + ") is not replayed: fix the handler first, then fulfil those by hand or replay them. Tell the customers "
        "if they waited long.",
    )


def _payment_intent(event: Mapping) -> str | None:
    obj = _session(event)
    if obj.get("object") == "payment_intent":
        return obj.get("id")
    pi = obj.get("payment_intent")
    return pi.get("id") if isinstance(pi, Mapping) else pi


# --------------------------------------------------------------------------- overview


PROCESSED, NOT_PROCESSED = "processed", "received, not processed"
NOT_RECEIVED_RETRYING, NOT_RECEIVED_RETRIES_OVER = "not received, Stripe retrying", "not received, retries over"


def classify(event: Mapping, app: Mapping | None, *, now_ts: float | None = None,
             retry_window_hours: float = RETRY_WINDOW_HOURS["live"]) -> str:
    """What became of one Stripe event in the app. The two "not received" outcomes together are
    what ``missing_events`` counts; "received, not processed" is failed and stuck events."""
    if app is not None:
        return PROCESSED if app.get("status") == STATUS_PROCESSED else NOT_PROCESSED
    if (event.get("pending_webhooks") or 0) > 0:
        now_ts = datetime.now(timezone.utc).timestamp() if now_ts is None else now_ts
        if (now_ts - event["created"]) / 3600 < retry_window_hours:
            return NOT_RECEIVED_RETRYING
    return NOT_RECEIVED_RETRIES_OVER


def events_by_hour(events: Sequence[Mapping], received: Sequence[Mapping], *, now: datetime | None = None,
                   retry_window_hours: float = RETRY_WINDOW_HOURS["live"]) -> list[dict]:
    """Counts per hour of creation (UTC) and outcome (``classify``)."""
    now_ts = _aware(now or datetime.now(timezone.utc)).timestamp()
    by_id = _by_event_id(received)
    counts: dict[tuple[datetime, str], int] = {}
    for event in events:
        hour = datetime.fromtimestamp(event["created"] - event["created"] % 3600, tz=timezone.utc)
        outcome = classify(event, by_id.get(event["id"]), now_ts=now_ts, retry_window_hours=retry_window_hours)
        counts[(hour, outcome)] = counts.get((hour, outcome), 0) + 1
    return [{"hour": hour, "outcome": outcome, "count": n} for (hour, outcome), n in sorted(counts.items())]


def window_metrics(events: Sequence[Mapping], received: Sequence[Mapping], endpoints: Sequence[Mapping] = (), *,
                   now: datetime | None = None, retry_window_hours: float = RETRY_WINDOW_HOURS["live"]) -> Metrics:
    """The window in numbers, for the run's JSON.

    A metric named after a check counts what that check's finding counts (the same function
    counts both): ``missing_events`` (Stripe events the app has no record of at all, Stripe still
    retrying them or not), ``failed_events`` (the app's records of the window stored as failed),
    ``undelivered_events`` (not yet delivered successfully and not processed), split by its rows'
    state into ``undelivered_events_retrying`` and ``undelivered_events_retries_exhausted``.
    ``events_processed``: the window's Stripe events the app has processed.
    """
    now = _aware(now or datetime.now(timezone.utc))
    by_id = _by_event_id(received)
    undelivered = undelivered_events(events, received, now=now, retry_window_hours=retry_window_hours)
    states = [row["state"] for row in undelivered.rows]
    return Metrics(
        events_in_window=len(events),
        received_in_window=len(received),
        events_processed=sum((by_id.get(e["id"]) or {}).get("status") == STATUS_PROCESSED for e in events),
        missing_events=missing_events(events, received).count,
        failed_events=failed_events(received).count,
        undelivered_events=undelivered.count,
        undelivered_events_retrying=states.count("retrying"),
        undelivered_events_retries_exhausted=states.count("retries exhausted"),
        endpoints=len(endpoints),
        endpoints_enabled=sum(e.get("status") == "enabled" for e in endpoints),
    )


# --------------------------------------------------------------------------- helpers


def same_url(a: str | None, b: str | None) -> bool:
    """The same endpoint URL, up to case of scheme and host, default port and a trailing slash."""
    if not a or not b:
        return False
    return _url_key(a) == _url_key(b)


def _url_key(url: str) -> tuple:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/") or "/", parts.query


def _display_url(url: str | None) -> str | None:
    """The URL without credentials or query string (either may hold a token)."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?***" if parts.query else "")


def _endpoint_row(endpoint: Mapping, webhook_url: str | None) -> dict:
    row = {
        "id": endpoint.get("id"),
        "url": _display_url(endpoint.get("url")),
        "status": endpoint.get("status"),
        "api_version": endpoint.get("api_version"),
        "enabled_events": ", ".join(endpoint.get("enabled_events") or []),
    }
    if webhook_url:
        row["app_endpoint"] = same_url(endpoint.get("url"), webhook_url)
    return row


def _by_event_id(received: Iterable[Mapping]) -> dict[str, Mapping]:
    return {r["stripe_event_id"]: r for r in received}


def _event_order(event: Mapping) -> tuple:
    return event["created"], event["id"]


def _session(event: Mapping) -> Mapping:
    return ((event.get("data") or {}).get("object") or {})


_when = from_epoch
_aware = as_utc  # a naive datetime is UTC (ops_lib.utc)
