"""Indexes: unused, duplicate, invalid, and tables that look like they are missing one
(PgHero's ``indexes.rb`` and ``suggested_indexes.rb``, simplified).

Index and table names in rows are ``regclass`` text: schema-qualified when the schema is not
on the search path, quoted when needed, so they can be pasted into ``DROP INDEX CONCURRENTLY``.
"""
from __future__ import annotations

import re

from sqlalchemy.engine import Connection

from ..db import select_all, select_value
from ..findings import Finding
from .queries import clear_stats_snapshot, savepoint, statements_info


def _stats_window(conn: Connection) -> str:
    reset = select_value(conn, "SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()")
    since = f"since {reset:%Y-%m-%d %H:%M %Z} (pg_stat_database.stats_reset)" if reset else (
        "since the statistics were last lost or reset (pg_stat_database.stats_reset is empty: never reset)"
    )
    return f"Scan counts are {since}; scans on replicas are not counted here — check them before dropping."


def unused_indexes(conn: Connection, *, min_size_bytes: int = 0, max_scans: int = 0) -> Finding:
    """Indexes scanned at most ``max_scans`` times that enforce nothing (not unique, primary,
    constraint-backing or replica identity), largest first."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT
            s.indexrelid::regclass::text AS index,
            s.relid::regclass::text AS table,
            s.idx_scan,
            pg_relation_size(s.indexrelid) AS size_bytes,
            pg_size_pretty(pg_relation_size(s.indexrelid)) AS size,
            pg_get_indexdef(s.indexrelid) AS definition
        FROM pg_stat_user_indexes s
        JOIN pg_index i ON i.indexrelid = s.indexrelid
        WHERE s.idx_scan <= :max_scans
          AND NOT i.indisunique
          AND NOT i.indisprimary
          AND NOT i.indisreplident
          AND i.indisvalid  -- invalid indexes have their own check
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)
          AND pg_relation_size(s.indexrelid) >= :min_size_bytes
        ORDER BY size_bytes DESC, index
        """,
        max_scans=int(max_scans),
        min_size_bytes=int(min_size_bytes),
    )
    total = sum(r["size_bytes"] for r in rows)
    return Finding.from_rows(
        "unused_indexes",
        rows,
        severity="info",
        title=f"{len(rows)} index(es) with ≤ {max_scans} scans ({total / 2**20:.1f} MiB)",
        ok_title=f"Every index was scanned more than {max_scans} times",
        item="index",
        remediation=(
            "If the window is long enough (a full business cycle) and replicas agree, DROP INDEX CONCURRENTLY "
            "each one: every write pays to maintain it. Keep its definition to recreate it if needed."
        ),
        note=_stats_window(conn),
    )


_INDEX_SQL = """
    SELECT
        i.indexrelid::regclass::text AS index,
        i.indrelid::regclass::text AS table,
        am.amname AS method,
        i.indisunique AS is_unique,
        i.indisprimary AS is_primary,
        i.indisvalid AS is_valid,
        EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
            AS backs_constraint,
        -- per key column: its definition (column or expression), operator class, collation, ordering
        ARRAY(
            SELECT pg_get_indexdef(i.indexrelid, k + 1, true) || ' ' || i.indclass[k] || ' '
                   || i.indcollation[k] || ' ' || i.indoption[k]
            FROM generate_series(0, i.indnkeyatts - 1) AS k ORDER BY k
        ) AS key_signature,
        ARRAY(
            SELECT pg_get_indexdef(i.indexrelid, k + 1, true)
            FROM generate_series(0, i.indnkeyatts - 1) AS k ORDER BY k
        ) AS key_columns,
        ARRAY(
            SELECT pg_get_indexdef(i.indexrelid, k + 1, true)
            FROM generate_series(i.indnkeyatts, i.indnatts - 1) AS k ORDER BY k
        ) AS include_columns,
        pg_get_expr(i.indpred, i.indrelid) AS predicate,
        pg_relation_size(i.indexrelid) AS size_bytes,
        pg_size_pretty(pg_relation_size(i.indexrelid)) AS size,
        pg_get_indexdef(i.indexrelid) AS definition
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_am am ON am.oid = c.relam
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%'
    ORDER BY 2, 1
"""


def _covers(covering: dict, index: dict) -> bool:
    """``covering`` answers every lookup ``index`` answers (same table, method and predicate)."""
    if covering["index"] == index["index"] or not covering["is_valid"]:
        return False
    if covering["method"] != index["method"] or covering["predicate"] != index["predicate"]:
        return False
    keys, other = index["key_signature"], covering["key_signature"]
    # A leading prefix serves the same lookups only in a btree; elsewhere ask for identical keys.
    if index["method"] == "btree":
        if other[: len(keys)] != keys:
            return False
    elif other != keys:
        return False
    if not set(index["include_columns"]) <= set(covering["key_columns"]) | set(covering["include_columns"]):
        return False
    identical = other == keys and set(covering["include_columns"]) == set(index["include_columns"])
    covering_is_candidate = not (covering["is_unique"] or covering["is_primary"] or covering["backs_constraint"])
    # Of two identical plain indexes, report only one (the later name), as PgHero does.
    return not (identical and covering_is_candidate and index["index"] < covering["index"])


def duplicate_indexes(conn: Connection) -> Finding:
    """Indexes whose key columns are a leading prefix of another valid index on the same table
    (same method, operator classes, collations, ordering, expressions and predicate).

    Unique, primary and constraint-backing indexes are never reported as redundant (they
    enforce something), but they may be what covers a plain index.
    """
    indexes = select_all(conn, _INDEX_SQL)
    by_table: dict[str, list[dict]] = {}
    for index in indexes:
        by_table.setdefault(index["table"], []).append(index)
    rows = []
    for index in indexes:
        if not index["is_valid"] or index["is_unique"] or index["is_primary"] or index["backs_constraint"]:
            continue
        covering = sorted(
            (other for other in by_table[index["table"]] if _covers(other, index)),
            key=lambda o: (len(o["key_columns"]), o["index"]),
        )
        if not covering:
            continue
        cover = covering[0]
        rows.append({
            "index": index["index"],
            "covering_index": cover["index"],
            "table": index["table"],
            "columns": ", ".join(index["key_columns"]),
            "covering_columns": ", ".join(cover["key_columns"]),
            "size_bytes": index["size_bytes"],
            "size": index["size"],
            "definition": index["definition"],
            "covering_definition": cover["definition"],
        })
    rows.sort(key=lambda r: (-r["size_bytes"], r["index"]))
    return Finding.from_rows(
        "duplicate_indexes",
        rows,
        severity="warning",
        title=f"{len(rows)} index(es) duplicated by another index's leading columns",
        ok_title="No index is covered by another index's leading columns",
        item="index",
        remediation=(
            "DROP INDEX CONCURRENTLY the redundant index: the covering index serves the same lookups, and "
            "every write pays for both. Check EXPLAIN of the hot queries afterwards."
        ),
    )


def invalid_indexes(conn: Connection) -> Finding:
    """Indexes marked invalid (pg_index.indisvalid = false), e.g. left by a failed
    CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY; builds still in progress are skipped."""
    rows = select_all(
        conn,
        """
        SELECT
            c.oid::regclass::text AS index,
            i.indrelid::regclass::text AS table,
            pg_relation_size(c.oid) AS size_bytes,
            pg_size_pretty(pg_relation_size(c.oid)) AS size,
            pg_get_indexdef(c.oid) AS definition,
            CASE
                WHEN c.relkind = 'I' THEN 'partitioned index: attach the missing partition indexes'
                WHEN c.relname ~ '_ccnew[0-9]*$' THEN 'leftover of a failed REINDEX CONCURRENTLY'
                ELSE 'failed CREATE INDEX CONCURRENTLY (or REINDEX)'
            END AS likely_cause
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
        ORDER BY 1
        """,
    )
    return Finding.from_rows(
        "invalid_indexes",
        rows,
        severity="warning",
        title=f"{len(rows)} invalid index(es): not used by queries, still maintained on every write",
        ok_title="No invalid index",
        item="index",
        remediation=(
            "DROP INDEX CONCURRENTLY the invalid index, fix what made the build fail (e.g. duplicate values "
            "for a unique index), then recreate it with CREATE INDEX CONCURRENTLY (or REINDEX INDEX CONCURRENTLY)."
        ),
    )


def missing_index_candidates(
    conn: Connection,
    *,
    min_rows: int = 10_000,
    min_seq_scan_share: float = 0.05,
    min_seq_scans: int = 50,
    statements_per_table: int = 3,
) -> Finding:
    """Large tables read mostly by sequential scans (PgHero: an index used for < 95% of scans
    on a table of ≥ 10,000 rows), with the heaviest statements that mention each table."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT
            s.relid::regclass::text AS table,
            s.seq_scan,
            s.seq_tup_read,
            coalesce(s.idx_scan, 0) AS idx_scan,
            s.n_live_tup AS rows,
            round((s.seq_scan::numeric / nullif(s.seq_scan + coalesce(s.idx_scan, 0), 0)), 3)::float8
                AS seq_scan_share,
            (s.seq_tup_read / nullif(s.seq_scan, 0))::bigint AS rows_per_seq_scan,
            pg_size_pretty(pg_relation_size(s.relid)) AS size
        FROM pg_stat_user_tables s
        WHERE s.n_live_tup >= :min_rows
          AND s.seq_scan >= :min_seq_scans
          AND s.seq_scan::float8 / nullif(s.seq_scan + coalesce(s.idx_scan, 0), 0) >= :min_share
        ORDER BY s.seq_tup_read DESC, 1
        """,
        min_rows=int(min_rows),
        min_seq_scans=int(min_seq_scans),
        min_share=float(min_seq_scan_share),
    )
    note = None
    info = statements_info(conn) if rows else None
    if info is not None and info.available:
        total, mean = info.columns()
        for row in rows:
            # By name: the statements whose text mentions the table as a word, heaviest first.
            bare = row["table"].rsplit(".", 1)[-1].strip('"')
            pattern = "(^|[^[:alnum:]_])" + re.escape(bare) + "([^[:alnum:]_]|$)"
            with savepoint(conn):
                row["statements"] = select_all(
                    conn,
                    f"""
                    SELECT queryid, calls, round({total}::numeric, 1)::float8 AS total_ms,
                           round({mean}::numeric, 2)::float8 AS mean_ms, left(query, :max_chars) AS query
                    FROM {info.view}
                    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                      AND query ~* :pattern
                      AND query !~* '^\\s*(explain|analyze|vacuum|create|alter|drop|copy|truncate)'
                    ORDER BY {total} DESC
                    LIMIT :limit
                    """,
                    max_chars=300,
                    pattern=pattern,
                    limit=int(statements_per_table),
                )
    elif rows:
        note = "pg_stat_statements is not available: the statements reading these tables cannot be listed."
    return Finding.from_rows(
        "missing_index_candidates",
        rows,
        severity="warning",
        title=f"{len(rows)} large table(s) read mostly by sequential scans",
        ok_title="No large table is read mostly by sequential scans",
        item="table",
        remediation=(
            "EXPLAIN the listed statements, index the columns in their WHERE/JOIN clauses with "
            "CREATE INDEX CONCURRENTLY, and confirm idx_scan grows while seq_scan stops."
        ),
        note=note,
    )
