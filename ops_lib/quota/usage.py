"""Usage recomputed from the usage events, in one statement for every organisation's period.

``recompute_usage`` sends every organisation's billing period as three bound array literals (ids,
starts, ends; ids in their own integer type when they are integers), joins them with the usage events in one pass over the events between the
earliest start and the latest end, and with the stored counters, in a single SQL statement:
no query per customer, however many there are.

Each idempotency key counts once, with its largest quantity: a client that retried an event
(same key, delivered twice) used the product once. The repeated copies are counted apart
(``repeated``) and listed by the ``duplicate_usage_events`` check.

Periods are half-open, ``start <= occurred_at < end``, in UTC; the session's time zone is set to
UTC so that an app storing ``timestamp without time zone`` in UTC is read correctly.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection

from ..db import select_all
from ..findings import Metrics
from ..schema_map import SchemaMap
from .accounts import Accounts


def _usage_sql(schema: SchemaMap, id_type: str = "text") -> str:
    events = schema.table("usage_events")
    counters = schema.table("usage_counters")
    org, at, key = events.col("organisation_id"), events.col("occurred_at"), events.col("idempotency_key")
    quantity = f"e.{events.col('quantity')}" if events.has("quantity") else "1"
    c_org, c_start, c_used = counters.col("organisation_id"), counters.col("period_start"), counters.col("used")
    return f"""
        WITH periods AS (
            SELECT p.organisation_id, p.period_start, p.period_end
            FROM unnest(CAST(:ids AS {id_type}[]), CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]))
                 AS p(organisation_id, period_start, period_end)
        ),
        counted AS (
            SELECT p.organisation_id, e.{key} AS idempotency_key, max({quantity}) AS quantity, count(*) AS copies
            FROM {events.sql_table} e
            JOIN periods p ON p.organisation_id = e.{org}{"" if id_type != "text" else "::text"}
                          AND e.{at} >= p.period_start AND e.{at} < p.period_end
            WHERE e.{at} >= :lo AND e.{at} < :hi
            GROUP BY p.organisation_id, e.{key}
        ),
        used AS (
            SELECT organisation_id, sum(quantity) AS used, count(*) AS events, sum(copies) - count(*) AS repeated
            FROM counted
            GROUP BY organisation_id
        ),
        stored AS (
            SELECT c.{c_org}{"" if id_type != "text" else "::text"} AS organisation_id, c.{c_start} AS period_start,
                   max(c.{c_used}) AS used, count(*) AS counter_rows
            FROM {counters.sql_table} c
            WHERE c.{c_start} >= :lo AND c.{c_start} < :hi
            GROUP BY 1, 2
        )
        SELECT p.organisation_id::text AS organisation_id,
               coalesce(u.used, 0)::bigint AS used,
               coalesce(u.events, 0)::bigint AS events,
               coalesce(u.repeated, 0)::bigint AS repeated,
               s.used::bigint AS stored,
               coalesce(s.counter_rows, 0)::int AS counter_rows
        FROM periods p
        LEFT JOIN used u ON u.organisation_id = p.organisation_id
        LEFT JOIN stored s ON s.organisation_id = p.organisation_id AND s.period_start = p.period_start
    """


def _iso(moment) -> str:
    return moment.isoformat() if hasattr(moment, "isoformat") else str(moment)


def _array_literal(values) -> str:
    """A PostgreSQL array literal, every element quoted: '{"a","b"}'."""
    quoted = ('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def recompute_usage(conn: Connection, schema: SchemaMap, accounts: Accounts) -> list[dict]:
    """One row per organisation: its period, plan limit, recomputed usage and stored counter.

    ``used`` is the recomputed usage, ``stored`` the app's counter for the same period
    (None: the app has no counter row for it), ``pct`` the share of the plan's limit used.
    """
    orgs = accounts.organisations
    if not orgs:
        return []
    conn.exec_driver_sql("SET TIME ZONE 'UTC'")
    # Integer ids join the events on their own type (a text cast on the events' side would
    # defeat the hash join); the arrays travel as one array literal each, parsed once by the
    # server, not as a million-element ARRAY[...] expression.
    integer_ids = all(isinstance(o["organisation_id"], int) and not isinstance(o["organisation_id"], bool)
                      for o in orgs)
    found = select_all(
        conn,
        _usage_sql(schema, "bigint" if integer_ids else "text"),
        ids=_array_literal(str(o["organisation_id"]) for o in orgs),
        starts=_array_literal(_iso(o["period_start"]) for o in orgs),
        ends=_array_literal(_iso(o["period_end"]) for o in orgs),
        lo=min(o["period_start"] for o in orgs),
        hi=max(o["period_end"] for o in orgs),
    )
    by_id = {row["organisation_id"]: row for row in found}
    rows = []
    for org in orgs:
        got = by_id.get(str(org["organisation_id"]), {})
        used = int(got.get("used") or 0)
        limit = org["usage_limit"]
        rows.append({
            "organisation_id": org["organisation_id"],
            "name": org["name"],
            "plan": org["app_plan"],
            "usage_limit": limit,
            "used": used,
            "stored": None if got.get("stored") is None else int(got["stored"]),
            "pct": round(100.0 * used / limit, 1) if limit else None,
            "events": int(got.get("events") or 0),
            "repeated": int(got.get("repeated") or 0),
            "counter_rows": int(got.get("counter_rows") or 0),
            "period_start": org["period_start"],
            "period_end": org["period_end"],
            "period_source": org["period_source"],
            "is_blocked": org["is_blocked"],
        })
    return rows


def usage_metrics(usage: list[dict]) -> Metrics:
    limited = [r for r in usage if r["usage_limit"]]
    return Metrics(
        usage_units_in_current_periods=sum(r["used"] for r in usage),
        usage_events_in_current_periods=sum(r["events"] for r in usage),
        organisations_with_a_counter=sum(1 for r in usage if r["stored"] is not None),
        organisations_over_80_pct=sum(1 for r in limited if r["pct"] is not None and r["pct"] >= 80),
        highest_pct_of_limit=max((r["pct"] for r in limited if r["pct"] is not None), default=None),
    )
