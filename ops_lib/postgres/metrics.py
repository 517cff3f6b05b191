"""The slow_queries run in numbers, for the run's JSON: what an alert or a dashboard would follow.

One read of each view, in plain numbers. A metric named after a check counts exactly what that
check's finding counts, with the same thresholds and the same sessions left out (opsbook's own,
other databases): ``long_running_queries``, ``blocked_queries``, ``idle_in_transaction``. The rest:

* ``connections_used`` / ``connections_usable`` / ``connections_used_pct`` — client connections on
  the whole server against max_connections − superuser_reserved_connections − reserved_connections
  (16+), as ``connection_saturation`` judges them;
* ``cache_hit_ratio_tables`` / ``cache_hit_ratio_indexes`` — blocks served from shared_buffers
  (pg_statio_user_tables / _indexes), 0–1, as ``low_cache_hit_ratio`` judges them; null without reads;
* ``statements_tracked`` / ``statements_max`` / ``statements_deallocated`` — entries in
  pg_stat_statements against ``pg_stat_statements.max``, and how many were evicted since the last
  reset (evicted statements are missing from every top list); null without the extension;
* ``statement_statistics_age_s`` — seconds since pg_stat_statements was last reset (its
  pg_stat_statements_info); ``database_statistics_age_s`` — since this database's statistics were
  last reset (pg_stat_database.stats_reset); null when never reset or not readable;
* ``longest_query_s`` — the longest-running active query (null when none);
  ``oldest_transaction_s`` — the oldest open transaction of a client session (it holds back
  vacuum); the sessions ``long_running_queries`` and ``idle_in_transaction`` look at.

A role with only ``pg_monitor`` reads all of them; PostgreSQL 14+ (pg_stat_statements_info).
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import select_one, select_value
from ..findings import Metrics
from .activity import connection_limits
from .queries import OPSBOOK_APP_PREFIX, clear_stats_snapshot, savepoint, statements_info


def server_metrics(conn: Connection, *, long_running_seconds: float = 60,
                   idle_in_transaction_seconds: float = 60) -> Metrics:
    """The numbers above; thresholds as given to ``long_running_queries`` and ``idle_in_transaction``."""
    clear_stats_snapshot(conn)
    limits = connection_limits(conn)
    sessions = select_one(
        conn,
        """
        WITH theirs AS (  -- the client sessions long_running_queries and idle_in_transaction look at
            SELECT state, query_start, state_change, xact_start
            FROM pg_stat_activity
            WHERE backend_type = 'client backend'
              AND pid <> pg_backend_pid()
              AND NOT starts_with(coalesce(application_name, ''), :own_prefix)
              AND datname = current_database()
        )
        SELECT
            (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS connections_used,
            (SELECT count(*) FROM theirs WHERE state = 'active'
                AND query_start <= clock_timestamp() - make_interval(secs => :long_running_seconds))::int
                AS long_running_queries,
            (SELECT count(*) FROM theirs WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
                AND state_change <= clock_timestamp() - make_interval(secs => :idle_seconds))::int
                AS idle_in_transaction,
            -- as blocked_queries: any backend of this database but ours, a parallel worker with its leader
            (SELECT count(*) FROM pg_stat_activity
                WHERE pid <> pg_backend_pid() AND datname = current_database()
                  AND backend_type <> 'parallel worker' AND cardinality(pg_blocking_pids(pid)) > 0)::int
                AS blocked_queries,
            (SELECT round(extract(epoch FROM clock_timestamp() - min(query_start))::numeric, 1)::float8
                FROM theirs WHERE state = 'active') AS longest_query_s,
            (SELECT round(extract(epoch FROM clock_timestamp() - min(xact_start))::numeric, 1)::float8
                FROM theirs) AS oldest_transaction_s,
            (SELECT round(extract(epoch FROM clock_timestamp() - stats_reset)::numeric, 1)::float8
                FROM pg_stat_database WHERE datname = current_database()) AS database_statistics_age_s,
            (SELECT round(sum(heap_blks_hit)::numeric / nullif(sum(heap_blks_hit) + sum(heap_blks_read), 0), 4)::float8
                FROM pg_statio_user_tables) AS cache_hit_ratio_tables,
            (SELECT round(sum(idx_blks_hit)::numeric / nullif(sum(idx_blks_hit) + sum(idx_blks_read), 0), 4)::float8
                FROM pg_statio_user_indexes) AS cache_hit_ratio_indexes
        """,
        own_prefix=OPSBOOK_APP_PREFIX,
        long_running_seconds=float(long_running_seconds),
        idle_seconds=float(idle_in_transaction_seconds),
    )
    usable = limits["usable"]
    used = sessions.pop("connections_used")
    out = {
        "connections_used": used,
        "connections_usable": usable,
        "connections_used_pct": round(100.0 * used / max(usable, 1), 1),
        "long_running_queries": sessions.pop("long_running_queries"),
        "blocked_queries": sessions.pop("blocked_queries"),
        "idle_in_transaction": sessions.pop("idle_in_transaction"),
        **sessions,
        **_statement_numbers(conn),
    }
    return Metrics(out)


def _statement_numbers(conn: Connection) -> dict:
    """pg_stat_statements' fill level and age; nulls when the extension is not available."""
    numbers = {"statements_tracked": None, "statements_max": None, "statements_deallocated": None,
               "statement_statistics_age_s": None}
    info = statements_info(conn)
    if not info.available:
        return numbers
    numbers["statements_max"] = select_value(
        conn, "SELECT setting::int FROM pg_settings WHERE name = 'pg_stat_statements.max'")
    # Identifiers only: the extension's schema, quoted by the server.
    numbers["statements_tracked"] = select_value(conn, f"SELECT count(*)::int FROM {info.view}")
    if info.version and info.version >= (1, 9):  # pg_stat_statements_info: PostgreSQL 14+
        try:
            with savepoint(conn):
                row = select_one(conn, f"""
                    SELECT dealloc::bigint AS deallocated,
                           round(extract(epoch FROM clock_timestamp() - stats_reset)::numeric, 1)::float8 AS age_s
                    FROM {info.schema}.pg_stat_statements_info""")
            numbers["statements_deallocated"] = row["deallocated"]
            numbers["statement_statistics_age_s"] = row["age_s"]
        except sa.exc.DBAPIError:
            pass
    return numbers
