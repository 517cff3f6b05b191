"""Resetting drifted usage counters to the usage recomputed from the events.

* The default is a dry run: an ``ActionLog`` of what would be written (organisation, period,
  stored value, recomputed value), and nothing is.
* ``apply=True`` opens one writable connection (``connect``, e.g. ``ctx.connect_for_changes``)
  and writes every reset in ONE transaction. Each ``UPDATE`` is guarded by the value this run
  saw (``… AND used = :stored``): a counter the app changed meanwhile is left alone and
  reported, never overwritten. A missing counter is inserted only if it is still missing.
* Each change is logged twice: as a row in the app's own audit log through the schema mapping
  (``audit_log``: actor, action, entity, entity_id, details — the way the runbooks log a manual
  fix), in the same transaction; and, once committed, in opsbook's audit log (``ctx.audit``).
* Idempotent: applied again, the guard finds the counter already at the recomputed value and
  changes nothing ("already reset"); a fresh run finds no drift and plans nothing.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..audit import AuditLog
from ..errors import UnsafeAction
from ..findings import Action, ActionLog, _plain
from ..schema_map import SchemaMap
from .checks import drifted_positions
from .scan import usage_table

ACTION = "reset_usage_counter"
ACTOR = "opsbook"
APP_AUDIT_ACTION = "usage_counter.reset"
DEFAULT_REASON = "stored usage counter differs from the usage recomputed from the events (quota_audit)"


def drifted(usage: list[dict], tolerance: int = 0) -> list[dict]:
    """The usage rows whose counter needs resetting (as ``usage_counter_drift`` reports them)."""
    usage = usage_table(usage)
    return [usage[n] for n in drifted_positions(usage, tolerance).tolist()]


def _action(row: dict, reason: str) -> Action:
    return Action(
        action=ACTION,
        target=f"organisation {row['organisation_id']} period {row['period_start']:%Y-%m-%dT%H:%M:%SZ}",
        reason=reason,
        detail={"organisation_id": row["organisation_id"], "period_start": row["period_start"],
                "period_end": row["period_end"], "stored": row["stored"], "recomputed": row["used"]},
    )


def plan_counter_resets(usage: list[dict], *, tolerance: int = 0, reason: str = DEFAULT_REASON) -> ActionLog:
    return ActionLog(_action(row, reason) for row in drifted(usage, tolerance))


def reset_drifted_counters(
    usage: list[dict],
    *,
    schema: SchemaMap,
    apply: bool = False,
    connect_for_changes: Callable[[], Connection] | None = None,
    audit: AuditLog | None = None,
    run_id: str | None = None,
    tolerance: int = 0,
    reason: str = DEFAULT_REASON,
) -> ActionLog:
    """Reset every drifted counter in ``usage`` (rows of ``recompute_usage``) to its recomputed value."""
    reason = (reason or "").strip() or DEFAULT_REASON
    log = plan_counter_resets(usage, tolerance=tolerance, reason=reason)
    if not apply or not log:
        return log
    if connect_for_changes is None:
        raise UnsafeAction("reset_drifted_counters(apply=True) needs connect_for_changes= (what opens a writable connection: ctx.connect_for_changes)")
    counters = schema.table("usage_counters")
    app_audit = schema.table("audit_log") if "audit_log" in schema.entities else None
    conn = connect_for_changes()
    try:
        with conn.begin():  # one transaction: every reset and its audit row, or none
            schema.validate(conn, ["usage_counters"] + (["audit_log"] if app_audit is not None else []))
            org_type = _type_of(conn, counters, "organisation_id")
            for action in log:
                _apply_one(conn, counters, app_audit, action, org_type=org_type, run_id=run_id, reason=reason)
    finally:
        conn.close()
        conn.engine.dispose()
    if audit is not None:
        for action in log:
            if action.applied:
                audit.record(action)
    return log


def _apply_one(conn: Connection, counters, app_audit, action: Action, *, org_type: str, run_id: str | None,
               reason: str) -> None:
    d = action.detail
    org, start, stored, recomputed = d["organisation_id"], d["period_start"], d["stored"], d["recomputed"]
    c_org, c_start, c_used = counters.col("organisation_id"), counters.col("period_start"), counters.col("used")
    key = {"org": str(org), "start": start}
    # The id travels as text and is cast to the column's own type, so the primary key serves the lookup.
    where = f"{c_org} = CAST(:org AS {org_type}) AND {c_start} = :start"
    if stored is None:
        columns = [c_org, c_start, c_used]
        values = [f"CAST(:org AS {org_type})", ":start", ":recomputed"]
        if counters.has("period_end"):
            columns.append(counters.col("period_end"))
            values.append(":end")
        changed = conn.execute(sa.text(
            f"INSERT INTO {counters.sql_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(values)} WHERE NOT EXISTS (SELECT 1 FROM {counters.sql_table} WHERE {where})"
        ), {**key, "recomputed": recomputed, "end": d["period_end"]}).rowcount
    else:
        changed = conn.execute(sa.text(
            f"UPDATE {counters.sql_table} SET {c_used} = :recomputed WHERE {where} AND {c_used} = :stored"
        ), {**key, "recomputed": recomputed, "stored": stored}).rowcount
    if changed != 1:
        now = conn.execute(sa.text(f"SELECT {c_used} FROM {counters.sql_table} WHERE {where}"), key).scalar()
        action.outcome = ("already reset: the counter is at the recomputed value" if now == recomputed
                          else f"skipped: the counter changed since it was read (now {now}, read {stored})")
        action.detail["now"] = now
        return
    action.applied = True
    action.outcome = (f"inserted counter at {recomputed}" if stored is None
                      else f"reset from {stored} to {recomputed}")
    action.detail["applied_at"] = datetime.now(timezone.utc)
    if app_audit is None:
        action.detail["app_audit_log"] = "not written: the schema mapping names no audit_log"
        return
    details = json.dumps(_plain({"run_id": run_id, "reason": reason, "period_start": start, "period_end": d["period_end"],
                                 "from": stored, "to": recomputed, "table": counters.table}), sort_keys=True)
    columns = {"actor": ACTOR, "action": APP_AUDIT_ACTION, "entity": counters.table, "entity_id": str(org), "details": details}
    names = [app_audit.col(c) for c in columns if app_audit.has(c)]
    params = {c: v for c, v in columns.items() if app_audit.has(c)}
    values = [f":{c}" for c in params]
    if app_audit.has("created_at"):
        names.append(app_audit.col("created_at"))
        values.append("now()")
    conn.execute(sa.text(f"INSERT INTO {app_audit.sql_table} ({', '.join(names)}) VALUES ({', '.join(values)})"), params)
    action.detail["app_audit_log"] = f"row in {app_audit.table}"


def _type_of(conn: Connection, table, logical: str) -> str:
    """The SQL type of a mapped column (to cast a bound text id back to it), e.g. bigint or uuid."""
    schema_name, name = table.schema_and_name
    found = conn.execute(sa.text(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :schema AND c.relname = :table AND a.attname = :column"
    ), {"schema": schema_name, "table": name, "column": table.columns[logical]}).scalar()
    if not found or not all(ch.isalnum() or ch in " _()," for ch in found):
        return "text"
    return found
