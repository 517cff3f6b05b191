"""The quota_audit notebook itself, executed by papermill against the demo-like state: its
displayed findings equal the planted manifest; with apply=True it resets the drifted counters
(audited), and the next run finds no drift and changes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from ops_lib.findings import ACTION_MIME, FINDING_MIME, METRICS_MIME
from ops_lib.target import TARGET_VARIABLES

from .test_quota_checks import build_quota_target

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quota_audit.ipynb"


@pytest.fixture(scope="module")
def target(pg18):
    t = build_quota_target(pg18)
    yield t
    t.close()


@pytest.fixture
def kernel_env(target, monkeypatch, tmp_path):
    """The kernel inherits os.environ: the target's variables only, and an archive of its own."""
    for name in TARGET_VARIABLES + ("OPSBOOK_DEMO",):
        monkeypatch.delenv(name, raising=False)
    for name, value in target.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPSBOOK_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path


def run(out: Path, **parameters) -> dict:
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"run_id": f"quota_audit-test-{out.stem}", **parameters},
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK.parent))
    notebook = json.loads(out.read_text())
    shown = {"findings": {}, "actions": [], "metrics": {}}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if FINDING_MIME in data:
                shown["findings"][data[FINDING_MIME]["check"]] = data[FINDING_MIME]
            shown["actions"] += data.get(ACTION_MIME, [])
            shown["metrics"].update(data.get(METRICS_MIME, {}))
    return shown


def problems(shown: dict) -> dict:
    """What the quota checks named; the usage trend (info: who surged) is asserted on its own."""
    return {check: f["items"] for check, f in shown["findings"].items()
            if f["severity"] != "ok" and check != "usage_surge"}


def test_the_notebook_finds_the_planted_incidents_then_resets_the_drift(target, kernel_env):
    counters_before = target.query("SELECT organization_id, used FROM usage_counters ORDER BY 1")

    dry = run(kernel_env / "dry.ipynb")
    assert problems(dry) == target.planted
    assert len(dry["findings"]) == 10  # the nine quota checks and the usage trend
    assert dry["metrics"]["organisations"] == len(target.data.organizations)
    assert sorted(a["detail"]["organisation_id"] for a in dry["actions"]) == target.planted["usage_counter_drift"]
    assert not any(a["applied"] for a in dry["actions"])
    assert target.query("SELECT organization_id, used FROM usage_counters ORDER BY 1") == counters_before

    applied = run(kernel_env / "apply.ipynb", apply=True)
    assert problems(applied) == target.planted, "the run reports what it found before resetting"
    assert sorted(a["detail"]["organisation_id"] for a in applied["actions"] if a["applied"]) == target.planted["usage_counter_drift"]
    audit = [json.loads(line) for line in (kernel_env / "outputs" / "audit.jsonl").read_text().splitlines()]
    assert sorted(e["detail"]["organisation_id"] for e in audit) == target.planted["usage_counter_drift"]
    assert {e["run_id"] for e in audit} == {"quota_audit-test-apply"}
    logged = target.query("SELECT entity_id FROM audit_log WHERE action = 'usage_counter.reset'")
    assert sorted(int(r[0]) for r in logged) == target.planted["usage_counter_drift"]

    after = run(kernel_env / "after.ipynb", apply=True)
    assert after["findings"]["usage_counter_drift"]["severity"] == "ok"
    assert not after["actions"], "applying again changes nothing"
    assert problems(after) == {k: v for k, v in target.planted.items() if k != "usage_counter_drift"}
    assert len(target.query("SELECT 1 FROM audit_log WHERE action = 'usage_counter.reset'")) == len(logged)
