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

import numpy as np
from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Finding
from ..schema_map import SchemaMap
from .scan import DEFAULT_WEEKS, WeeklyUsage, week_edges, weekly_rows, weekly_sums
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
    if isinstance(rows, WeeklyUsage):
        return _weekly_usage_by_plan(rows)
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
    if isinstance(rows, WeeklyUsage):
        return _usage_surge(rows, factor=factor, min_increase=min_increase)
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
        row = _surged(org_id, about[org_id], usage, last_week, earlier, factor, min_increase)
        if row is not None:
            found.append(row)
    return _surge_finding(found, rule)


def _surged(org_id, about: dict, usage: dict, last_week, earlier: list, factor: float, min_increase: int) -> dict | None:
    """The rule for one organisation (``usage``: week -> units, a week missing counts 0)."""
    last = usage.get(last_week, 0)
    baseline = median(usage.get(w, 0) for w in earlier)
    if baseline <= 0 or last < factor * baseline or last - baseline < min_increase:
        return None
    return {"organisation_id": org_id, "name": about.get("name"), "plan": about.get("plan"),
            "week_start": last_week, "usage": last, "trailing_median": baseline,
            "times_median": round(last / baseline, 1)}


def _surge_finding(found: list[dict], rule: str) -> Finding:
    found.sort(key=lambda r: -r["times_median"])
    return Finding.from_rows(
        "usage_surge", found, severity="info", item="organisation_id",
        title=f"{len(found)} organisation(s) used far more last week than usual",
        ok_title="No organisation's usage surged last week",
        remediation="Look at what the organisation ran last week (its users, event kinds, API keys): a retry loop or a "
        "leaked key is stopped; a genuine ramp-up is a customer to talk to before they hit their limit.",
        note=rule,
    )


# --------------------------------------------------------------------------- the same, over arrays


def _weekly_usage_by_plan(weekly: WeeklyUsage) -> list[dict]:
    """``weekly_usage_by_plan`` over ``scan.WeeklyUsage``'s arrays: one masked sum per plan."""
    codes: dict = {}
    plan_of = np.fromiter((codes.setdefault(p, len(codes)) for p in weekly.plans), dtype=np.int64, count=len(weekly.plans))
    active = weekly.events > 0
    totals = []
    for plan, code in codes.items():
        mine = plan_of == code
        usage = np.where(active[mine], weekly.units[mine], 0).sum(axis=0).tolist()
        organisations = active[mine].sum(axis=0).tolist()
        # (ties of str(plan) keep the order in which the rows list them: by the first organisation)
        first = [int(np.flatnonzero(mine & active[:, i])[0]) if organisations[i] else 0 for i in range(len(weekly.weeks))]
        for i, week in enumerate(weekly.weeks):
            if organisations[i]:
                totals.append(((i, str(plan), first[i]), {"week_start": week, "plan": plan, "usage": usage[i],
                                                         "active_organisations": organisations[i]}))
    return [row for _, row in sorted(totals, key=lambda t: t[0])]


def _usage_surge(weekly: WeeklyUsage, *, factor: float, min_increase: int) -> Finding:
    """``usage_surge`` over ``scan.WeeklyUsage``'s arrays: the weeks and the median are computed
    for every organisation at once, and the rule itself (``_surged``, the same code as for rows)
    runs only on the organisations whose numbers could pass it."""
    active = weekly.events > 0
    present = np.flatnonzero(active.any(axis=0)).tolist()     # the weeks that have rows
    rule = f"last full week ≥ {factor:g}× the median of the {max(len(present) - 1, 0)} week(s) before and ≥ {min_increase} units above it"
    if len(present) < 2:
        return Finding("usage_surge", "ok", "Not enough full weeks of usage to compare", note=rule)
    units = np.where(active, weekly.units, 0)[:, present]
    last, baseline = units[:, -1].astype(np.float64), np.median(units[:, :-1], axis=1)
    # a loose bound (float rounding cannot drop a real surge): the exact rule decides below
    slack = 1e-6 * (1 + np.abs(last) + np.abs(baseline))
    maybe = np.flatnonzero((baseline > 0) & (last >= factor * baseline - slack) & (last - baseline >= min_increase - slack)
                           & active.any(axis=1))
    weeks = [weekly.weeks[i] for i in present]
    # the order the rows would list them in: by the first week with usage, then by id
    first = active.argmax(axis=1)
    found = []
    for n in sorted(maybe.tolist(), key=lambda n: (int(first[n]), n)):
        usage = {weeks[j]: int(units[n, j]) for j in range(len(weeks)) if active[n, present[j]]}
        row = _surged(weekly.ids[n], {"name": weekly.names[n], "plan": weekly.plans[n]}, usage, weeks[-1], weeks[:-1],
                      factor, min_increase)
        if row is not None:
            found.append(row)
    return _surge_finding(found, rule)
