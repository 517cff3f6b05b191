"""The PostgreSQL checks against real servers (18 and, where installed, 15).

Each check gets a deliberate problem built as real state, and a healthy case. Thresholds are
lowered where the real-world default would take minutes (a query running for 60 s) or a huge
database; the state itself is always real: real seq scans, real lock chains, real sequences.
"""
from __future__ import annotations

import io
import json
import select
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa

from ops_lib.audit import AuditLog
from ops_lib.db import make_engine, server_version_num, sqlalchemy_url
from ops_lib import db as opsbook_db
from ops_lib.demo.postgres import PostgresCluster, embedded_bin_dir, free_port
from ops_lib.errors import ParameterError, UnsafeAction
from ops_lib.findings import METRICS_MIME, SEVERITIES, Finding
from ops_lib import postgres as pg
from ops_lib.postgres import plots
from ops_lib.utc import as_utc


# ------------------------------------------------------------------------------------------
# helpers


class Session:
    """A psycopg2 connection in asynchronous mode: send a statement and carry on while it runs
    or waits on a lock, as another application would."""

    def __init__(self, url: str, application_name: str = "app-under-test"):
        self.conn = psycopg2.connect(url, async_=1, application_name=application_name)
        self._wait()
        self.pid = self.run("SELECT pg_backend_pid()")[0][0]
        self.error: Exception | None = None

    def _wait(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("statement did not finish")
            fd = self.conn.fileno()
            if state == psycopg2.extensions.POLL_READ:
                select.select([fd], [], [], remaining)
            else:
                select.select([], [fd], [], remaining)

    def send(self, sql: str) -> "Session":
        self.cursor = self.conn.cursor()
        self.cursor.execute(sql)
        return self

    def result(self, timeout: float = 15):
        self._wait(timeout)
        return self.cursor.fetchall() if self.cursor.description else None

    def run(self, sql: str):
        return self.send(sql).result()

    def busy(self) -> bool:
        return self.conn.poll() != psycopg2.extensions.POLL_OK

    def close(self) -> None:
        try:
            if not self.conn.closed:
                if self.busy():
                    self.conn.cancel()
                    try:
                        self._wait(5)
                    except Exception:
                        pass
                self.conn.close()
        except Exception:
            pass


@pytest.fixture
def sessions(database):
    opened: list[Session] = []

    def open_session(application_name: str = "app-under-test") -> Session:
        session = Session(database.url, application_name)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


@pytest.fixture
def ro(database):
    """The runbook's own read-only engine on the test database."""
    engine = make_engine(database.url, runbook="slow_queries", run_id="pytest")
    yield engine
    engine.dispose()


def check(engine, fn, *args, **kwargs):
    with engine.connect() as conn:
        return fn(conn, *args, **kwargs)


def workload(database, *statements) -> None:
    """Run (sql, params) pairs on one connection, then flush its statistics at once."""
    with database.admin.connect() as conn:
        for sql, params in statements:
            conn.execute(sa.text(sql), params)
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))


def wait_for(database, sql: str, timeout: float = 10, **params):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = database.execute(sql, **params).scalar()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(sql)


def wait_until_lock_wait(database, pid: int) -> None:
    wait_for(database, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid", pid=pid)


def assert_valid(finding: Finding, check_id: str) -> None:
    assert isinstance(finding, Finding)
    assert finding.check == check_id
    assert finding.severity in SEVERITIES
    finding._repr_mimebundle_()  # renders, and its summary is JSON-safe


def version(database) -> int:
    with database.admin.connect() as conn:
        return server_version_num(conn)


def test_the_server_version_is_psycopg2s_without_a_query_and_agrees_with_show(database):
    with database.admin.connect() as conn:
        shown = int(conn.exec_driver_sql("SHOW server_version_num").scalar())
        sent: list = []
        sa.event.listen(conn, "before_cursor_execute", lambda *args: sent.append(args[2]))
        assert server_version_num(conn) == shown and shown >= 150000
        assert sent == [], "read when psycopg2 connected"


# ------------------------------------------------------------------------------------------
# pg_stat_statements


def test_pg_stat_statements_missing_is_ok_when_preloaded_and_created(database, ro):
    finding = check(ro, pg.pg_stat_statements_missing)
    assert_valid(finding, "pg_stat_statements_missing")
    assert finding.severity == "ok"
    assert check(ro, pg.statements_available) is True


def test_pg_stat_statements_missing_warns_when_extension_not_created_in_database(database, ro):
    database.execute("DROP EXTENSION pg_stat_statements")
    finding = check(ro, pg.pg_stat_statements_missing)
    assert finding.severity == "warning"
    assert "CREATE EXTENSION" in finding.remediation
    assert finding.rows[0]["created_in_database"] is False and finding.rows[0]["preloaded"] is True
    assert check(ro, pg.statements_available) is False
    slow = check(ro, pg.slow_queries)
    assert slow.severity == "ok" and "pg_stat_statements_missing" in slow.note
    assert check(ro, pg.top_statements) == []


def _scratch_dir(name: str) -> Path:
    # As conftest: world-traversable, so that the unprivileged service user can use it as root.
    root = Path(tempfile.gettempdir()) / "opsbook-tests"
    root.mkdir(exist_ok=True)
    root.chmod(root.stat().st_mode | stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def pg18_without_preload():
    """A PostgreSQL 18 where pg_stat_statements is installed but not in shared_preload_libraries."""
    cluster = PostgresCluster(_scratch_dir("nopreload") / "pgdata", free_port(), embedded_bin_dir()).init()
    with open(cluster.data_dir / "postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = ''\n")
    cluster.start()
    yield cluster
    cluster.destroy()
    shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


def test_pg_stat_statements_missing_explains_preload_and_restart_when_not_preloaded(pg18_without_preload):
    url = pg18_without_preload.url()
    admin = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))  # created, not loaded
    admin.dispose()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            finding = pg.pg_stat_statements_missing(conn)
            assert finding.severity == "warning"
            assert "not in shared_preload_libraries" in finding.title
            assert "shared_preload_libraries = 'pg_stat_statements'" in finding.remediation
            assert "restart" in finding.remediation
            assert "CREATE EXTENSION" not in finding.remediation  # already created
            # The other statement checks degrade to notes, and the session stays usable.
            assert pg.slow_queries(conn).severity == "ok"
            assert pg.top_statements(conn) == []
            assert pg.statement_plans(conn, [{"queryid": 1, "query": "SELECT 1"}])[0]["plan"]
            findings = {f.check: f for f in pg.run_checks(conn)}
            assert list(findings) == list(pg.CHECKS), "every check ran, in order, on the usable session"
            assert findings["pg_stat_statements_missing"].severity == "warning"
            assert findings["slow_queries"].severity == "ok" and findings["slow_queries"].note
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------
# slow queries, top statements, plans

SEQ_SCAN = "SELECT count(*) FROM events WHERE md5(payload) = :digest"


def _events_table(database, rows: int = 60_000) -> None:
    database.execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, payload text);"
        "INSERT INTO events SELECT g, 'payload ' || g FROM generate_series(1, :rows) g",
        rows=rows,
    )
    database.execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)"
    )


def test_slow_queries_reports_seq_scans_over_threshold(database, ro):
    _events_table(database)
    workload(database, *[(SEQ_SCAN, {"digest": str(i)}) for i in range(25)])

    finding = check(ro, pg.slow_queries, min_mean_ms=2, min_calls=25)
    assert_valid(finding, "slow_queries")
    assert finding.severity == "warning"
    [row] = [r for r in finding.rows if "md5(payload)" in r["query"]]
    assert row["queryid"] in finding.items
    assert row["calls"] == 25 and row["mean_ms"] >= 2 and row["total_ms"] >= 50
    assert 0 < row["share_pct"] <= 100
    assert row["usename"] == "postgres" and row["datname"] == database.name
    assert "$1" in row["query"]  # normalized text

    top = check(ro, pg.top_statements, by="mean", limit=3)
    assert top[0]["queryid"] == row["queryid"]
    assert check(ro, pg.top_statements, by="calls", limit=1)[0]["calls"] >= 25


def test_slow_queries_is_ok_for_fast_indexed_lookups(database, ro):
    _events_table(database, rows=1000)
    workload(database, *[("SELECT payload FROM events WHERE id = :id", {"id": i}) for i in range(30)])
    finding = check(ro, pg.slow_queries, min_mean_ms=5, min_calls=25)
    assert finding.severity == "ok" and finding.items == []
    assert check(ro, pg.top_statements, by="calls", limit=1)[0]["calls"] == 30


def test_top_statements_rejects_an_unknown_order(database, ro):
    with pytest.raises(ParameterError):
        check(ro, pg.top_statements, by="io")


def test_statement_plans_explains_generic_plans_on_16_plus_and_notes_why_not_otherwise(database, ro):
    _events_table(database, rows=2000)
    database.execute("CREATE TABLE gone (id int)")
    workload(
        database,
        (SEQ_SCAN, {"digest": "x"}),
        ("SELECT count(*) FROM gone WHERE id = :id", {"id": 1}),
        ("VACUUM events", {}),
        ("SELECT id % 7, payload::text FROM events WHERE id = :id", {"id": 3}),  # '%' and '::' reach EXPLAIN intact
    )
    database.execute("DROP TABLE gone")
    statements = check(ro, pg.top_statements, by="calls", limit=50)

    def pick(fragment):
        return next(s for s in statements if fragment in s["query"])

    chosen = [pick("md5(payload)"), pick("VACUUM"), pick("FROM gone"), pick("id % $1")]
    with ro.connect() as conn:
        plans = pg.statement_plans(conn, chosen, limit=4)
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1  # the transaction survived the failures
    assert [p["queryid"] for p in plans] == [s["queryid"] for s in chosen]
    if version(database) >= 160000:
        assert "Seq Scan on events" in plans[0]["plan"] and plans[0]["note"] is None
        assert plans[1]["plan"] is None and "utility statement (VACUUM)" in plans[1]["note"]
        assert plans[2]["plan"] is None and 'relation "gone" does not exist' in plans[2]["note"]
        assert "Index Scan using events_pkey" in plans[3]["plan"]
    else:
        for plan in plans:
            assert plan["plan"] is None
            assert plan["note"].startswith("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16+; this server is 15.")
            assert plan["note"].endswith("run EXPLAIN with real values")
    assert len(check(ro, pg.statement_plans, chosen)) == 3  # the default limit


# ------------------------------------------------------------------------------------------
# activity


def test_long_running_queries_reports_other_sessions_past_min_seconds(database, ro, sessions):
    sleeper = sessions().send("SELECT pg_sleep(30)")
    own = sessions("opsbook/slow_queries/other-run").send("SELECT pg_sleep(30)")
    time.sleep(1.5)  # well past the threshold: the query starts a little after send() returns
    finding = check(ro, pg.long_running_queries, min_seconds=0.5)
    assert_valid(finding, "long_running_queries")
    assert finding.severity == "warning"
    assert finding.items == [sleeper.pid]  # not our own session, not opsbook's other sessions
    [row] = finding.rows
    assert row["duration_s"] >= 0.5 and "pg_sleep" in row["query"]
    assert row["application_name"] == "app-under-test" and row["backend_start"] and row["query_start"]
    assert own.busy()


def test_long_running_queries_sees_new_queries_within_one_open_transaction(database, ro, sessions):
    with ro.connect() as conn:  # a notebook keeps its session (and transaction) across cells
        assert pg.long_running_queries(conn, min_seconds=0.2).severity == "ok"
        sleeper = sessions().send("SELECT pg_sleep(30)")
        time.sleep(1.0)
        assert pg.long_running_queries(conn, min_seconds=0.2).items == [sleeper.pid]


def test_long_running_queries_is_ok_when_queries_are_short(database, ro, sessions):
    sessions().send("SELECT pg_sleep(30)")
    assert check(ro, pg.long_running_queries, min_seconds=60).severity == "ok"


def _lock_chain(database, sessions):
    """holder (idle in transaction) <- middle (waits, holds row 2) <- tail (waits on middle)."""
    database.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int); INSERT INTO accounts VALUES (1, 0), (2, 0)")
    holder = sessions().send("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    holder.result()
    middle = sessions().send(
        "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 2; "
        "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
    )
    wait_until_lock_wait(database, middle.pid)
    tail = sessions().send("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
    wait_until_lock_wait(database, tail.pid)
    return holder, middle, tail


def test_blocked_queries_names_the_root_blocker_of_a_three_level_chain(database, ro, sessions):
    holder, middle, tail = _lock_chain(database, sessions)
    finding = check(ro, pg.blocked_queries)
    assert_valid(finding, "blocked_queries")
    assert finding.severity == "warning"
    # the items are the blocked sessions, pid@backend_start (UTC), the longest waiting first
    started = dict(database.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid IN (:a, :b)",
                                    a=middle.pid, b=tail.pid).all())
    assert finding.items == [f"{p}@{as_utc(started[p]).isoformat()}" for p in (middle.pid, tail.pid)]
    assert finding.count == 2
    rows = {r["pid"]: r for r in finding.rows}
    assert set(rows) == {middle.pid, tail.pid}
    assert [r["session"] for r in finding.rows] == finding.items
    assert rows[middle.pid]["blocked_by"] == [holder.pid] and rows[middle.pid]["depth"] == 1
    assert rows[tail.pid]["blocked_by"] == [middle.pid] and rows[tail.pid]["depth"] == 2
    holder_xact = database.execute("SELECT extract(epoch FROM clock_timestamp() - xact_start) FROM pg_stat_activity "
                                   "WHERE pid = :p", p=holder.pid).scalar()
    for row in rows.values():  # the root blocker, in each blocked session's row
        assert row["root_blocker"] == holder.pid
        assert row["root_state"] == "idle in transaction"
        assert 0 <= row["root_xact_age_s"] <= float(holder_xact) + 0.1
        assert row["root_query"] == "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1"
    assert check(ro, pg.blocked_queries, min_wait_seconds=3600).severity == "ok"


def test_a_blocked_session_stays_open_across_runs_and_another_one_is_new(database, ro, sessions):
    from ops_lib.changes import compare

    holder, middle, tail = _lock_chain(database, sessions)

    def run(run_id):
        finding = check(ro, pg.blocked_queries)
        return {"run_id": run_id, "checks": [{"check": "blocked_queries"}], "findings": [finding.summary()]}

    first = run("a")
    tail.close()
    wait_for(database, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :p)", p=tail.pid)
    other = sessions().send("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
    wait_until_lock_wait(database, other.pid)
    second = run("b")
    key = {r["pid"]: r["session"] for r in second["findings"][0]["rows"]}
    changes = compare(first, second)["checks"]["blocked_queries"]
    assert changes["new"] == [key[other.pid]]
    assert changes["resolved"] == [next(i for i in first["findings"][0]["items"] if i.startswith(f"{tail.pid}@"))]
    assert changes["still_open"] == 1  # the middle session, blocked all along


def test_blocked_queries_is_ok_when_nobody_waits(database, ro, sessions):
    database.execute("CREATE TABLE accounts (id int PRIMARY KEY); INSERT INTO accounts VALUES (1)")
    sessions().send("BEGIN; UPDATE accounts SET id = 1 WHERE id = 1").result()
    assert check(ro, pg.blocked_queries).severity == "ok"


def test_idle_in_transaction_warns_by_age_and_turns_critical_past_the_second_threshold(database, ro, sessions):
    idle = sessions().send("BEGIN; SELECT 1")
    idle.result()
    sessions().run("SELECT 1")  # idle, but not in a transaction
    time.sleep(2)
    finding = check(ro, pg.idle_in_transaction, min_seconds=1, critical_seconds=3600)
    assert_valid(finding, "idle_in_transaction")
    assert finding.severity == "warning" and finding.items == [idle.pid]
    assert finding.rows[0]["idle_s"] >= 1 and finding.rows[0]["xact_age_s"] >= finding.rows[0]["idle_s"]
    assert check(ro, pg.idle_in_transaction, min_seconds=1, critical_seconds=1).severity == "critical"
    assert check(ro, pg.idle_in_transaction, min_seconds=60).severity == "ok"


def test_idle_in_transaction_is_ok_without_open_transactions(database, ro, sessions):
    sessions().run("SELECT 1")
    assert check(ro, pg.idle_in_transaction, min_seconds=0).severity == "ok"


def test_connection_saturation_warns_then_turns_critical_as_connections_cross_thresholds(database, ro, sessions):
    limits = check(ro, pg.connection_limits)
    assert limits["usable"] == limits["max_connections"] - limits["superuser_reserved"] - limits["reserved"]
    healthy = check(ro, pg.connection_saturation)
    assert_valid(healthy, "connection_saturation")
    assert healthy.severity == "ok" and healthy.rows

    baseline = sum(r["connections"] for r in check(ro, pg.connections_by_state))
    for _ in range(6):
        sessions()
    threshold = 100.0 * (baseline + 3) / limits["usable"]
    warned = check(ro, pg.connection_saturation, warn_pct=threshold, critical_pct=100)
    assert warned.severity == "warning" and warned.count >= baseline + 6
    assert any(r["state"] == "idle" and r["connections"] >= 6 for r in warned.rows)
    assert "max_connections" in warned.note
    assert check(ro, pg.connection_saturation, warn_pct=threshold, critical_pct=threshold).severity == "critical"


def test_server_metrics_follow_real_connections_sessions_and_locks(database, ro, sessions):
    limits = check(ro, pg.connection_limits)
    before = check(ro, pg.server_metrics)
    assert before["connections_usable"] == limits["max_connections"] - limits["superuser_reserved"] - limits["reserved"]
    assert before["blocked_queries"] == before["idle_in_transaction"] == before["long_running_queries"] == 0
    assert before["longest_query_s"] is None
    for _ in range(5):
        sessions()
    grown = check(ro, pg.server_metrics)
    assert grown["connections_used"] == before["connections_used"] + 5
    assert grown["connections_used_pct"] == round(100.0 * grown["connections_used"] / grown["connections_usable"], 1)

    holder, middle, tail = _lock_chain(database, sessions)
    time.sleep(1.2)
    now = check(ro, pg.server_metrics, long_running_seconds=1, idle_in_transaction_seconds=1)
    assert now["connections_used"] == before["connections_used"] + 8
    # a metric named after a check counts what its finding counts, at the same thresholds
    assert now["blocked_queries"] == check(ro, pg.blocked_queries).count == 2
    assert now["idle_in_transaction"] == check(ro, pg.idle_in_transaction, min_seconds=1).count == 1
    assert now["long_running_queries"] == check(ro, pg.long_running_queries, min_seconds=1).count == 2
    assert check(ro, pg.server_metrics, long_running_seconds=3600)["long_running_queries"] == 0
    waited = database.execute("SELECT extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity "
                              "WHERE pid = :p", p=middle.pid).scalar()
    assert 1.2 <= now["longest_query_s"] <= float(waited) + 0.1
    assert now["oldest_transaction_s"] >= now["longest_query_s"]


def test_server_metrics_cache_and_statement_statistics_against_the_views(database, ro):
    database.execute("CREATE TABLE hot (id int PRIMARY KEY, v text);"
                     "INSERT INTO hot SELECT g, repeat('x', 50) FROM generate_series(1, 5000) g")
    database.execute("SELECT pg_stat_statements_reset()")
    assert check(ro, pg.server_metrics)["database_statistics_age_s"] is None  # a new database: never reset
    database.execute("SELECT pg_stat_reset()")
    workload(database, *[(f"SELECT count(*) FROM hot WHERE v <> :v AND id > {i}", {"v": str(i)}) for i in range(7)],
             ("SET enable_seqscan = off", {}), ("SELECT v FROM hot WHERE id = 7", {}))
    metrics = check(ro, pg.server_metrics)
    ratios = {r["kind"]: r["ratio"] for r in check(ro, pg.low_cache_hit_ratio, min_reads=0).rows}
    assert metrics["cache_hit_ratio_tables"] == ratios["tables"] and 0 < ratios["tables"] <= 1
    assert metrics["cache_hit_ratio_indexes"] == ratios["indexes"]
    assert 0 <= metrics["statement_statistics_age_s"] < 60
    assert 0 <= metrics["database_statistics_age_s"] < 60
    tracked = database.execute("SELECT count(*) FROM pg_stat_statements").scalar()
    assert tracked >= 7 and abs(metrics["statements_tracked"] - tracked) <= 3  # the metric's own reads may add some
    assert metrics["statements_max"] == int(database.execute("SHOW pg_stat_statements.max").scalar())
    assert metrics["statements_deallocated"] == 0
    time.sleep(1.1)
    assert check(ro, pg.server_metrics)["statement_statistics_age_s"] >= 1
    assert json.loads(json.dumps(metrics._repr_mimebundle_()[METRICS_MIME])) == dict(metrics)  # plain data


# ------------------------------------------------------------------------------------------
# indexes


def test_unused_indexes_reports_a_never_scanned_plain_index(database, ro):
    database.execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, customer int, sku int UNIQUE, status int);"
        "CREATE INDEX orders_customer_idx ON orders (customer);"
        "CREATE INDEX orders_status_idx ON orders (status);"
        "INSERT INTO orders (customer, sku, status) SELECT g, g, g % 5 FROM generate_series(1, 1000) g"
    )
    workload(database, ("SET enable_seqscan = off", {}), ("SELECT * FROM orders WHERE status = 1", {}))
    finding = check(ro, pg.unused_indexes)
    assert_valid(finding, "unused_indexes")
    assert finding.severity == "info"
    assert finding.items == ["orders_customer_idx"]  # not the primary key, not the unique one, not the used one
    assert finding.rows[0]["size_bytes"] > 0 and finding.rows[0]["idx_scan"] == 0
    assert "stats_reset" in finding.note
    assert check(ro, pg.unused_indexes, min_size_bytes=10**9).severity == "ok"


def test_unused_indexes_is_ok_when_every_index_is_used(database, ro):
    database.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, status int); CREATE INDEX orders_status_idx ON orders (status);"
        "INSERT INTO orders SELECT g, g % 5 FROM generate_series(1, 1000) g"
    )
    workload(database, ("SET enable_seqscan = off", {}), ("SELECT * FROM orders WHERE status = 1", {}))
    assert check(ro, pg.unused_indexes).severity == "ok"


def test_duplicate_indexes_reports_prefixes_and_identical_twins_only(database, ro):
    database.execute(
        """
        CREATE TABLE items (a int, b int, c int, d text, e int);
        CREATE INDEX items_a ON items (a);                       -- prefix of items_a_b: reported
        CREATE INDEX items_a_b ON items (a, b);
        CREATE INDEX items_b_1 ON items (b);                     -- identical twins: the later name
        CREATE INDEX items_b_2 ON items (b);
        CREATE UNIQUE INDEX items_c_key ON items (c);            -- unique: never reported ...
        CREATE INDEX items_c_d ON items (c, d);                  -- ... even though covered
        CREATE INDEX items_c ON items (c);                       -- covered by the unique one: reported
        CREATE INDEX items_a_partial ON items (a) WHERE b > 0;   -- different predicate: kept
        CREATE INDEX items_d_pattern ON items (d text_pattern_ops); -- different operator class: kept
        CREATE INDEX items_d_e ON items (d, e);
        CREATE INDEX items_lower_d ON items (lower(d));          -- same expression, prefix: reported
        CREATE INDEX items_lower_d_e ON items (lower(d), e);
        CREATE INDEX items_e_hash ON items USING hash (e);       -- other method: kept
        CREATE INDEX items_e_b ON items (e, b);
        """
    )
    finding = check(ro, pg.duplicate_indexes)
    assert_valid(finding, "duplicate_indexes")
    assert finding.severity == "warning"
    assert sorted(finding.items) == ["items_a", "items_b_2", "items_c", "items_lower_d"]
    rows = {r["index"]: r for r in finding.rows}
    assert rows["items_a"]["covering_index"] == "items_a_b" and rows["items_a"]["covering_columns"] == "a, b"
    assert rows["items_b_2"]["covering_index"] == "items_b_1"
    assert rows["items_c"]["covering_index"] == "items_c_key"
    assert rows["items_lower_d"]["covering_index"] == "items_lower_d_e"
    assert all(r["size_bytes"] > 0 for r in finding.rows)


def test_duplicate_indexes_is_ok_on_distinct_indexes(database, ro):
    database.execute(
        """
        CREATE TABLE items (a int, b int, c int, d text);
        CREATE INDEX items_a ON items (a);
        CREATE INDEX items_b_a ON items (b, a);
        CREATE INDEX items_a_partial ON items (a) WHERE b > 0;
        CREATE UNIQUE INDEX items_c_key ON items (c);
        CREATE INDEX items_c_d ON items (c, d);
        CREATE INDEX items_a_include ON items (b) INCLUDE (d);
        """
    )
    assert check(ro, pg.duplicate_indexes).severity == "ok"


def _customers(database, index: bool) -> None:
    database.execute(
        "CREATE TABLE customers (id int PRIMARY KEY, email text);"
        + ("CREATE INDEX customers_email_idx ON customers (email);" if index else "")
        + "INSERT INTO customers SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 20000) g"
    )
    workload(database, *[
        ("SELECT id FROM customers WHERE email = :email", {"email": f"user{i}@example.com"}) for i in range(60)
    ])


def test_missing_index_candidates_reports_a_large_seq_scanned_table_with_its_statements(database, ro):
    _customers(database, index=False)
    finding = check(ro, pg.missing_index_candidates)
    assert_valid(finding, "missing_index_candidates")
    assert finding.severity == "warning" and finding.items == ["customers"]
    [row] = finding.rows
    assert row["seq_scan"] >= 60 and row["seq_tup_read"] >= 60 * 20000 and row["rows"] == 20000
    assert row["seq_scan_share"] > 0.9
    assert any("WHERE email = $1" in s["query"] and s["calls"] == 60 for s in row["statements"])


def test_missing_index_candidates_is_ok_when_lookups_use_an_index(database, ro):
    _customers(database, index=True)
    assert check(ro, pg.missing_index_candidates).severity == "ok"


def test_invalid_indexes_reports_a_failed_concurrent_unique_build(database, ro):
    database.execute("CREATE TABLE payments (id int, ref text); INSERT INTO payments VALUES (1, 'a'), (2, 'a')")
    with pytest.raises(sa.exc.IntegrityError):
        database.execute("CREATE UNIQUE INDEX CONCURRENTLY payments_ref_key ON payments (ref)")
    finding = check(ro, pg.invalid_indexes)
    assert_valid(finding, "invalid_indexes")
    assert finding.severity == "warning" and finding.items == ["payments_ref_key"]
    assert finding.rows[0]["table"] == "payments" and "UNIQUE" in finding.rows[0]["definition"]
    assert "DROP INDEX CONCURRENTLY" in finding.remediation
    assert "payments_ref_key" not in check(ro, pg.unused_indexes).items
    assert "payments_ref_key" not in check(ro, pg.duplicate_indexes).items


def test_invalid_indexes_is_ok_after_successful_builds(database, ro):
    database.execute("CREATE TABLE payments (id int, ref text); INSERT INTO payments VALUES (1, 'a'), (2, 'b')")
    database.execute("CREATE UNIQUE INDEX CONCURRENTLY payments_ref_key ON payments (ref)")
    assert check(ro, pg.invalid_indexes).severity == "ok"


# ------------------------------------------------------------------------------------------
# maintenance


def test_sequence_overflow_risk_measures_against_the_type_of_the_fed_column(database, ro):
    database.execute(
        """
        CREATE TABLE legacy (id serial PRIMARY KEY);
        SELECT setval('legacy_id_seq', 2040109465);                -- 95% of integer: critical
        CREATE SEQUENCE order_numbers AS bigint;                   -- bigint sequence ...
        CREATE TABLE orders (number integer DEFAULT nextval('order_numbers'));  -- ... integer column
        SELECT setval('order_numbers', 1717986918);                -- 80% of integer, ~0% of bigint
        CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY);
        SELECT setval('tickets_id_seq', 1932735283);               -- 90%: critical
        CREATE TABLE events (id bigserial);
        SELECT setval('events_id_seq', 2040109465);                -- fine for bigint
        """
    )
    finding = check(ro, pg.sequence_overflow_risk)
    assert_valid(finding, "sequence_overflow_risk")
    assert finding.severity == "critical"
    assert finding.items == ["legacy_id_seq", "tickets_id_seq", "order_numbers"]  # fullest first
    rows = {r["sequence"]: r for r in finding.rows}
    orders = rows["order_numbers"]
    assert orders["table_column"] == "orders.number" and orders["column_type"] == "integer"
    assert orders["sequence_type"] == "bigint" and orders["sequence_max_value"] == 2**63 - 1
    assert orders["max_value"] == 2**31 - 1 and orders["pct_used"] == pytest.approx(80, abs=0.01)
    assert orders["severity"] == "warning" and orders["remaining"] == 2**31 - 1 - 1717986918
    assert rows["legacy_id_seq"]["severity"] == "critical" and rows["legacy_id_seq"]["table_column"] == "legacy.id"
    assert rows["tickets_id_seq"]["table_column"] == "tickets.id"


def test_sequence_overflow_risk_is_ok_for_fresh_sequences(database, ro):
    database.execute("CREATE TABLE fresh (id serial PRIMARY KEY, n int); INSERT INTO fresh (n) VALUES (1), (2)")
    database.execute("CREATE SEQUENCE unused_seq")
    finding = check(ro, pg.sequence_overflow_risk)
    assert finding.severity == "ok" and "2 checked" in finding.title


def test_transaction_id_wraparound_risk_is_ok_with_sane_ages_and_flags_past_a_tiny_threshold(database, ro):
    database.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    healthy = check(ro, pg.transaction_id_wraparound_risk)
    assert_valid(healthy, "transaction_id_wraparound_risk")
    assert healthy.severity == "ok" and healthy.count == 0
    databases = {r["name"]: r for r in healthy.rows if r["kind"] == "database"}
    assert database.name in databases and "postgres" in databases
    for row in healthy.rows:
        assert 0 <= row["xid_age"] < 2**31 and 0 <= row["xid_pct"] < 50
    assert any(r["kind"] == "table" for r in healthy.rows)
    assert databases[database.name]["xid_age"] > 0

    flagged = check(ro, pg.transaction_id_wraparound_risk, warn_pct=1e-9, critical_pct=100)
    assert flagged.severity == "warning" and database.name in flagged.items


def test_low_cache_hit_ratio_judges_real_block_counts_above_an_activity_floor(database, ro):
    database.execute("CREATE TABLE hot (id int PRIMARY KEY, v text);"
                     "INSERT INTO hot SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g")
    workload(database, *[("SELECT count(*) FROM hot WHERE v <> :v", {"v": str(i)}) for i in range(10)],
             ("SET enable_seqscan = off", {}), ("SELECT v FROM hot WHERE id = 7", {}))
    healthy = check(ro, pg.low_cache_hit_ratio, min_ratio=0.5, min_reads=100)
    assert_valid(healthy, "low_cache_hit_ratio")
    assert healthy.severity == "ok"
    tables = next(r for r in healthy.rows if r["kind"] == "tables")
    assert tables["hits"] + tables["reads"] >= 1000 and 0.5 <= tables["ratio"] <= 1

    flagged = check(ro, pg.low_cache_hit_ratio, min_ratio=1.01, min_reads=100)
    assert flagged.severity == "warning" and "tables" in flagged.items

    idle = check(ro, pg.low_cache_hit_ratio, min_ratio=1.01, min_reads=10**12)
    assert idle.severity == "ok" and "Too little activity" in idle.note
    assert check(ro, pg.table_cache_hits)[0]["table"] == "hot"


# ------------------------------------------------------------------------------------------
# a monitoring role, the engine's safety


def test_every_check_runs_for_a_role_with_only_pg_monitor_and_pg_read_all_data(database, sessions):
    role, password = f"monitor_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    database.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    database.execute(f"GRANT pg_monitor, pg_read_all_data TO {role}")
    database.execute(
        "CREATE TABLE things (id serial PRIMARY KEY, name text); CREATE INDEX things_name ON things (name);"
        "INSERT INTO things (name) SELECT 'n' || g FROM generate_series(1, 100) g"
    )
    workload(database, ("SELECT * FROM things WHERE name = :n", {"n": "n1"}))
    sleeper = sessions().send("SELECT pg_sleep(30)")  # a superuser's query
    time.sleep(1.0)
    engine = make_engine(database.cluster.url(database.name, role, password), runbook="slow_queries", run_id="mon")
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_user")).scalar() == role
            findings = pg.run_checks(conn, {"long_running_queries": {"min_seconds": 0.3}})
            assert [f.check for f in findings] == list(pg.CHECKS)
            by_id = {f.check: f for f in findings}
            assert by_id["pg_stat_statements_missing"].severity == "ok"
            assert by_id["long_running_queries"].items == [sleeper.pid]
            assert "pg_sleep" in by_id["long_running_queries"].rows[0]["query"]  # other users' text visible
            assert by_id["sequence_overflow_risk"].note is None  # sequences readable
            top = pg.top_statements(conn, limit=500)
            assert any("FROM things WHERE name" in s["query"] for s in top)
            plans = pg.statement_plans(conn, [s for s in top if "FROM things WHERE name" in s["query"]])
            assert plans and (plans[0]["plan"] or "16+" in plans[0]["note"])
            states = {r["state"]: r["connections"] for r in pg.connections_by_state(conn)}
            assert states.get("active", 0) >= 1, states  # this session's own statement, at least
            metrics = pg.server_metrics(conn, long_running_seconds=0.3)
            assert metrics["long_running_queries"] == 1 and metrics["longest_query_s"] >= 0.3  # the superuser's
            assert metrics["connections_used"] == sum(states.values())
            assert metrics["statements_tracked"] >= 1 and metrics["statements_max"] >= metrics["statements_tracked"]
            assert metrics["statement_statistics_age_s"] >= 0 and metrics["cache_hit_ratio_tables"] is not None
    finally:
        engine.dispose()
        database.execute(f"DROP OWNED BY {role}")
        database.execute(f"DROP ROLE {role}")


def test_read_only_engine_refuses_writes_names_itself_and_honours_statement_timeout(database):
    database.execute("CREATE TABLE t (id int)")
    engine = make_engine(database.url, runbook="slow_queries", run_id="safety", statement_timeout_ms=200)
    try:
        with engine.connect() as conn:
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW application_name")).scalar() == "opsbook/slow_queries/safety"
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(5)"))
    finally:
        engine.dispose()
    assert database.execute("SELECT count(*) FROM t").scalar() == 0


# ------------------------------------------------------------------------------------------
# remediation


def test_cancel_backends_dry_run_changes_nothing_then_apply_cancels_once(database, ro, sessions, tmp_path):
    holder, middle, tail = _lock_chain(database, sessions)
    blocked = check(ro, pg.blocked_queries)
    listed = [r for r in blocked.rows if r["pid"] == tail.pid]  # plain rows: timestamps are ISO text
    audit = AuditLog(run_id="slow_queries-test", runbook="slow_queries", target="test", path=tmp_path / "audit.jsonl")

    plan = check(ro, pg.cancel_backends, listed, apply=False, audit=audit, reason="unblock checkout")
    assert [(a.action, a.target, a.outcome, a.applied) for a in plan] == [
        ("cancel_backend", f"pid {tail.pid}", "planned", False)]
    assert plan == pg.plan_cancel_backends(listed, reason="unblock checkout")
    time.sleep(0.2)
    assert tail.busy()
    wait_until_lock_wait(database, tail.pid)  # still waiting
    assert audit.entries() == []

    # Applied from the read-only session: pg_cancel_backend is allowed there (see remediation.py).
    done = check(ro, pg.cancel_backends, listed, apply=True, audit=audit, reason="unblock checkout")
    assert [(a.outcome, a.applied) for a in done] == [("cancelled", True)]
    with pytest.raises(psycopg2.errors.QueryCanceled):
        tail.result()
    assert holder.conn.poll() == psycopg2.extensions.POLL_OK and middle.busy()  # the others untouched
    [entry] = audit.entries()
    assert entry["action"] == "cancel_backend" and entry["applied"] is True
    assert entry["run_id"] == "slow_queries-test" and entry["reason"] == "unblock checkout"

    again = check(ro, pg.cancel_backends, listed, apply=True, audit=audit, reason="unblock checkout")
    assert [(a.outcome, a.applied) for a in again] == [("already gone", False)]
    assert "finished" in again[0].detail["now"] or "exited" in again[0].detail["now"]
    assert middle.busy()


def test_cancel_backends_refuses_to_apply_without_a_reason():
    with pytest.raises(UnsafeAction, match="needs a reason"):
        pg.cancel_backends(None, [{"pid": 1}], apply=True, audit=None, reason=" ")


def test_reset_statement_stats_is_dry_by_default_refuses_read_only_and_resets_once_per_run(database, ro, tmp_path):
    _events_table(database, rows=100)
    workload(database, *[("SELECT payload FROM events WHERE id = :id", {"id": i}) for i in range(5)])

    def lookups():
        return [s for s in check(ro, pg.top_statements, limit=100) if "FROM events WHERE id" in s["query"]]

    audit = AuditLog(run_id="slow_queries-reset", runbook="slow_queries", target="test", path=tmp_path / "audit.jsonl")
    plan = check(ro, pg.reset_statement_stats, apply=False, audit=audit, reason="measure again")
    assert plan[0].outcome == "planned" and plan[0].detail["statements"] >= 1
    assert lookups() and audit.entries() == []

    with pytest.raises(UnsafeAction, match="read-only"):
        check(ro, pg.reset_statement_stats, apply=True, audit=audit, reason="measure again")
    assert lookups()

    writable = make_engine(database.url, runbook="slow_queries", run_id="reset", read_only=False)
    try:
        done = check(writable, pg.reset_statement_stats, apply=True, audit=audit, reason="measure again")
        assert (done[0].outcome, done[0].applied) == ("reset", True)
        assert lookups() == []
        workload(database, ("SELECT payload FROM events WHERE id = :id", {"id": 1}))
        again = check(writable, pg.reset_statement_stats, apply=True, audit=audit, reason="measure again")
        assert (again[0].outcome, again[0].applied) == ("already done in this run", False)
        assert lookups()  # the second application changed nothing
    finally:
        writable.dispose()
    assert [e["outcome"] for e in audit.entries()] == ["reset", "already done in this run"]


# ------------------------------------------------------------------------------------------
# plots and the check registry (no database needed)


def test_plots_render_rows_and_empty_data_without_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    statements = [
        {"queryid": 1, "query": "SELECT * FROM events WHERE md5(payload) = $1", "total_ms": 5400.0, "share_pct": 80.0},
        {"queryid": 2, "query": "UPDATE accounts SET balance = balance + $1 WHERE id = $2", "total_ms": 1200.0},
    ]
    states = [{"state": "idle", "connections": 12}, {"state": "active", "connections": 3},
              {"state": "idle in transaction", "connections": 1}]
    figures = [
        plots.plot_top_statements(statements),
        plots.plot_top_statements([]),
        plots.plot_connections_by_state(states, 60, usable=57),
        plots.plot_connections_by_state([], 60),
    ]
    for figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
    assert plt.get_fignums() == before


def test_run_checks_rejects_an_unknown_check_id():
    with pytest.raises(ParameterError, match="unknown check"):
        pg.run_checks(None, {"slow_query": {}})


def test_slow_queries_notebook_plan_cancels_queries_skips_idle_root_blockers_and_applies_once(
    database, ro, sessions, tmp_path
):
    database.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int); INSERT INTO accounts VALUES (1, 0)")
    sleeper = sessions().send("SELECT pg_sleep(30)")
    holder = sessions().send("BEGIN; UPDATE accounts SET balance = 1 WHERE id = 1")
    holder.result()
    waiter = sessions().send("UPDATE accounts SET balance = 2 WHERE id = 1")
    wait_until_lock_wait(database, waiter.pid)
    time.sleep(1.0)
    long_running = check(ro, pg.long_running_queries, min_seconds=0.3)
    blocked = check(ro, pg.blocked_queries)
    assert set(long_running.items) == {sleeper.pid, waiter.pid}
    assert [r["pid"] for r in blocked.rows] == [waiter.pid] and blocked.rows[0]["root_blocker"] == holder.pid

    with pytest.raises(ParameterError, match="unknown remediation"):
        pg.plan_for_slow_queries(["kill_everything"])
    plan = pg.plan_for_slow_queries(
        ["cancel_long_running", "cancel_root_blockers", "reset_statement_stats"],
        long_running=long_running, blocked=blocked,
    )
    outcomes = {a.target: a.outcome for a in plan}
    assert outcomes[f"pid {sleeper.pid}"] == outcomes[f"pid {waiter.pid}"] == "planned"
    assert outcomes[f"pid {holder.pid}"].startswith("skipped: root blocker is idle in transaction")
    assert plan[-1].action == "reset_statement_stats" and plan[-1].outcome == "planned"
    assert sleeper.busy() and waiter.busy()  # planning changed nothing

    audit = AuditLog(run_id="slow_queries-nb", runbook="slow_queries", target="test", path=tmp_path / "audit.jsonl")
    writable = make_engine(database.url, runbook="slow_queries", run_id="nb", read_only=False)
    names = ["cancel_long_running", "cancel_root_blockers", "reset_statement_stats"]
    try:
        with ro.connect() as conn:  # the notebook's read-only session; the reset opens a writable one
            dry = pg.remediate_slow_queries(conn, names, long_running=long_running, blocked=blocked, apply=False,
                                            audit=audit, connect_for_changes=writable.connect, reason="run nb")
            assert [a.outcome for a in dry] == [a.outcome for a in plan] and audit.entries() == []
            done = pg.remediate_slow_queries(conn, names, long_running=long_running, blocked=blocked, apply=True,
                                             audit=audit, connect_for_changes=writable.connect, reason="run nb")
        assert {a.target: a.outcome for a in done} == {
            f"pid {sleeper.pid}": "cancelled", f"pid {waiter.pid}": "cancelled",
            f"pid {holder.pid}": outcomes[f"pid {holder.pid}"],
            f"pg_stat_statements of database {database.name}": "reset",
        }
        assert {a.reason for a in done} == {"run nb"}
        for session in (sleeper, waiter):
            with pytest.raises(psycopg2.errors.QueryCanceled):
                session.result()
        assert holder.conn.poll() == psycopg2.extensions.POLL_OK  # still holds its transaction
        with ro.connect() as conn:
            again = pg.remediate_slow_queries(conn, names, long_running=long_running, blocked=blocked, apply=True,
                                              audit=audit, connect_for_changes=writable.connect, reason="run nb")
        assert [a.applied for a in again] == [False] * len(again)
        assert sorted(a.outcome for a in again) == sorted(
            ["already gone", "already gone", outcomes[f"pid {holder.pid}"], "already done in this run"])
        with ro.connect() as conn, pytest.raises(UnsafeAction):  # no writable session offered
            pg.apply_slow_queries_plan(conn, pg.plan_for_slow_queries(["reset_statement_stats"]), audit=None)
    finally:
        writable.dispose()
    assert len([e for e in audit.entries() if e["applied"]]) == 3


def test_a_long_query_says_it_is_still_running_while_it_waits(database, monkeypatch, capfd):
    monkeypatch.setattr(opsbook_db, "PROGRESS_EVERY_S", 0.4)
    engine = make_engine(database.url, runbook="slow_queries", run_id="progress", statement_timeout_ms=10_000)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_sleep(1.0)"))
            lines = [line for line in capfd.readouterr().err.splitlines() if "waiting for the database" in line]
            assert len(lines) >= 2 and lines[0].startswith("… waiting for the database: 0 s so far (gives up at 25 s)")
            conn.execute(sa.text("SELECT 1"))
            assert "waiting for the database" not in capfd.readouterr().err, "a quick query says nothing"
            monkeypatch.setattr(opsbook_db, "REPORT_PROGRESS", False)  # (the CLI's preflight, in a scheduler's log)
            conn.execute(sa.text("SELECT pg_sleep(1.0)"))
            assert "waiting for the database" not in capfd.readouterr().err
    finally:
        engine.dispose()
