"""Usage trend: weekly usage per organisation and plan, and organisations whose usage surged.

The seeds' operators watch "daily/weekly generations" next to "organizations by plan"
(Ascendos): a sudden jump in one customer's usage is a runaway client, a script, an abuse or a
sale about to happen, and it shows in the weekly series long before it hits a limit.

Weeks are ISO weeks in UTC (Monday 00:00, half-open ``[start, start + 7 days)``). Only *full*
weeks are read: the current week is partial, and comparing a partial week with full ones would
show every organisation falling on Mondays and no one surging on Sundays.

Usage is the sum of the events' quantity (1 per event where the mapping has no quantity), every
event counted, retried copies included: a trend is about load, and ``duplicate_usage_events``
names the copies.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from statistics import median

from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Finding
from ..schema_map import SchemaMap

DEFAULT_WEEKS = 8
DEFAULT_SURGE_FACTOR = 3.0        # the last full week at least 3× the trailing median ...
DEFAULT_SURGE_MIN_INCREASE = 500  # ... and at least this many units above it (small customers' noise is not a surge)


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week containing ``moment``."""
    moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def weekly_usage(conn: Connection, schema: SchemaMap, *, weeks: int = DEFAULT_WEEKS,
                 now: datetime | None = None) -> list[dict]:
    """Usage per organisation and full week, for the ``weeks`` full weeks before ``now``'s week.

    One row per (week_start, organisation_id) that had usage: ``week_start`` (a Monday, UTC),
    ``organisation_id``, ``name``, ``plan`` (the organisation's plan in the app today), ``usage``
    (units) and ``events``. A week without usage has no row; ``usage_surge`` counts it as 0.
    """
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    events, orgs = schema.table("usage_events"), schema.table("organisations")
    org, at = events.col("organisation_id"), events.col("occurred_at")
    quantity = f"e.{events.col('quantity')}" if events.has("quantity") else "1"
    name = f"o.{orgs.col('name')}" if orgs.has("name") else "NULL"
    until = week_start(now or datetime.now(timezone.utc))
    since = until - timedelta(weeks=weeks)
    # The session's time zone is UTC so date_trunc('week') cuts at Monday 00:00 UTC whatever the
    # server's default; the events are filtered on the raw column so its index can serve the range.
    conn.exec_driver_sql("SET TIME ZONE 'UTC'")
    rows = select_all(
        conn,
        f"""
        WITH weekly AS (
            SELECT e.{org} AS organisation_id, date_trunc('week', e.{at}) AS week_start,
                   sum({quantity})::bigint AS usage, count(*)::bigint AS events
            FROM {events.sql_table} e
            WHERE e.{at} >= :since AND e.{at} < :until
            GROUP BY 1, 2
        )
        SELECT w.week_start, w.organisation_id, {name} AS name, o.{orgs.col('plan')} AS plan, w.usage, w.events
        FROM weekly w
        LEFT JOIN {orgs.sql_table} o ON o.{orgs.col('id')} = w.organisation_id
        ORDER BY w.week_start, w.organisation_id
        """,
        since=since, until=until,
    )
    for row in rows:
        row["week_start"] = week_start(row["week_start"])
        row["usage"], row["events"] = int(row["usage"]), int(row["events"])
    return rows


def weekly_usage_by_plan(rows: list[dict]) -> list[dict]:
    """Per plan and week: total usage and how many organisations used anything (for a plot or a table)."""
    totals: dict[tuple, dict] = {}
    for row in rows:
        key = (row["week_start"], row["plan"])
        total = totals.setdefault(key, {"week_start": row["week_start"], "plan": row["plan"], "usage": 0,
                                        "active_organisations": 0})
        total["usage"] += row["usage"]
        total["active_organisations"] += 1
    return sorted(totals.values(), key=lambda r: (r["week_start"], str(r["plan"])))


def usage_surge(rows: list[dict], *, factor: float = DEFAULT_SURGE_FACTOR,
                min_increase: int = DEFAULT_SURGE_MIN_INCREASE) -> Finding:
    """Organisations whose last full week is far above their own trailing median.

    The rule, per organisation: ``last`` is its usage in the latest week of ``rows``, ``baseline``
    the median of its usage over the earlier weeks of ``rows`` (a week without usage counts 0).
    It is named when ``last >= factor × baseline`` **and** ``last - baseline >= min_increase``.
    An organisation whose baseline is 0 (new, or dormant for most of the window) is not named:
    it has no trend to be compared with. Severity ``info``: a surge is a reason to look (a
    runaway client, abuse, an upsell), not an outage.
    """
    weeks = sorted({r["week_start"] for r in rows})
    rule = f"last full week ≥ {factor:g}× the median of the {max(len(weeks) - 1, 0)} week(s) before and ≥ {min_increase} units above it"
    if len(weeks) < 2:
        return Finding("usage_surge", "ok", "Not enough full weeks of usage to compare", note=rule)
    last_week, earlier = weeks[-1], weeks[:-1]
    series: dict = {}
    about: dict = {}
    for r in rows:
        series.setdefault(r["organisation_id"], {})[r["week_start"]] = r["usage"]
        about[r["organisation_id"]] = r
    found = []
    for org_id, usage in series.items():
        last = usage.get(last_week, 0)
        baseline = median(usage.get(w, 0) for w in earlier)
        if baseline <= 0 or last < factor * baseline or last - baseline < min_increase:
            continue
        found.append({"organisation_id": org_id, "name": about[org_id].get("name"), "plan": about[org_id].get("plan"),
                      "week_start": last_week, "usage": last, "trailing_median": baseline,
                      "times_median": round(last / baseline, 1)})
    found.sort(key=lambda r: -r["times_median"])
    return Finding.from_rows(
        "usage_surge", found, severity="info", item="organisation_id",
        title=f"{len(found)} organisation(s) used far more last week than usual",
        ok_title="No organisation's usage surged last week",
        remediation="Look at what the organisation ran last week (its users, event kinds, API keys): a retry loop or a "
        "leaked key is stopped; a genuine ramp-up is a customer to talk to before they hit their limit.",
        note=rule,
    )
