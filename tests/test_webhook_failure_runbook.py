"""webhook_failure end to end against the demo: the planted incidents are found exactly, a replay fixes them."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from ops_lib import runner
from ops_lib.demo import lifecycle
from ops_lib.target import TARGET_VARIABLES

REPLAYABLE = ("missing_events", "failed_events", "signature_mismatch", "undelivered_events", "unfulfilled_payments",
              "stuck_events")


def replayed():
    """What a replay sends: every event Stripe has not delivered, and every one stuck in the app."""
    planted = lifecycle.planted()["webhook_failure"]
    return set(planted["undelivered_events"]) | set(planted["stuck_events"])


def by_check(record):
    return {f["check"]: f for f in record["findings"]}


@pytest.fixture(scope="module")
def first_run(demo, tmp_path_factory):
    return runner.run("webhook_failure", outputs=tmp_path_factory.mktemp("archive"))


@pytest.mark.parametrize("check", list(REPLAYABLE) + ["endpoint_missing_event_types", "endpoint_disabled", "refunds_not_reversed"])
def test_every_planted_webhook_incident_is_found_exactly(first_run, check):
    planted = lifecycle.planted()["webhook_failure"][check]
    found = by_check(first_run.record).get(check)
    assert found is not None, f"{check} found nothing"
    assert sorted(found["items"]) == sorted(planted)


def test_the_run_names_the_emulator_and_pins_the_api_version(first_run):
    assert first_run.record["target"]["stripe"] == "emulator"
    assert first_run.record["versions"]["stripe_api"] == "2023-08-16"
    assert first_run.record["metrics"]["events_in_window"] == 30 + 4 + 3  # purchases, refunds and disputes, PaymentIntents


def test_a_metric_named_after_a_check_counts_what_its_finding_counts(first_run):
    metrics, found = first_run.record["metrics"], by_check(first_run.record)
    planted = lifecycle.planted()["webhook_failure"]
    for check in ("missing_events", "failed_events", "undelivered_events"):
        assert metrics[check] == (found[check]["count"] if check in found else 0) == len(planted[check]), check
    states = [row["state"] for row in found["undelivered_events"]["rows"]]
    assert metrics["undelivered_events_retrying"] == states.count("retrying")
    assert metrics["undelivered_events_retries_exhausted"] == states.count("retries exhausted")
    assert metrics["undelivered_events_retrying"] + metrics["undelivered_events_retries_exhausted"] == metrics[
        "undelivered_events"]


def test_the_unsigned_probe_is_only_planned_by_default(first_run):
    assert "endpoint_accepts_unsigned" not in by_check(first_run.record)
    assert {"check": "endpoint_accepts_unsigned", "severity": "ok"}.items() <= next(
        c for c in first_run.record["checks"] if c["check"] == "endpoint_accepts_unsigned").items()
    planned = [a for a in first_run.record["actions"] if a["action"] == "probe_unsigned_delivery"]
    assert len(planned) == 1 and not planned[0]["applied"]


def test_the_dry_run_plans_every_replay_and_sends_nothing(first_run):
    planned = [a for a in first_run.record["actions"] if a["action"] == "replay_webhook_event"]
    assert {a["target"] for a in planned} == replayed()
    assert not any(a["applied"] for a in planned)
    created = [a["detail"]["created"] for a in planned]
    assert created == sorted(created), "replays go out in created order"


def test_a_replay_fixes_the_incidents_and_a_second_one_sends_nothing(first_run, tmp_path):
    applied = runner.run("webhook_failure", overrides=[("apply", "true")], outputs=tmp_path)
    sent = [a for a in applied.record["actions"] if a["applied"]]
    assert {a["target"] for a in sent} == replayed()
    assert all(a["outcome"].startswith("delivered") for a in sent), sent

    after = runner.run("webhook_failure", overrides=[("apply", "true")], outputs=tmp_path)
    remaining = by_check(after.record)
    ignored = lifecycle.planted()["webhook_failure"]["unfulfilled_payments_ignored_by_the_app"]
    for check in REPLAYABLE:
        if check == "unfulfilled_payments":
            # processed by a handler that ignores PaymentIntents: a replay cannot fulfil it
            assert remaining[check]["items"] == ignored, remaining[check]
            continue
        assert check not in remaining or remaining[check]["severity"] in ("ok", "info"), remaining.get(check)
    assert not [a for a in after.record["actions"] if a["applied"]], "applying twice sends nothing the second time"
    assert "endpoint_missing_event_types" in remaining, "configuration problems are not fixed by a replay"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {e["target"] for e in audit} == {a["target"] for a in sent}
    assert all(e["run_id"] == applied.run_id for e in audit)


def opsbook(*args, env, out):
    base = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    base.update(env, OPSBOOK_OUTPUTS=str(out))
    return subprocess.run([sys.executable, "-m", "ops_lib.cli", *args], capture_output=True, text=True, env=base, timeout=300)


def demo_env(demo, **changes):
    env = lifecycle.target_of(demo).env()
    env.update(changes)
    return env


def test_a_wrong_stripe_key_exits_3_before_anything_runs(demo, tmp_path):
    done = opsbook("run", "webhook_failure", env=demo_env(demo, STRIPE_API_KEY="sk_test_revokedKEY0000000000abcd"), out=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "sk_test_revokedKEY0000000000abcd" not in done.stderr
    assert "STRIPE_API_KEY" in done.stderr or "key" in done.stderr.lower()
    assert not list(tmp_path.rglob("*.ipynb"))


@pytest.mark.parametrize("status, words", [(500, "Stripe"), (429, "rate")])
def test_stripe_failing_mid_run_exits_2_with_the_failing_cell_archived(demo, tmp_path, status, words):
    faults = demo["stripe_api_base"] + "/_emulator/faults"
    request = urllib.request.Request(faults, method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"status": status, "count": None, "path_prefix": "/v1/events"}).encode())
    urllib.request.urlopen(request).close()
    try:
        done = opsbook("run", "webhook_failure", env=demo_env(demo), out=tmp_path)
    finally:
        urllib.request.urlopen(urllib.request.Request(faults, method="DELETE")).close()
    assert done.returncode == 2, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and "StripeAccessError" in error_lines[0] and words.lower() in error_lines[0].lower()
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert record["status"] == "error" and (tmp_path / record["notebook"]).is_file()


def test_a_mapping_that_names_a_missing_column_exits_3_naming_the_file(demo, tmp_path):
    mapping = tmp_path / "broken.yaml"
    text = (lifecycle.paths.params_dir() / "schema" / "reference.yaml").read_text()
    mapping.write_text(text.replace("raw_body: raw_body", "raw_body: body_raw"))
    done = opsbook("run", "webhook_failure", env=demo_env(demo, OPSBOOK_SCHEMA=str(mapping)), out=tmp_path / "out")
    assert done.returncode == 3
    assert f"{mapping}: entities.webhook_events.columns.raw_body names column webhook_events.body_raw, which does not exist" in done.stderr
