"""Replaying Stripe events the app missed or failed, to its webhook endpoint, as Stripe sends them.

Each event goes out as Stripe delivers it: ``POST`` to the app's URL (``OPSBOOK_WEBHOOK_URL``)
with the event JSON as the body (``json.dumps(event)`` of the event as the API returns it),
``Content-Type: application/json``, Stripe's ``User-Agent`` and a ``Stripe-Signature`` computed
now with the current signing secret (``STRIPE_WEBHOOK_SECRET``), so the app verifies it like any
delivery. Events go out one at a time, oldest first, as the app would have received them.

Safety:

* the default is a dry run: the ``ActionLog`` shows exactly what would be sent (event, type,
  created, URL) and nothing is sent;
* with ``apply=True``, the app's status of each event is read again just before sending it: an
  event already processed (by Stripe's own retry, an earlier replay, a concurrent run) is
  skipped with the outcome "already processed", so applying twice sends nothing the second time
  (and the app is idempotent by event id besides);
* every event actually sent is recorded in the audit log with its outcome;
* each POST ends within ``timeout`` seconds (10 by default: the connection within 5, the whole
  answer within the rest), whatever the app does: an app that accepts and never answers, or
  answers and never finishes, gives the event an outcome saying so, and after
  ``MAX_SILENT_IN_A_ROW`` events in a row without an answer the remaining ones are not sent
  (their outcome says why), so a hanging app costs at most half a minute, not one timeout per
  event;
* neither the secret nor the signature ever appears in an action, an outcome or an error; the
  URL is shown without credentials or query string.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Sequence
from urllib.parse import urlsplit

from sqlalchemy.engine import Connection

from ..audit import AuditLog
from ..db import select_all, select_value
from ..errors import ConfigurationError, first_line
from ..findings import Action, ActionLog
from ..schema_map import SchemaMap
from ..utc import as_utc, from_epoch
from ..secrets import mask_secrets
from ..stripe_api import LOOPBACK_HOSTS, BoundedTransport, NetworkFailure
from .checks import STATUS_FAILED, STATUS_PROCESSED, _display_url
from .signature import HEADER, sign

ACTION = "replay_webhook_event"
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DEFAULT_REASON = "replay of Stripe events the app missed or failed (webhook_failure runbook)"
DEFAULT_TIMEOUT_S = 10  # per event, from connecting to the end of the answer; a slow app is a finding too
CONNECT_TIMEOUT_S = 5
MAX_SILENT_IN_A_ROW = 3  # after this many events in a row got no answer, the rest are not sent


def replay_candidates(events: Sequence[Mapping], received: Sequence[Mapping], *,
                      in_flight_minutes: float = 0, now: datetime | None = None) -> list[dict]:
    """The window's events the app has not processed — missing, failed, or left half-done —
    oldest first. With ``in_flight_minutes``, an event the app acknowledged less than that long
    ago (neither processed nor failed yet: still being processed) is left to the app."""
    status = {r["stripe_event_id"]: r.get("status") for r in received}
    skip: set[str] = set()
    if in_flight_minutes > 0:
        cutoff = (now or datetime.now(timezone.utc)).timestamp() - in_flight_minutes * 60
        for r in received:
            at = r.get("received_at")
            if r.get("status") not in (STATUS_PROCESSED, STATUS_FAILED) and isinstance(at, datetime):
                if as_utc(at).timestamp() > cutoff:
                    skip.add(r["stripe_event_id"])
    return [dict(e) for e in sorted(events, key=_order)
            if status.get(e["id"]) != STATUS_PROCESSED and e["id"] not in skip]


def plan_replay(events: Sequence[Mapping], received: Sequence[Mapping], *, url: str | None = None,
                reason: str = DEFAULT_REASON) -> ActionLog:
    """The dry run: one planned action per event that would be replayed, in the order it would go."""
    status = {r["stripe_event_id"]: r.get("status") for r in received}
    return ActionLog(
        _action(event, url, reason, app_status=status.get(event["id"]))
        for event in replay_candidates(events, received)
    )


def replay_events(
    events: Sequence[Mapping],
    *,
    url: str | None,
    secret: str | None,
    conn: Connection,
    schema: SchemaMap,
    apply: bool = False,
    audit: AuditLog | None = None,
    reason: str = DEFAULT_REASON,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ActionLog:
    """Replay ``events`` (e.g. ``replay_candidates(...)``) to the app, oldest first.

    Without ``apply`` nothing is sent: the plan, with events the app has processed in the
    meantime marked "would skip: already processed". With ``apply`` each event's status is read
    again right before it is sent, and processed ones are skipped.
    """
    reason = (reason or "").strip() or DEFAULT_REASON
    ordered = sorted(events, key=_order)
    if apply:
        require_replay_target(url, secret)
    table = schema.table("webhook_events")
    log = ActionLog()
    if not apply:
        statuses = _statuses(conn, table, [e["id"] for e in ordered])
        for event in ordered:
            app_status = statuses.get(event["id"])
            action = _action(event, url, reason, app_status=app_status)
            if app_status == STATUS_PROCESSED:
                action.outcome = "would skip: already processed"
            log.append(action)
        return log
    status_sql = (
        f"SELECT {table.col('status')} FROM {table.sql_table} WHERE {table.col('stripe_event_id')} = :event_id"
    )
    silent = 0  # events in a row the app gave no answer to
    for event in ordered:
        # Read committed: each read sees what the app (or Stripe's retry) committed meanwhile.
        app_status = select_value(conn, status_sql, event_id=event["id"])
        action = _action(event, url, reason, app_status=app_status)
        log.append(action)
        if app_status == STATUS_PROCESSED:
            action.outcome = "already processed"
            continue
        if silent >= MAX_SILENT_IN_A_ROW:
            action.outcome = (f"not sent: the app did not answer the last {silent} events; "
                              "fix the app or OPSBOOK_WEBHOOK_URL, then run the replay again")
            continue
        action.applied = True
        sent = _send(url, secret, event, timeout)
        silent = 0 if sent.answered else silent + 1
        action.outcome = sent.outcome
        action.detail["sent_at"] = datetime.now(timezone.utc)
        if audit is not None:
            audit.record(action)
    return log


# --------------------------------------------------------------------------- sending


def body_of(event: Mapping) -> bytes:
    """The body Stripe sends: the event's JSON."""
    return json.dumps(event).encode("utf-8")


@dataclass(frozen=True)
class _Sent:
    outcome: str
    answered: bool  # the app answered with an HTTP status (whatever it was)


def _send(url: str, secret: str, event: Mapping, timeout: float) -> _Sent:
    """POST one event; never longer than `timeout` seconds, whatever the app does."""
    body = body_of(event)
    local = (urlsplit(url).hostname or "") in LOOPBACK_HOSTS
    try:
        answer = (_LOCAL if local else _REMOTE).send(
            "POST", url, deadline=time.monotonic() + timeout, body=body,
            headers={"Content-Type": "application/json", HEADER: sign(body, secret), "User-Agent": USER_AGENT},
            allow_redirects=False,  # Stripe does not follow redirects: a 3xx is a failed delivery
            max_body=4096,
            read_timeout=timeout,
        )
    except NetworkFailure as err:
        return _Sent(mask_secrets(_no_answer(err, timeout)), answered=False)
    if 200 <= answer.status < 300:
        return _Sent(f"delivered (HTTP {answer.status})", answered=True)
    return _Sent(mask_secrets(f"app answered HTTP {answer.status}: {_answer_message(answer.body) or answer.reason}"),
                 answered=True)


def _no_answer(err: NetworkFailure, timeout: float) -> str:
    if err.kind in ("unreachable", "connect_timeout", "tls"):
        return f"unreachable: {first_line(err.detail)}"
    unsure = "the app may have processed it: its status is read again before any later replay"
    if err.kind == "no_answer":
        return f"no answer within {timeout:g} s ({unsure})"
    if err.kind == "closed":
        return f"the app closed the connection without answering ({unsure})"
    if err.kind == "stalled":
        return f"app answered HTTP {err.status} but did not finish its answer within {timeout:g} s ({unsure})"
    if err.kind == "truncated":
        return f"app answered HTTP {err.status} but closed the connection mid-answer ({unsure})"
    return f"failed: {first_line(err.detail)} ({unsure})"


# Never send a local app through a proxy; a remote one goes through the environment's, if any.
_LOCAL = BoundedTransport(CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S, trust_env=False)
_REMOTE = BoundedTransport(CONNECT_TIMEOUT_S, DEFAULT_TIMEOUT_S)


def _answer_message(raw: bytes) -> str:
    """The first line of the app's error message, from a JSON error document or the plain body."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        message = error or document.get("message")
        if isinstance(message, str) and message.strip():
            text = message
    return first_line(text)


# --------------------------------------------------------------------------- helpers


def require_replay_target(url: str | None, secret: str | None) -> None:
    missing = [name for name, value in (("OPSBOOK_WEBHOOK_URL", url), ("STRIPE_WEBHOOK_SECRET", secret))
               if not value or not str(value).strip()]
    if missing:
        what = {
            "OPSBOOK_WEBHOOK_URL": "OPSBOOK_WEBHOOK_URL (the app's webhook endpoint URL)",
            "STRIPE_WEBHOOK_SECRET": "STRIPE_WEBHOOK_SECRET (the endpoint's whsec_ signing secret)",
        }
        raise ConfigurationError(
            f"Cannot replay webhook events: set {' and '.join(what[m] for m in missing)} in the environment, "
            "or run with apply=False to see the plan"
        )
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigurationError(f"OPSBOOK_WEBHOOK_URL must be an http(s) URL, not {_display_url(url)!r}")


def _statuses(conn: Connection, table, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    column = table.col("stripe_event_id")
    rows = select_all(
        conn,
        f"SELECT {column} AS stripe_event_id, {table.col('status')} AS status FROM {table.sql_table} "
        f"WHERE {column} = ANY(CAST(:ids AS text[]))",
        ids=ids,
    )
    return {row["stripe_event_id"]: row["status"] for row in rows}


def _action(event: Mapping, url: str | None, reason: str, *, app_status: str | None) -> Action:
    return Action(
        action=ACTION,
        target=event["id"],
        reason=reason,
        detail={
            "type": event.get("type"),
            "created": from_epoch(event["created"]),
            "url": _display_url(url) if url else "(OPSBOOK_WEBHOOK_URL not set)",
            "app_status": app_status or "not received",
        },
    )


def _order(event: Mapping) -> tuple:
    return event["created"], event["id"]
