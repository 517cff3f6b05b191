"""What changed since the last run: `changes` in the run's JSON, the verdict's sentence, `opsbook diff`,
the published run schema, and the report a reviewer reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops_lib import changes
from ops_lib.archive import check_against_schema
from ops_lib.target import TARGET_VARIABLES

from .demo_target import scratch_dir


def _record(run_id: str, findings: dict[str, list], checks: tuple[str, ...] = ()) -> dict:
    return {"run_id": run_id, "runbook": "rb", "started_at": run_id,
            "checks": [{"check": c, "severity": "warning" if c in findings else "ok", "count": len(findings.get(c, []))}
                       for c in {*checks, *findings}],
            "findings": [{"check": c, "severity": "warning", "title": "t", "count": len(items), "items": items}
                         for c, items in findings.items()]}


def test_items_that_appear_are_new_and_items_that_go_are_resolved():
    before = _record("a", {"unused_indexes": ["i1", "i2"], "slow_queries": [11]}, checks=("blocked_queries",))
    after = _record("b", {"unused_indexes": ["i2", "i3"], "blocked_queries": [7]}, checks=("slow_queries",))
    result = changes.compare(before, after)
    assert result["previous_run"] == "a" and result["new"] == 2 and result["resolved"] == 2
    assert result["checks"]["unused_indexes"] == {"new": ["i3"], "resolved": ["i1"], "still_open": 1}
    assert result["checks"]["slow_queries"] == {"new": [], "resolved": [11], "still_open": 0}
    assert result["checks"]["blocked_queries"] == {"new": [7], "resolved": [], "still_open": 0}


def test_a_check_that_did_not_run_this_time_resolves_nothing():
    before = _record("a", {"unused_indexes": ["i1"]})
    after = _record("b", {}, checks=("slow_queries",))
    assert changes.compare(before, after)["resolved"] == 0


def test_a_first_run_has_nothing_to_compare_with():
    assert changes.compare(None, _record("b", {"x": [1]})) == {"previous_run": None, "new": 0, "resolved": 0, "checks": {}}
    assert "No earlier run" in changes.describe(changes.compare(None, _record("b", {})))


def test_the_schema_refuses_a_record_that_breaks_it():
    with pytest.raises(ValueError, match="run.schema.json at status"):
        check_against_schema({"schema_version": 1, "run_id": "rb-20260101T000000Z-abcdef", "runbook": "rb",
                              "status": "fine", "severity": "ok", "started_at": "2026-01-01T00:00:00Z",
                              "finished_at": "2026-01-01T00:00:01Z", "duration_s": 1, "exit_code": 0,
                              "findings": [], "checks": [], "metrics": {}, "actions": []})


def opsbook(*args, folder: Path, out: Path, env: dict):
    full = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    full.update(OPSBOOK_RUNBOOKS=str(folder), OPSBOOK_OUTPUTS=str(out), OPSBOOK_STRICT="1", **env)
    return subprocess.run([sys.executable, "-m", "ops_lib.cli", *args], capture_output=True, text=True, env=full,
                          timeout=300)


def test_a_second_run_says_what_is_new_and_resolved_and_diff_shows_it(database18):
    folder, out = scratch_dir("changes") / "runbooks", scratch_dir("changes-out")
    env = {"DATABASE_URL": database18.url}
    assert opsbook("new", "table_keys", folder=folder, out=out, env=env).returncode == 0
    database18.execute("CREATE TABLE first_table (id int)")
    assert opsbook("run", "table_keys", folder=folder, out=out, env=env).returncode == 1
    database18.execute("CREATE TABLE second_table (id int)")
    database18.execute("ALTER TABLE first_table ADD PRIMARY KEY (id)")
    assert opsbook("run", "table_keys", folder=folder, out=out, env=env).returncode == 1

    records = sorted((json.loads(p.read_text()) for p in out.glob("table_keys/*/*.json")), key=lambda r: r["started_at"] + r["run_id"])
    first, second = records
    assert first["changes"]["previous_run"] is None
    assert second["changes"]["previous_run"] == first["run_id"]
    assert second["changes"]["checks"]["tables_without_primary_key"] == {
        "new": ["second_table"], "resolved": ["first_table"], "still_open": 0}
    html = (out / second["html"]).read_text()
    assert f"Since the previous run of this runbook on this target ({first['run_id']}): 1 new, 1 resolved." in html
    assert ("New: <code>tables_without_primary_key</code>: second_table. "
            "Resolved: <code>tables_without_primary_key</code>: first_table.") in html

    diff = opsbook("diff", folder=folder, out=out, env=env)
    assert diff.returncode == 0, diff.stderr
    assert "1 new, 1 resolved" in diff.stdout and "+ second_table" in diff.stdout and "- first_table" in diff.stdout
    both = opsbook("diff", first["run_id"], second["run_id"], "--json", folder=folder, out=out, env=env)
    assert json.loads(both.stdout)["checks"]["tables_without_primary_key"]["new"] == ["second_table"]
    assert opsbook("diff", "nope-20260101T000000Z-000000", folder=folder, out=out, env=env).returncode == 3


def test_the_report_hides_code_behind_one_click_and_states_the_verdict_once(database18):
    folder, out = scratch_dir("report") / "runbooks", scratch_dir("report-out")
    env = {"DATABASE_URL": database18.url}
    assert opsbook("new", "table_keys", folder=folder, out=out, env=env).returncode == 0
    database18.execute("CREATE TABLE no_key (id int)")
    assert opsbook("run", "table_keys", folder=folder, out=out, env=env).returncode == 1
    (record_path,) = out.glob("table_keys/*/*.json")
    html = (out / json.loads(record_path.read_text())["html"]).read_text()
    assert 'id="opsbook-show-code"' in html and ".jp-Cell-inputWrapper{display:none}" in html
    assert html.count(">Verdict:") == 1, "the verdict is stated once, on top"
    assert html.index(">Verdict:") < html.index("Tables without a primary key")


def test_the_index_filters_by_runbook_and_verdict_and_never_shows_a_failed_run_green(tmp_path):
    from ops_lib.archive import render_index

    runs = [
        {"run_id": "a-20260101T000003Z-000003", "runbook": "alpha", "status": "invalid", "severity": "ok",
         "started_at": "2026-01-01T00:00:03Z", "error": "bad parameter"},
        {"run_id": "a-20260101T000002Z-000002", "runbook": "alpha", "status": "findings", "severity": "warning",
         "started_at": "2026-01-01T00:00:02Z", "findings": {"unused_indexes": "warning"}},
        {"run_id": "a-20260101T000001Z-000001", "runbook": "alpha", "status": "ok", "severity": "ok",
         "started_at": "2026-01-01T00:00:01Z", "findings": {}},
        {"run_id": "b-20260101T000000Z-000000", "runbook": "beta", "status": "lost", "severity": "ok",
         "started_at": "2026-01-01T00:00:00Z"},
    ]
    page = render_index(runs, tmp_path)
    assert 'data-runbook="alpha" data-verdict="invalid"' in page and 'data-verdict="lost"' in page
    invalid_row = page[page.index('data-verdict="invalid"'):].split("</tr>")[0]
    assert "#2e7d32" not in invalid_row, "an invalid run is not shown green"
    assert '<option value="beta">' in page and '<option value="warning">' in page
    trend = page[page.index("Checks over the last runs"):]
    assert "unused_indexes" in trend
    # oldest left: ok (green), then warning (orange), then the invalid run (grey)
    cells = trend.split("unused_indexes")[1].split("</tr>")[0]
    assert cells.index("#2e7d32") < cells.index("#ef6c00") < cells.index("#bdbdbd")
