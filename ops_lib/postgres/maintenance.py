"""Slow-burning limits: sequences running out of their column's range, transaction ID
wraparound, and a cache too small for the working set (PgHero's ``sequences.rb``,
``maintenance.rb`` and the hit rates of ``indexes.rb``/``tables.rb``)."""
from __future__ import annotations

from sqlalchemy.engine import Connection

from ..db import select_all, select_value
from ..findings import Finding, worst
from .queries import clear_stats_snapshot

# The range a sequence can fill is the smaller of its own and the column's.
TYPE_LIMITS = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
XID_LIMIT = 2**31  # transaction IDs (and multixacts) wrap around after 2^31


def _severity(pct: float | None, warn_pct: float, critical_pct: float) -> str:
    if pct is None:
        return "ok"
    return "critical" if pct >= critical_pct else "warning" if pct >= warn_pct else "ok"


def sequence_overflow_risk(conn: Connection, *, warn_pct: float = 75, critical_pct: float = 90) -> Finding:
    """How far each sequence is through the range of the COLUMN it feeds.

    The column is found through pg_depend: the sequence's owning column (serial, identity,
    OWNED BY) or any column whose DEFAULT calls nextval() on it. A bigint sequence feeding an
    integer column runs out at 2^31 - 1, whatever the sequence's own max_value says.
    """
    sequences = select_all(
        conn,
        """
        WITH feeds AS (
            -- the column that owns the sequence (serial, identity, ALTER SEQUENCE ... OWNED BY)
            SELECT d.objid AS seqid, d.refobjid AS relid, d.refobjsubid AS attnum
            FROM pg_depend d
            WHERE d.classid = 'pg_class'::regclass
              AND d.refclassid = 'pg_class'::regclass
              AND d.deptype IN ('a', 'i')
              AND d.refobjsubid > 0
            UNION
            -- columns whose DEFAULT calls nextval() on the sequence
            SELECT d.refobjid, ad.adrelid, ad.adnum
            FROM pg_depend d
            JOIN pg_attrdef ad ON ad.oid = d.objid
            WHERE d.classid = 'pg_attrdef'::regclass
              AND d.refclassid = 'pg_class'::regclass
        )
        SELECT
            sc.oid::regclass::text AS sequence,
            f.relid::regclass::text AS table,
            a.attname AS column,
            format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL) AS column_type,
            s.data_type::text AS sequence_type,
            s.last_value,
            s.min_value AS sequence_min_value,
            s.max_value AS sequence_max_value,
            s.increment_by,
            s.cycle,
            has_sequence_privilege(sc.oid, 'SELECT,USAGE') AS readable
        FROM pg_sequences s
        JOIN pg_namespace sn ON sn.nspname = s.schemaname
        JOIN pg_class sc ON sc.relname = s.sequencename AND sc.relnamespace = sn.oid
        LEFT JOIN feeds f ON f.seqid = sc.oid
        LEFT JOIN pg_attribute a ON a.attrelid = f.relid AND a.attnum = f.attnum AND NOT a.attisdropped
        LEFT JOIN pg_type t ON t.oid = a.atttypid
        ORDER BY 1, 2, 3
        """,
    )
    rows, unreadable = [], []
    for s in sequences:
        if not s["readable"]:
            unreadable.append(s["sequence"])
            continue
        low, high = s["sequence_min_value"], s["sequence_max_value"]
        if s["column_type"] in TYPE_LIMITS:
            col_low, col_high = TYPE_LIMITS[s["column_type"]]
            low, high = max(low, col_low), min(high, col_high)
        last = s["last_value"]  # NULL until the first nextval()
        ascending = s["increment_by"] > 0
        limit = high if ascending else low
        pct = None
        if last is not None and limit:
            pct = round(max(0.0, 100.0 * last / limit), 2)
        rows.append({
            "sequence": s["sequence"],
            "table_column": f"{s['table']}.{s['column']}" if s["table"] else None,
            "column_type": s["column_type"],
            "last_value": last,
            "max_value": limit,
            "pct_used": pct,
            "remaining": abs(limit - last) if last is not None else None,
            "sequence_type": s["sequence_type"],
            "sequence_max_value": s["sequence_max_value"] if ascending else s["sequence_min_value"],
            "severity": "ok" if s["cycle"] else _severity(pct, warn_pct, critical_pct),
        })
    flagged = sorted((r for r in rows if r["severity"] != "ok"), key=lambda r: -r["pct_used"])
    note = None
    if unreadable:
        note = f"{len(unreadable)} sequence(s) not readable by this role (needs SELECT or pg_read_all_data): " + ", ".join(unreadable[:10])
    if not flagged:
        return Finding("sequence_overflow_risk", "ok",
                       f"No sequence has used {warn_pct:g}% of its column's range ({len(rows)} checked)", note=note)
    return Finding(
        "sequence_overflow_risk",
        worst(r["severity"] for r in flagged),
        f"{len(flagged)} sequence(s) have used ≥ {warn_pct:g}% of the range of the column they feed",
        items=list(dict.fromkeys(r["sequence"] for r in flagged)),
        rows=flagged,
        note=note,
        remediation=(
            "Widen the column before it runs out: ALTER TABLE ... ALTER COLUMN ... TYPE bigint (rewrites the "
            "table: plan it, or migrate via a new column) and ALTER SEQUENCE ... AS bigint; a bigint sequence "
            "feeding an integer column only needs the column changed."
        ),
    )


def transaction_id_wraparound_risk(
    conn: Connection, *, warn_pct: float = 50, critical_pct: float = 75, top_tables: int = 10
) -> Finding:
    """age(datfrozenxid) of every database against 2^31, with the current database's oldest
    tables (age of relfrozenxid, toast included); multixact ages alongside."""
    rows = select_all(
        conn,
        """
        SELECT 'database' AS kind, datname AS name,
               age(datfrozenxid)::bigint AS xid_age, mxid_age(datminmxid)::bigint AS mxid_age
        FROM pg_database
        UNION ALL
        SELECT * FROM (
            SELECT 'table', c.oid::regclass::text,
                   greatest(age(c.relfrozenxid), age(t.relfrozenxid))::bigint,
                   greatest(mxid_age(c.relminmxid), mxid_age(t.relminmxid))::bigint
            FROM pg_class c
            LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
            WHERE c.relkind IN ('r', 'm')
            ORDER BY 3 DESC, 2
            LIMIT :top_tables
        ) AS tables
        ORDER BY 1, 3 DESC, 2
        """,
        top_tables=int(top_tables),
    )
    for row in rows:
        xid_pct = 100.0 * row["xid_age"] / XID_LIMIT
        mxid_pct = 100.0 * (row["mxid_age"] or 0) / XID_LIMIT
        row["xid_pct"], row["mxid_pct"] = round(xid_pct, 4), round(mxid_pct, 4)
        row["severity"] = _severity(max(xid_pct, mxid_pct), warn_pct, critical_pct)
    freeze_max = select_value(conn, "SELECT setting FROM pg_settings WHERE name = 'autovacuum_freeze_max_age'")
    note = (
        f"Wraparound is at 2^31 = {XID_LIMIT:,} transactions; autovacuum forces an anti-wraparound vacuum on "
        f"tables older than autovacuum_freeze_max_age = {int(freeze_max):,}."
    )
    flagged = [r for r in rows if r["severity"] != "ok"]
    oldest = max((r for r in rows if r["kind"] == "database"), key=lambda r: r["xid_age"], default=None)
    if not flagged:
        title = f"Oldest database is {oldest['xid_pct']:.2f}% of the way to wraparound" if oldest else "No database"
        return Finding("transaction_id_wraparound_risk", "ok", title, rows=rows, count=0, note=note)
    return Finding(
        "transaction_id_wraparound_risk",
        worst(r["severity"] for r in flagged),
        f"{len(flagged)} database(s)/table(s) past {warn_pct:g}% of the way to transaction ID wraparound",
        items=[r["name"] for r in flagged],
        rows=rows,
        note=note,
        remediation=(
            "VACUUM (FREEZE, VERBOSE) the oldest tables (listed) in each flagged database, after ending what "
            "holds back the xmin horizon: long transactions, idle-in-transaction sessions, stale replication "
            "slots and prepared transactions."
        ),
    )


def low_cache_hit_ratio(conn: Connection, *, min_ratio: float = 0.99, min_reads: int = 10_000) -> Finding:
    """Share of table and index block requests served from shared_buffers (pg_statio_user_*).

    ``min_reads`` is an activity floor: a ratio is judged only when at least that many blocks
    were requested (hits + reads), so an idle or freshly started database is not flagged.
    """
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT 'tables' AS kind,
               coalesce(sum(heap_blks_hit), 0)::bigint AS hits,
               coalesce(sum(heap_blks_read), 0)::bigint AS reads
        FROM pg_statio_user_tables
        UNION ALL
        SELECT 'indexes', coalesce(sum(idx_blks_hit), 0)::bigint, coalesce(sum(idx_blks_read), 0)::bigint
        FROM pg_statio_user_indexes
        """,
    )
    for row in rows:
        requests = row["hits"] + row["reads"]
        row["ratio"] = round(row["hits"] / requests, 4) if requests else None
        row["judged"] = requests >= min_reads
        row["low"] = bool(row["judged"] and row["ratio"] is not None and row["ratio"] < min_ratio)
    low = [r["kind"] for r in rows if r["low"]]
    unjudged = [r["kind"] for r in rows if not r["judged"]]
    note = (f"Too little activity to judge {', '.join(unjudged)} (< {min_reads:,} block requests)."
            if unjudged else None)
    if not low:
        ratios = ", ".join(f"{r['kind']} {r['ratio']:.2%}" for r in rows if r["ratio"] is not None) or "no activity"
        return Finding("low_cache_hit_ratio", "ok", f"Cache hit ratio at or above {min_ratio:.0%} ({ratios})",
                       rows=rows, count=0, note=note)
    return Finding(
        "low_cache_hit_ratio",
        "warning",
        "Cache hit ratio below " + f"{min_ratio:.0%}: " + ", ".join(
            f"{r['kind']} {r['ratio']:.2%}" for r in rows if r["low"]),
        items=low,
        rows=rows,
        note=note,
        remediation=(
            "The working set does not fit in shared_buffers: find the tables with the most heap_blks_read "
            "(table_cache_hits), cut their reads (indexes, narrower queries) or give the server more memory "
            "and shared_buffers (a restart)."
        ),
    )


def table_cache_hits(conn: Connection, *, limit: int = 10) -> list[dict]:
    """The tables that read the most blocks from outside shared_buffers, with their hit ratio."""
    clear_stats_snapshot(conn)
    return select_all(
        conn,
        """
        SELECT relid::regclass::text AS table,
               heap_blks_hit AS hits, heap_blks_read AS reads,
               round(heap_blks_hit::numeric / nullif(heap_blks_hit + heap_blks_read, 0), 4)::float8 AS ratio,
               coalesce(idx_blks_hit, 0) AS index_hits, coalesce(idx_blks_read, 0) AS index_reads
        FROM pg_statio_user_tables
        ORDER BY heap_blks_read DESC, 1
        LIMIT :limit
        """,
        limit=int(limit),
    )
