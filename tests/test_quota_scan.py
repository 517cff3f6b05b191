"""quota_audit's one pass over the usage events (``ops_lib.quota.scan``), on real PostgreSQL 18.

A fresh database with the demo app's schema (``app_db``) and events placed by hand. What the
pass reports is checked against plain SQL over the same rows (GROUP BY the key; the
recomputation's rule: one key counts once per organisation and period, with its largest
quantity). The search for repeated keys is skipped only when a unique index really guarantees
there are none: a valid one is trusted; an INVALID one (a failed CREATE UNIQUE INDEX
CONCURRENTLY), a partial one, one on a nullable key, or one on (organisation, key) for the
duplicates check are not.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ops_lib import quota
from ops_lib.db import make_engine, sqlalchemy_url
from ops_lib.quota import checks
from ops_lib.schema_map import SchemaMap

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
NOW = datetime(2026, 11, 26, 15, 0, tzinfo=timezone.utc)
MONTH = datetime(2026, 11, 1, tzinfo=timezone.utc)      # organisations without a subscription: the calendar month
SINCE = NOW - timedelta(days=90)


def add_event(db, org: int, key: str | None, quantity: int, at: datetime) -> None:
    db.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
               "VALUES (:org, 'api_call', :q, :key, :at)", org=org, q=quantity, key=key, at=at)


@pytest.fixture
def events(app_db):
    """Two organisations; key 'retried' twice in org 1's period (quantities 3 and 5), 'shared'
    once in each organisation, 'old-retry' twice before the period but inside the lookback."""
    app_db.execute("INSERT INTO organizations (id, name, plan_code) VALUES (2, 'B', 'pro')")
    day = MONTH + timedelta(days=3)
    for n in range(20):
        add_event(app_db, 1 + n % 2, f"k-{n}", 1 + n % 3, day + timedelta(hours=n))
    add_event(app_db, 1, "retried", 3, day + timedelta(days=1))
    add_event(app_db, 1, "retried", 5, day + timedelta(days=1, seconds=2))
    add_event(app_db, 1, "shared", 7, day + timedelta(days=2))
    add_event(app_db, 2, "shared", 7, day + timedelta(days=2))
    add_event(app_db, 2, "old-retry", 4, MONTH - timedelta(days=10))
    add_event(app_db, 2, "old-retry", 4, MONTH - timedelta(days=10, seconds=-1))
    add_event(app_db, 1, "edge-end", 1000, MONTH.replace(month=12))           # the period's end: not in it
    return app_db


def audit(db, *, transaction: bool = False, statements: list | None = None):
    """``scan_usage`` as the runbook calls it (read-only autocommit engine), or inside a caller's
    transaction (``transaction=True``); every statement sent is appended to ``statements``."""
    engine = make_engine(db.url) if not transaction else sa.create_engine(sqlalchemy_url(db.url))
    try:
        with engine.connect() as conn:
            plans = quota.load_plans(conn, MAPPING)
            accounts = quota.join_accounts(quota.read_app(conn, MAPPING), {"customers": [], "subscriptions": []},
                                           plans, now=NOW)
            if statements is not None:
                sa.event.listen(conn, "before_cursor_execute", lambda *args: statements.append(args[2]))
            # (without autocommit, the reads above opened the caller's transaction: the scan runs in it)
            open_transaction = conn.connection.dbapi_connection.get_transaction_status() != 0
            assert open_transaction == transaction
            return quota.scan_usage(conn, MAPPING, accounts, duplicates_since=SINCE, now=NOW)
    finally:
        engine.dispose()


def oracle(db) -> tuple[dict, list]:
    """The same answers in plain SQL: usage per organisation in November (a key once, its largest
    quantity), and the keys recorded more than once since SINCE."""
    with db.admin.connect() as conn:
        used = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(sa.text(
            "SELECT organization_id, sum(q), count(*), sum(copies - 1) FROM ("
            "  SELECT organization_id, idempotency_key, max(quantity) AS q, count(*) AS copies FROM usage_events"
            "  WHERE occurred_at >= :a AND occurred_at < :b GROUP BY 1, 2) k GROUP BY 1"),
            {"a": MONTH, "b": MONTH.replace(month=12)})}
        repeated = [tuple(r) for r in conn.execute(sa.text(
            "SELECT idempotency_key, count(*), sum(quantity) FROM usage_events WHERE occurred_at >= :since "
            "GROUP BY 1 HAVING count(*) > 1 ORDER BY min(occurred_at), 1"), {"since": SINCE})]
    return used, repeated


def reads_of_events(statements: list[str]) -> list[str]:
    """The statements that read usage events (an EXPLAIN only plans one)."""
    return [s for s in statements if "usage_events" in s and "pg_index" not in s and not s.startswith("EXPLAIN")]


# --------------------------------------------------------------------------- the answers


def test_the_pass_answers_what_plain_sql_answers(events):
    statements: list[str] = []
    found = audit(events, statements=statements)
    used, repeated = oracle(events)
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in found.usage} == used
    assert used[1][2] == 1 and used[2][2] == 0, "'retried' repeats in org 1; 'shared' is one key per organisation"
    assert [(r["idempotency_key"], r["copies"], r["total_quantity"]) for r in found.duplicates.rows] == repeated
    assert [k for k, _, _ in repeated] == ["old-retry", "retried", "shared"]
    retried = next(r for r in found.duplicates.rows if r["idempotency_key"] == "retried")
    assert retried["organisation_ids"] == "1" and len(retried["event_ids"].split(", ")) == 2
    assert found.unique_index is None
    # the events are read by a fixed number of statements, whatever the number of organisations:
    # one scan (packed by the database, key hashes included), the rows of the repeated keys
    assert len(reads_of_events(statements)) == 2
    finding = checks.duplicate_usage_events(found.duplicates)
    assert finding.severity == "warning" and finding.items == ["old-retry", "retried", "shared"]


def test_inside_a_callers_transaction_the_answers_are_the_same(events):
    own, theirs = audit(events), audit(events, transaction=True)
    assert own.usage == theirs.usage and own.duplicates.rows == theirs.duplicates.rows and own.weekly == theirs.weekly


def test_events_without_a_key_count_as_one_key_as_group_by_counts_them(events):
    events.execute("ALTER TABLE usage_events ALTER COLUMN idempotency_key DROP NOT NULL")
    add_event(events, 2, None, 2, MONTH + timedelta(days=5))
    add_event(events, 2, None, 6, MONTH + timedelta(days=6))
    found = audit(events)
    used, repeated = oracle(events)
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in found.usage} == used
    assert None in [r["idempotency_key"] for r in found.duplicates.rows]
    assert len(found.duplicates.rows) == len(repeated) == 4


def test_nothing_repeated_means_no_second_look(app_db):
    for n in range(5):
        add_event(app_db, 1, f"once-{n}", 1, MONTH + timedelta(days=n))
    statements: list[str] = []
    found = audit(app_db, statements=statements)
    assert found.duplicates.rows == [] and found.usage[0]["used"] == 5
    assert len(reads_of_events(statements)) == 1  # the one scan: no rows to read back


# --------------------------------------------------------------------------- the unique index


def test_a_valid_unique_index_on_the_key_spares_the_search(events):
    events.execute("DELETE FROM usage_events WHERE idempotency_key IN ('retried', 'shared', 'old-retry') "
                   "AND id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)")
    events.execute("CREATE UNIQUE INDEX usage_events_key_uniq ON usage_events (idempotency_key)")
    with pytest.raises(sa.exc.IntegrityError):          # what the index guarantees
        add_event(events, 1, "k-1", 1, NOW)
    statements: list[str] = []
    found = audit(events, statements=statements)
    assert found.unique_index == '"usage_events_key_uniq"' or found.unique_index == "usage_events_key_uniq"
    assert found.duplicates.rows == [] and found.duplicates.unique_index == found.unique_index
    assert len(reads_of_events(statements)) == 1, "one scan, no key hashes in it, no rows read back"
    assert not any("hashtextextended" in s for s in statements)
    used, repeated = oracle(events)
    assert repeated == []
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in found.usage} == used
    finding = checks.duplicate_usage_events(found.duplicates)
    assert finding.severity == "ok" and "usage_events_key_uniq" in finding.note


def test_an_invalid_unique_index_is_not_trusted(events):
    # What the demo has: CREATE UNIQUE INDEX CONCURRENTLY failed on the duplicates, leaving it INVALID.
    with pytest.raises(sa.exc.IntegrityError):
        events.execute("CREATE UNIQUE INDEX CONCURRENTLY usage_events_key_uniq ON usage_events (idempotency_key)")
    with events.admin.connect() as conn:
        assert conn.execute(sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'usage_events_key_uniq'::regclass")).scalar() is False
        assert [i["name"] for i in quota.scan.unique_indexes(conn, MAPPING)] == ["usage_events_pkey"]
    found = audit(events)
    assert found.unique_index is None
    assert [r["idempotency_key"] for r in found.duplicates.rows] == [k for k, _, _ in oracle(events)[1]]


SAME_ORG_REPEATS = ("DELETE FROM usage_events WHERE idempotency_key IN ('retried', 'old-retry') "
                    "AND id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)")
ALL_REPEATS = "DELETE FROM usage_events WHERE id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)"


@pytest.mark.parametrize("cleanup, index, why", [
    (None, "CREATE UNIQUE INDEX partial_uniq ON usage_events (idempotency_key) WHERE occurred_at >= '2026-11-15'",
     "partial: the rows outside its predicate may repeat (and do)"),
    (SAME_ORG_REPEATS, "CREATE UNIQUE INDEX per_org_uniq ON usage_events (organization_id, idempotency_key)",
     "on (organisation, key): one key may be recorded once in each of two organisations (and is)"),
    (ALL_REPEATS, "CREATE UNIQUE INDEX lower_uniq ON usage_events (lower(idempotency_key))",
     "an expression, not the column itself: looked for anyway"),
])
def test_indexes_that_do_not_guarantee_unique_keys_are_not_trusted(events, cleanup, index, why):
    if cleanup:
        events.execute(cleanup)
    events.execute(index)
    statements: list[str] = []
    found = audit(events, statements=statements)
    assert found.unique_index is None, why
    assert any("hashtextextended" in s for s in statements), why
    assert [r["idempotency_key"] for r in found.duplicates.rows] == [k for k, _, _ in oracle(events)[1]], why
    assert bool(found.duplicates.rows) == (cleanup != ALL_REPEATS), why


def test_a_unique_index_on_a_nullable_key_is_not_trusted(events):
    events.execute("DELETE FROM usage_events WHERE id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)")
    events.execute("ALTER TABLE usage_events ALTER COLUMN idempotency_key DROP NOT NULL")
    events.execute("CREATE UNIQUE INDEX usage_events_key_uniq ON usage_events (idempotency_key)")
    add_event(events, 1, None, 1, MONTH + timedelta(days=1))
    add_event(events, 1, None, 1, MONTH + timedelta(days=2))   # NULLS DISTINCT: the index lets both in
    found = audit(events)
    assert found.unique_index is None
    assert [r["idempotency_key"] for r in found.duplicates.rows] == [None]
    events.execute("DROP INDEX usage_events_key_uniq")
    events.execute("DELETE FROM usage_events WHERE idempotency_key IS NULL")
    events.execute("CREATE UNIQUE INDEX usage_events_key_uniq ON usage_events (idempotency_key) NULLS NOT DISTINCT")
    assert audit(events).unique_index is not None


def test_the_recomputation_alone_trusts_a_unique_index_per_organisation(events):
    events.execute("DELETE FROM usage_events WHERE idempotency_key = 'retried' "
                   "AND id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)")
    events.execute("DELETE FROM usage_events WHERE idempotency_key = 'old-retry' "
                   "AND id NOT IN (SELECT min(id) FROM usage_events GROUP BY idempotency_key)")
    events.execute("CREATE UNIQUE INDEX per_org_uniq ON usage_events (organization_id, idempotency_key)")
    statements: list[str] = []
    engine = make_engine(events.url)
    try:
        with engine.connect() as conn:
            accounts = quota.join_accounts(quota.read_app(conn, MAPPING), {"customers": [], "subscriptions": []},
                                           quota.load_plans(conn, MAPPING), now=NOW)
            sa.event.listen(conn, "before_cursor_execute", lambda *args: statements.append(args[2]))
            usage = quota.recompute_usage(conn, MAPPING, accounts)
    finally:
        engine.dispose()
    assert len(reads_of_events(statements)) == 1, "a key repeats at most across organisations: nothing to take off"
    used, _ = oracle(events)
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in usage} == used


def test_usage_events_behind_a_view_are_scanned_the_same(events):
    """A mapping may name a view (no tuple ids): the repeated keys' rows are found by key hash."""
    table_answer = audit(events)
    events.execute("ALTER TABLE usage_events RENAME TO usage_events_stored")
    events.execute("CREATE VIEW usage_events AS SELECT * FROM usage_events_stored")
    through_view = audit(events)
    assert through_view.usage == table_answer.usage and through_view.weekly == table_answer.weekly
    assert through_view.duplicates.rows == table_answer.duplicates.rows
    assert [r["idempotency_key"] for r in through_view.duplicates.rows] == ["old-retry", "retried", "shared"]


# --------------------------------------------------------------------------- how the events travel


def test_events_read_in_many_chunks_answer_as_in_one(events, monkeypatch):
    whole = audit(events)
    monkeypatch.setattr(quota.scan, "STREAM_CHUNK_EVENTS", 2)  # 31 events: 16 chunks by organisation hash
    statements: list[str] = []
    chunked = audit(events, statements=statements)
    assert sum(s.startswith("FETCH") for s in statements) > 2
    assert chunked.usage == whole.usage and chunked.weekly == whole.weekly
    assert chunked.duplicates.rows == whole.duplicates.rows
    used, _ = oracle(events)
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in chunked.usage} == used


def test_numeric_quantities_are_summed_by_the_database_with_the_same_answers(events):
    packed = audit(events)
    events.execute("ALTER TABLE usage_events ALTER COLUMN quantity TYPE numeric")
    statements: list[str] = []
    summed = audit(events, statements=statements)
    assert not any("opsbook_event_stream" in s for s in statements), "numeric quantities do not travel packed as integers"
    assert summed.usage == packed.usage and summed.weekly == packed.weekly
    assert summed.duplicates.rows == packed.duplicates.rows


def test_events_of_no_organisation_count_nowhere_yet_their_repeated_key_is_found(events):
    events.execute("ALTER TABLE usage_events ALTER COLUMN organization_id DROP NOT NULL")
    events.execute("INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at) "
                   "SELECT NULL, 'api_call', 9, 'orphan', :at FROM generate_series(1, 2)", at=MONTH + timedelta(days=4))
    found = audit(events)
    used, repeated = oracle(events)
    assert used.pop(None) == (9, 1, 1)
    assert {r["organisation_id"]: (r["used"], r["events"], r["repeated"]) for r in found.usage} == used
    assert None not in {row["organisation_id"] for row in found.weekly}
    assert [(r["idempotency_key"], r["copies"], r["total_quantity"]) for r in found.duplicates.rows] == repeated
    assert "orphan" in [k for k, _, _ in repeated]


def test_sums_stay_exact_past_what_a_float_holds():
    index = np.array([0, 0, 1, 1])
    assert quota.scan._sum_by(index, np.array([2**53, 1, 5, -2]), 2).tolist() == [2**53 + 1, 3]
    assert quota.scan._sum_by(index, np.array([2, 1, 5, -2]), 2).tolist() == [3, 3]


def test_organisation_ids_match_as_text_unless_every_one_is_an_integer():
    index_of = quota.scan._index_of
    assert index_of([3, 1, 7], [1, 2, 3]).tolist() == [2, 0, -1]
    assert index_of(["3", 1, "x"], [1, 2, 3, "x"]).tolist() == [2, 0, 3]
    assert index_of([2**70, 1], [1, 2**70]).tolist() == [1, 0]
    assert index_of([5, 5], [5, 5]).tolist() == [0, 0], "the first of equal ids"
    assert index_of([1], []).tolist() == [-1] and index_of([], [1]).tolist() == []


def add_counter(db, org: int, used: int, start: datetime = MONTH) -> None:
    db.execute("INSERT INTO usage_counters (organization_id, period_start, period_end, used) "
               "VALUES (:org, :start, :end, :used)", org=org, start=start, end=start.replace(month=12), used=used)


def test_counters_under_a_primary_key_are_read_without_grouping_and_as_the_app_stored_them(events):
    add_counter(events, 1, 40)
    add_counter(events, 2, 7)
    add_counter(events, 2, 9, MONTH - timedelta(days=31))  # another period: not this one's counter
    statements: list = []
    usage = {r["organisation_id"]: r for r in audit(events, statements=statements).usage}
    assert (usage[1]["stored"], usage[1]["counter_rows"]) == (40, 1)
    assert (usage[2]["stored"], usage[2]["counter_rows"]) == (7, 1)
    counters_sql = [s for s in statements if "usage_counters" in s and "string_agg" in s]
    assert counters_sql and "GROUP BY" not in counters_sql[0], "one counter per key: nothing to group"


def test_counters_without_a_unique_key_are_grouped_the_largest_counting(events):
    events.execute("ALTER TABLE usage_counters DROP CONSTRAINT usage_counters_pkey")
    add_counter(events, 1, 40)
    add_counter(events, 1, 55)  # the app wrote the period's counter twice
    add_counter(events, 2, 7)
    statements: list = []
    usage = {r["organisation_id"]: r for r in audit(events, statements=statements).usage}
    assert (usage[1]["stored"], usage[1]["counter_rows"]) == (55, 2)
    assert (usage[2]["stored"], usage[2]["counter_rows"]) == (7, 1)
    assert any("usage_counters" in s and "GROUP BY" in s for s in statements)
