"""Real PostgreSQL servers for the tests: the embedded PostgreSQL 18, and the machine's 15 where present."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib.db import sqlalchemy_url
from ops_lib.demo.postgres import PostgresCluster, embedded_bin_dir, free_port

from . import demo_target
from .demo_target import scratch_dir

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parent.parent


def _cluster(name: str, bin_dir: Path) -> PostgresCluster:
    cluster = PostgresCluster(scratch_dir(name) / "pgdata", free_port(), bin_dir)
    cluster.init().start()
    return cluster


@pytest.fixture(scope="session")
def pg18():
    cluster = _cluster("pg18", embedded_bin_dir())
    yield cluster
    _destroy(cluster)


def _destroy(cluster: PostgresCluster) -> None:
    cluster.destroy()
    shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg15():
    if not (PG15_BIN / "postgres").exists():
        pytest.skip(f"no PostgreSQL 15 at {PG15_BIN}")
    cluster = _cluster("pg15", PG15_BIN)
    yield cluster
    _destroy(cluster)


@pytest.fixture(scope="session", params=["pg18", "pg15"])
def any_pg(request):
    """Each check test runs on both server versions."""
    return request.getfixturevalue(request.param)


class Database:
    """A fresh database on a cluster, with an admin engine that may write (fixtures build state)."""

    def __init__(self, cluster: PostgresCluster):
        self.cluster = cluster
        self.name = f"t_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(sqlalchemy_url(cluster.url()), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        admin.dispose()
        self.url = cluster.url(self.name)
        self.admin = sa.create_engine(sqlalchemy_url(self.url), isolation_level="AUTOCOMMIT")
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def execute(self, sql: str, **params):
        with self.admin.connect() as conn:
            return conn.execute(sa.text(sql), params)

    def drop(self):
        self.admin.dispose()
        admin = sa.create_engine(sqlalchemy_url(self.cluster.url()), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database(any_pg):
    db = Database(any_pg)
    yield db
    db.drop()


@pytest.fixture
def database18(pg18):
    db = Database(pg18)
    yield db
    db.drop()


@pytest.fixture(scope="session")
def demo():
    """The seeded demo target with its live incidents (started once per session)."""
    state = demo_target.start()
    yield state
    demo_target.stop()


@pytest.fixture
def app_db(database18):
    """A fresh database holding the demo app's schema, one paid plan and one organisation (id 1)."""
    with database18.admin.connect() as conn:
        conn.exec_driver_sql((REPO / "ops_lib" / "demo" / "schema.sql").read_text())
    database18.execute("INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) VALUES ('pro', 'Pro', 4900, 100000, true)")
    database18.execute("INSERT INTO organizations (id, name, plan_code, stripe_customer_id) VALUES (1, 'A', 'pro', 'cus_A')")
    return database18
