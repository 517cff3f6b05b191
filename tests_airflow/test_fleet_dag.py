"""The fleet DAG in a real Airflow (dag.test(), tasks run in-process as a worker runs them) against
the real demo target: task states per exit code, XCom, the archive, and no secret anywhere."""
from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import yaml

from conftest import DAGS, DEMO_CONNECTION, DEMO_STRIPE_KEY_VARIABLE, demo_secrets

XCOM_KEYS = ("run_id", "json_path", "status", "severity", "verdict", "exit_code", "findings", "checks", "error")


def write_dag(dag_id: str, targets: dict, factory_arguments: str) -> Path:
    """A DAG file in the DAGs folder, as an operator writes one: Airflow parses it, and
    dag.test() runs what it parsed."""
    targets_file = DAGS / f"{dag_id}.targets.yaml"
    targets_file.write_text(yaml.safe_dump({"targets": targets}))
    dag_file = DAGS / f"{dag_id}.py"
    dag_file.write_text(textwrap.dedent(f"""\
        from datetime import timedelta
        from ops_lib.airflow import make_dag

        dag = make_dag({dag_id!r}, {str(targets_file)!r}, {factory_arguments})
        """))
    return dag_file


def load_dag(dag_file: Path):
    spec = importlib.util.spec_from_file_location(dag_file.stem, dag_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def run_dag(dag_file: Path) -> dict:
    """dag.test(); each task's state, tries and XCom."""
    run = load_dag(dag_file).test()
    tasks = {}
    for ti in run.get_task_instances():
        xcom = {key: ti.xcom_pull(task_ids=ti.task_id, key=key) for key in XCOM_KEYS}
        tasks[ti.task_id] = {"state": str(ti.state), "try_number": ti.try_number, "xcom": xcom}
    return tasks


def demo_target_entry() -> dict:
    return {"DATABASE_URL": {"airflow_connection": DEMO_CONNECTION},
            "STRIPE_API_KEY": {"env": DEMO_STRIPE_KEY_VARIABLE},
            "OPSBOOK_SCHEMA": {"value": "reference"}}


def assert_no_secret(state: dict, *texts: str) -> None:
    for secret in demo_secrets(state):
        for text in texts:
            assert secret not in text


def test_findings_fail_the_task_without_retry_and_xcom_says_where_the_run_is(airflow_db, demo, capfd):
    dag_file = write_dag("opsbook_fleet_demo", {
        "demo": demo_target_entry(),
        "elsewhere": {"DATABASE_URL": {"airflow_connection": "no_such_connection"}},
    }, '["slow_queries"], parameter_sets="demo", '
       'default_args={"retries": 1, "retry_delay": timedelta(seconds=1)}')

    tasks = run_dag(dag_file)
    log = capfd.readouterr()

    assert set(tasks) == {"demo.slow_queries", "elsewhere.slow_queries"}
    found = tasks["demo.slow_queries"]
    # exit 1 → failed at once, not retried: findings do not go away by asking again
    assert (found["state"], found["try_number"]) == ("failed", 1)
    xcom = found["xcom"]
    assert xcom["exit_code"] == 1 and xcom["status"] == "findings" and xcom["run_id"].startswith("slow_queries-")
    record = json.loads(Path(xcom["json_path"]).read_text())
    assert record["run_id"] == xcom["run_id"] and xcom["verdict"] == record["severity"] == "critical"
    assert record["target"]["database"].endswith(f":{demo['database_url'].rsplit(':', 1)[1]}")  # the demo, by the connection
    from ops_lib.demo import lifecycle

    items = {f["check"]: {str(i) for i in f.get("items", [])} for f in record["findings"]}
    for check in ("invalid_indexes", "duplicate_indexes", "sequence_overflow_risk"):
        assert set(lifecycle.planted()["slow_queries"][check]) <= items[check], check
    assert xcom["findings"]["critical"] == sum(f["severity"] == "critical" for f in record["findings"]) >= 1
    assert {"check": "invalid_indexes", "severity": "warning"}.items() <= next(
        c for c in xcom["checks"] if c["check"] == "invalid_indexes").items()

    # an unknown connection: exit 3's path — failed, not retried, one line that says what to do
    missing = tasks["elsewhere.slow_queries"]
    assert (missing["state"], missing["try_number"]) == ("failed", 1)
    assert missing["xcom"]["status"] == "invalid" and missing["xcom"]["run_id"] is None
    line = ("target 'elsewhere': DATABASE_URL names Airflow connection 'no_such_connection', which is not defined "
            "— add it (Admin → Connections, or AIRFLOW_CONN_NO_SUCH_CONNECTION)")
    assert missing["xcom"]["error"] == line and line in log.out + log.err

    assert f"{xcom['run_id']}: findings (critical)" in log.out + log.err  # opsbook's own lines, in the task log
    assert "findings at or above warning: " in log.out + log.err
    assert_no_secret(demo, log.out, log.err, json.dumps(tasks), Path(xcom["json_path"]).read_text())


def _own_runbooks(folder: Path) -> None:
    """A team's own runbooks beside the shipped ones: one that passes on the demo, one whose
    check breaks, one that hangs."""
    import nbformat

    from ops_lib import runbooks

    if (folder / "sleepy.ipynb").exists():
        return
    runbooks.create("fleet_check")
    for name, code in (("broken", "raise RuntimeError('the check broke')"), ("sleepy", "import time\ntime.sleep(300)")):
        path = runbooks.create(name)
        notebook = nbformat.read(path, as_version=4)
        notebook.cells.insert(len(notebook.cells) - 1, nbformat.v4.new_code_cell(code))
        nbformat.write(notebook, path)


def test_a_passing_run_succeeds_and_a_failed_one_is_retried(airflow_db, demo, capfd, monkeypatch):
    monkeypatch.setenv("OPSBOOK_RUNBOOKS", str(DAGS / "runbooks"))
    _own_runbooks(DAGS / "runbooks")
    dag_file = write_dag("opsbook_fleet_outcomes", {"demo": demo_target_entry()},
                         '["fleet_check", "broken"], parameters={"fleet_check": {"min_rows": 1000000}}, '
                         'cell_timeout=120, default_args={"retries": 1, "retry_delay": timedelta(seconds=1)}')

    tasks = run_dag(dag_file)
    log = capfd.readouterr()

    passed = tasks["demo.fleet_check"]
    assert (passed["state"], passed["try_number"]) == ("success", 1)
    assert passed["xcom"]["exit_code"] == 0 and passed["xcom"]["verdict"] == "ok"
    assert json.loads(Path(passed["xcom"]["json_path"]).read_text())["parameters"]["min_rows"] == 1000000

    # exit 2 (the notebook failed while executing) → retryable: tried twice, then failed
    broken = tasks["demo.broken"]
    assert (broken["state"], broken["try_number"]) == ("failed", 2)
    assert broken["xcom"]["exit_code"] == 2 and broken["xcom"]["status"] == "error"
    assert "the check broke" in broken["xcom"]["error"]
    assert json.loads(Path(broken["xcom"]["json_path"]).read_text())["reason"] == "cell_error"
    assert_no_secret(demo, log.out, log.err, json.dumps(tasks))


def test_a_task_stopped_by_airflow_archives_its_run_as_interrupted(airflow_db, demo, monkeypatch):
    monkeypatch.setenv("OPSBOOK_RUNBOOKS", str(DAGS / "runbooks"))
    _own_runbooks(DAGS / "runbooks")
    dag_file = write_dag("opsbook_fleet_stopped", {"demo": demo_target_entry()},
                         '["sleepy"], default_args={"retries": 0, "execution_timeout": timedelta(seconds=15)}')

    stopped = run_dag(dag_file)["demo.sleepy"]

    # Airflow's execution_timeout: the task sends SIGTERM, opsbook archives what ran, exit 2
    assert stopped["state"] == "failed" and stopped["xcom"]["exit_code"] == 2
    record = json.loads(Path(stopped["xcom"]["json_path"]).read_text())
    assert (record["status"], record["reason"]) == ("error", "interrupted")


def test_a_secret_written_in_the_targets_file_stops_the_dag_from_loading(airflow_db, tmp_path):
    from airflow.models.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "targets.yaml").write_text(yaml.safe_dump({"targets": {"eu-prod": {
        "DATABASE_URL": {"value": "postgresql://app:hunter2secret@db.internal:5432/app"}}}}))
    (folder / "fleet.py").write_text(textwrap.dedent("""\
        from pathlib import Path
        from ops_lib.airflow import make_dag

        dag = make_dag("opsbook_leaky", Path(__file__).with_name("targets.yaml"), ["slow_queries"])
        """))

    bag = DagBag(dag_folder=str(folder), include_examples=False)

    assert not bag.dags
    (error,) = bag.import_errors.values()
    assert "target 'eu-prod': DATABASE_URL holds a secret in the file — name it by reference instead" in error
    assert "hunter2secret" not in error


def test_the_example_dag_loads(airflow_db):
    from airflow.models.dagbag import DagBag

    example = Path(__file__).resolve().parent.parent / "examples" / "airflow" / "opsbook_fleet.py"
    bag = DagBag(dag_folder=str(example), include_examples=False)

    assert not bag.import_errors
    dag = bag.dags["opsbook_fleet"]
    assert sorted(dag.task_ids) == sorted(
        [f"{t}.{r}" for t in ("eu-prod", "us-prod") for r in ("slow_queries", "service_health", "webhook_failure",
                                                              "quota_audit")]
        + ["analytics.slow_queries", "analytics.service_health"])
