"""pg_stat_statements: is it enabled, which statements are slow, and what their plans look like.

Modelled on PgHero's ``query_stats.rb`` and ``explain.rb``: one function per check, the SQL
inline. Values always travel as bound parameters; the only text put into SQL is an
identifier chosen from a fixed list (a column that depends on the extension's version, the
schema the extension lives in, quoted by the server) and, for EXPLAIN, a statement's own
normalized text read back from pg_stat_statements.

Also home to the small helpers every check in this package shares (savepoints, fresh
statistics snapshots, one-line error messages).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import select_all, select_one, select_value, server_version_num
from ..errors import ParameterError, first_line
from ..findings import Finding
from . import trust

#: opsbook's own sessions carry this application_name prefix (see ops_lib.db.application_name).
OPSBOOK_APP_PREFIX = "opsbook/"
#: Statement text kept in evidence rows; the full text stays in pg_stat_statements.
MAX_QUERY_CHARS = 1000

ENABLE_STEPS = (
    "add pg_stat_statements to shared_preload_libraries (postgresql.conf, ALTER SYSTEM, or your "
    "provider's parameter group), restart PostgreSQL, then run CREATE EXTENSION pg_stat_statements; "
    "in this database"
)


# --------------------------------------------------------------------------------------------
# Shared helpers


def _autocommit(conn: Connection) -> bool:
    try:
        return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
    except Exception:  # pragma: no cover - non-psycopg2 drivers
        return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """Run statements that may fail without aborting the caller's (read-only) transaction.

    On an autocommit connection every statement is its own transaction, so there is nothing
    to protect and SAVEPOINT would be refused; elsewhere a failure rolls back to the savepoint.
    """
    if _autocommit(conn):
        yield
        return
    with conn.begin_nested():
        yield


def clear_stats_snapshot(conn: Connection) -> None:
    """Discard the transaction's cached statistics (pg_stat_* and pg_stat_activity).

    With ``stats_fetch_consistency = cache`` (the default) and a notebook that keeps one
    transaction open, these views would otherwise show the values of the first read.
    """
    select_value(conn, "SELECT pg_stat_clear_snapshot()")


def version_text(num: int) -> str:
    """160004 -> '16.4'."""
    return f"{num // 10000}.{num % 10000}" if num >= 100000 else f"{num // 10000}.{(num // 100) % 100}"


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    return tuple(int(part) for part in re.findall(r"\d+", text))


# --------------------------------------------------------------------------------------------
# Is pg_stat_statements there?


@dataclass(frozen=True)
class StatementsInfo:
    installed: bool  # the contrib files are on the server (pg_available_extensions)
    created: bool  # CREATE EXTENSION was run in this database
    preloaded: bool | None  # in shared_preload_libraries; None when this role cannot read it
    readable: bool  # SELECT from the view works
    version: tuple[int, ...] | None
    version_text: str | None
    schema: str | None  # the extension's schema, already quoted by quote_ident
    preload_setting: str | None
    track: str | None
    error: str | None

    @property
    def available(self) -> bool:
        return self.created and self.readable

    @property
    def view(self) -> str:
        return f"{self.schema}.pg_stat_statements"

    def columns(self) -> tuple[str, str]:
        """(total, mean) time columns: renamed in extension version 1.8 (PostgreSQL 13)."""
        if self.version and self.version >= (1, 8):
            return "total_exec_time", "mean_exec_time"
        return "total_time", "mean_time"

    def spread_columns(self) -> tuple[str, str]:
        """(stddev, max) time columns, renamed alongside total and mean."""
        if self.version and self.version >= (1, 8):
            return "stddev_exec_time", "max_exec_time"
        return "stddev_time", "max_time"


def _preload_list(setting: str | None) -> list[str]:
    if setting is None:
        return []
    names = [part.strip().strip('"').strip() for part in setting.split(",") if part.strip()]
    return [name.rsplit("/", 1)[-1] for name in names]  # '$libdir/pg_stat_statements' counts too


def statements_info(conn: Connection) -> StatementsInfo:
    row = select_one(
        conn,
        """
        SELECT
            EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') AS installed,
            e.extversion AS version,
            quote_ident(n.nspname) AS schema,
            (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries') AS preload,
            (SELECT setting FROM pg_settings WHERE name = 'pg_stat_statements.track') AS track
        FROM (SELECT 1) AS one
        LEFT JOIN pg_extension e ON e.extname = 'pg_stat_statements'
        LEFT JOIN pg_namespace n ON n.oid = e.extnamespace
        """,
    )
    created = row["version"] is not None
    preloaded = None if row["preload"] is None else "pg_stat_statements" in _preload_list(row["preload"])
    readable, error = False, None
    if created:
        try:
            with savepoint(conn):
                select_value(conn, f"SELECT 1 FROM {row['schema']}.pg_stat_statements LIMIT 1")
            readable = True
        except sa.exc.DBAPIError as err:
            error = first_line(err)
            if "shared_preload_libraries" in error:
                preloaded = False
    if readable and preloaded is None:
        preloaded = True  # the view only works when the library is loaded
    return StatementsInfo(
        installed=bool(row["installed"]),
        created=created,
        preloaded=preloaded,
        readable=readable,
        version=_parse_version(row["version"]),
        version_text=row["version"],
        schema=row["schema"],
        preload_setting=row["preload"],
        track=row["track"],
        error=error,
    )


def statements_available(conn: Connection) -> bool:
    """pg_stat_statements is loaded, created in this database, and readable by this role."""
    return statements_info(conn).available


def pg_stat_statements_missing(conn: Connection) -> Finding:
    check = "pg_stat_statements_missing"
    info = statements_info(conn)
    if info.available:
        note = None
        if info.track == "none":
            note = "pg_stat_statements.track = none: nothing is being recorded; set it to top (the default)."
        return Finding(check, "ok", f"pg_stat_statements {info.version_text} is loaded and readable", note=note)

    missing, steps = [], []
    if not info.installed:
        missing.append("not installed on the server")
        steps.append("install the server's contrib package (e.g. postgresql-contrib)")
    if info.preloaded is False:
        missing.append("not in shared_preload_libraries")
        libraries = [*_preload_list(info.preload_setting), "pg_stat_statements"]
        steps.append(
            f"set shared_preload_libraries = '{', '.join(libraries)}' (postgresql.conf, "
            f"ALTER SYSTEM SET shared_preload_libraries = '{', '.join(libraries)}', or your provider's "
            "parameter group) and restart PostgreSQL — the setting only takes effect at server start"
        )
    elif info.preloaded is None:
        steps.append(
            "make sure shared_preload_libraries includes pg_stat_statements (this role cannot read the "
            "setting; changing it needs a restart)"
        )
    if not info.created:
        missing.append("extension not created in this database")
        steps.append("run CREATE EXTENSION IF NOT EXISTS pg_stat_statements; in this database")
    elif not info.readable and info.preloaded is not False:
        missing.append(f"not readable: {info.error}")
        steps.append("grant this role pg_read_all_stats (or pg_monitor)")

    remediation = "To enable it: " + "; then ".join(f"({i}) {step}" for i, step in enumerate(steps, 1)) + "."
    return Finding(
        check,
        "warning",
        "pg_stat_statements is not available: " + "; ".join(missing or ["unknown reason"]),
        items=["pg_stat_statements"],
        rows=[{
            "installed": info.installed,
            "preloaded": info.preloaded,
            "created_in_database": info.created,
            "readable": info.readable,
            "version": info.version_text,
            "error": info.error,
        }],
        remediation=remediation,
        note="Without it, slow_queries, top_statements and statement_plans have nothing to report.",
    )


# --------------------------------------------------------------------------------------------
# Statements


def _statement_rows(
    conn: Connection,
    info: StatementsInfo,
    *,
    order: str,
    limit: int,
    min_mean_ms: float = 0,
    min_calls: int = 0,
    erratic_factor: float | None = None,
    min_stddev_ms: float = 0,
) -> list[dict]:
    total, mean = info.columns()
    stddev, maximum = info.spread_columns()
    order_by = {"total": "total_ms", "mean": "mean_ms", "calls": "calls", "stddev": "stddev_ms"}[order]
    # erratic: the spread dwarfs the mean (a statement usually fast, sometimes very slow)
    erratic = ("AND stddev_ms >= :erratic_factor * mean_ms AND stddev_ms >= :min_stddev_ms"
               if erratic_factor is not None else "")
    # Identifiers only: the view's schema (quoted by the server) and version-dependent columns.
    sql = f"""
        WITH stats AS (
            SELECT s.queryid, s.userid, s.calls, s.{total} AS total_ms, s.{mean} AS mean_ms,
                   s.{stddev} AS stddev_ms, s.{maximum} AS max_ms, s.rows, s.query
            FROM {info.view} s
            WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND s.calls > 0
        )
        SELECT
            queryid,
            calls,
            round(total_ms::numeric, 2)::float8 AS total_ms,
            round(mean_ms::numeric, 3)::float8 AS mean_ms,
            round(stddev_ms::numeric, 3)::float8 AS stddev_ms,
            round(max_ms::numeric, 3)::float8 AS max_ms,
            rows,
            round((100 * total_ms / nullif((SELECT sum(total_ms) FROM stats), 0))::numeric, 2)::float8 AS share_pct,
            pg_get_userbyid(userid) AS usename,
            current_database() AS datname,
            left(query, :max_chars) AS query
        FROM stats
        WHERE mean_ms >= :min_mean_ms AND calls >= :min_calls {erratic}
        ORDER BY {order_by} DESC, queryid
        LIMIT :limit
    """
    extra = {"erratic_factor": float(erratic_factor), "min_stddev_ms": float(min_stddev_ms)} if erratic_factor is not None else {}
    with savepoint(conn):
        return select_all(
            conn, sql, max_chars=MAX_QUERY_CHARS, min_mean_ms=float(min_mean_ms),
            min_calls=int(min_calls), limit=int(limit), **extra,
        )


def _stats_window_note(conn: Connection, info: StatementsInfo) -> str | None:
    """When pg_stat_statements was last reset (pg_stat_statements_info, extension 1.9+)."""
    if not info.version or info.version < (1, 9):
        return None
    try:
        with savepoint(conn):
            reset = select_value(conn, f"SELECT stats_reset FROM {info.schema}.pg_stat_statements_info")
    except sa.exc.DBAPIError:
        return None
    return f"Statistics since {reset:%Y-%m-%d %H:%M:%S %Z} (last pg_stat_statements reset)." if reset else None


def top_statements(conn: Connection, *, by: str = "total", limit: int = 10) -> list[dict]:
    """This database's statements ordered by total time, mean time, calls or variability
    (``stddev``), each with its stddev and max next to the mean; [] without the extension."""
    if by not in ("total", "mean", "calls", "stddev"):
        raise ParameterError(f"top_statements: by must be 'total', 'mean', 'calls' or 'stddev', not {by!r}")
    info = statements_info(conn)
    if not info.available:
        return []
    return _statement_rows(conn, info, order=by, limit=limit)


def slow_queries(conn: Connection, *, min_mean_ms: float = 20, min_calls: int = 100, limit: int = 10) -> Finding:
    """PgHero's slow queries: mean time at least ``min_mean_ms`` over at least ``min_calls`` calls."""
    check = "slow_queries"
    info = statements_info(conn)
    if not info.available:
        return Finding(
            check, "ok", "Slow queries not measured: pg_stat_statements is not available",
            note="See pg_stat_statements_missing for how to enable it.",
        )
    rows = _statement_rows(conn, info, order="total", limit=limit, min_mean_ms=min_mean_ms, min_calls=min_calls)
    return Finding.from_rows(
        check,
        rows,
        severity="warning",
        title=f"{len(rows)} statement(s) average ≥ {min_mean_ms:g} ms over ≥ {min_calls} calls",
        ok_title=f"No statement averages ≥ {min_mean_ms:g} ms over ≥ {min_calls} calls",
        item="queryid",
        remediation=(
            "EXPLAIN the statements (statement_plans) and add the index their WHERE/JOIN/ORDER BY needs "
            "(CREATE INDEX CONCURRENTLY), or rewrite them to read fewer rows; then reset the statistics "
            "and compare."
        ),
        note=_stats_window_note(conn, info),
    )


def erratic_statements(conn: Connection, *, min_calls: int = 100, factor: float = 2.0, min_stddev_ms: float = 10.0,
                       limit: int = 10) -> Finding:
    """Statements whose time varies far more than it averages: standard deviation at least
    ``factor`` × the mean and at least ``min_stddev_ms``, over at least ``min_calls`` calls. The mean
    hides them (usually fast, sometimes very slow: a lock wait, a cold cache, a plan flip, one
    customer with far more rows) — the p95 a user feels is far above it."""
    check = "erratic_statements"
    info = statements_info(conn)
    if not info.available:
        return Finding(check, "ok", "Variability not measured: pg_stat_statements is not available",
                       note="See pg_stat_statements_missing for how to enable it.")
    rows = _statement_rows(conn, info, order="stddev", limit=limit, min_calls=min_calls,
                           erratic_factor=factor, min_stddev_ms=min_stddev_ms)
    return Finding.from_rows(
        check, rows, severity="warning",
        title=f"{len(rows)} statement(s) vary far more than they average (stddev ≥ {factor:g}× the mean, ≥ {min_stddev_ms:g} ms)",
        ok_title=f"No statement's time varies ≥ {factor:g}× its mean (and ≥ {min_stddev_ms:g} ms) over ≥ {min_calls} calls",
        item="queryid",
        remediation="Find what the slow calls have in common: lock waits (blocked_queries, log_lock_waits), "
        "parameters that select far more rows (one large tenant: EXPLAIN with its values), a generic plan chosen "
        "after five executions (plan_cache_mode), or cache misses after a restart.",
        note=_stats_window_note(conn, info),
    )


# --------------------------------------------------------------------------------------------
# Plans

_EXPLAINABLE = {"select", "with", "insert", "update", "delete", "merge", "values", "table"}
_LEADING_COMMENTS = re.compile(r"^\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*", re.DOTALL)


def _not_explainable(text: str | None) -> str | None:
    """Why EXPLAIN must not be tried on ``text`` (None when it may)."""
    if not text or text.startswith("<insufficient privilege>"):
        return "statement text not visible to this role (needs pg_read_all_stats)"
    body = _LEADING_COMMENTS.sub("", text, count=1).strip()
    if ";" in body.rstrip(";").rstrip():
        # One statement at a time: EXPLAIN must never carry a second statement along.
        return "several statements in one text; EXPLAIN takes one"
    keyword = (re.match(r"[A-Za-z]+", body) or [""])[0].lower()
    if keyword not in _EXPLAINABLE:
        return f"utility statement ({keyword.upper() or '?'}) has no plan"
    return None


def _full_text(conn: Connection, info: StatementsInfo, queryid) -> str | None:
    if queryid is None or not info.available:
        return None
    with savepoint(conn):
        return select_value(
            conn,
            f"""
            SELECT query FROM {info.view}
            WHERE queryid = :queryid
              AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            LIMIT 1
            """,
            queryid=int(queryid),
        )


def _explain(conn: Connection, text: str) -> str:
    # The statement is SQL, not a value: it cannot be a bound parameter. Sent through the DBAPI
    # cursor without parameters so that neither SQLAlchemy (":name") nor psycopg2 ("%")
    # rewrites it. _not_explainable() has already rejected anything but one plannable statement.
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute("EXPLAIN (GENERIC_PLAN) " + text.strip().rstrip(";"))
        return "\n".join(line for (line,) in cursor.fetchall())
    finally:
        cursor.close()


#: Planning takes milliseconds; a function that stalls it is cancelled after this long.
PLAN_TIMEOUT_MS = 5_000


@contextmanager
def _throwaway_transaction(conn: Connection, timeout_ms: int) -> Iterator[None]:
    """A read-only transaction with a short statement timeout, always rolled back.

    Rolling back undoes every setting changed inside it, even by set_config(..., false) (a
    search_path, a role, a timeout). On an autocommit connection it is a transaction of its
    own; inside the caller's transaction, a savepoint.
    """
    autocommit = _autocommit(conn)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute("BEGIN" if autocommit else "SAVEPOINT opsbook_plan")
        try:
            # SET LOCAL, with a bound value: never longer than the session's own timeout.
            select_one(
                conn,
                """
                SELECT
                    set_config('transaction_read_only', 'on', true) AS read_only,
                    set_config('statement_timeout',
                               CASE WHEN setting::int > 0 THEN least(setting::int, :timeout_ms)
                                    ELSE :timeout_ms END::text,
                               true) AS statement_timeout
                FROM pg_settings WHERE name = 'statement_timeout'
                """,
                timeout_ms=int(timeout_ms),
            )
            yield
        finally:
            cursor.execute("ROLLBACK" if autocommit else "ROLLBACK TO SAVEPOINT opsbook_plan")
            if not autocommit:
                cursor.execute("RELEASE SAVEPOINT opsbook_plan")
    finally:
        cursor.close()


def _session_state(conn: Connection) -> dict:
    """What a planned function could leave behind in the session (a rollback restores settings,
    but not session advisory locks, prepared statements or held cursors)."""
    return select_one(
        conn,
        """
        SELECT
            (SELECT jsonb_object_agg(name, setting) FROM pg_settings) AS settings,
            (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
            (SELECT count(*) FROM pg_prepared_statements) AS prepared_statements,
            (SELECT count(*) FROM pg_cursors) AS cursors
        """,
    )


def _session_changes(before: dict, after: dict) -> list[str]:
    """What differs, in words. Settings that appeared are not a change: the first call of a
    PL/pgSQL function loads its library, which defines plpgsql.* settings."""
    changed = [
        name.replace("_", " ") for name in before
        if name != "settings" and before[name] != after[name]
    ]
    settings = sorted(name for name, value in before["settings"].items() if after["settings"].get(name) != value)
    if settings:
        more = f" and {len(settings) - 3} more" if len(settings) > 3 else ""
        changed.insert(0, f"settings {', '.join(settings[:3])}{more}")
    return changed


def _discard_session(conn: Connection) -> bool:
    """Close the connection's session for good. True when the Connection may go on (with a new one).

    On an autocommit connection nothing of the caller's is lost and SQLAlchemy opens a fresh
    session on next use. Inside the caller's transaction it cannot be saved: the caller's next
    statement fails, rather than running in a session someone else's code has changed.
    """
    autocommit = _autocommit(conn)
    conn.invalidate()
    if autocommit:
        conn.rollback()  # forget the (empty) transaction so that the next use reconnects
    return autocommit


def statement_plans(
    conn: Connection, statements: list[dict], *, limit: int = 3, timeout_ms: int = PLAN_TIMEOUT_MS
) -> list[dict]:
    """Generic plans (``EXPLAIN (GENERIC_PLAN)``, PostgreSQL 16+) of the first ``limit`` statements.

    Each row: queryid, query, plan (text or None), note (why there is no plan). A statement that
    cannot be explained (utility, permissions, a dropped table) gets a note, never an exception.

    Planning runs code (see ops_lib.postgres.trust): a statement that could reach a function
    owned by a role opsbook does not trust is not planned, and its note says why. The others are
    planned in a read-only transaction that is always rolled back, under a ``timeout_ms``
    statement timeout; should planning still leave the session changed, the session is closed.
    """
    version = server_version_num(conn)
    info = statements_info(conn) if version >= 160000 else None
    plans = []
    session_before, session_closed = None, False
    for statement in list(statements)[:limit]:
        queryid = statement.get("queryid")
        row = {"queryid": queryid, "query": (statement.get("query") or "")[:MAX_QUERY_CHARS], "plan": None, "note": None}
        plans.append(row)
        if version < 160000:
            row["note"] = (
                f"EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16+; this server is {version_text(version)} "
                "— run EXPLAIN with real values"
            )
            continue
        if session_closed:
            row["note"] = "not explained: the connection was closed after an earlier plan changed its session"
            continue
        try:
            text = _full_text(conn, info, queryid) or statement.get("query")
        except sa.exc.DBAPIError as err:
            text = statement.get("query")
            row["note"] = f"full text not read: {first_line(err)}"
        reason = _not_explainable(text)
        if reason:
            row["note"] = f"not explained: {reason}"
            continue
        session_before = session_before or _session_state(conn)
        planned = False
        try:
            with _throwaway_transaction(conn, timeout_ms):
                # Read in the same transaction, right before planning: the narrowest window for
                # someone to create or change an object in between.
                refusal = trust.reason_not_to_plan(text, trust.untrusted_code(conn))
                if refusal:
                    row["note"] = f"not explained: {refusal}"
                else:
                    planned = True
                    row["plan"] = _explain(conn, text)
        except (sa.exc.DBAPIError, psycopg2.Error) as err:  # the raw cursor raises psycopg2's own
            row["note"] = f"not explained: {first_line(err)}"
        if not planned:
            continue  # nothing but opsbook's own catalog reads ran
        session_after = _session_state(conn)
        changed = _session_changes(session_before, session_after)
        if changed:
            session_closed = not _discard_session(conn)
            session_before = None
            note = f"planning changed this session ({', '.join(changed)}), so opsbook closed its connection"
            row["note"] = f"{row['note']}; {note}" if row["note"] else note
    return plans
