"""Stripe webhooks: verifying and producing ``Stripe-Signature`` headers."""
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

__all__ = [
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
