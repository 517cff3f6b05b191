"""quota_audit and revenue_report against the demo: exactly the planted incidents, no misses, no false alarms."""
import pytest

from ops_lib import runner
from ops_lib.demo import lifecycle


def items_by_check(record):
    return {f["check"]: sorted(map(str, f["items"])) for f in record["findings"] if f["severity"] != "ok"}


def planted_for(runbook):
    return {check: sorted(map(str, items)) for check, items in lifecycle.planted()[runbook].items() if items}


@pytest.fixture(scope="module")
def quota_run(demo, tmp_path_factory):
    return runner.run("quota_audit", outputs=tmp_path_factory.mktemp("quota"))


def test_quota_audit_finds_exactly_the_planted_incidents(quota_run):
    found = items_by_check(quota_run.record)
    surged = found.pop("usage_surge", [])
    assert found == planted_for("quota_audit")
    trend = lifecycle.planted()["usage_trend"]
    assert str(trend["surge"]) in surged and str(trend["control"]) not in surged


def test_quota_audit_reset_fixes_the_drift_and_applying_again_changes_nothing(quota_run, tmp_path):
    drifted = set(planted_for("quota_audit")["usage_counter_drift"])
    applied = runner.run("quota_audit", overrides=[("apply", "true")], outputs=tmp_path)
    changed = [a for a in applied.record["actions"] if a["applied"]]
    assert len(changed) == len(drifted)

    after = runner.run("quota_audit", overrides=[("apply", "true")], outputs=tmp_path)
    assert "usage_counter_drift" not in items_by_check(after.record)
    assert not [a for a in after.record["actions"] if a["applied"]], "a second apply changes nothing"
    untouched = {k: v for k, v in planted_for("quota_audit").items() if k != "usage_counter_drift"}
    assert {k: v for k, v in items_by_check(after.record).items() if k != "usage_surge"} == untouched


def test_revenue_report_finds_exactly_the_planted_incidents(demo, tmp_path):
    result = runner.run("revenue_report", outputs=tmp_path)
    assert result.record["status"] == "findings"
    assert items_by_check(result.record) == planted_for("revenue_report")
    assert "mrr_identity_broken" not in items_by_check(result.record), "the demo's MRR history adds up"
    assert any(key.startswith("mrr") for key in result.record["metrics"]), result.record["metrics"]
