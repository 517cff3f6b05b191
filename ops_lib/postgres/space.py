"""Space and maintenance, as PgHero's space and maintenance pages show them: table bloat
estimates, dead tuples and autovacuum lag, and tables the planner has no statistics for."""
from __future__ import annotations

from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Finding
from .queries import clear_stats_snapshot

MB = 1024 * 1024

# Expected size from the planner's statistics: rows × (tuple header 24 + line pointer 4 + the
# columns' average widths), packed into pages at the table's fillfactor. Rough by design (no
# alignment padding, no TOAST): only large gaps are named.
BLOAT_SQL = """
WITH widths AS (
    SELECT s.schemaname, s.tablename, sum(s.avg_width) AS row_width
    FROM pg_stats s
    WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')
    GROUP BY 1, 2
), sizes AS (
    SELECT c.oid, n.nspname AS schema, c.relname AS table_name, c.reltuples, pg_relation_size(c.oid) AS actual_bytes,
           current_setting('block_size')::int AS block_size,
           coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions) WHERE option_name = 'fillfactor'), 100)
               AS fillfactor,
           w.row_width
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN widths w ON w.schemaname = n.nspname AND w.tablename = c.relname
    WHERE c.relkind IN ('r', 'm') AND c.reltuples >= 0
)
SELECT c.oid::regclass::text AS table, reltuples::bigint AS estimated_rows, actual_bytes,
       expected_bytes, actual_bytes - expected_bytes AS bloat_bytes,
       round(((actual_bytes - expected_bytes)::numeric / nullif(actual_bytes, 0)), 3)::float8 AS bloat_share,
       pg_size_pretty(actual_bytes) AS size, pg_size_pretty(actual_bytes - expected_bytes) AS bloat
FROM (
    SELECT s.*, (ceil(s.reltuples * (28 + s.row_width) / ((s.block_size - 24) * s.fillfactor / 100.0))
                 * s.block_size)::bigint AS expected_bytes
    FROM sizes s
) c
WHERE actual_bytes - expected_bytes >= :min_bytes
  AND (actual_bytes - expected_bytes)::float8 / nullif(actual_bytes, 0) >= :min_share
ORDER BY bloat_bytes DESC, 1
"""


def table_bloat(conn: Connection, *, min_bytes: int = 8 * MB, min_share: float = 0.5) -> Finding:
    """Tables whose size exceeds what their rows need by at least ``min_bytes`` and ``min_share``
    of the table (an estimate from the planner's statistics)."""
    rows = select_all(conn, BLOAT_SQL, min_bytes=int(min_bytes), min_share=float(min_share))
    return Finding.from_rows(
        "table_bloat", rows, severity="warning",
        title=f"{len(rows)} table(s) are mostly empty space (estimated bloat ≥ {min_bytes / MB:g} MB and "
              f"≥ {min_share:.0%} of the table)",
        ok_title=f"No table has an estimated bloat of ≥ {min_bytes / MB:g} MB and ≥ {min_share:.0%}",
        item="table",
        remediation="Plain VACUUM makes the space reusable but does not return it; to shrink the table use "
        "pg_repack (online) or VACUUM FULL (locks the table). Then find why it bloated: see vacuum_lag.",
        note="An estimate from pg_stats (row widths) and pg_class (row counts); run ANALYZE for a fresh one.",
    )


def vacuum_lag(conn: Connection, *, min_dead_tuples: int = 10_000, min_dead_share: float = 0.2) -> Finding:
    """Tables with at least ``min_dead_tuples`` dead rows making up ``min_dead_share`` of them:
    autovacuum is behind (or off for the table), with when it last ran and whether it is overdue."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT s.relid::regclass::text AS table, s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,
               round((s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0)), 3)::float8 AS dead_share,
               s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
                   + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0)
                   AS autovacuum_overdue,
               coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_enabled'), 'default') AS autovacuum_enabled,
               s.last_autovacuum, s.last_vacuum, s.autovacuum_count
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE s.n_dead_tup >= :min_dead
          AND s.n_dead_tup::float8 / nullif(s.n_live_tup + s.n_dead_tup, 0) >= :min_share
        ORDER BY s.n_dead_tup DESC, 1
        """,
        min_dead=int(min_dead_tuples), min_share=float(min_dead_share),
    )
    return Finding.from_rows(
        "vacuum_lag", rows, severity="warning",
        title=f"{len(rows)} table(s) carry ≥ {min_dead_tuples:,} dead rows (≥ {min_dead_share:.0%}): vacuum is behind",
        ok_title=f"No table carries ≥ {min_dead_tuples:,} dead rows making up ≥ {min_dead_share:.0%} of it",
        item="table",
        remediation="VACUUM (ANALYZE) the table now; if autovacuum is off for it (autovacuum_enabled = false) turn it "
        "back on, else make it keep up: a lower autovacuum_vacuum_scale_factor for the table, more "
        "autovacuum_max_workers or cost limit, and end long transactions that hold vacuum back.",
    )


def never_analyzed(conn: Connection, *, min_rows: int = 1_000) -> Finding:
    """Tables holding at least ``min_rows`` rows that were never analysed (PostgreSQL 14+:
    ``reltuples = -1``; before: no analyse recorded), or only when nearly empty (the planner's row
    count under a tenth of the live rows): the planner guesses their sizes."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT s.relid::regclass::text AS table, s.n_live_tup AS live_rows, c.reltuples::bigint AS planner_rows,
               s.n_mod_since_analyze AS modified_since,
               s.last_analyze, s.last_autoanalyze,
               coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_enabled'), 'default') AS autovacuum_enabled
        FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
        WHERE greatest(s.n_live_tup, s.n_mod_since_analyze) >= :min_rows
          AND (c.reltuples < 0                                  -- never analysed nor vacuumed (14+)
               OR c.reltuples < :stale_share * s.n_live_tup          -- analysed when (nearly) empty
               OR (current_setting('server_version_num')::int < 140000
                   AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL))
        ORDER BY s.n_live_tup DESC, 1
        """,
        min_rows=int(min_rows), stale_share=0.1,
    )
    return Finding.from_rows(
        "never_analyzed", rows, severity="warning",
        title=f"{len(rows)} table(s) with ≥ {min_rows:,} rows were never analysed (or only when nearly empty): "
              "the planner guesses their size",
        ok_title=f"Every table with ≥ {min_rows:,} rows has planner statistics",
        item="table",
        remediation="ANALYZE the table (cheap: a sample); if autovacuum is off for it, turn it back on so "
        "statistics keep up with the data.",
    )


def table_sizes(conn: Connection, *, limit: int = 10) -> list[dict]:
    """The largest tables: table, index and TOAST sizes (for the space section's table)."""
    return select_all(
        conn,
        """
        SELECT c.oid::regclass::text AS table, pg_size_pretty(pg_table_size(c.oid)) AS table_size,
               pg_size_pretty(pg_indexes_size(c.oid)) AS indexes_size,
               pg_total_relation_size(c.oid) AS total_bytes, c.reltuples::bigint AS estimated_rows
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY pg_total_relation_size(c.oid) DESC, 1
        LIMIT :limit
        """,
        limit=int(limit),
    )
