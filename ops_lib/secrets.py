"""Masking of secrets in everything opsbook writes.

The values of the target variables are masked wherever they appear, and so is anything shaped
like a secret (Stripe keys, webhook secrets, passwords in URLs) even if no variable holds it.
"""
from __future__ import annotations

import html
import json
import os
import re
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

SECRET_VARIABLES = ("DATABASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "OPSBOOK_WEBHOOK_URL", "PGPASSWORD")

MASK = "***"

_PATTERNS = [
    # Stripe secret and restricted keys, webhook signing secrets.
    (re.compile(r"\b((?:sk|rk)_(?:live|test)_)[0-9A-Za-z_]{6,}"), r"\1" + MASK),
    (re.compile(r"\bwhsec_[0-9A-Za-z_+/=]{6,}"), "whsec_" + MASK),
    # user:password@ in any URL.
    (re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]{0,30}://)(?P<user>[^:/@\s\"']*):(?P<pw>[^@\s\"']+)@"),
     r"\g<scheme>\g<user>:" + MASK + "@"),
    # SQL: CREATE/ALTER ROLE ... PASSWORD '...' (seen in pg_stat_activity and statement texts)
    (re.compile(r"(\bPASSWORD\s+)'(?:[^']|'')*'", re.IGNORECASE), r"\1'" + MASK + "'"),
    # libpq keyword form: password=...
    (re.compile(r"(password\s*=\s*)('[^']*'|[^\s\"',;]+)", re.IGNORECASE), r"\1" + MASK),
]

# A Stripe key or webhook secret as a message may name it: its kind and last four characters.
_STRIPE_KEY = re.compile(r"\b((?:sk|rk|pk)_(?:live|test)_|whsec_)([A-Za-z0-9_*]+)")


def mask_key(key: str) -> str:
    """sk_test_51Nx...abcd -> sk_test_…abcd (enough to tell keys apart, useless to an attacker)."""
    match = _STRIPE_KEY.match(key or "")
    if not match:
        return "…" + key[-4:] if key and len(key) > 8 else "…"
    prefix, secret = match.groups()
    return f"{prefix}…{secret[-4:]}" if len(secret) > 8 else f"{prefix}…"


def mask_secrets(text: str) -> str:
    """Every Stripe key or webhook secret in ``text``, shown as ``mask_key`` shows it."""
    return _STRIPE_KEY.sub(lambda m: mask_key(m.group(0)), text)


def mask_url(url: str) -> str:
    return mask_text(url, ())


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(set(s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The literal values to hide: each variable's value and, for URLs, the password alone."""
    env = os.environ if env is None else env
    values: list[str] = []
    for name in SECRET_VARIABLES:
        value = env.get(name)
        if not value:
            continue
        if "://" in value:
            parts = urlsplit(value)
            if parts.password:
                values.append(parts.password)
                # percent-decoded form too, as drivers may print it
                from urllib.parse import unquote

                values.append(unquote(parts.password))
            if name == "OPSBOOK_WEBHOOK_URL" and parts.query:
                values.append(parts.query)
            continue  # the URL itself stays readable once its password is gone
        values.append(value)
    # Shorter values would mask every occurrence of a common word; URL passwords are masked by shape anyway.
    return [v for v in values if len(v) >= 4]


def _rendered_forms(secret: str) -> set[str]:
    """A secret as the HTML outputs of a notebook may hold it (escaped for display)."""
    from .literal import html_text

    return {secret, html.escape(secret), html.escape(secret, quote=False), html_text(secret, limit=None)}


class Masker:
    def __init__(self, secrets: Iterable[str] = ()):
        forms = {form for secret in set(secrets) if secret for form in _rendered_forms(secret)}
        self.secrets = sorted(forms, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> "Masker":
        return cls([*secret_values(env), *extra])

    def text(self, text: str) -> str:
        return mask_text(text, self.secrets)

    def json_text(self, text: str) -> str:
        """Mask a JSON document as text, in one pass per pattern (a notebook is saved after every
        cell, so walking its every string each time would cost more than the run). Each secret
        is also masked in its JSON-escaped form, for values holding quotes, backslashes or
        non-ASCII characters."""
        escaped = {json.dumps(secret)[1:-1] for secret in self.secrets}
        escaped |= {json.dumps(secret, ensure_ascii=False)[1:-1] for secret in self.secrets}
        return mask_text(text, [*self.secrets, *escaped])

    def obj(self, value: Any) -> Any:
        """Mask every string inside a JSON-like structure (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.obj(k): self.obj(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.obj(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.obj(v) for v in value)
        return value
