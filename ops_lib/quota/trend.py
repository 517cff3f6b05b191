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

from datetime import datetime
from statistics import median

from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Finding
from ..schema_map import SchemaMap
from .scan import DEFAULT_WEEKS, week_edges, weekly_rows, weekly_sums
from .scan import week_start  # noqa: F401 (re-exported: ops_lib.demo.usage_trend_data reads it here)

DEFAULT_SURGE_FACTOR = 3.0        # the last full week at least 3× the trailing median ...
DEFAULT_SURGE_MIN_INCREASE = 500  # ... and at least this many units above it (small customers' noise is not a surge)


def weekly_usage(conn: Connection, schema: SchemaMap, *, weeks: int = DEFAULT_WEEKS,
                 now: datetime | None = None) -> list[dict]:
    """Usage per organisation and full week, for the ``weeks`` full weeks before ``now``'s week.

    One row per (week_start, organisation_id) that had usage: ``week_start`` (a Monday, UTC),
    ``organisation_id``, ``name``, ``plan`` (the organisation's plan in the app today), ``usage``
    (units) and ``events``. A week without usage has no row; ``usage_surge`` counts it as 0.
    The runbook gets the same rows from ``scan.scan_usage`` (its one pass over the events); this
    is the pass on its own, with the organisations' names and plans read beside it.
    """
    edges = week_edges(weeks, now)
    sums = weekly_sums(conn, schema, edges)
    orgs = schema.table("organisations")
    name = orgs.col("name") if orgs.has("name") else "NULL"
    about = {str(r["id"]): {"name": r["name"], "app_plan": r["plan"]} for r in select_all(
        conn, f"SELECT {orgs.col('id')} AS id, {name} AS name, {orgs.col('plan')} AS plan FROM {orgs.sql_table}")}
    return weekly_rows(sums, edges, about)


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
