"""Stripe-Signature headers: ours against Stripe's documentation and stripe-python's verifier."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time

import pytest
import stripe

from ops_lib.webhooks import SignatureError, check, parse_header, sign, sign_with, verify

SECRET = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc"
OLD_SECRET = "whsec_test_rolledAwayRolledAway00"
OTHER_SECRET = "whsec_test_someoneElsesEndpoint0"
# Not ASCII, as real events are not: the signature covers the raw UTF-8 bytes.
BODY = json.dumps(
    {"id": "evt_1NnlpZGPxmnHQRkJ", "object": "event", "type": "checkout.session.completed",
     "data": {"object": {"id": "cs_test_a1b2", "customer_details": {"name": "Zoë Müller"}}}},
    ensure_ascii=False,
).encode("utf-8")
NOW = 1_700_000_000


def documented_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """docs.stripe.com/webhooks#verify-manually, step 3, written out independently of ours."""
    signed_payload = f"{timestamp}.{payload.decode('utf-8')}"
    return hmac.new(secret.encode("utf-8"), signed_payload.encode("utf-8"), hashlib.sha256).hexdigest()


def reason(callable_, *args, **kwargs) -> str:
    with pytest.raises(SignatureError) as raised:
        callable_(*args, **kwargs)
    return raised.value.reason


# --------------------------------------------------------------------------- signing


def test_sign_produces_a_header_in_stripes_format_with_the_documented_signature():
    header = sign(BODY, SECRET, NOW)

    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert header == f"t={NOW},v1={documented_signature(BODY, SECRET, NOW)}"


def test_sign_accepts_the_body_as_text_or_bytes_alike():
    assert sign(BODY.decode("utf-8"), SECRET, NOW) == sign(BODY, SECRET, NOW)


def test_sign_uses_the_current_time_by_default():
    before = int(time.time())
    timestamp = parse_header(sign(BODY, SECRET)).timestamp
    assert before <= timestamp <= int(time.time())


def test_sign_with_two_secrets_puts_one_v1_per_secret_as_stripe_does_during_a_roll():
    header = sign_with(BODY, [OLD_SECRET, SECRET], NOW)

    assert parse_header(header).v1 == (
        documented_signature(BODY, OLD_SECRET, NOW),
        documented_signature(BODY, SECRET, NOW),
    )


# --------------------------------------------------------------------------- verifying


def test_a_correctly_signed_delivery_verifies_and_yields_its_timestamp():
    assert verify(BODY, sign(BODY, SECRET, NOW), SECRET, now=NOW) == NOW


def test_a_delivery_signed_with_another_secret_is_rejected():
    header = sign(BODY, OTHER_SECRET, NOW)
    assert reason(verify, BODY, header, SECRET, now=NOW) == "no signature matches the secret"


def test_a_tampered_body_is_rejected():
    header = sign(BODY, SECRET, NOW)
    tampered = BODY.replace(b"cs_test_a1b2", b"cs_test_a1b3")
    assert reason(verify, tampered, header, SECRET, now=NOW) == "no signature matches the secret"


def test_a_moved_timestamp_is_rejected_because_the_timestamp_is_signed_too():
    header = sign(BODY, SECRET, NOW - 3600).replace(f"t={NOW - 3600}", f"t={NOW}")
    assert reason(verify, BODY, header, SECRET, now=NOW) == "no signature matches the secret"


def test_a_stale_delivery_is_rejected_with_its_age():
    header = sign(BODY, SECRET, NOW - 412)
    assert reason(verify, BODY, header, SECRET, now=NOW) == "timestamp outside the tolerance (412 s old)"


def test_a_delivery_from_beyond_the_tolerance_in_the_future_is_rejected():
    header = sign(BODY, SECRET, NOW + 412)
    assert reason(verify, BODY, header, SECRET, now=NOW) == "timestamp outside the tolerance (412 s in the future)"


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_deliveries_within_300_seconds_either_way_are_accepted(offset):
    assert verify(BODY, sign(BODY, SECRET, NOW + offset), SECRET, now=NOW) == NOW + offset


def test_the_tolerance_can_be_tightened_or_ignored():
    header = sign(BODY, SECRET, NOW - 90)

    assert reason(verify, BODY, header, SECRET, tolerance=60, now=NOW) == "timestamp outside the tolerance (90 s old)"
    assert verify(BODY, sign(BODY, SECRET, NOW - 86_400 * 30), SECRET, tolerance=None, now=NOW) == NOW - 86_400 * 30


def test_the_signature_is_judged_before_the_age_so_a_wrong_secret_is_never_reported_as_stale():
    header = sign(BODY, OTHER_SECRET, NOW - 412)
    assert reason(verify, BODY, header, SECRET, now=NOW) == "no signature matches the secret"


def test_during_a_roll_a_header_with_old_and_new_signatures_verifies_against_either_secret():
    header = sign_with(BODY, [OLD_SECRET, SECRET], NOW)

    assert verify(BODY, header, OLD_SECRET, now=NOW) == NOW
    assert verify(BODY, header, SECRET, now=NOW) == NOW
    assert verify(BODY, header, [SECRET], now=NOW) == NOW
    assert reason(verify, BODY, header, OTHER_SECRET, now=NOW) == "no signature matches the secret"


def test_an_app_that_knows_old_and_new_secrets_accepts_a_delivery_signed_with_either():
    signed_with_old = sign(BODY, OLD_SECRET, NOW)

    assert verify(BODY, signed_with_old, [OLD_SECRET, SECRET], now=NOW) == NOW
    assert reason(verify, BODY, signed_with_old, [SECRET], now=NOW) == "no signature matches the secret"


def test_signatures_of_other_schemes_are_ignored():
    header = f"{sign(BODY, SECRET, NOW)},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    assert verify(BODY, header, SECRET, now=NOW) == NOW
    assert reason(verify, BODY, f"t={NOW},v0={documented_signature(BODY, SECRET, NOW)}", SECRET, now=NOW) == (
        "no v1 signature"
    )


VALID_V1 = "v1=" + "0" * 64


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, "no Stripe-Signature header"),
        ("", "no Stripe-Signature header"),
        ("   ", "no Stripe-Signature header"),
        ("garbage", "malformed header"),
        (VALID_V1, "malformed header"),
        (f"t=yesterday,{VALID_V1}", "malformed header"),
        (f"t=-5,{VALID_V1}", "malformed header"),
        (f"t=1_700_000_000,{VALID_V1}", "malformed header"),
        (f"t={NOW},t={NOW + 1},{VALID_V1}", "malformed header"),
        (f"t={NOW},v1", "malformed header"),
        (f"t={NOW}", "no v1 signature"),
        (f"t={NOW},v0=abcd", "no v1 signature"),
    ],
    ids=["absent", "empty", "blank", "garbage", "no_timestamp", "word_timestamp", "negative_timestamp",
         "underscored_timestamp", "two_timestamps", "v1_without_value", "timestamp_only", "v0_only"],
)
def test_malformed_headers_are_rejected_with_the_reason(header, expected):
    assert reason(verify, BODY, header, SECRET, now=NOW) == expected


def test_a_non_ascii_forgery_is_rejected_rather_than_crashing_the_comparison():
    assert reason(verify, BODY, f"t={NOW},v1=\u00e9\u00e9", SECRET, now=NOW) == "no signature matches the secret"


@pytest.mark.parametrize("secrets", ["", "   ", [], [SECRET, ""]])
def test_a_missing_secret_is_a_configuration_error_not_a_bad_delivery(secrets):
    with pytest.raises(ValueError, match="secret") as raised:
        verify(BODY, sign(BODY, SECRET, NOW), secrets, now=NOW)
    assert not isinstance(raised.value, SignatureError)


# --------------------------------------------------------------------------- check (stored deliveries)


def test_check_returns_none_for_a_stored_delivery_however_old_it_is():
    month_old = sign(BODY, SECRET, int(time.time()) - 86_400 * 30)
    assert check(BODY, month_old, SECRET) is None


def test_check_returns_the_reason_instead_of_raising():
    header = sign(BODY, OTHER_SECRET, NOW)

    assert check(BODY, header, SECRET) == "no signature matches the secret"
    assert check(BODY, None, SECRET) == "no Stripe-Signature header"
    assert check(BODY, sign(BODY, SECRET, NOW - 412), SECRET, tolerance=300, now=NOW) == (
        "timestamp outside the tolerance (412 s old)"
    )


# --------------------------------------------------------------------------- stripe-python agrees


def test_stripes_own_verifier_accepts_our_headers():
    header = sign(BODY, SECRET)

    assert stripe.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=300) is True
    event = stripe.Webhook.construct_event(BODY, header, SECRET)
    assert event.id == "evt_1NnlpZGPxmnHQRkJ"
    assert event.data.object.customer_details.name == "Zoë Müller"


@pytest.mark.parametrize("secret", [OLD_SECRET, SECRET])
def test_stripes_own_verifier_accepts_our_rotation_headers_with_either_secret(secret):
    header = sign_with(BODY, [OLD_SECRET, SECRET])
    assert stripe.WebhookSignature.verify_header(BODY, header, secret, tolerance=300) is True


def test_we_accept_headers_built_by_stripe_python():
    now = int(time.time())
    generated = stripe.WebhookSignature.generate_signature_header(BODY.decode("utf-8"), SECRET, timestamp=now)
    computed = f"t={now},v1=" + stripe.WebhookSignature._compute_signature(f"{now}.{BODY.decode('utf-8')}", SECRET)

    assert verify(BODY, generated, SECRET) == now
    assert verify(BODY, computed, SECRET) == now


def _stripe_accepts(payload: bytes, header: str, secret: str) -> bool:
    try:
        return stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=300)
    except stripe.SignatureVerificationError:
        return False


def _we_accept(payload: bytes, header: str, secret: str) -> bool:
    return check(payload, header, secret, tolerance=300) is None


# Future timestamps are left out: stripe-python only bounds the age in the past (see signature.py).
@pytest.mark.parametrize(
    "payload, header_of, secret",
    [
        (BODY, lambda now: sign(BODY, SECRET, now), SECRET),
        (BODY, lambda now: sign(BODY, SECRET, now - 299), SECRET),
        (BODY, lambda now: sign(BODY, SECRET, now - 412), SECRET),
        (BODY, lambda now: sign(BODY, OTHER_SECRET, now), SECRET),
        (BODY + b" ", lambda now: sign(BODY, SECRET, now), SECRET),
        (BODY, lambda now: sign_with(BODY, [OLD_SECRET, SECRET], now), OLD_SECRET),
        (BODY, lambda now: f"t={now}", SECRET),
        (BODY, lambda now: "v1=" + documented_signature(BODY, SECRET, now), SECRET),
        (BODY, lambda now: f"t={now},v1={documented_signature(BODY, SECRET, now).upper()}", SECRET),
    ],
    ids=["valid", "299_s_old", "412_s_old", "other_secret", "tampered_body", "rotation", "no_v1",
         "no_timestamp", "uppercase_hex"],
)
def test_we_accept_exactly_what_stripe_python_accepts(payload, header_of, secret):
    header = header_of(int(time.time()))
    assert _we_accept(payload, header, secret) == _stripe_accepts(payload, header, secret)
