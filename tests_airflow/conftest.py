"""A real Airflow (its own scratch home and SQLite metadata database) and the real demo target.

Kept out of `make test` (its own folder, its own virtualenv): run it with `make test-airflow`.
Airflow reads AIRFLOW_HOME when it is first imported, so it is set here, before any test module
imports Airflow.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.demo_target: the same demo fixture as `make test`

from tests import demo_target  # noqa: E402

AIRFLOW_HOME = demo_target.scratch_dir("airflow-home")
DAGS = AIRFLOW_HOME / "dags"
DAGS.mkdir()
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
})

DEMO_CONNECTION = "opsbook_demo_db"
DEMO_STRIPE_KEY_VARIABLE = "OPSBOOK_DEMO_STRIPE_KEY"


@pytest.fixture(scope="session")
def airflow_db():
    started = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                             timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def demo():
    """The demo target, handed to Airflow as an operator would hand over a real one: the database
    as an Airflow connection (AIRFLOW_CONN_…), the Stripe key as a worker's environment variable."""
    import sqlalchemy as sa

    state = demo_target.start()
    url = sa.engine.make_url(state["database_url"])
    assert url.password, "the demo's role has a password: the test checks it is never shown"
    os.environ[f"AIRFLOW_CONN_{DEMO_CONNECTION.upper()}"] = json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username,
        "password": url.password, "schema": url.database})
    os.environ[DEMO_STRIPE_KEY_VARIABLE] = state["stripe_api_key"]
    yield state
    os.environ.pop(f"AIRFLOW_CONN_{DEMO_CONNECTION.upper()}", None)
    os.environ.pop(DEMO_STRIPE_KEY_VARIABLE, None)
    demo_target.stop()


def demo_secrets(state: dict) -> list[str]:
    import sqlalchemy as sa

    return [sa.engine.make_url(state["database_url"]).password, state["stripe_api_key"],
            state["stripe_webhook_secret"]]
