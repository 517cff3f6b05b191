"""Stripe webhooks: the webhook_failure runbook's checks, and verifying and producing
``Stripe-Signature`` headers."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ..findings import Finding
from ..findings import run_checks as _run_checks
from . import checks as _checks
from .refunds import refunds_not_reversed
from .signature import (
    DEFAULT_TOLERANCE,
    HEADER,
    SignatureError,
    SignatureHeader,
    check,
    compute_signature,
    parse_header,
    sign,
    sign_with,
    verify,
)

#: check id -> function, in the order the runbook reports them (the unsigned-delivery probe is an
#: action with its own switch, not a check: see ``unsigned.endpoint_accepts_unsigned``).
CHECKS: dict[str, Callable[..., Finding]] = {
    "webhook_secret_configured": _checks.webhook_secret_configured,
    "endpoint_disabled": _checks.endpoint_disabled,
    "endpoint_missing_event_types": _checks.endpoint_missing_event_types,
    "undelivered_events": _checks.undelivered_events,
    "missing_events": _checks.missing_events,
    "failed_events": _checks.failed_events,
    "stuck_events": _checks.stuck_events,
    "signature_mismatch": _checks.signature_mismatch,
    "unfulfilled_payments": _checks.unfulfilled_payments,
    "refunds_not_reversed": refunds_not_reversed,
}


def run_checks(inputs: Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Finding]:
    """Every check in ``CHECKS``, in order: ``inputs`` by parameter name (``secret``, ``mode``,
    ``endpoints``, ``webhook_url``, ``required_types``, ``events``, ``received``, ``now``,
    ``conn``, ``schema``), keyword options from ``options[check_id]``."""
    return _run_checks(CHECKS, inputs, options)


__all__ = [
    "CHECKS",
    "run_checks",
    "DEFAULT_TOLERANCE",
    "HEADER",
    "SignatureError",
    "SignatureHeader",
    "check",
    "compute_signature",
    "parse_header",
    "sign",
    "sign_with",
    "verify",
]
