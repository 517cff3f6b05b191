"""Database access for checks: read-only sessions with timeouts, and a few query helpers.

Checks receive a ``Connection``; they never open one. Every value travels as a bound
parameter (``:name`` placeholders), never formatted into the SQL text.
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import ConfigurationError, TargetUnreachable
from .secrets import mask_url

DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 2_000
APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names


def application_name(runbook: str, run_id: str) -> str:
    return f"opsbook/{runbook}/{run_id}"[:APPLICATION_NAME_MAX]


def sqlalchemy_url(url: str) -> sa.engine.URL:
    """A libpq-style URL (``postgres://`` or ``postgresql://``) bound to psycopg2.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; opsbook ships psycopg2.
    """
    try:
        parsed = sa.engine.make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
        parsed.port  # a non-numeric port only fails when read
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"DATABASE_URL {mask_url(url)!r} is not a database URL — expected postgresql://user:password@host:5432/db"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.drivername != "postgresql+psycopg2":
        raise ConfigurationError(
            f"DATABASE_URL names {parsed.drivername}://, but opsbook reads PostgreSQL — expected postgresql://user:password@host:5432/db"
        )
    return parsed


def make_engine(
    url: str,
    *,
    runbook: str = "adhoc",
    run_id: str = "interactive",
    read_only: bool = True,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    connect_timeout_s: int = 5,
) -> Engine:
    """An engine whose every session carries the safety settings.

    The settings go in the startup packet (libpq ``options``), so they hold from the first
    statement of every pooled connection and cannot be forgotten by a check.
    """
    settings = {
        "default_transaction_read_only": "on" if read_only else "off",
        "statement_timeout": str(int(statement_timeout_ms)),
        "lock_timeout": str(int(lock_timeout_ms)),
        "idle_in_transaction_session_timeout": "60000",
        "TimeZone": "UTC",  # windows and periods are UTC, whatever the server's default
    }
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return sa.create_engine(
        # Read-only sessions run each statement in its own transaction: a notebook left idle in
        # JupyterLab, or waiting on a long Stripe listing, holds no snapshot and is never killed
        # by idle_in_transaction_session_timeout. Writable sessions keep explicit transactions.
        
        sqlalchemy_url(url),
        connect_args={
            "application_name": application_name(runbook, run_id),
            "options": options,
            "connect_timeout": connect_timeout_s,
        },
        pool_size=2,
        max_overflow=2,
        **({"isolation_level": "AUTOCOMMIT"} if read_only else {}),
    )


def connect(engine: Engine) -> Connection:
    """Open a connection, turning a refused or unreachable server into one clear line."""
    try:
        return engine.connect()
    except sa.exc.OperationalError as err:
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise TargetUnreachable(
            f"cannot connect to {engine.url.set(drivername='postgresql').render_as_string(hide_password=True)}: {reason} "
            "— check DATABASE_URL (host, port, user, password) or start the demo with `opsbook demo up`"
        ) from None


def select_all(conn: Connection, sql: str, **params: Any) -> list[dict]:
    return [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]


def select_one(conn: Connection, sql: str, **params: Any) -> dict | None:
    row = conn.execute(sa.text(sql), params).mappings().first()
    return dict(row) if row is not None else None


def select_value(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).scalar()


def server_version_num(conn: Connection) -> int:
    return int(select_value(conn, "SHOW server_version_num"))


def server_version(conn: Connection) -> str:
    return str(select_value(conn, "SHOW server_version"))
