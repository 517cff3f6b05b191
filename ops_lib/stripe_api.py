"""Read access to Stripe for the runbooks: a pinned client, filtered listings as plain dicts,
and one-line errors.

Every request pins `Stripe-Version: 2023-08-16`, so real Stripe and the demo emulator answer in
the same shapes (those of shared/stripe-openapi). The `list_*` helpers push their filters to
the API (Stripe filters server-side and pages with `auto_paging_iter()`), so a runbook reads
only what it asks about; each yields plain JSON-like dicts. Failures to reach or use Stripe
become `StripeAccessError` with one line saying what is wrong and how to fix it, and never the
API key itself.
"""
from __future__ import annotations

import contextlib
import re
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import stripe

from ops_lib.errors import ConfigurationError, StripeAccessError

API_VERSION = "2023-08-16"
DEFAULT_TIMEOUT_S = 30
PAGE_SIZE = 100  # Stripe's maximum: fewest round trips

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_SECRET = re.compile(r"\b((?:sk|rk|pk)_(?:live|test)_|whsec_)([A-Za-z0-9_*]+)")


def mask_key(key: str) -> str:
    """sk_test_51Nx...abcd -> sk_test_…abcd (enough to tell keys apart, useless to an attacker)."""
    match = _SECRET.match(key or "")
    if not match:
        return "…" + key[-4:] if key and len(key) > 8 else "…"
    prefix, secret = match.groups()
    return f"{prefix}…{secret[-4:]}" if len(secret) > 8 else f"{prefix}…"


def mask_secrets(text: str) -> str:
    """Every Stripe key or webhook secret in `text`, masked."""
    return _SECRET.sub(lambda m: mask_key(m.group(0)), text)


def mode_of(api_key: str, api_base: str | None = None) -> str:
    """"emulator" when the API base is this machine, else "live" or "test" by the key."""
    if api_base:
        host = urlsplit(api_base).hostname or ""
        if host in _LOCAL_HOSTS:
            return "emulator"
    return "live" if api_key.startswith(("sk_live_", "rk_live_")) else "test"


def make_client(api_key: str, api_base: str | None = None, max_network_retries: int = 2,
                timeout: float = DEFAULT_TIMEOUT_S) -> stripe.StripeClient:
    """A StripeClient pinned to API_VERSION; `api_base` points it elsewhere (the emulator)."""
    if not api_key:
        raise ConfigurationError("No Stripe API key: set STRIPE_API_KEY to a secret (sk_) or "
                                 "restricted (rk_) key from Dashboard → Developers → API keys")
    if api_key.startswith("pk_"):
        raise ConfigurationError(f"STRIPE_API_KEY {mask_key(api_key)} is a publishable key, which "
                                 "cannot read account data: use a secret (sk_) or restricted "
                                 "(rk_) key")
    return stripe.StripeClient(
        api_key,
        stripe_version=API_VERSION,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
        http_client=stripe.new_default_http_client(timeout=timeout),
    )


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def stripe_errors(resource: str | None = None) -> Iterator[None]:
    """Turn Stripe access failures into a one-line StripeAccessError.

    Bad or revoked keys, missing permissions of a restricted key, rate limiting that outlasted
    the retries, Stripe outages and unreachable API bases are the target's problem, not the
    runbook's: the message says which, and what to change. Invalid requests (a bad parameter,
    an unknown id) pass through unchanged: they are the caller's to handle.
    """
    try:
        yield
    except stripe.AuthenticationError as exc:
        raise _access_error(
            exc, f"Stripe rejected the API key{_quoted_key(exc)} (401: revoked, expired or "
                 "mistyped): set STRIPE_API_KEY to a current secret or restricted key from "
                 "Dashboard → Developers → API keys") from None
    except stripe.PermissionError as exc:
        permission = re.search(r"'(rak_\w+)'", str(exc))
        what = resource or (permission.group(1) if permission else "this resource")
        needed = f" (it needs the {permission.group(1)} permission)" if permission else ""
        raise _access_error(
            exc, f"The restricted Stripe key may not read {what}{needed}: grant it read access "
                 f"to {what} in Dashboard → Developers → API keys, or use a key that has "
                 "it") from None
    except stripe.RateLimitError as exc:
        raise _access_error(
            exc, f"Stripe is rate-limiting this key (429) while reading {resource or 'data'}: "
                 "another job is probably using the same key heavily; re-run later or give the "
                 "runbooks their own restricted key") from None
    except stripe.APIConnectionError as exc:
        raise _access_error(
            exc, f"Could not reach the Stripe API {_network_problem(exc)}: check the network "
                 "or proxy, or STRIPE_API_BASE (is the demo emulator running? "
                 "`opsbook demo up`)") from None
    except stripe.APIError as exc:
        raise _access_error(
            exc, f"Stripe failed to answer (HTTP {exc.http_status or '?'}, retries included) "
                 f"while reading {resource or 'data'}: Stripe may be having an incident "
                 "(https://status.stripe.com); re-run later") from None


def _access_error(exc: stripe.StripeError, message: str) -> StripeAccessError:
    if exc.request_id:
        message += f" [request {exc.request_id}]"
    return StripeAccessError(mask_secrets(_first_line(message)))


_QUOTED_KEY = re.compile(r"\b((?:sk|rk)_(?:live|test)_)\*+([A-Za-z0-9]{4})\b")


def _quoted_key(exc: stripe.StripeError) -> str:
    # Stripe quotes the key back masked (sk_test_****abcd): say which key, our way.
    match = _QUOTED_KEY.search(str(exc))
    return f" {match.group(1)}…{match.group(2)}" if match else ""


def _network_problem(exc: stripe.APIConnectionError) -> str:
    """"at 127.0.0.1:12111 (Connection refused)", from the SDK's long network error."""
    text = _first_line(exc.user_message)
    host = re.search(r"host='([^']+)', port=(\d+)", text)
    reason = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if reason:
        why = reason.group(1).strip()
    elif "timed out" in text.lower():
        why = "timed out"
    else:
        kind = re.search(r"Network error: (\w+)", text)
        why = kind.group(1) if kind else "network error"
    return f"at {host.group(1)}:{host.group(2)} ({why})" if host else f"({why})"


def _first_line(text: str | None) -> str:
    return " ".join((text or "").split())


# --------------------------------------------------------------------------- listings


def _ts(moment: datetime | int | None) -> int | None:
    if moment is None or isinstance(moment, int):
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (UTC)")
    return int(moment.astimezone(timezone.utc).timestamp())


def _created(since: datetime | int | None,
             until: datetime | int | None = None) -> dict[str, int] | None:
    """Stripe's `created` range: [since, until)."""
    bounds = {"gte": _ts(since), "lt": _ts(until)}
    bounds = {op: ts for op, ts in bounds.items() if ts is not None}
    return bounds or None


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict(for_json=True)


def _paged(service: Any, resource: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    params = {"limit": PAGE_SIZE, **{k: v for k, v in params.items() if v is not None}}
    with stripe_errors(resource):
        for obj in service.list(params=params).auto_paging_iter():
            yield _plain(obj)


def list_events(client: stripe.StripeClient, since: datetime | int,
                types: list[str] | None = None, delivery_success: bool | None = None,
                until: datetime | int | None = None) -> Iterator[dict[str, Any]]:
    """Events created in [since, until), newest first; `types` may use `invoice.*` families.

    Stripe keeps events for 30 days. `delivery_success=False` keeps events that some webhook
    endpoint has not acknowledged (still pending or failed).
    """
    params: dict[str, Any] = {"created": _created(since, until),
                              "delivery_success": delivery_success}
    if types:
        if len(types) == 1:
            params["type"] = types[0]  # the only form that takes a `family.*` wildcard
        elif any(t.endswith("*") for t in types):
            # `types[]` takes exact names only: one listing per type, merged newest first.
            yield from _merged_newest_first(
                [list_events(client, since, [t], delivery_success, until) for t in types])
            return
        else:
            params["types"] = list(types)
    yield from _paged(client.v1.events, "events", params)


def _merged_newest_first(listings: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    events = [e for listing in listings for e in listing]
    for event in sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True):
        if event["id"] not in seen:
            seen.add(event["id"])
            yield event


def retrieve_event(client: stripe.StripeClient, event_id: str) -> dict[str, Any] | None:
    """The event, or None when Stripe has no such event (never sent, or older than 30 days)."""
    with stripe_errors("events"):
        try:
            return _plain(client.v1.events.retrieve(event_id))
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return None
            raise


def list_subscriptions(client: stripe.StripeClient, status: str = "all",
                       created_since: datetime | int | None = None,
                       customer: str | None = None, price: str | None = None,
                       expand_customer: bool = False) -> Iterator[dict[str, Any]]:
    """Subscriptions in `status` ("all" includes canceled ones, which Stripe hides by default)."""
    return _paged(client.v1.subscriptions, "subscriptions", {
        "status": status, "created": _created(created_since), "customer": customer,
        "price": price, "expand": ["data.customer"] if expand_customer else None})


def list_invoices(client: stripe.StripeClient, paid_since: datetime | int | None = None,
                  status: str | None = None, customer: str | None = None,
                  subscription: str | None = None,
                  created_since: datetime | int | None = None) -> Iterator[dict[str, Any]]:
    """Invoices, optionally only those paid at or after `paid_since`.

    Stripe cannot filter on the payment time, so `paid_since` asks for `status=paid` and keeps
    invoices whose `status_transitions.paid_at` is late enough.
    """
    if paid_since is not None and status not in (None, "paid"):
        raise ValueError(f"paid_since lists paid invoices: it cannot go with status={status!r}")
    threshold = _ts(paid_since)
    invoices = _paged(client.v1.invoices, "invoices", {
        "status": "paid" if threshold is not None else status, "customer": customer,
        "subscription": subscription, "created": _created(created_since)})
    for invoice in invoices:
        if threshold is None or (invoice["status_transitions"]["paid_at"] or 0) >= threshold:
            yield invoice


def list_charges(client: stripe.StripeClient, since: datetime | int | None = None,
                 until: datetime | int | None = None, customer: str | None = None,
                 payment_intent: str | None = None) -> Iterator[dict[str, Any]]:
    """Charges (succeeded, failed and pending) created in [since, until)."""
    return _paged(client.v1.charges, "charges", {
        "created": _created(since, until), "customer": customer,
        "payment_intent": payment_intent})


def list_refunds(client: stripe.StripeClient, since: datetime | int | None = None,
                 until: datetime | int | None = None,
                 charge: str | None = None) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.refunds, "refunds", {"created": _created(since, until),
                                                 "charge": charge})


def list_disputes(client: stripe.StripeClient, since: datetime | int | None = None,
                  until: datetime | int | None = None,
                  charge: str | None = None) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.disputes, "disputes", {"created": _created(since, until),
                                                   "charge": charge})


def list_balance_transactions(client: stripe.StripeClient, since: datetime | int | None = None,
                              until: datetime | int | None = None, type: str | None = None,
                              source: str | None = None, currency: str | None = None,
                              expand_source: bool = False) -> Iterator[dict[str, Any]]:
    """Balance transactions (amount, fee, net per movement); `type` e.g. "charge", "refund"."""
    return _paged(client.v1.balance_transactions, "balance transactions", {
        "created": _created(since, until), "type": type, "source": source,
        "currency": currency, "expand": ["data.source"] if expand_source else None})


def list_webhook_endpoints(client: stripe.StripeClient) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.webhook_endpoints, "webhook endpoints", {})


def list_customers(client: stripe.StripeClient, created_since: datetime | int | None = None,
                   email: str | None = None) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.customers, "customers", {"created": _created(created_since),
                                                     "email": email})


def list_prices(client: stripe.StripeClient, active: bool | None = None,
                product: str | None = None, expand_product: bool = False,
                include_tiers: bool = False) -> Iterator[dict[str, Any]]:
    """Prices; `include_tiers` adds the tiers of tiered prices (Stripe omits them by default)."""
    expand = (["data.product"] if expand_product else []) + (["data.tiers"] if include_tiers else [])
    return _paged(client.v1.prices, "prices", {"active": active, "product": product,
                                               "expand": expand or None})


def list_checkout_sessions(client: stripe.StripeClient, customer: str | None = None,
                           payment_intent: str | None = None,
                           subscription: str | None = None) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.checkout.sessions, "checkout sessions", {
        "customer": customer, "payment_intent": payment_intent, "subscription": subscription})
