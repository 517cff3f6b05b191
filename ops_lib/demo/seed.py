"""The demo data set: a deterministic SaaS (seed and scale) with planted incidents for every runbook.

``build`` makes the data in Python (same seed, same data); ``load`` writes it with a handful of
set-based statements; ``plant_slow_queries`` and ``run_workload`` give pg_stat_statements and the
index statistics something true to find. What was planted is returned as a manifest, which the
tests compare with what the runbooks report.
"""
from __future__ import annotations

import io
import json
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SCHEMA_SQL = Path(__file__).with_name("schema.sql")

PLANS = [
    # code, name, monthly price (cents), usage limit per period, paid
    ("free", "Free", 0, 1_000, False),
    ("pro", "Pro", 2_900, 50_000, True),
    ("team", "Team", 9_900, 250_000, True),
]

EVENT_KINDS = ("api_call", "export", "campaign_send", "report_run")

# Planted for slow_queries.
UNUSED_INDEX = "users_last_login_at_idx"
DUPLICATE_INDEX = "orders_organization_id_idx"  # covered by orders_org_created_idx
COVERING_INDEX = "orders_org_created_idx"
INVALID_INDEX = "usage_events_idempotency_key_uniq"
SEQUENCE_NEAR_LIMIT = "audit_log_id_seq"
SLOW_TABLE = "usage_events"


@dataclass
class Dataset:
    seed: int
    scale: float
    now: datetime
    organizations: list[dict] = field(default_factory=list)
    users: list[dict] = field(default_factory=list)
    subscriptions: list[dict] = field(default_factory=list)
    usage_event_count: int = 0
    stripe_events: int = 0  # background Stripe events beyond the planted ones (benchmarks)
    # paid 30-day periods before the current one, per seeded subscription (billing_history)
    history_periods: int = 6


def build(seed: int = 42, scale: float = 1.0, now: datetime | None = None, *,
          organisations: int | None = None, usage_events_per_org: float | None = None,
          usage_events: int | None = None, stripe_events: int = 0,
          history_periods: int | None = None) -> Dataset:
    """The data set; ``scale`` sizes everything, and the benchmark's knobs override it one by one:
    ``organisations`` (at least 40: the planted incidents need 30 buyers), ``usage_events_per_org``
    or ``usage_events`` (the total), ``stripe_events`` (extra, already-delivered events of a type
    the app does not handle) and ``history_periods`` (paid months before the current one per
    seeded subscription: 6 by default; each is an invoice, a charge and a balance transaction)."""
    rng = random.Random(seed)
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    data = Dataset(seed=seed, scale=scale, now=now, stripe_events=max(0, int(stripe_events)))
    if history_periods is not None:
        data.history_periods = max(0, int(history_periods))
    n_orgs = max(40, int(organisations)) if organisations is not None else max(20, int(300 * scale))
    for org_id in range(1, n_orgs + 1):
        plan = rng.choices(["free", "pro", "team"], weights=[5, 4, 1])[0]
        created = now - timedelta(days=rng.randint(40, 700))
        data.organizations.append({
            "id": org_id,
            "name": f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {org_id}",
            "plan_code": plan,
            "stripe_customer_id": f"cus_demo{org_id:06d}",
            "created_at": created,
        })
        for n in range(rng.randint(1, 5)):
            data.users.append({
                "organization_id": org_id,
                "email": f"user{n}@org{org_id}.example",
                "name": f"User {n} of {org_id}",
                "role": "owner" if n == 0 else "member",
                "last_login_at": now - timedelta(hours=rng.randint(1, 2000)),
                "created_at": created + timedelta(days=n),
            })
        if plan != "free":
            period_start = now - timedelta(days=rng.randint(1, 27), hours=rng.randint(0, 23))
            data.subscriptions.append({
                "organization_id": org_id,
                "stripe_subscription_id": f"sub_demo{org_id:06d}",
                "stripe_price_id": f"price_demo_{plan}_monthly",
                "plan_code": plan,
                "status": "active",
                "current_period_start": period_start,
                "current_period_end": period_start + timedelta(days=30),
                "created_at": created,
            })
    data.usage_event_count = max(20_000, int(400_000 * scale))
    if usage_events_per_org is not None:
        data.usage_event_count = max(1_000, int(usage_events_per_org * n_orgs))
    if usage_events is not None:
        data.usage_event_count = max(1_000, int(usage_events))
    return data


_ADJECTIVES = ("Blue", "Quiet", "Rapid", "Bright", "North", "Civic", "Lunar", "Amber", "Solid", "Open")
_NOUNS = ("Labs", "Works", "Studio", "Systems", "Analytics", "Health", "Logistics", "Media", "Foods", "Cloud")


def copy_rows(conn: Connection, table: str, columns: list[str], rows, chunk: int = 200_000) -> None:
    """``rows`` (tuples in ``columns`` order) into ``table`` with COPY: one round trip per chunk
    instead of a statement per row (a million organisations load in seconds). Where psycopg2
    has a wait callback (opsbook's bounded waits, in a process that made a runbook engine),
    COPY is not available: multi-row INSERTs instead."""
    from psycopg2 import extensions, extras

    cursor = conn.connection.cursor()
    columns_sql = ", ".join(columns)
    if extensions.get_wait_callback() is not None:
        extras.execute_values(cursor, f"INSERT INTO {table} ({columns_sql}) VALUES %s", rows, page_size=5_000)
        return
    sql = f"COPY {table} ({columns_sql}) FROM STDIN"
    buffer: list[str] = []

    def send() -> None:
        cursor.copy_expert(sql, io.StringIO("".join(buffer)))
        buffer.clear()

    for row in rows:
        buffer.append("\t".join(_copy_text(v) for v in row) + "\n")
        if len(buffer) >= chunk:
            send()
    if buffer:
        send()


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# Secondary indexes of the bulk tables, built after their rows (one sort each, not a B-tree
# insert per row). Constraints (primary keys, unique) stay: the load is checked as it goes.
_BULK_TABLES = ("organizations", "users", "subscriptions", "usage_events")


def load(conn: Connection, data: Dataset) -> None:
    """Schema and rows, in one transaction of set-based statements."""
    conn.exec_driver_sql(SCHEMA_SQL.read_text())
    deferred = conn.execute(sa.text(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
        "AND i.tablename = ANY(:tables) AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
    ), {"tables": list(_BULK_TABLES)}).all()
    for name, _ in deferred:
        conn.exec_driver_sql(f"DROP INDEX {name}")
    conn.execute(
        sa.text("INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) VALUES (:c, :n, :p, :l, :paid)"),
        [{"c": c, "n": n, "p": p, "l": lim, "paid": paid} for c, n, p, lim, paid in PLANS],
    )
    copy_rows(conn, "organizations", ["id", "name", "plan_code", "stripe_customer_id", "created_at"],
              ((o["id"], o["name"], o["plan_code"], o["stripe_customer_id"], o["created_at"]) for o in data.organizations))
    conn.execute(sa.text("SELECT setval('organizations_id_seq', :n)"), {"n": len(data.organizations)})
    copy_rows(conn, "users", ["organization_id", "email", "name", "role", "last_login_at", "created_at"],
              ((u["organization_id"], u["email"], u["name"], u["role"], u["last_login_at"], u["created_at"])
               for u in data.users))
    copy_rows(conn, "subscriptions", ["organization_id", "stripe_subscription_id", "stripe_price_id", "plan_code",
                                      "status", "current_period_start", "current_period_end", "created_at"],
              ((s["organization_id"], s["stripe_subscription_id"], s["stripe_price_id"], s["plan_code"], s["status"],
                s["current_period_start"], s["current_period_end"], s["created_at"]) for s in data.subscriptions))
    # Usage events are generated server-side: setseed makes random() repeat for the same seed.
    conn.execute(sa.text("SELECT setseed(:s)"), {"s": (data.seed % 1000) / 1000.0})
    conn.execute(
        sa.text(
            """
            INSERT INTO usage_events (organization_id, user_id, kind, quantity, idempotency_key, occurred_at)
            SELECT 1 + floor(random() * :orgs)::bigint,
                   1 + floor(random() * :users)::bigint,
                   (ARRAY['api_call', 'export', 'campaign_send', 'report_run'])[1 + floor(random() * 4)::int],
                   1 + floor(random() * 3)::int,
                   md5(:seed || '-' || g),
                   :now - (random() * interval '60 days')
            FROM generate_series(1, :n) AS g
            """
        ),
        {"orgs": len(data.organizations), "users": len(data.users), "n": data.usage_event_count,
         "now": data.now, "seed": str(data.seed)},
    )
    for _, definition in deferred:
        conn.exec_driver_sql(definition)


def plant_slow_queries(engine: Engine) -> dict:
    """Index and sequence problems for slow_queries; returns what was planted."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE INDEX {UNUSED_INDEX} ON users (last_login_at)")
        conn.exec_driver_sql(f"CREATE INDEX {COVERING_INDEX} ON orders (organization_id, created_at)")
        # An old integer-keyed table close to the end of its range.
        conn.exec_driver_sql(f"SELECT setval('{SEQUENCE_NEAR_LIMIT}', 2000000000)")
        # Two deliveries of the same usage event (a retried client); the unique index that
        # should have prevented it was built CONCURRENTLY and failed, leaving it INVALID.
        conn.exec_driver_sql(
            "INSERT INTO usage_events (organization_id, user_id, kind, quantity, idempotency_key, occurred_at) "
            "SELECT organization_id, user_id, kind, quantity, idempotency_key, occurred_at + interval '1 second' "
            "FROM usage_events WHERE id = 1"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            conn.exec_driver_sql(f"CREATE UNIQUE INDEX CONCURRENTLY {INVALID_INDEX} ON usage_events (idempotency_key)")
        except sa.exc.IntegrityError:
            pass  # expected: this failure is the incident
        conn.exec_driver_sql("ANALYZE")
    return {
        "unused_indexes": [UNUSED_INDEX],
        "duplicate_indexes": [DUPLICATE_INDEX],
        "invalid_indexes": [INVALID_INDEX],
        "sequence_overflow_risk": [SEQUENCE_NEAR_LIMIT],
        "missing_index_candidates": [SLOW_TABLE],
    }


SLOW_STATEMENTS = {
    # no index on user_id: a sequential scan of the largest table per call
    "usage_by_user": "SELECT count(*), sum(quantity) FROM usage_events WHERE user_id = :user_id",
    # the idempotency check the app runs before recording an event; its index is invalid
    "usage_by_idempotency_key": "SELECT id FROM usage_events WHERE idempotency_key = :key",
}
# Usually fast, sometimes slow (one large tenant's export waits): erratic_statements' incident.
# The slow statements above are steady (stddev well under their mean) and are its controls.
ERRATIC_STATEMENTS = {
    "organization_export": "SELECT id, name, pg_sleep(CASE WHEN :large THEN 0.06 ELSE 0 END) "
                           "FROM organizations WHERE id = :id",
}
ERRATIC_EVERY = 10  # one call in ten is the large tenant's
FAST_STATEMENTS = {
    "organization_by_id": "SELECT id, name, plan_code FROM organizations WHERE id = :id",
    "recent_usage": "SELECT count(*) FROM usage_events WHERE occurred_at >= :since",
}


# Planted for slow_queries' space and maintenance checks (after the statistics reset, so the
# dead rows and the missing analyse are what the runbook sees).
BLOATED_TABLE = "job_runs"
NEVER_ANALYZED_TABLE = "export_files"
JOB_RUNS, JOB_RUNS_KEPT, EXPORT_FILES = 40_000, 8_000, 2_000


def plant_maintenance(conn: Connection, data: Dataset) -> dict:
    """job_runs: 40,000 wide rows, all but 8,000 purged, no vacuum since (dead rows, empty pages);
    export_files: 2,000 rows, never analysed. Every other table is analysed and vacuumed: the controls."""
    conn.execute(sa.text(
        f"INSERT INTO {BLOATED_TABLE} (id, job, output, finished_at) "
        "SELECT g, 'nightly-report', repeat(md5(g::text), 12), :now - g * interval '1 minute' "
        "FROM generate_series(1, :n) g"), {"n": JOB_RUNS, "now": data.now})
    conn.execute(sa.text(f"DELETE FROM {BLOATED_TABLE} WHERE id > :kept"), {"kept": JOB_RUNS_KEPT})
    conn.exec_driver_sql(f"ANALYZE {BLOATED_TABLE}")
    conn.execute(sa.text(
        f"INSERT INTO {NEVER_ANALYZED_TABLE} (id, organization_id, path, created_at) "
        "SELECT g, 1 + g % :orgs, 'exports/' || g || '.csv', :now - g * interval '1 hour' FROM generate_series(1, :n) g"),
        {"n": EXPORT_FILES, "orgs": len(data.organizations), "now": data.now})
    return {"table_bloat": [BLOATED_TABLE], "vacuum_lag": [BLOATED_TABLE], "never_analyzed": [NEVER_ANALYZED_TABLE]}


def run_workload(url: str, data: Dataset, calls: int = 110, workers: int = 2) -> None:
    """The app's traffic: enough calls of each slow statement to pass PgHero's 100-call floor."""
    from ..db import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(url), connect_args={"application_name": "demo-app"}, pool_size=workers)
    rng = random.Random(data.seed)
    n_users = len(data.users)
    jobs = [("usage_by_user", {"user_id": rng.randint(1, n_users)}) for _ in range(calls)]
    jobs += [("usage_by_idempotency_key", {"key": f"missing-{i}"}) for i in range(calls)]
    jobs += [("organization_by_id", {"id": rng.randint(1, len(data.organizations))}) for _ in range(300)]
    jobs += [("recent_usage", {"since": data.now - timedelta(minutes=rng.randint(1, 30))}) for _ in range(50)]
    jobs += [("organization_export", {"large": i % ERRATIC_EVERY == 0, "id": 1 + i % len(data.organizations)})
             for i in range(calls)]

    def worker(share: list) -> None:
        with engine.connect() as conn:
            for name, params in share:
                sql = SLOW_STATEMENTS.get(name) or ERRATIC_STATEMENTS.get(name) or FAST_STATEMENTS[name]
                conn.execute(sa.text(sql), params).fetchall()
            conn.rollback()

    threads = [threading.Thread(target=worker, args=(jobs[i::workers],)) for i in range(workers)]
    for t in threads:
        t.start()
    with engine.begin() as conn:
        plant_maintenance(conn, data)
    for t in threads:
        t.join()
    engine.dispose()


def write_manifest(path: Path, manifest: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(path)
