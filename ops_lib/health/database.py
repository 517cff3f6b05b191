"""The database: answering, quickly; replicas keeping up; WAL archiving (the backups' feed) working."""
from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

from sqlalchemy.engine import Connection

from ..db import select_all, select_value
from ..findings import Finding


def database_slow_to_answer(conn: Connection, *, warn_ms: float = 100.0, samples: int = 5) -> Finding:
    """Round trips of ``SELECT 1``: the median over ``samples`` above ``warn_ms`` is a warning
    (a saturated server, a network path gone slow, a connection pooler queueing)."""
    check = "database_slow_to_answer"
    times = []
    for _ in range(max(1, samples)):
        started = time.perf_counter()
        select_value(conn, "SELECT 1")
        times.append((time.perf_counter() - started) * 1000)
    median = round(statistics.median(times), 2)
    row = {"samples": len(times), "median_ms": median, "max_ms": round(max(times), 2), "warn_ms": warn_ms}
    if median > warn_ms:
        return Finding(check, "warning", f"The database takes {median:g} ms to answer SELECT 1 (over {warn_ms:g} ms)",
                       rows=[row], count=1,
                       remediation="See slow_queries: long-running and blocked queries, connection saturation; "
                       "check the server's CPU and I/O, and the network path (or pooler) between the app and it.")
    return Finding(check, "ok", f"The database answers SELECT 1 in {median:g} ms (median of {len(times)})", rows=[row])


REPLICATION_SQL = """
SELECT application_name, client_addr::text AS client_addr, state, sync_state,
       EXTRACT(EPOCH FROM replay_lag) AS replay_lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS replay_lag_bytes
FROM pg_stat_replication
ORDER BY application_name
"""


def replication_rows(conn: Connection) -> dict:
    """Where this server stands: a standby's own replay delay, or a primary's standbys."""
    if select_value(conn, "SELECT pg_is_in_recovery()"):
        lag = select_value(conn, "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())")
        return {"role": "standby", "rows": [{"application_name": "(this standby)", "state": "recovering",
                                              "replay_lag_s": None if lag is None else float(lag)}]}
    return {"role": "primary", "rows": select_all(conn, REPLICATION_SQL)}


def replication_lag(data: dict, *, warn_seconds: float = 60.0) -> Finding:
    """Standbys (or this standby) replaying more than ``warn_seconds`` behind, or not streaming."""
    check = "replication_lag"
    rows = data["rows"]
    if not rows:
        return Finding(check, "ok", "No standby streams from this server (nothing to lag)",
                       note="A primary without replicas: reads of pg_stat_replication are empty.")
    bad = [dict(r) for r in rows
           if (r.get("replay_lag_s") is not None and float(r["replay_lag_s"]) > warn_seconds)
           or (r.get("state") not in (None, "streaming", "recovering"))]
    return Finding.from_rows(
        check, bad, severity="warning",
        title=f"{len(bad)} standby(s) more than {warn_seconds:g} s behind or not streaming",
        ok_title=f"{len(rows)} standby(s) within {warn_seconds:g} s", item="application_name",
        remediation="A lagging standby serves stale reads and loses data on failover: check its I/O and network, "
        "long queries on it holding replay back (hot_standby_feedback, max_standby_streaming_delay), and its logs.",
    )


ARCHIVER_SQL = """
SELECT current_setting('archive_mode') AS archive_mode, archived_count, last_archived_wal, last_archived_time,
       failed_count, last_failed_wal, last_failed_time, stats_reset
FROM pg_stat_archiver
"""


def archiver_status(conn: Connection) -> dict:
    return select_all(conn, ARCHIVER_SQL)[0]


def wal_archiving_failing(status: dict, *, max_silence_hours: float = 24.0, now: datetime | None = None) -> Finding:
    """From pg_stat_archiver: the last attempt failed (critical), or nothing archived for
    ``max_silence_hours`` while archiving is on (warning). Archiving off is named as info."""
    check = "wal_archiving_failing"
    now = now or datetime.now(timezone.utc)
    row = dict(status)
    if row.get("archive_mode") == "off":
        return Finding(check, "ok", "WAL archiving is off on this server",
                       note="Backups that rely on WAL archiving (point-in-time recovery) are not fed from here; "
                       "fine when the provider backs up otherwise.", rows=[row])
    failed, archived = row.get("last_failed_time"), row.get("last_archived_time")
    if failed is not None and (archived is None or failed > archived):
        return Finding(check, "critical", f"WAL archiving is failing: {row.get('last_failed_wal')} failed at {failed} "
                       f"({row.get('failed_count')} failures)", items=[row.get("last_failed_wal")], rows=[row],
                       remediation="Read the server log for the archive_command's error (credentials, a full or "
                       "unreachable bucket); until it works, pg_wal grows and point-in-time recovery has a gap.")
    if archived is None or (now - archived).total_seconds() > max_silence_hours * 3600:
        return Finding(check, "warning", f"No WAL archived for over {max_silence_hours:g} h", rows=[row], count=1,
                       remediation="Check that archive_command runs (a quiet database archives little; "
                       "archive_timeout forces a segment switch).")
    return Finding(check, "ok", f"WAL archiving works: last archived {row.get('last_archived_wal')} at {archived}",
                   rows=[row])
