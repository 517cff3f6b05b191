"""The Airflow targets file, read without Airflow (the DAG itself is tested in tests_airflow/,
with a real Airflow, by `make test-airflow`)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ops_lib.airflow import (TargetResolutionError, TargetsFileError, child_environment, load_targets,
                             opsbook_arguments, resolve, task_id_for)


def targets_file(tmp_path, text: str):
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_references_are_read_and_resolved_from_the_environment_when_the_task_runs(tmp_path):
    path = targets_file(tmp_path, """
targets:
  eu-prod:
    DATABASE_URL: {env: EU_DATABASE_URL}
    STRIPE_API_KEY: {env: EU_STRIPE_KEY}
    OPSBOOK_SCHEMA: {value: reference}
    runbooks: [slow_queries]
  us:
    DATABASE_URL: {airflow_connection: us_db}
""")
    targets = load_targets(path)

    assert list(targets) == ["eu-prod", "us"] and targets["eu-prod"].runbooks == ("slow_queries",)
    environ = {"EU_DATABASE_URL": "postgresql://app:s3cret@db:5432/app", "EU_STRIPE_KEY": "sk_test_abcdefgh1234"}
    values = resolve(targets["eu-prod"], environ=environ)
    assert values == {"DATABASE_URL": environ["EU_DATABASE_URL"], "STRIPE_API_KEY": environ["EU_STRIPE_KEY"],
                      "OPSBOOK_SCHEMA": "reference"}
    with pytest.raises(TargetResolutionError, match="STRIPE_API_KEY names environment variable EU_STRIPE_KEY, which "
                                                    "is not set on this worker"):
        resolve(targets["eu-prod"], environ={"EU_DATABASE_URL": "postgresql://db/app"})
    with pytest.raises(TargetResolutionError, match="Airflow connection 'us_db'"):
        resolve(targets["us"], environ={})


@pytest.mark.parametrize("entry, message", [
    ("DATABASE_URL: postgresql://app:hunter2@db/app", "DATABASE_URL holds a secret in the file"),
    ("DATABASE_URL: {value: 'postgresql://app:hunter2@db/app'}", "DATABASE_URL holds a secret in the file"),
    ("{DATABASE_URL: {env: DB}, STRIPE_API_KEY: {value: rk_live_whatever}}", "STRIPE_API_KEY holds a secret"),
    ("{DATABASE_URL: {env: DB}, STRIPE_WEBHOOK_SECRET: plain}", "STRIPE_WEBHOOK_SECRET holds a secret"),
    ("{DATABASE_URL: {env: DB}, OPSBOOK_WEBHOOK_URL: 'https://u:p4ss@app/hook'}", "OPSBOOK_WEBHOOK_URL holds a secret"),
    ("{DATABASE_URL: {env: DB}, PGPASSWORD: {env: X}}", "unknown variable 'PGPASSWORD'"),
    ("{OPSBOOK_SCHEMA: {value: reference}}", "names neither DATABASE_URL nor STRIPE_API_KEY"),
    ("{DATABASE_URL: {env: DB, value: x}}", "DATABASE_URL takes exactly one of"),
    ("{DATABASE_URL: {env: DATABASE_URL}}", "name a variable of your own"),
    ("{DATABASE_URL: {airflow_connection: db, field: secret}}", "field is one of"),
    ("{DATABASE_URL: {env: DB}, runbooks: slow_queries}", "`runbooks:` is a list of runbook names"),
])
def test_a_bad_target_is_one_line_naming_it_and_never_echoes_the_secret(tmp_path, entry, message):
    path = targets_file(tmp_path, f"targets:\n  eu-prod: {entry}\n" if not entry.startswith("DATABASE_URL: ")
                        else f"targets:\n  eu-prod:\n    {entry}\n")
    with pytest.raises(TargetsFileError) as caught:
        load_targets(path)
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith(f"{path}: target 'eu-prod'")
    for secret in ("hunter2", "rk_live_whatever", "p4ss", "plain"):
        assert secret not in text


def test_a_literal_database_url_without_a_password_is_not_a_secret(tmp_path):
    path = targets_file(tmp_path, "targets:\n  local: {DATABASE_URL: 'postgresql://opsbook@/app?host=/run/postgresql'}\n")
    assert resolve(load_targets(path)["local"], environ={}) == {"DATABASE_URL": "postgresql://opsbook@/app?host=/run/postgresql"}


def test_each_run_sees_only_its_own_target():
    worker = {"PATH": "/usr/bin", "DATABASE_URL": "postgresql://leftover/db", "OPSBOOK_DEMO": "1",
              "US_STRIPE_KEY": "sk_live_other_target", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://af:pw@x/af",
              "AIRFLOW_CONN_US_DB": "postgresql://u:pw@us/db", "OPSBOOK_OUTPUTS": "s3://ops-archive/runs"}
    env = child_environment({"DATABASE_URL": "postgresql://eu/db"}, {"US_STRIPE_KEY"}, worker)
    assert env == {"PATH": "/usr/bin", "OPSBOOK_OUTPUTS": "s3://ops-archive/runs", "DATABASE_URL": "postgresql://eu/db"}


def test_the_command_line_and_task_ids():
    assert opsbook_arguments("slow_queries", parameter_sets=["daily"], parameters={"top_n": 5, "apply": False,
                             "remediate": ["a", "b"]}, out="s3://b/runs", fail_on="critical", cell_timeout=60) == [
        "run", "slow_queries", "--fail-on", "critical", "--out", "s3://b/runs", "--timeout", "60", "-f", "daily",
        "-p", "top_n", "5", "-p", "apply", "false", "-p", "remediate", "a,b"]
    assert task_id_for("eu prod/1", "slow_queries") == "eu_prod_1.slow_queries"


def test_importing_the_integration_imports_no_airflow_and_nothing_else_imports_it():
    code = ("import sys, ops_lib.airflow, ops_lib.cli, ops_lib.runner, ops_lib.archive; "
            "assert 'airflow' not in sys.modules, 'airflow imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
