"""The app's health endpoint: reachable, answering 2xx within the timeout."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from ..errors import first_line
from ..findings import Finding
from ..stripe_api import LOOPBACK_HOSTS, BoundedTransport, NetworkFailure
from ..webhooks.checks import _display_url

URL_VARIABLE = "OPSBOOK_HEALTH_URL"
MAX_BODY = 2_000  # of the answer, shown literally as evidence


def health_url(parameter: str | None, env: dict | None = None) -> str | None:
    """The parameter when given, else OPSBOOK_HEALTH_URL, else None (not checked)."""
    import os

    env = os.environ if env is None else env
    return (parameter or "").strip() or (env.get(URL_VARIABLE) or "").strip() or None


def _transport(url: str, timeout_s: float) -> BoundedTransport:
    # timeout_s bounds the whole request (a per-read timeout lets a server that drips its answer
    # hold the check for ever); an app on this machine is never sent through a proxy.
    local = (urlsplit(url).hostname or "").lower() in LOOPBACK_HOSTS
    return BoundedTransport(min(5.0, timeout_s), timeout_s, trust_env=not local)


def health_endpoint_down(url: str | None, *, timeout_s: float = 5.0, slow_ms: float = 2_000.0) -> Finding:
    """GET the health URL: an error, a non-2xx answer or no whole answer within ``timeout_s`` is critical;
    a 2xx slower than ``slow_ms`` is a warning. Without a URL, says it did not check."""
    check = "health_endpoint_down"
    if not url:
        return Finding(check, "ok", "Not checked: no health URL configured",
                       note=f"Set {URL_VARIABLE} (or the health_url parameter) to the app's health endpoint.")
    shown = _display_url(url)
    started = time.monotonic()
    status, error, body = None, None, ""
    transport = _transport(url, timeout_s)
    try:
        answer = transport.send("GET", url, deadline=started + timeout_s,
                                headers={"User-Agent": "opsbook service_health"}, max_body=MAX_BODY)
        status, body = answer.status, answer.body.decode("utf-8", "replace")
    except NetworkFailure as err:
        error = f"{err.detail}: {first_line(err.__cause__)}" if err.kind == "error" and err.__cause__ else err.detail
        if err.kind in ("no_answer", "stalled"):
            error = f"no complete answer within {timeout_s:g} s ({error})"
    finally:
        transport.close()
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    row = {"url": shown, "status": status, "elapsed_ms": elapsed_ms, "error": error, "answer": body[:500] or None}
    if error is not None or status is None or not 200 <= status < 300:
        what = error or f"HTTP {status}"
        return Finding(check, "critical", f"The app's health endpoint is down: {what}", items=[shown], rows=[row],
                       remediation="Check the app's processes and logs (a crash loop, a failed deploy, a dependency its "
                       "health check reports down); the answer's body above is what the app said.")
    if elapsed_ms > slow_ms:
        return Finding(check, "warning", f"The app's health endpoint answered HTTP {status} in {elapsed_ms:g} ms "
                       f"(over {slow_ms:g} ms)", items=[shown], rows=[row],
                       remediation="A slow health check is often a slow dependency: see database_slow_to_answer below.")
    return Finding(check, "ok", f"The app's health endpoint answered HTTP {status} in {elapsed_ms:g} ms", rows=[row])
