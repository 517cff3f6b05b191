"""quota_audit's database time at scale, on a PostgreSQL cluster filled here (no Stripe side).

    .venv/bin/python benchmarks/bench_quota_scan.py --organisations 100000 --events-per-org 5
    .venv/bin/python benchmarks/bench_quota_scan.py --organisations 1000000 --events-per-org 5 --keep /tmp/pg1m

Builds a scratch cluster (the embedded PostgreSQL 18) with the demo app's schema: N organisations
(40 % on a paid plan with a subscription whose period starts at a random instant of the last 30
days, the rest free: the calendar month), N × events-per-org usage events over 60 days with md5
idempotency keys, 100 of them recorded twice, a stored counter per subscriber, and the demo's
INVALID unique index on the key (a failed CREATE UNIQUE INDEX CONCURRENTLY). Then it times what
the runbook's notebook asks of the database for the usage events — ``scan_usage`` (usage per
period, the weekly trend, duplicates over 35 days) — as the growth of pg_stat_statements'
total_exec_time, against the floor of benchmarks/bench_scale.py (``SELECT count(*), sum(quantity)
FROM usage_events``, median of 3), twice: as built, and after the duplicates are deleted and a
valid unique index is built on the key (the check's own remediation).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ops_lib import quota  # noqa: E402
from ops_lib.db import make_engine, sqlalchemy_url  # noqa: E402
from ops_lib.demo.postgres import PostgresCluster, embedded_bin_dir, free_port  # noqa: E402
from ops_lib.schema_map import SchemaMap  # noqa: E402

MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
FILL = """
INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) VALUES
    ('free', 'Free', 0, 1000, false), ('pro', 'Pro', 4900, 50000, true);
INSERT INTO organizations (id, name, plan_code)
    SELECT g, 'org ' || g, CASE WHEN g % 10 < 4 THEN 'pro' ELSE 'free' END FROM generate_series(1, :orgs) g;
SELECT setseed(0.42);
INSERT INTO subscriptions (organization_id, stripe_subscription_id, stripe_price_id, plan_code, status,
                           current_period_start, current_period_end)
    SELECT id, 'sub_' || id, 'price_pro', 'pro', 'active', s, s + interval '30 days'
    FROM (SELECT id, :now - random() * interval '30 days' AS s FROM organizations WHERE plan_code = 'pro') o;
INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at)
    SELECT 1 + floor(random() * :orgs)::bigint, 'api_call', 1 + floor(random() * 3)::int, md5('k' || g),
           :now - random() * interval '60 days'
    FROM generate_series(1, :events) g;
INSERT INTO usage_events (organization_id, kind, quantity, idempotency_key, occurred_at)
    SELECT organization_id, kind, quantity, idempotency_key, occurred_at + interval '1 second'
    FROM usage_events WHERE id <= 100;
INSERT INTO usage_counters (organization_id, period_start, period_end, used)
    SELECT organization_id, current_period_start, current_period_end, 10 FROM subscriptions;
"""


def build(cluster: PostgresCluster, orgs: int, events: int, now: datetime) -> str:
    admin = sa.create_engine(sqlalchemy_url(cluster.url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE app")
    admin.dispose()
    url = cluster.url("app")
    engine = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.exec_driver_sql((REPO / "ops_lib" / "demo" / "schema.sql").read_text())
        for statement in FILL.split(";\n"):
            if statement.strip():
                conn.execute(sa.text(statement), {"orgs": orgs, "events": events, "now": now})
        try:
            conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY usage_events_idempotency_key_uniq "
                                 "ON usage_events (idempotency_key)")
        except sa.exc.IntegrityError:
            pass  # INVALID, as in the demo
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return url


class Stats:
    def __init__(self, url: str):
        self.engine = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")

    def total_ms(self) -> float:
        with self.engine.connect() as conn:
            return float(conn.exec_driver_sql(
                "SELECT coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
                "WHERE query NOT ILIKE '%%pg_stat_statements%%'").scalar())

    def floor_ms(self) -> float:
        times = []
        with self.engine.connect() as conn:
            for _ in range(3):
                started = time.perf_counter()
                conn.exec_driver_sql("SELECT count(*), sum(quantity) FROM usage_events").all()
                times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


def measure(url: str, now: datetime, label: str) -> dict:
    stats = Stats(url)
    engine = make_engine(url, runbook="bench", statement_timeout_ms=600_000)
    with engine.connect() as conn:
        accounts = quota.join_accounts(quota.read_app(conn, MAPPING), {"customers": [], "subscriptions": []},
                                       quota.load_plans(conn, MAPPING), now=now)
        before = stats.total_ms()
        started = time.perf_counter()
        scan = quota.scan_usage(conn, MAPPING, accounts, duplicates_since=now - timedelta(days=35), now=now)
        wall = time.perf_counter() - started
        db_ms = stats.total_ms() - before
    engine.dispose()
    floor = stats.floor_ms()
    stats.engine.dispose()
    row = {"label": label, "db_ms": db_ms, "floor_ms": floor, "ratio": db_ms / floor, "wall_s": wall,
           "duplicates": len(scan.duplicates.rows), "unique_index": scan.unique_index,
           "organisations": len(scan.usage), "weekly_rows": len(scan.weekly)}
    print(f"{label}: DB {db_ms:.0f} ms, floor {floor:.0f} ms, ratio {row['ratio']:.1f}, wall {wall:.1f} s, "
          f"{row['duplicates']} repeated key(s), unique index {scan.unique_index}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organisations", type=int, default=100_000)
    parser.add_argument("--events-per-org", type=float, default=5)
    parser.add_argument("--keep", help="build the cluster here and leave it (default: a scratch dir, removed)")
    args = parser.parse_args(argv)
    where = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="opsbook-bench-quota-"))
    cluster = PostgresCluster(where / "data", free_port(), embedded_bin_dir())
    now = datetime.now(timezone.utc)
    try:
        cluster.init().start()
        started = time.perf_counter()
        url = build(cluster, args.organisations, int(args.organisations * args.events_per_org), now)
        print(f"built {args.organisations:,} organisations in {time.perf_counter() - started:.0f} s ({url})", flush=True)
        measure(url, now, "no valid unique index (the demo's INVALID one)")
        admin = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("DELETE FROM usage_events WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER "
                                 "(PARTITION BY idempotency_key ORDER BY id) AS n FROM usage_events "
                                 "WHERE idempotency_key IN (SELECT idempotency_key FROM usage_events WHERE id <= 100)) d "
                                 "WHERE n > 1)")
            conn.exec_driver_sql("DROP INDEX usage_events_idempotency_key_uniq")
            conn.exec_driver_sql("CREATE UNIQUE INDEX usage_events_idempotency_key_uniq ON usage_events (idempotency_key)")
            conn.exec_driver_sql("VACUUM ANALYZE usage_events")
        admin.dispose()
        measure(url, now, "valid unique index on the key")
    finally:
        if not args.keep:
            cluster.stop()
            shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
