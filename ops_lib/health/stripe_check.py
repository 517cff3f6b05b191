"""Stripe: reachable with the configured key, and the key's mode the one expected."""
from __future__ import annotations

import time

import stripe

from ..findings import Finding
from ..secrets import mask_key, mask_secrets
from ..stripe_api import make_client, mode_of


def stripe_unreachable(api_key: str | None, api_base: str | None = None, *, expected_mode: str = "",
                       timeout_s: float = 10.0) -> Finding:
    """One cheap read (the first webhook endpoint): no answer, or the key rejected, is critical;
    a key of the other mode than ``expected_mode`` (live/test) is critical too."""
    check = "stripe_unreachable"
    if not api_key:
        return Finding(check, "ok", "Not checked: STRIPE_API_KEY is not set",
                       note="Set STRIPE_API_KEY (a restricted read-only key is enough) to check Stripe.")
    mode = mode_of(api_key, api_base)
    row = {"key": mask_key(api_key), "mode": mode, "api_base": api_base or "https://api.stripe.com"}
    if expected_mode and mode in ("live", "test") and mode != expected_mode:
        return Finding(check, "critical", f"STRIPE_API_KEY is a {mode}-mode key; this service should use {expected_mode}",
                       rows=[row], count=1,
                       remediation=f"Set STRIPE_API_KEY to the {expected_mode}-mode key: a {mode} key here means "
                       "payments go to the wrong account mode.")
    started = time.monotonic()
    problem = None
    try:
        client = make_client(api_key, api_base, max_network_retries=0, timeout=timeout_s)
        client.v1.webhook_endpoints.list(params={"limit": 1})
    except stripe.PermissionError:
        pass  # answered: a restricted key without this permission still proves Stripe and the key work
    except stripe.AuthenticationError:
        problem = "the key was rejected (revoked, rolled, or for another account)"
    except stripe.StripeError as err:
        problem = mask_secrets(f"{type(err).__name__}: {getattr(err, 'user_message', None) or err}")[:500]
    except Exception as err:  # a configuration error (a publishable key) says what is wrong in words
        problem = mask_secrets(str(err))[:500]
    row["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    if problem:
        row["error"] = problem
        return Finding(check, "critical", f"Stripe is not usable from here: {problem}", rows=[row], count=1,
                       remediation="Check status.stripe.com, outbound network (firewall, proxy, DNS) from this host, "
                       "and the key in Dashboard → Developers → API keys.")
    return Finding(check, "ok", f"Stripe answered in {row['elapsed_ms']:g} ms ({mode} mode)", rows=[row])
