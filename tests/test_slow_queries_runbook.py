"""slow_queries end to end: papermill runs the notebook against the demo, and the JSON finds what was planted."""
import json
from pathlib import Path

import nbformat
import pytest

from ops_lib import paths, runner
from ops_lib.demo import lifecycle
from ops_lib.demo.incidents import APP_NAMES

DEMO_PARAMS = [paths.params_dir() / "slow_queries" / "demo.yaml"]


@pytest.fixture(scope="module")
def demo_run(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("archive")
    result = runner.run("slow_queries", DEMO_PARAMS, outputs=out)
    return result, out


def by_check(record):
    return {f["check"]: f for f in record["findings"]}


def test_the_run_reports_findings_and_exits_1_at_the_default_fail_on(demo_run):
    result, _ = demo_run
    assert result.record["status"] == "findings"
    assert result.exit_code == 1
    assert result.record["severity"] in ("warning", "critical")


def test_the_blocked_query_and_its_root_blocker_are_found(demo_run, demo):
    import sqlalchemy as sa

    from ops_lib.db import sqlalchemy_url

    from ops_lib.utc import as_utc

    engine = sa.create_engine(sqlalchemy_url(demo["database_url"]))
    with engine.connect() as conn:
        sessions = {name: (pid, started) for name, pid, started in conn.execute(sa.text(
            "SELECT application_name, pid, backend_start FROM pg_stat_activity WHERE application_name LIKE 'demo-app/%'"
        )).all()}
    engine.dispose()
    pids = {name: pid for name, (pid, _) in sessions.items()}
    record = demo_run[0].record
    blocked = by_check(record)["blocked_queries"]
    waiting_pid, waiting_start = sessions[APP_NAMES["blocked"]]
    assert blocked["items"] == [f"{waiting_pid}@{as_utc(waiting_start).isoformat()}"], "the item is the blocked session"
    row = blocked["rows"][0]
    assert row["pid"] == waiting_pid and row["session"] == blocked["items"][0]
    assert row["root_blocker"] == pids[APP_NAMES["lock_holder"]], "the root blocker is the idle transaction"
    assert row["root_state"] == "idle in transaction" and row["root_xact_age_s"] > 0
    assert row["root_query"] and row["root_application_name"] == APP_NAMES["lock_holder"]
    metrics = record["metrics"]
    assert metrics["blocked_queries"] == blocked["count"] == 1
    assert metrics["idle_in_transaction"] == by_check(record)["idle_in_transaction"]["count"]
    assert metrics["long_running_queries"] == by_check(record)["long_running_queries"]["count"]
    idle = by_check(record)["idle_in_transaction"]
    assert pids[APP_NAMES["lock_holder"]] in idle["items"]
    long_running = by_check(record)["long_running_queries"]
    assert pids[APP_NAMES["long_running"]] in long_running["items"]


@pytest.mark.parametrize("check", ["unused_indexes", "duplicate_indexes", "invalid_indexes", "sequence_overflow_risk", "missing_index_candidates"])
def test_every_planted_index_and_sequence_problem_is_found(demo_run, check):
    planted = lifecycle.planted()["slow_queries"][check]
    found = by_check(demo_run[0].record)[check]
    items = [str(i) for i in found["items"]]
    for name in planted:
        assert any(name in item for item in items), f"{name} not in {items}"


def test_the_planted_slow_statements_are_the_slow_queries(demo_run):
    from ops_lib.demo.seed import SLOW_STATEMENTS

    found = by_check(demo_run[0].record)["slow_queries"]
    assert found["count"] == len(SLOW_STATEMENTS)
    nb = nbformat.read(demo_run[1] / demo_run[0].record["notebook"], as_version=4)
    shown = json.dumps(next(c for c in nb.cells if "queries.slow_queries(" in c.source).outputs)
    for sql in SLOW_STATEMENTS.values():
        assert sql.split(" WHERE ")[0].replace(":", "$") in shown


def test_the_archive_holds_notebook_html_json_ledger_and_index(demo_run):
    result, out = demo_run
    record = result.record
    for key in ("notebook", "html", "json"):
        assert (out / record[key]).is_file()
    assert Path(record["json"]).parent == Path("slow_queries") / record["started_at"][:10]
    on_disk = json.loads((out / record["json"]).read_text())
    assert on_disk["run_id"] == record["run_id"] and on_disk["findings"] == record["findings"]
    ledger = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert ledger[-1]["run_id"] == record["run_id"]
    assert record["run_id"] in (out / "index.html").read_text()


def test_the_archived_notebook_opens_with_the_verdict_and_carries_the_findings(demo_run):
    result, out = demo_run
    nb = nbformat.read(out / result.record["notebook"], as_version=4)
    assert "opsbook-verdict" in nb.cells[0].metadata["tags"]
    assert nb.cells[0].source.startswith("# Verdict: ")
    assert nb.metadata["opsbook_run"]["findings"] == result.record["findings"]
    assert nb.metadata["opsbook"]["title"], "the runbook's declaration is kept"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and result.record["run_id"] in injected[0].source
    html = (out / result.record["html"]).read_text()
    assert html.index("Verdict:") < html.index("Statement statistics")


def test_the_run_json_follows_the_contract(demo_run):
    record = demo_run[0].record
    for key in ("run_id", "runbook", "status", "severity", "started_at", "finished_at", "duration_s",
                "parameters", "target", "findings", "metrics", "notebook", "html", "versions"):
        assert key in record, key
    assert record["target"]["database"].startswith("postgresql://app:***@127.0.0.1:")
    assert record["versions"]["postgres"].startswith("18")
    for finding in record["findings"]:
        assert set(finding) >= {"check", "severity", "title", "count"}


def test_the_run_json_carries_the_servers_numbers(demo_run):
    metrics = demo_run[0].record["metrics"]
    assert {"connections_used", "connections_usable", "connections_used_pct", "cache_hit_ratio_tables",
            "cache_hit_ratio_indexes", "statements_tracked", "statements_max", "statement_statistics_age_s",
            "database_statistics_age_s", "longest_query_s", "oldest_transaction_s"} <= set(metrics)
    assert 3 <= metrics["connections_used"] <= metrics["connections_usable"]  # the demo app's three, at least
    assert 0 < metrics["cache_hit_ratio_tables"] <= 1
    assert 0 < metrics["statements_tracked"] <= metrics["statements_max"]
    assert metrics["longest_query_s"] >= 2  # the planted long-running report


def test_the_notebook_finds_planted_problems_on_postgresql_15(pg15, tmp_path):
    from .conftest import Database

    db = Database(pg15)
    try:
        db.execute("CREATE TABLE accounts (id serial PRIMARY KEY, email text, created_at timestamptz)")
        db.execute("CREATE INDEX accounts_email_idx ON accounts (email)")
        db.execute("CREATE INDEX accounts_email_created_idx ON accounts (email, created_at)")
        db.execute("SELECT setval('accounts_id_seq', 2100000000)")
        result = runner.run("slow_queries", env={"DATABASE_URL": db.url}, outputs=tmp_path)
    finally:
        db.drop()
    assert result.record["versions"]["postgres"].startswith("15")
    found = by_check(result.record)
    assert found["duplicate_indexes"]["items"] == ["accounts_email_idx"]
    assert found["sequence_overflow_risk"]["severity"] == "critical"
    nb = nbformat.read(tmp_path / result.record["notebook"], as_version=4)
    plans = next(c for c in nb.cells if c.cell_type == "code" and "statement_plans" in c.source)
    assert "needs PostgreSQL 16+" in json.dumps(plans.outputs)
