"""What the server is doing now: long-running, blocked and idle-in-transaction sessions, and
how close it is to running out of connections (PgHero's ``queries.rb`` and ``connections.rb``).

Ages are measured with ``clock_timestamp()``, not ``now()``: a notebook may hold one
transaction for a while, and ``now()`` is frozen at its start. Each check first clears the
transaction's statistics snapshot so that ``pg_stat_activity`` is read afresh.

The session checks look at the current database unless ``all_databases=True``; connection
saturation is server-wide by nature.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from ..db import select_all, select_one
from ..findings import Finding, worst
from ..utc import as_utc
from .queries import MAX_QUERY_CHARS, OPSBOOK_APP_PREFIX, clear_stats_snapshot


def long_running_queries(conn: Connection, *, min_seconds: float = 60, all_databases: bool = False) -> Finding:
    """Client queries active for at least ``min_seconds`` (not ours, not opsbook's own sessions)."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT
            a.pid,
            round(extract(epoch FROM clock_timestamp() - a.query_start)::numeric, 1)::float8 AS duration_s,
            a.usename,
            a.application_name,
            a.datname,
            a.client_addr::text AS client_addr,
            a.wait_event_type,
            a.wait_event,
            left(a.query, :max_chars) AS query,
            a.backend_start,
            a.query_start
        FROM pg_stat_activity a
        WHERE a.state = 'active'
          AND a.backend_type = 'client backend'
          AND a.pid <> pg_backend_pid()
          AND NOT starts_with(coalesce(a.application_name, ''), :own_prefix)
          AND (:all_databases OR a.datname = current_database())
          AND a.query_start <= clock_timestamp() - make_interval(secs => :min_seconds)
        ORDER BY a.query_start
        """,
        max_chars=MAX_QUERY_CHARS,
        own_prefix=OPSBOOK_APP_PREFIX,
        all_databases=bool(all_databases),
        min_seconds=float(min_seconds),
    )
    return Finding.from_rows(
        "long_running_queries",
        rows,
        severity="warning",
        title=f"{len(rows)} quer{'y has' if len(rows) == 1 else 'ies have'} been running for ≥ {min_seconds:g} s",
        ok_title=f"No query has been running for {min_seconds:g} s or more",
        item="pid",
        remediation=(
            "Find the source from application_name/usename and decide: cancel the query "
            "(remediation.cancel_backends, i.e. pg_cancel_backend) if it is safe to retry, and cap such "
            "work with a statement_timeout for the role (ALTER ROLE ... SET statement_timeout)."
        ),
    )


def _roots(pid: int, by_pid: dict[int, dict]) -> tuple[list[int], int]:
    """The blockers at the head of ``pid``'s chains, nearest first, and the chain depth.

    A root is a blocker that is not itself blocked. A cycle (a deadlock the detector has not
    resolved yet) has no root. Pid 0 stands for a prepared transaction.
    """
    roots: list[int] = []
    seen = {pid}
    level, depth = list(by_pid[pid]["blocked_by"]), 0
    while level:
        depth += 1
        following = []
        for blocker in level:
            if blocker in seen:
                continue
            seen.add(blocker)
            info = by_pid.get(blocker)
            if info is None or not info["blocked_by"]:
                if blocker not in roots:
                    roots.append(blocker)
            else:
                following.extend(info["blocked_by"])
        if roots:
            return roots, depth
        level = following
    return roots, depth


def session_key(pid: int, backend_start) -> str:
    """A session's stable id: ``pid@backend_start`` (ISO 8601).

    A pid alone is reused by a later session once its backend exits, so a run an hour later would
    take a different session blocked under a recycled pid for the same one, still open; with the
    session's start beside it, the same session keeps its id from run to run, and another one is new.
    """
    if isinstance(backend_start, datetime):
        backend_start = as_utc(backend_start).isoformat()  # the same key whatever the session's TimeZone
    return f"{pid}@{backend_start}"


def blocked_queries(conn: Connection, *, min_wait_seconds: float = 0, all_databases: bool = False) -> Finding:
    """Sessions waiting on a lock, who blocks them, and the ROOT blocker at the head of the chain.

    Items are the blocked sessions (``session_key``: pid@backend_start); each row names the
    session's root blocker: its pid, state, statement and how long its transaction has been open.
    One read of pg_stat_activity with ``pg_blocking_pids()`` for every backend; the chains are
    walked in Python over that single snapshot.
    """
    clear_stats_snapshot(conn)
    sessions = select_all(
        conn,
        """
        WITH waits AS (
            SELECT pid, min(waitstart) AS waitstart
            FROM pg_locks
            WHERE NOT granted
            GROUP BY pid
        )
        SELECT
            a.pid,
            a.datname,
            a.usename,
            a.application_name,
            a.backend_type,
            a.state,
            a.wait_event_type,
            a.wait_event,
            a.backend_start,
            a.xact_start,
            a.query_start,
            (a.datname = current_database()) AS here,
            round(extract(epoch FROM clock_timestamp() - coalesce(w.waitstart, a.query_start))::numeric, 1)::float8
                AS wait_s,
            round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1)::float8 AS xact_age_s,
            left(a.query, :max_chars) AS query,
            pg_blocking_pids(a.pid) AS blocked_by
        FROM pg_stat_activity a
        LEFT JOIN waits w ON w.pid = a.pid
        WHERE a.pid <> pg_backend_pid()
        """,
        max_chars=MAX_QUERY_CHARS,
    )
    by_pid = {s["pid"]: s for s in sessions}
    rows = []
    for s in sessions:
        if not s["blocked_by"] or not (all_databases or s["here"]) or s["backend_type"] == "parallel worker":
            continue  # a parallel worker waits with its leader, which is listed
        if (s["wait_s"] or 0) < min_wait_seconds:
            continue
        roots, depth = _roots(s["pid"], by_pid)
        root = by_pid.get(roots[0]) if roots else None
        rows.append({
            "session": session_key(s["pid"], s["backend_start"]),
            "pid": s["pid"],
            "usename": s["usename"],
            "application_name": s["application_name"],
            "wait_s": s["wait_s"],
            "wait_event": s["wait_event"],
            "query": s["query"],
            "blocked_by": sorted(s["blocked_by"]),
            "root_blocker": roots[0] if roots else None,
            "root_blockers": roots,
            "depth": depth,
            "root_state": (root["state"] if root else ("prepared transaction" if roots == [0] else "deadlock cycle")),
            "root_usename": root["usename"] if root else None,
            "root_application_name": root["application_name"] if root else None,
            "root_xact_age_s": root["xact_age_s"] if root else None,
            "root_query": root["query"] if root else None,
            "root_backend_start": root["backend_start"] if root else None,
            "root_query_start": root["query_start"] if root else None,
            "datname": s["datname"],
            "backend_start": s["backend_start"],
            "query_start": s["query_start"],
        })
    rows.sort(key=lambda r: (-(r["wait_s"] or 0), r["pid"]))
    roots = list(dict.fromkeys(r["root_blocker"] for r in rows if r["root_blocker"] is not None))
    if not rows:
        return Finding("blocked_queries", "ok", "No session is waiting on another session's lock")
    return Finding(
        "blocked_queries",
        "warning",
        f"{len(rows)} session(s) blocked; root blocker pid(s) {', '.join(map(str, roots)) or 'none (cycle)'}",
        items=[row["session"] for row in rows],
        rows=rows,
        count=len(rows),
        remediation=(
            "End the root blocker's transaction, not the waiters: cancel its query if it is active "
            "(pg_cancel_backend), but an idle-in-transaction root only lets go when its application "
            "commits/rolls back or it is terminated (pg_terminate_backend); a prepared one with ROLLBACK PREPARED."
        ),
    )


def idle_in_transaction(
    conn: Connection,
    *,
    min_seconds: float = 60,
    critical_seconds: float = 600,
    all_databases: bool = False,
) -> Finding:
    """Sessions idle inside an open transaction for ``min_seconds``; critical when the
    transaction has been open ``critical_seconds`` (it holds locks and holds back vacuum)."""
    clear_stats_snapshot(conn)
    rows = select_all(
        conn,
        """
        SELECT
            a.pid,
            a.state,
            round(extract(epoch FROM clock_timestamp() - a.state_change)::numeric, 1)::float8 AS idle_s,
            round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1)::float8 AS xact_age_s,
            a.usename,
            a.application_name,
            a.datname,
            a.client_addr::text AS client_addr,
            age(a.backend_xmin) AS xmin_age,
            left(a.query, :max_chars) AS last_query,
            a.backend_start,
            a.xact_start,
            a.state_change
        FROM pg_stat_activity a
        WHERE a.state IN ('idle in transaction', 'idle in transaction (aborted)')
          AND a.backend_type = 'client backend'
          AND a.pid <> pg_backend_pid()
          AND NOT starts_with(coalesce(a.application_name, ''), :own_prefix)
          AND (:all_databases OR a.datname = current_database())
          AND a.state_change <= clock_timestamp() - make_interval(secs => :min_seconds)
        ORDER BY a.xact_start
        """,
        max_chars=MAX_QUERY_CHARS,
        own_prefix=OPSBOOK_APP_PREFIX,
        all_databases=bool(all_databases),
        min_seconds=float(min_seconds),
    )
    if not rows:
        return Finding("idle_in_transaction", "ok", f"No session idle in a transaction for {min_seconds:g} s or more")
    for row in rows:
        row["severity"] = "critical" if (row["xact_age_s"] or 0) >= critical_seconds else "warning"
    severity = worst(r["severity"] for r in rows)
    oldest = max(r["xact_age_s"] or 0 for r in rows)
    return Finding(
        "idle_in_transaction",
        severity,
        f"{len(rows)} session(s) idle in transaction for ≥ {min_seconds:g} s (oldest transaction {oldest:.0f} s)",
        items=[r["pid"] for r in rows],
        rows=rows,
        remediation=(
            "Fix the code path that leaves the transaction open (missing COMMIT/ROLLBACK, slow work between "
            "statements); pg_terminate_backend(pid) ends it now (cancel does nothing to an idle session), and "
            "idle_in_transaction_session_timeout on the app role stops it recurring."
        ),
    )


def connection_limits(conn: Connection) -> dict:
    """max_connections and the slots reserved for superusers (and, on 16+, reserved_connections)."""
    row = select_one(
        conn,
        """
        SELECT
            (SELECT setting::int FROM pg_settings WHERE name = 'max_connections') AS max_connections,
            coalesce((SELECT setting::int FROM pg_settings WHERE name = 'superuser_reserved_connections'), 0)
                AS superuser_reserved,
            -- reserved_connections (for pg_use_reserved_connections) exists from PostgreSQL 16
            coalesce((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0)
                AS reserved
        """,
    )
    row["usable"] = row["max_connections"] - row["superuser_reserved"] - row["reserved"]
    return row


def usable_connections(conn: Connection) -> int:
    """How many connections ordinary roles may open (see connection_limits)."""
    return connection_limits(conn)["usable"]


def connections_by_state(conn: Connection) -> list[dict]:
    """Client connections on the whole server, by state (for the plot)."""
    clear_stats_snapshot(conn)
    return select_all(
        conn,
        """
        SELECT coalesce(state, 'unknown (not visible to this role)') AS state, count(*)::int AS connections
        FROM pg_stat_activity
        WHERE backend_type = 'client backend'
        GROUP BY 1
        ORDER BY 2 DESC, 1
        """,
    )


def connection_saturation(conn: Connection, *, warn_pct: float = 80, critical_pct: float = 95) -> Finding:
    """Client connections against what ordinary roles may open:
    max_connections - superuser_reserved_connections - reserved_connections."""
    limits = connection_limits(conn)
    rows = connections_by_state(conn)
    used = sum(r["connections"] for r in rows)
    usable = max(limits["usable"], 1)
    pct = 100.0 * used / usable
    for row in rows:
        row["pct_of_usable"] = round(100.0 * row["connections"] / usable, 1)
    severity = "critical" if pct >= critical_pct else "warning" if pct >= warn_pct else "ok"
    note = (
        f"usable = max_connections {limits['max_connections']} − superuser_reserved_connections "
        f"{limits['superuser_reserved']} − reserved_connections {limits['reserved']} = {limits['usable']}"
    )
    title = f"{used} of {limits['usable']} usable connections in use ({pct:.0f}%)"
    return Finding(
        "connection_saturation",
        severity,
        title,
        rows=rows,
        count=used if severity != "ok" else 0,
        note=note,
        remediation=(
            "See which states/applications hold the connections: end idle-in-transaction sessions, shrink "
            "application pools or put a pooler (PgBouncer) in front; raising max_connections needs a restart "
            "and memory per connection."
        ),
    )
