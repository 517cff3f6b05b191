"""Stripe webhook signatures, as Stripe documents them (docs.stripe.com/webhooks#verify-manually).

A delivery carries ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]``. Each ``v1`` is
the hex HMAC-SHA256 of ``"<t>.<raw body>"`` keyed with an endpoint secret (the whole
``whsec_...`` string). While a secret is being rolled, Stripe signs every delivery with both the
old and the new secret, so a header may carry several ``v1``; ``v0`` and other schemes are test
or legacy signatures and are ignored.

The HMAC is computed over the raw bytes of the body, exactly as received: re-serialised JSON
does not verify. For a UTF-8 body this equals stripe-python's ``WebhookSignature``, which
decodes the body and signs the text.

Where we differ from stripe-python on purpose: the tolerance bounds the difference between the
header's timestamp and now in both directions (as Stripe's documentation and stripe-java define
it), whereas stripe-python only rejects timestamps in the past.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Sequence, Union

HEADER = "Stripe-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300

Payload = Union[bytes, bytearray, str]
Secrets = Union[str, Sequence[str]]

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(ValueError):
    """A delivery whose ``Stripe-Signature`` does not prove it came from Stripe, recently."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    v1: tuple[str, ...]


def parse_header(header: str | None) -> SignatureHeader:
    """The timestamp and ``v1`` signatures of a ``Stripe-Signature`` value.

    Malformed: no ``t``, more than one ``t``, a ``t`` that is not whole seconds, or an element
    that is not ``key=value``. Elements of other schemes are skipped, as Stripe asks.
    """
    if header is None or not header.strip():
        raise SignatureError(f"no {HEADER} header")
    timestamps: list[str] = []
    v1: list[str] = []
    for element in header.split(","):
        element = element.strip()
        if not element:
            continue
        key, sep, value = element.partition("=")
        if not sep:
            raise SignatureError("malformed header")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            v1.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise SignatureError("malformed header")
    if not v1:
        raise SignatureError(f"no {SCHEME} signature")
    return SignatureHeader(int(timestamps[0]), tuple(v1))


def compute_signature(payload: Payload, secret: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``payload`` at ``timestamp`` under ``secret``."""
    signed_payload = f"{int(timestamp)}.".encode("ascii") + _raw(payload)
    return hmac.new(secret.encode("utf-8"), signed_payload, hashlib.sha256).hexdigest()


def sign(payload: Payload, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` value Stripe would send for this body (now, by default)."""
    return sign_with(payload, [secret], timestamp)


def sign_with(payload: Payload, secrets: Sequence[str], timestamp: int | None = None) -> str:
    """One ``v1`` per secret: what Stripe sends while an endpoint secret is being rolled."""
    secrets = _secret_list(secrets)
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    signatures = ",".join(f"{SCHEME}={compute_signature(payload, s, timestamp)}" for s in secrets)
    return f"t={timestamp},{signatures}"


def verify(
    payload: Payload,
    header: str | None,
    secret_or_secrets: Secrets,
    tolerance: int | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """The header's timestamp, if any ``v1`` matches the body under any of the secrets.

    Raises ``SignatureError`` otherwise. ``tolerance`` (seconds) bounds the header's age either
    way; ``None`` ignores it, for re-checking stored deliveries. The signature is checked before
    the age, as Stripe does, so "outside the tolerance" always means an authentic but old (or
    clock-skewed) delivery, never a wrong secret.
    """
    secrets = _secret_list(secret_or_secrets)
    parsed = parse_header(header)
    expected = [compute_signature(payload, s, parsed.timestamp).encode("ascii") for s in secrets]
    received = [signature.encode("utf-8") for signature in parsed.v1]
    # compare_digest on bytes: constant time, and no TypeError on a non-ASCII forgery.
    if not any(hmac.compare_digest(e, r) for e in expected for r in received):
        raise SignatureError("no signature matches the secret")
    if tolerance is not None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be at least 0 seconds, not {tolerance}")
        age = int(time.time() if now is None else now) - parsed.timestamp
        if age > tolerance:
            raise SignatureError(f"timestamp outside the tolerance ({age} s old)")
        if -age > tolerance:
            raise SignatureError(f"timestamp outside the tolerance ({-age} s in the future)")
    return parsed.timestamp


def check(
    payload: Payload,
    header: str | None,
    secret_or_secrets: Secrets,
    tolerance: int | None = None,
    now: float | None = None,
) -> str | None:
    """``None`` when the delivery verifies, else the reason in words.

    The age is ignored by default: a stored delivery is old by the time anyone looks at it.
    """
    try:
        verify(payload, header, secret_or_secrets, tolerance=tolerance, now=now)
    except SignatureError as err:
        return err.reason
    return None


def _raw(payload: Payload) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def _secret_list(secret_or_secrets: Secrets) -> list[str]:
    secrets = [secret_or_secrets] if isinstance(secret_or_secrets, str) else list(secret_or_secrets)
    if not secrets or any(not isinstance(s, str) or not s.strip() for s in secrets):
        # A missing secret is a configuration mistake, not a forged delivery.
        raise ValueError("no webhook signing secret given (Stripe shows it as whsec_... on the endpoint)")
    return secrets
