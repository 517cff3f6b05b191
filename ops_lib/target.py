"""The target a run looks at, chosen by environment variables only (never by notebook parameters).

With none of the target variables set, the caller may use the local demo instead
(``ops_lib.demo.target_or_demo``), so Run All works in JupyterLab on a fresh checkout; this
module itself never reaches for the demo.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import paths
from .errors import ConfigurationError
from .parameters import url_problem
from .secrets import Masker, mask_url

TARGET_VARIABLES = (
    "DATABASE_URL",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_BASE",
    "OPSBOOK_WEBHOOK_URL",
    "OPSBOOK_SCHEMA",
)


@dataclass(frozen=True)
class Target:
    database_url: str | None = field(repr=False)
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    webhook_url: str | None = field(default=None, repr=False)
    schema_path: Path = field(default_factory=lambda: paths.params_dir() / "schema" / "reference.yaml")
    is_demo: bool = False

    def env(self) -> dict[str, str]:
        """The variables that select this target, for a kernel or a shell."""
        pairs = {
            "DATABASE_URL": self.database_url,
            "STRIPE_API_KEY": self.stripe_api_key,
            "STRIPE_WEBHOOK_SECRET": self.stripe_webhook_secret,
            "STRIPE_API_BASE": self.stripe_api_base,
            "OPSBOOK_WEBHOOK_URL": self.webhook_url,
            "OPSBOOK_SCHEMA": str(self.schema_path),
            "OPSBOOK_DEMO": "1" if self.is_demo else None,
        }
        return {k: v for k, v in pairs.items() if v}

    @property
    def stripe_mode(self) -> str | None:
        if not self.stripe_api_key:
            return None
        from .stripe_api import mode_of

        return mode_of(self.stripe_api_key, self.stripe_api_base)

    def describe(self) -> dict:
        """The run's target line: where, never with what credentials."""
        return {
            "database": mask_url(self.database_url) if self.database_url else None,
            "stripe": self.stripe_mode,
            "demo": self.is_demo,
        }

    def masker(self) -> Masker:
        return Masker.from_env(self.env())

    def require_database(self) -> str:
        if not self.database_url:
            raise ConfigurationError(
                "DATABASE_URL is not set — export DATABASE_URL=postgresql://user:password@host:5432/db "
                "(or unset every target variable to use the demo)"
            )
        return self.database_url


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names a target (OPSBOOK_SCHEMA alone only says how to read one)."""
    env = os.environ if env is None else env
    return any(env.get(name) for name in TARGET_VARIABLES if name != "OPSBOOK_SCHEMA")


def from_env(env: Mapping[str, str] | None = None) -> Target:
    """The target the environment names. Pure: it reaches for nothing (the demo, when no target
    is named, is ``ops_lib.demo.target_or_demo``'s business)."""
    env = os.environ if env is None else env
    if not configured(env):
        raise ConfigurationError(
            "no target is set — export DATABASE_URL (and STRIPE_API_KEY for the Stripe runbooks), "
            "or start the demo with `opsbook demo up`"
        )
    _check_addresses(env)
    _check_secrets(env)
    schema = env.get("OPSBOOK_SCHEMA")
    schema_path = _schema_path(schema) if schema else paths.params_dir() / "schema" / "reference.yaml"
    return Target(
        database_url=env.get("DATABASE_URL") or None,
        stripe_api_key=env.get("STRIPE_API_KEY") or None,
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
        stripe_api_base=env.get("STRIPE_API_BASE") or None,
        webhook_url=env.get("OPSBOOK_WEBHOOK_URL") or None,
        schema_path=schema_path,
        is_demo=env.get("OPSBOOK_DEMO") == "1",
    )


# Where each URL variable points, in words, for the fix.
_ADDRESSES = {
    "STRIPE_API_BASE": "Stripe's API (unset it for https://api.stripe.com; the demo's emulator is http://127.0.0.1:PORT)",
    "OPSBOOK_WEBHOOK_URL": "the app's Stripe webhook endpoint, e.g. https://app.example.com/stripe/webhook",
}
# The secrets travel in HTTP headers: printable ASCII, no spaces (Stripe's keys and secrets are).
_HEADER_SAFE = re.compile(r"[!-~]+")


def _check_addresses(env: Mapping[str, str]) -> None:
    """A URL variable that cannot be called is refused now, not mid-run with urllib's ValueError."""
    for name, what in _ADDRESSES.items():
        value = env.get(name)
        why = url_problem(value, ("http", "https"), bare=False) if value else None
        if why:
            raise ConfigurationError(f"{name} is not a usable URL ({mask_url(value)}): {why} — set it to {what}")


def _check_secrets(env: Mapping[str, str]) -> None:
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        value = env.get(name)
        if value and not _HEADER_SAFE.fullmatch(value):
            # (never the value: one character of it is already too much)
            raise ConfigurationError(
                f"{name} holds a space, a line break or a character outside ASCII, which no Stripe key or "
                f"secret has (opsbook's masked form, with its '…', is not the key) — export it exactly as "
                f"the Stripe dashboard shows it")


def _schema_path(value: str) -> Path:
    """OPSBOOK_SCHEMA is a path, or a name under params/schema/ (checked when a runbook loads it)."""
    candidate = Path(value)
    # absolute: the kernel runs in notebooks/, not where the variable was set
    return candidate.resolve() if candidate.suffix else paths.params_dir() / "schema" / f"{value}.yaml"
