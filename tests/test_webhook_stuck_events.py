"""stuck_events: acknowledged but never processed, past a grace period; in-flight events are left alone."""
from datetime import datetime, timedelta, timezone

from ops_lib.webhooks.checks import stuck_events
from ops_lib.webhooks.replay import replay_candidates

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def row(event_id, status, minutes_ago):
    return {"stripe_event_id": event_id, "type": "checkout.session.completed", "status": status,
            "error": None, "received_at": NOW - timedelta(minutes=minutes_ago)}


RECEIVED = [
    row("evt_stuck_old", "received", 600),
    row("evt_stuck_just_past", "received", 16),
    row("evt_in_flight", "received", 2),        # the control: younger than the grace period
    row("evt_processed_old", "processed", 600),
    row("evt_failed_old", "failed", 600),        # failed_events' business, not this check's
]


def test_only_acknowledged_events_past_the_grace_period_are_named():
    found = stuck_events(RECEIVED, now=NOW, grace_minutes=15)
    assert found.severity == "critical"
    assert sorted(found.items) == ["evt_stuck_just_past", "evt_stuck_old"]
    assert "in flight" in (found.note or "")
    assert {r["stuck_minutes"] for r in found.rows} == {600.0, 16.0}


def test_the_grace_period_is_a_parameter():
    assert stuck_events(RECEIVED, now=NOW, grace_minutes=60).items == ["evt_stuck_old"]
    assert sorted(stuck_events(RECEIVED, now=NOW, grace_minutes=0).items) == [
        "evt_in_flight", "evt_stuck_just_past", "evt_stuck_old"]
    healthy = stuck_events(RECEIVED, now=NOW, grace_minutes=1000)
    assert healthy.severity == "ok" and healthy.items == []


def test_naive_timestamps_are_read_as_utc():
    naive = [{**r, "received_at": r["received_at"].replace(tzinfo=None)} for r in RECEIVED]
    assert sorted(stuck_events(naive, now=NOW, grace_minutes=15).items) == ["evt_stuck_just_past", "evt_stuck_old"]


def test_a_replay_leaves_in_flight_events_to_the_app():
    events = [{"id": r["stripe_event_id"], "type": r["type"], "created": 0, "pending_webhooks": 0} for r in RECEIVED]
    ids = {e["id"] for e in replay_candidates(events, RECEIVED, in_flight_minutes=15, now=NOW)}
    assert ids == {"evt_stuck_old", "evt_stuck_just_past", "evt_failed_old"}
    assert "evt_in_flight" in {e["id"] for e in replay_candidates(events, RECEIVED)}, "no grace: everything unprocessed"
