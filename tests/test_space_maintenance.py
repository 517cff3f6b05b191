"""Space and maintenance (table_bloat, vacuum_lag, never_analyzed) on a scratch database, and the
slow_queries runbook on the demo naming exactly the planted erratic statement and maintenance problems."""
from __future__ import annotations

import pytest

from ops_lib import runner
from ops_lib.db import make_engine
from ops_lib.postgres import space


@pytest.fixture(scope="module")
def demo_record(demo, tmp_path_factory):
    return runner.run("slow_queries", outputs=tmp_path_factory.mktemp("slow")).record


def test_space_checks_name_the_neglected_tables_only(database18):
    database18.execute(
        "CREATE TABLE purged (id bigint, body text) WITH (autovacuum_enabled = false);"
        "INSERT INTO purged SELECT g, repeat(md5(g::text), 12) FROM generate_series(1, 30000) g;"
        "DELETE FROM purged WHERE id > 5000;"
        "CREATE TABLE tidy (id bigint, body text);"
        "INSERT INTO tidy SELECT g, repeat(md5(g::text), 12) FROM generate_series(1, 30000) g;"
        "CREATE TABLE unknown (id bigint) WITH (autovacuum_enabled = false);"
        "INSERT INTO unknown SELECT generate_series(1, 3000);"
        "CREATE TABLE small_unknown (id bigint) WITH (autovacuum_enabled = false);"
        "INSERT INTO small_unknown SELECT generate_series(1, 10);"
        "CREATE TABLE analysed_empty (id bigint) WITH (autovacuum_enabled = false);")
    database18.execute("ANALYZE analysed_empty")
    database18.execute("INSERT INTO analysed_empty SELECT generate_series(1, 2000)")
    database18.execute("SELECT pg_stat_force_next_flush()")
    database18.execute("ANALYZE purged")
    database18.execute("ANALYZE tidy")
    engine = make_engine(database18.url, runbook="slow_queries", run_id="pytest")
    try:
        with engine.connect() as conn:
            bloat = space.table_bloat(conn, min_bytes=4 * space.MB)
            assert bloat.severity == "warning" and bloat.items == ["purged"], bloat.rows
            assert bloat.rows[0]["bloat_share"] > 0.6
            assert space.table_bloat(conn, min_bytes=100 * space.MB).severity == "ok"
            lag = space.vacuum_lag(conn)
            assert lag.items == ["purged"] and lag.rows[0]["autovacuum_enabled"] == "false"
            assert lag.rows[0]["dead_rows"] >= 20_000
            never = space.never_analyzed(conn)
            assert never.items == ["unknown", "analysed_empty"], never.rows
            assert space.never_analyzed(conn, min_rows=5).items == ["unknown", "analysed_empty", "small_unknown"]
            assert [r["table"] for r in space.table_sizes(conn, limit=2)] == ["purged", "tidy"] or \
                {r["table"] for r in space.table_sizes(conn, limit=2)} == {"purged", "tidy"}
    finally:
        engine.dispose()


def test_the_demo_names_exactly_its_maintenance_problems(demo_record):
    from ops_lib.demo.seed import BLOATED_TABLE, NEVER_ANALYZED_TABLE

    found = {f["check"]: f for f in demo_record["findings"]}
    assert found["table_bloat"]["items"] == [BLOATED_TABLE]
    assert found["vacuum_lag"]["items"] == [BLOATED_TABLE]
    assert found["never_analyzed"]["items"] == [NEVER_ANALYZED_TABLE]


def test_the_demo_names_exactly_its_erratic_statement(demo_record):
    from ops_lib.demo.seed import ERRATIC_STATEMENTS, SLOW_STATEMENTS

    found = next(f for f in demo_record["findings"] if f["check"] == "erratic_statements")
    texts = [r["query"] for r in found["rows"]]
    assert len(texts) == len(ERRATIC_STATEMENTS), texts
    assert all("pg_sleep(CASE WHEN" in t for t in texts)
    # the steady slow statements are slow_queries' business, not this check's
    assert not any(sql.split(" WHERE ")[0].replace(":", "$") in t for t in texts for sql in SLOW_STATEMENTS.values())
