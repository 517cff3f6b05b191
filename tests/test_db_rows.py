"""db.select_tuples: a large answer read a chunk at a time from a server-side cursor, as plain tuples,
leaving the connection as it found it however the reading ends."""
from __future__ import annotations

import sys

import pytest
import sqlalchemy as sa
from psycopg2 import extensions

from ops_lib import db

ROWS_SQL = "SELECT g AS n, 'row ' || g AS label FROM generate_series(1, :count) g ORDER BY g"


@pytest.fixture
def checks_conn(database18):
    """The runbooks' kind of connection: read-only, autocommit."""
    engine = db.make_engine(database18.url, runbook="test", run_id="select-tuples")
    with db.connect(engine) as conn:
        yield conn
    engine.dispose()


def status(conn) -> int:
    return conn.connection.dbapi_connection.get_transaction_status()


def test_rows_arrive_in_order_as_plain_tuples_across_chunks(checks_conn, monkeypatch):
    monkeypatch.setattr(db, "FETCH_ROWS", 7)
    rows = list(db.select_tuples(checks_conn, ROWS_SQL, count=30))
    assert rows == [(n, f"row {n}") for n in range(1, 31)]
    assert {type(row) for row in rows} == {tuple}
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_IDLE


def test_an_empty_answer_is_no_rows(checks_conn):
    assert list(db.select_tuples(checks_conn, ROWS_SQL, count=0)) == []
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_IDLE


def test_a_reader_that_stops_early_leaves_no_transaction_open(checks_conn, monkeypatch):
    monkeypatch.setattr(db, "FETCH_ROWS", 5)
    rows = db.select_tuples(checks_conn, ROWS_SQL, count=100)
    assert [next(rows) for _ in range(3)] == [(1, "row 1"), (2, "row 2"), (3, "row 3")]
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_INTRANS
    rows.close()
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_IDLE
    assert checks_conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_a_failing_query_raises_and_the_connection_stays_usable(checks_conn):
    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        list(db.select_tuples(checks_conn, "SELECT * FROM no_such_table"))
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_IDLE
    assert checks_conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_the_sessions_read_only_default_holds_in_the_cursors_transaction(checks_conn):
    assert list(db.select_tuples(checks_conn, "SELECT current_setting('transaction_read_only')")) == [("on",)]


def test_in_a_callers_transaction_the_cursor_is_closed_and_the_transaction_kept(database18, monkeypatch):
    monkeypatch.setattr(db, "FETCH_ROWS", 4)
    database18.execute("CREATE TABLE t (n int)")
    engine = sa.create_engine(db.sqlalchemy_url(database18.url))
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(sa.text("INSERT INTO t SELECT generate_series(1, 10)"))
        # (the caller's uncommitted rows are seen: the same transaction)
        assert [n for (n,) in db.select_tuples(conn, "SELECT n FROM t ORDER BY n")] == list(range(1, 11))
        assert status(conn) == extensions.TRANSACTION_STATUS_INTRANS
        open_cursors = conn.execute(sa.text("SELECT count(*) FROM pg_cursors WHERE name LIKE 'opsbook_rows_%'"))
        assert open_cursors.scalar() == 0
        transaction.rollback()
    engine.dispose()
    assert database18.execute("SELECT count(*) FROM t").scalar() == 0


def test_a_work_mem_given_holds_for_the_cursors_query_and_not_after(checks_conn):
    before = checks_conn.execute(sa.text("SHOW work_mem")).scalar()
    assert before != "300MB"
    assert list(db.select_tuples(checks_conn, "SELECT current_setting('work_mem')", work_mem="300MB")) == [("300MB",)]
    assert checks_conn.execute(sa.text("SHOW work_mem")).scalar() == before
    assert status(checks_conn) == extensions.TRANSACTION_STATUS_IDLE


def test_a_parameter_is_not_held_while_the_rows_are_read(checks_conn):
    """A million Stripe ids go as one array literal (~30 MB): once the cursor is declared the server
    has it, and the reader's memory is not kept for it while the rows stream."""
    ids = "{" + ",".join(f'"ch_{n}"' for n in range(1000)) + "}"
    held_by_us = sys.getrefcount(ids)
    rows = db.select_tuples(checks_conn, "SELECT n FROM generate_series(1, :count) n "
                                         "WHERE 'ch_1' IN (SELECT unnest(CAST(:ids AS text[])))", count=3, ids=ids)
    assert next(rows) == (1,)
    assert sys.getrefcount(ids) == held_by_us
    assert list(rows) == [(2,), (3,)]


def test_rows_are_fetched_as_many_at_a_time_as_asked(checks_conn):
    fetches = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("FETCH"):
            fetches.append(statement.split()[2])

    sa.event.listen(checks_conn, "before_cursor_execute", seen)
    try:
        rows = list(db.select_tuples(checks_conn, ROWS_SQL, count=10, fetch_rows=4))
    finally:
        sa.event.remove(checks_conn, "before_cursor_execute", seen)
    assert rows == [(n, f"row {n}") for n in range(1, 11)]
    assert fetches == ["4", "4", "4", "4"]  # (4 + 4 + 2, then none left)
