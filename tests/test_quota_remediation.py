"""Resetting drifted usage counters: dry run, one audited transaction, guarded, idempotent.

On its own copy of the demo-like state (the resets change it), real PostgreSQL 18 and the
Stripe emulator.
"""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from ops_lib.audit import AuditLog
from ops_lib.db import make_engine
from ops_lib.errors import UnsafeAction
from ops_lib.quota import remediation

from .test_quota_checks import MAPPING, build_quota_target


@pytest.fixture(scope="module")
def target(pg18):
    t = build_quota_target(pg18)
    yield t
    t.close()


def counters(target) -> dict[int, int]:
    return dict(target.query("SELECT organization_id, used FROM usage_counters"))


def app_audit_rows(target) -> list[tuple]:
    return target.query("SELECT actor, action, entity, entity_id, details FROM audit_log ORDER BY id")


def writer(target):
    """What ctx.connect_for_changes gives the notebook: a writable session with the safety timeouts."""
    return lambda: make_engine(target.url, runbook="quota_audit", run_id="test-run", read_only=False).connect()


def test_the_dry_run_plans_each_reset_and_changes_nothing(target):
    before, audit_before = counters(target), app_audit_rows(target)
    _, usage, found = target.audit()
    plan = remediation.reset_drifted_counters(usage, schema=MAPPING)
    assert sorted(a.detail["organisation_id"] for a in plan) == target.planted["usage_counter_drift"]
    assert not any(a.applied for a in plan) and {a.outcome for a in plan} == {"planned"}
    drift = {r["organisation_id"]: r for r in found["usage_counter_drift"].rows}
    for action in plan:
        row = drift[action.detail["organisation_id"]]
        assert (action.detail["stored"], action.detail["recomputed"]) == (row["stored"], row["recomputed"])
    assert counters(target) == before and app_audit_rows(target) == audit_before
    with pytest.raises(UnsafeAction, match="connect_for_changes="):
        remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True)


def test_the_resets_are_one_transaction(target):
    """A failure on the last change undoes the earlier ones: nothing half-applied."""
    before = counters(target)
    _, usage, _ = target.audit()
    last = sorted(target.planted["usage_counter_drift"])[-1]
    target.db.execute(f"ALTER TABLE audit_log ADD CONSTRAINT quota_test_refuse CHECK (entity_id <> '{last}')")
    try:
        with pytest.raises(sa.exc.IntegrityError):
            remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target))
    finally:
        target.db.execute("ALTER TABLE audit_log DROP CONSTRAINT quota_test_refuse")
    assert counters(target) == before


def test_apply_resets_audits_and_a_second_apply_changes_nothing(target, tmp_path):
    audit = AuditLog("quota_audit-test-run", "quota_audit", "postgresql://…", path=tmp_path / "audit.jsonl")
    audit_before = len(app_audit_rows(target))
    _, usage, found = target.audit()
    drift = {r["organisation_id"]: r for r in found["usage_counter_drift"].rows}
    # The app counts one more event for one organisation between the run's read and the reset.
    moved = sorted(drift)[0]
    target.db.execute("UPDATE usage_counters SET used = used + 1 WHERE organization_id = :org", org=moved)

    applied = remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target),
                                                 audit=audit, run_id="quota_audit-test-run", reason="test reset")
    outcome = {a.detail["organisation_id"]: a for a in applied}
    assert outcome[moved].applied is False and outcome[moved].outcome.startswith("skipped: the counter changed")
    now = counters(target)
    assert now[moved] == drift[moved]["stored"] + 1, "a counter changed meanwhile is not overwritten"
    fixed = [org for org in drift if org != moved]
    for org in fixed:
        assert outcome[org].applied and outcome[org].outcome == f"reset from {drift[org]['stored']} to {drift[org]['recomputed']}"
        assert now[org] == drift[org]["recomputed"]

    rows = app_audit_rows(target)[audit_before:]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("opsbook", "usage_counter.reset", "usage_counters", str(o)) for o in fixed]
    details = rows[0][4]
    assert details["run_id"] == "quota_audit-test-run" and details["reason"] == "test reset"
    assert (details["from"], details["to"]) == (drift[fixed[0]]["stored"], drift[fixed[0]]["recomputed"])
    entries = audit.entries()
    assert [e["detail"]["organisation_id"] for e in entries] == fixed
    assert all(e["action"] == "reset_usage_counter" and e["run_id"] == "quota_audit-test-run" for e in entries)

    # The same plan applied again: every guard finds the counter already reset; nothing written.
    again = remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target), audit=audit)
    assert not any(a.applied for a in again)
    assert {a.detail["organisation_id"]: a.outcome.split(":")[0] for a in again} == {
        **{org: "already reset" for org in fixed}, moved: "skipped"}
    assert counters(target) == now and len(app_audit_rows(target)) == audit_before + len(fixed)
    assert len(audit.entries()) == len(fixed)

    # A fresh run sees only the organisation whose counter moved, and resets it; then nothing is left.
    _, usage, found = target.audit()
    assert found["usage_counter_drift"].items == [moved]
    remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target), audit=audit)
    _, usage, found = target.audit()
    assert found["usage_counter_drift"].severity == "ok"
    assert remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target)) == []
    assert json.dumps([e for e in audit.entries()], default=str)  # the log stays readable JSON


def test_a_missing_counter_is_inserted_once(target):
    _, usage, _ = target.audit()
    row = next(r for r in usage if r["used"] > 0 and r["stored"] == r["used"])
    org = row["organisation_id"]
    target.db.execute("DELETE FROM usage_counters WHERE organization_id = :org", org=org)
    _, usage, found = target.audit()
    assert found["usage_counter_drift"].items == [org]
    assert "no counter" in found["usage_counter_drift"].rows[0]["what"]
    first = remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target))
    assert first[0].applied and first[0].outcome == f"inserted counter at {row['used']}"
    second = remediation.reset_drifted_counters(usage, schema=MAPPING, apply=True, connect_for_changes=writer(target))
    assert not second[0].applied and second[0].outcome.startswith("already reset")
    assert counters(target)[org] == row["used"]
