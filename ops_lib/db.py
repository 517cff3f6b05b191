"""Database access for checks: read-only sessions with timeouts, and a few query helpers.

Checks receive a ``Connection``; they never open one. Every value travels as a bound
parameter (``:name`` placeholders), never formatted into the SQL text.
"""
from __future__ import annotations

import itertools
import re
import select
import sys
import threading
import time
from typing import Any, Iterable, Iterator

import psycopg2
import sqlalchemy as sa
from psycopg2 import extensions
from sqlalchemy.engine import Connection, Engine

from .errors import ConfigurationError, TargetUnreachable, first_line
from .secrets import mask_url

DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 2_000
APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names
# How much longer than its statement_timeout the client waits for any one answer. The server's
# timeout cannot fire when the server is frozen (SIGSTOP, a hung disk) or the network is
# partitioned; this bound is the client's own.
CLIENT_WAIT_MARGIN_S = 15.0
DEFAULT_CLIENT_WAIT_S = DEFAULT_STATEMENT_TIMEOUT_MS / 1000 + CLIENT_WAIT_MARGIN_S
# libpq's own detection of a dead peer (a partition, a crashed host): keepalive probes on an
# idle socket, and a cap on unacknowledged data (tcp_user_timeout, milliseconds).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 30_000}


class ClientWaitExceeded(psycopg2.OperationalError):
    """The server did not answer within the client-side bound (its message reads as a lost
    connection, so SQLAlchemy discards the connection instead of pooling it)."""


_STATEMENT_TIMEOUT = re.compile(r"statement_timeout=(\d+)")


def _client_wait_s(conn) -> float:
    match = _STATEMENT_TIMEOUT.search(getattr(conn, "dsn", "") or "")
    return int(match.group(1)) / 1000 + CLIENT_WAIT_MARGIN_S if match else DEFAULT_CLIENT_WAIT_S


def _cancel_in_background(conn) -> None:
    """Ask the server to cancel, without waiting on it: a frozen postmaster would hold us too."""
    thread = threading.Thread(target=lambda: _quietly(conn.cancel), daemon=True)
    thread.start()
    thread.join(2.0)


def _quietly(call) -> None:
    try:
        call()
    except Exception:
        pass


PROGRESS_EVERY_S = 15.0
REPORT_PROGRESS = True  # (a kernel's waits are reported: the cell shows it, and a headless run's log)


def bounded_wait(conn) -> None:
    """psycopg2's wait callback: every wait for the server (connecting, sending, each answer) is
    bounded by the session's statement_timeout plus a margin, measured here, on the client."""
    budget = _client_wait_s(conn)
    started = time.monotonic()
    deadline = started + budget
    next_report = started + PROGRESS_EVERY_S
    try:
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            now = time.monotonic()
            if now >= next_report and REPORT_PROGRESS:  # a long query says it is still running
                print(f"… waiting for the database: {now - started:.0f} s so far (gives up at {budget:.0f} s)",
                      file=sys.stderr, flush=True)
                next_report += PROGRESS_EVERY_S
            remaining = deadline - now
            if remaining <= 0:
                _cancel_in_background(conn)
                raise ClientWaitExceeded(
                    f"could not receive data from server: no answer within {budget:.0f} s (client-side bound; "
                    "the server may be frozen, overloaded or cut off by the network)"
                )
            fd = conn.fileno()
            pause = max(0.0, min(remaining, next_report - now, 1.0))
            if state == extensions.POLL_READ:
                select.select([fd], [], [], pause)
            elif state == extensions.POLL_WRITE:
                select.select([], [fd], [], pause)
            else:
                raise psycopg2.OperationalError(f"unexpected poll state {state}")
    except KeyboardInterrupt:
        # Ctrl-C, or the runner interrupting the kernel: stop the query on the server too.
        _cancel_in_background(conn)
        raise


_wait_installed = threading.Lock()


def install_bounded_wait() -> None:
    """Once per process (psycopg2 keeps one wait callback for all connections)."""
    with _wait_installed:
        if extensions.get_wait_callback() is not bounded_wait:
            extensions.set_wait_callback(bounded_wait)


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
    install_bounded_wait()
    return sa.create_engine(
        # Read-only sessions run each statement in its own transaction: a notebook left idle in
        # JupyterLab, or waiting on a long Stripe listing, holds no snapshot and is never killed
        # by idle_in_transaction_session_timeout. Writable sessions keep explicit transactions.
        sqlalchemy_url(url),
        connect_args={
            "application_name": application_name(runbook, run_id),
            "options": options,
            "connect_timeout": connect_timeout_s,
            **KEEPALIVES,
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
        raise TargetUnreachable(
            f"cannot connect to {_where(engine)}: {first_line(err)} "
            "— check DATABASE_URL (host, port, user, password) or start the demo with `opsbook demo up`"
        ) from None
    except (sa.exc.ProgrammingError, sa.exc.InterfaceError) as err:  # libpq refused the URL itself
        raise ConfigurationError(
            f"DATABASE_URL for {_where(engine)} is not usable: {first_line(err)} "
            "— remove or correct the query options (libpq's connection parameters)"
        ) from None


def _where(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql", query={}).render_as_string(hide_password=True)


def array_literal(values: Iterable) -> str:
    """A PostgreSQL array literal, every element quoted: '{"a","b"}', bound as one parameter and
    cast (``CAST(:ids AS text[])``): parsed once by the server, where a list bound as such is
    quoted element by element by psycopg2 into a million-element ARRAY[...] expression."""
    texts = [v if type(v) is str else str(v) for v in values]
    joined = "".join(texts)
    if '"' not in joined and "\\" not in joined:  # (ids: nothing to escape, no step per element)
        return '{"' + '","'.join(texts) + '"}' if texts else "{}"
    quoted = ('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts)
    return "{" + ",".join(quoted) + "}"


def select_all(conn: Connection, sql: str, **params: Any) -> list[dict]:
    return [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]


FETCH_ROWS = 65_536
_cursor_names = itertools.count()


def select_tuples(conn: Connection, sql: str, *, work_mem: str | None = None, fetch_rows: int | None = None,
                  **params: Any) -> Iterator[tuple]:
    """The rows as plain tuples, no dict (or SQLAlchemy row mapping) per row, fetched
    ``FETCH_ROWS`` at a time from a server-side cursor: a plain query's answer is held whole by
    libpq before the first row is read, and a million organisations' answer (~350 MB) freed into
    malloc's heap stays there (Python's allocator does not reuse it): the kernel's peak.

    On the runbook's connection (autocommit, idle) the cursor lives in a transaction of its own,
    ended when the rows are read or the reading stops; in a caller's transaction, in that one.
    ``work_mem`` (e.g. ``"256MB"``): the server's memory for the query's sorts and hashes, set
    for the cursor's own transaction only (a caller's transaction keeps its own setting).
    ``fetch_rows``: the rows fetched at a time, for a reader that keeps a little of each row
    (the transient is one fetch's rows; ``FETCH_ROWS`` by default)."""
    raw = conn.connection.dbapi_connection
    own = bool(getattr(raw, "autocommit", False)) and \
        raw.get_transaction_status() == extensions.TRANSACTION_STATUS_IDLE
    name = f"opsbook_rows_{next(_cursor_names)}"
    if own:
        conn.exec_driver_sql("BEGIN")  # (the session's defaults: read-only for the checks)
        # every row is read: plan for the whole answer, not for the first tenth (a cursor's default)
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1")
        if work_mem is not None:
            conn.execute(sa.text("SELECT set_config('work_mem', :work_mem, true)"), {"work_mem": work_mem})
    declared = False
    try:
        conn.execute(sa.text(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}"), params)
        declared = True
        params.clear()  # (the server has them: a large one, an array literal, is not held while the rows are read)
        while True:
            # (the DBAPI's own tuples: a SQLAlchemy Row around each would add 64 bytes a row)
            result = conn.exec_driver_sql(f"FETCH FORWARD {int(fetch_rows or FETCH_ROWS)} FROM {name}")
            chunk = result.cursor.fetchall()
            result.close()
            if not chunk:
                break
            yield from chunk
            del chunk  # (the next rows are fetched without these held)
    finally:
        # (read-only: rolling back loses nothing, and ends an aborted transaction too)
        if own:
            _quietly(lambda: conn.exec_driver_sql("ROLLBACK"))
        elif declared:
            _quietly(lambda: conn.exec_driver_sql(f"CLOSE {name}"))


def select_one(conn: Connection, sql: str, **params: Any) -> dict | None:
    row = conn.execute(sa.text(sql), params).mappings().first()
    return dict(row) if row is not None else None


def select_value(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).scalar()


def server_version_num(conn: Connection) -> int:
    """The server's version number (e.g. 180001): psycopg2 reads it when it connects, no query."""
    known = getattr(getattr(conn.connection, "dbapi_connection", None), "server_version", None)
    return known if isinstance(known, int) and known > 0 else int(select_value(conn, "SHOW server_version_num"))


def server_version(conn: Connection) -> str:
    return str(select_value(conn, "SHOW server_version"))
