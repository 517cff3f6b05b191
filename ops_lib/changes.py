"""What changed between two runs of a runbook on the same target: per check, the items that are
new, those resolved, and how many are still open.

Items are each check's stable ids (a statement's queryid, an event id, an index name), so an
hourly schedule can alert on what is new rather than on the same incident every hour.
"""
from __future__ import annotations

import json
from typing import Any

from .archive import Archive

FINISHED = ("ok", "findings")


def _key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=str)


def _open_items(record: dict) -> dict[str, dict[str, Any]]:
    """Per check that ran: its open items by key (a problem without items counts as one item)."""
    ran = {c["check"]: {} for c in record.get("checks", []) if isinstance(c, dict) and "check" in c}
    for finding in record.get("findings", []):
        items = finding.get("items") or ([f"{finding['check']} ({finding.get('count', 0)})"] if finding.get("count") else [])
        ran[finding["check"]] = {_key(item): item for item in items}
    return ran


def compare(previous: dict | None, current: dict) -> dict:
    """``changes`` for ``current`` against ``previous`` (None: nothing to compare with)."""
    if previous is None:
        return {"previous_run": None, "new": 0, "resolved": 0, "checks": {}}
    before, now = _open_items(previous), _open_items(current)
    checks = {}
    for check in sorted(set(before) | set(now)):
        was, is_ = before.get(check, {}), now.get(check, {})
        if check not in now:  # not run this time: nothing can be said to be resolved
            continue
        new = [item for key, item in is_.items() if key not in was]
        resolved = [item for key, item in was.items() if key not in is_] if check in before else []
        if new or resolved or is_:
            checks[check] = {"new": new, "resolved": resolved, "still_open": len(is_) - len(new)}
    return {
        "previous_run": previous["run_id"],
        "new": sum(len(c["new"]) for c in checks.values()),
        "resolved": sum(len(c["resolved"]) for c in checks.values()),
        "checks": checks,
    }


def previous_run(archive: Archive, record: dict) -> dict | None:
    """The last finished run of the same runbook on the same target before ``record``."""
    target = (record.get("target") or {}).get("database")
    for row in archive.runs(record["runbook"]):  # newest first
        if row["run_id"] == record["run_id"] or row.get("status") not in FINISHED:
            continue
        if str(row.get("started_at", "")) > str(record.get("started_at", "")):
            continue
        try:
            earlier = archive.load(row["run_id"])
        except (OSError, ValueError, KeyError):
            continue
        if (earlier.get("target") or {}).get("database") == target:
            return earlier
    return None


def describe(changes: dict) -> str:
    """One sentence for the verdict."""
    if not changes or changes.get("previous_run") is None:
        return "No earlier run of this runbook on this target to compare with."
    return (f"Since the previous run of this runbook on this target ({changes['previous_run']}): "
            f"{changes['new']} new, {changes['resolved']} resolved.")
