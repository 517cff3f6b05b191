"""Statements by calls and by variability: stddev and max next to the mean, and erratic_statements."""
from __future__ import annotations

import sqlalchemy as sa

from ops_lib.db import make_engine
from ops_lib.postgres import queries

ERRATIC = "SELECT pg_sleep(CASE WHEN :slow THEN 0.05 ELSE 0 END) AS erratic"
STEADY = "SELECT pg_sleep(0.004) AS steady"


def test_erratic_statements_names_the_spread_not_the_mean(database18):
    with database18.admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_statements_reset()"))
        for i in range(30):
            conn.execute(sa.text(ERRATIC), {"slow": i % 10 == 0})
            conn.execute(sa.text(STEADY))
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    engine = make_engine(database18.url, runbook="slow_queries", run_id="pytest")
    try:
        with engine.connect() as conn:
            found = queries.erratic_statements(conn, min_calls=25)
            assert found.severity == "warning" and len(found.rows) == 1, found.rows
            row = found.rows[0]
            assert "AS erratic" in row["query"] and row["calls"] == 30
            assert row["stddev_ms"] >= 2 * row["mean_ms"] and row["max_ms"] >= 50
            assert queries.erratic_statements(conn, min_calls=31).severity == "ok"
            assert queries.erratic_statements(conn, min_calls=25, min_stddev_ms=100).severity == "ok"
            by_spread = queries.top_statements(conn, by="stddev", limit=2)
            assert "AS erratic" in by_spread[0]["query"]
            steady = next(r for r in queries.top_statements(conn, by="calls", limit=20) if "AS steady" in r["query"])
            assert steady["calls"] == 30 and steady["stddev_ms"] < steady["mean_ms"] and steady["max_ms"] >= 4
    finally:
        engine.dispose()
