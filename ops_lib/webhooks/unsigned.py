"""An opt-in active probe: does the app's webhook endpoint refuse a delivery without a signature?

Stripe's advice (and the seeds': "a test POST without a signature must get 400"): an endpoint
that processes unsigned requests lets anyone forge a paid checkout. The probe sends one harmless
body — an event of a type no app handles, with an id that names the run — without a
``Stripe-Signature`` header, and expects a 4xx. It is never on by default
(``probe_endpoint=True``), and like a remediation it is planned in a dry run and audited when sent.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..audit import AuditLog
from ..findings import Action, ActionLog, Finding
from ..stripe_api import LOOPBACK_HOSTS, BoundedTransport, NetworkFailure
from .checks import URL_VARIABLE, _display_url

ACTION = "probe_unsigned_delivery"
PROBE_TYPE = "opsbook.unsigned_probe"


@dataclass
class Probe:
    finding: Finding
    actions: ActionLog = field(default_factory=ActionLog)


def probe_body(run_id: str) -> bytes:
    return json.dumps({"id": f"evt_opsbook_probe_{run_id}", "object": "event", "type": PROBE_TYPE,
                       "data": {"object": {"object": "opsbook_probe"}}, "livemode": False}).encode()


def endpoint_accepts_unsigned(url: str | None, *, enabled: bool = False, run_id: str = "interactive",
                              audit: AuditLog | None = None, reason: str = "", timeout_s: float = 10.0) -> Probe:
    check = "endpoint_accepts_unsigned"
    shown = _display_url(url)
    if not url:
        return Probe(Finding(check, "ok", f"Not probed: {URL_VARIABLE} is not set"))
    action = Action(ACTION, shown, reason or "check that the endpoint refuses unsigned deliveries",
                    detail={"url": shown, "type": PROBE_TYPE})
    if not enabled:
        return Probe(Finding(check, "ok", "Not probed (probe_endpoint=False): the plan below shows the one request it "
                                          "would send"), ActionLog([action]))
    status, error = None, None
    # timeout_s bounds the whole request: a per-read timeout lets an endpoint that drips its
    # answer hold the run; an app on this machine is never sent through a proxy.
    local = (urlsplit(url).hostname or "").lower() in LOOPBACK_HOSTS
    transport = BoundedTransport(min(5.0, timeout_s), timeout_s, trust_env=not local)
    try:
        status = transport.send("POST", url, deadline=time.monotonic() + timeout_s, body=probe_body(run_id),
                                headers={"Content-Type": "application/json", "User-Agent": "opsbook probe"},
                                max_body=1).status
    except NetworkFailure as err:
        error = err.detail
    finally:
        transport.close()
    action.applied = True
    action.outcome = f"answered HTTP {status}" if status is not None else f"unreachable: {error}"
    if audit is not None:
        audit.record(action)
    row = {"url": shown, "status": status, "error": error}
    actions = ActionLog([action])
    if status is None:
        return Probe(Finding(check, "info", f"Not probed: the endpoint did not answer ({error})", rows=[row]), actions)
    if 200 <= status < 300:
        return Probe(Finding(
            check, "critical", f"The webhook endpoint accepted a delivery without a signature (HTTP {status})",
            items=[shown], rows=[row],
            remediation="Verify the Stripe-Signature header on the raw body before anything else and answer 400 "
            "when it is missing or wrong (stripe.Webhook.construct_event); anyone can otherwise forge a paid event.",
        ), actions)
    if 400 <= status < 500:
        return Probe(Finding(check, "ok", f"The endpoint refused an unsigned delivery (HTTP {status})", rows=[row]), actions)
    return Probe(Finding(
        check, "warning", f"The endpoint answered an unsigned delivery with HTTP {status}, not a 4xx", items=[shown],
        rows=[row], remediation="Reject a missing or bad signature with 400 before processing: a 5xx makes Stripe "
        "retry, and may mean the app parsed the body before verifying it.",
    ), actions)
