"""Remediations for the slow_queries runbook: cancel backends, reset statement statistics.

Each is a dry run unless ``apply=True``: the dry run returns the plan (an ``ActionLog`` of
planned actions) and changes nothing. Applied actions are recorded in the audit log, and a
second application of the same plan changes nothing:

* a backend is cancelled only if it is still the same backend running the same query as when
  it was listed (same pid, ``backend_start`` and ``query_start``, still active); otherwise the
  outcome is "already gone";
* statistics are reset once per run and target: a reset already in the audit log for this run
  is not repeated.

Which sessions may apply what:

* ``pg_cancel_backend`` is allowed in a read-only transaction and changes no data: it
  interrupts one query, which fails with "canceling statement due to user request" and can be
  retried. So ``cancel_backends`` runs on the notebook's ordinary read-only session; the
  safeguard is ``apply=True`` plus the identity check, not the session mode. (Cancelling other
  roles' queries needs pg_signal_backend or the same role, and never a superuser's; a refusal
  is an outcome, not an exception.)
* ``pg_stat_statements_reset()`` would also run in a read-only transaction, but it destroys
  the evidence the runbook is about, so it is treated as a write: it is refused with
  ``UnsafeAction`` on a read-only session, and needs one opened with
  ``make_engine(url, read_only=False)`` as a deliberate second key.

Neither action is transactional (a signal, a shared-memory reset): they take effect at once,
so nothing here commits the caller's transaction.
"""
from __future__ import annotations

from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..audit import AuditLog
from ..db import select_one, select_value
from ..errors import ParameterError, UnsafeAction
from ..findings import Action, ActionLog, Finding
from ..errors import first_line
from .queries import clear_stats_snapshot, savepoint, statements_info

_DETAIL_KEYS = ("pid", "usename", "application_name", "datname", "backend_start", "query_start", "duration_s", "wait_s")


def _cancel_action(backend: dict, reason: str) -> Action:
    detail = {k: backend.get(k) for k in _DETAIL_KEYS if backend.get(k) is not None}
    detail["query"] = (backend.get("query") or "")[:200]
    return Action(action="cancel_backend", target=f"pid {backend['pid']}", reason=reason, detail=detail)


def _need_reason(reason: str, what: str) -> None:
    if not (reason or "").strip():
        raise UnsafeAction(f"{what}(apply=True) needs a reason: it goes into the audit log")


def plan_cancel_backends(backends: list[dict], *, reason: str = "") -> ActionLog:
    """What ``cancel_backends(..., apply=True)`` would do: one planned action per backend."""
    return ActionLog(_cancel_action(backend, reason) for backend in backends)


def cancel_backends(
    conn: Connection,
    backends: list[dict],
    *,
    apply: bool = False,
    audit: AuditLog | None = None,
    reason: str = "",
) -> ActionLog:
    """Cancel the current query of each listed backend (rows of long_running_queries or
    blocked_queries: pid, backend_start, query_start), if it is still that same query."""
    if not apply:
        return plan_cancel_backends(backends, reason=reason)
    _need_reason(reason, "cancel_backends")
    log = ActionLog()
    for backend in backends:
        action = _cancel_action(backend, reason)
        log.append(action)
        if backend.get("backend_start") is None or backend.get("query_start") is None:
            action.outcome = "skipped: no backend_start/query_start to confirm it is the same query"
        else:
            try:
                with savepoint(conn):
                    clear_stats_snapshot(conn)  # the listing may come from this transaction's snapshot
                    cancelled = select_value(
                        conn,
                        """
                        SELECT pg_cancel_backend(a.pid)
                        FROM pg_stat_activity a
                        WHERE a.pid = :pid
                          AND a.pid <> pg_backend_pid()
                          AND a.backend_start = CAST(:backend_start AS timestamptz)
                          AND a.query_start = CAST(:query_start AS timestamptz)
                          AND a.state IN ('active', 'fastpath function call')
                        """,
                        pid=int(backend["pid"]),
                        backend_start=backend["backend_start"],
                        query_start=backend["query_start"],
                    )
                if cancelled is None:
                    action.outcome = "already gone"
                    action.detail["now"] = _describe_now(conn, int(backend["pid"]), backend["backend_start"])
                elif cancelled:
                    action.outcome, action.applied = "cancelled", True
                else:
                    action.outcome = "not cancelled: pg_cancel_backend returned false"
            except sa.exc.DBAPIError as err:
                action.outcome = f"failed: {first_line(err)}"
        if audit is not None:
            audit.record(action)
    return log


def _describe_now(conn: Connection, pid: int, backend_start) -> str:
    row = select_one(
        conn,
        """
        SELECT state, backend_start = CAST(:backend_start AS timestamptz) AS same_backend
        FROM pg_stat_activity WHERE pid = :pid
        """,
        pid=pid,
        backend_start=backend_start,
    )
    if row is None or not row["same_backend"]:
        return "the backend has exited"
    return f"the listed query has finished (backend now {row['state']})" if row["state"] != "active" else (
        "the backend is running another query"
    )


def reset_statement_stats(
    conn: Connection,
    *,
    apply: bool = False,
    audit: AuditLog | None = None,
    reason: str = "",
    scope: str = "database",
) -> ActionLog:
    """Reset pg_stat_statements for this database (``scope="database"``) or the whole server
    (``scope="all"``), e.g. to measure again after adding an index."""
    if scope not in ("database", "all"):
        raise ParameterError(f"reset_statement_stats: scope must be 'database' or 'all', not {scope!r}")
    database = select_value(conn, "SELECT current_database()")
    target = f"pg_stat_statements of database {database}" if scope == "database" else "pg_stat_statements (all databases)"
    action = Action(action="reset_statement_stats", target=target, reason=reason)
    log = ActionLog([action])
    info = statements_info(conn)
    if not info.available:
        action.outcome = "skipped: pg_stat_statements is not available"
        return log
    action.detail["statements"] = select_value(
        conn,
        f"""
        SELECT count(*) FROM {info.view}
        WHERE :all_databases OR dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        all_databases=scope == "all",
    )
    if not apply:
        return log
    _need_reason(reason, "reset_statement_stats")
    if select_value(conn, "SHOW transaction_read_only") == "on":
        raise UnsafeAction(
            "reset_statement_stats(apply=True) refused on a read-only session: open a writable one with "
            "make_engine(url, read_only=False)"
        )
    if audit is not None and any(
        entry.get("run_id") == audit.run_id and entry.get("action") == action.action
        and entry.get("target") == target and entry.get("applied")
        for entry in audit.entries()
    ):
        action.outcome = "already done in this run"
    elif scope == "database" and (not info.version or info.version < (1, 7)):
        action.outcome = f"skipped: pg_stat_statements {info.version_text} can only reset everything (scope='all')"
    else:
        try:
            with savepoint(conn):
                if scope == "database":
                    select_value(
                        conn,
                        f"SELECT {info.schema}.pg_stat_statements_reset(0, "
                        "(SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
                    )
                else:
                    select_value(conn, f"SELECT {info.schema}.pg_stat_statements_reset()")
            action.outcome, action.applied = "reset", True
        except sa.exc.DBAPIError as err:
            action.outcome = f"failed: {first_line(err)}"
    if audit is not None:
        audit.record(action)
    return log


# --------------------------------------------------------------------------------------------
# The slow_queries notebook's remediation cell: a plan from its findings, applied with apply=True.

REMEDIATIONS = ("cancel_long_running", "cancel_root_blockers", "reset_statement_stats")


def _rows(found: Finding | list[dict] | None) -> list[dict]:
    if found is None:
        return []
    return list(found.rows) if isinstance(found, Finding) else list(found)


def plan_for_slow_queries(
    remediate: list[str],
    *,
    long_running: Finding | list[dict] | None = None,
    blocked: Finding | list[dict] | None = None,
    reason: str | None = None,
) -> ActionLog:
    """The actions the notebook's ``remediate`` parameter asks for, planned from its findings.

    ``cancel_long_running`` cancels each listed long-running query; ``cancel_root_blockers``
    cancels the query of each root blocker (one that is idle in transaction is listed as
    skipped: a cancel would not release its locks); ``reset_statement_stats`` resets this
    database's pg_stat_statements. A backend is planned once even when both lists name it.
    ``reason`` (e.g. the run id) replaces each action's default reason.
    """
    unknown = [name for name in remediate if name not in REMEDIATIONS]
    if unknown:
        raise ParameterError(f"unknown remediation(s) {', '.join(unknown)}; choose from {', '.join(REMEDIATIONS)}")
    log, planned_pids = ActionLog(), set()

    def add_cancel(backend: dict, default_reason: str, skip: str | None = None) -> None:
        if backend["pid"] in planned_pids:
            return
        planned_pids.add(backend["pid"])
        action = _cancel_action(backend, reason or default_reason)
        if skip:
            action.outcome = f"skipped: {skip}"
        log.append(action)

    if "cancel_long_running" in remediate:
        for row in _rows(long_running):
            add_cancel(row, f"slow_queries: query running for {row.get('duration_s') or 0:.0f} s")
    if "cancel_root_blockers" in remediate:
        roots: dict[int, dict] = {}
        for row in _rows(blocked):
            if row.get("root_blocker") is not None:
                roots.setdefault(row["root_blocker"], {**row, "blocked": 0})["blocked"] += 1
        for pid, row in roots.items():
            backend = {
                "pid": pid, "usename": row.get("root_usename"), "application_name": row.get("root_application_name"),
                "backend_start": row.get("root_backend_start"), "query_start": row.get("root_query_start"),
                "query": row.get("root_query"),
            }
            skip = None
            if pid == 0:
                skip = "a prepared transaction: COMMIT PREPARED or ROLLBACK PREPARED it"
            elif row.get("root_state") != "active":
                skip = (f"root blocker is {row.get('root_state')}: cancelling releases no lock — end its "
                        "transaction in the application or pg_terminate_backend it")
            add_cancel(backend, f"slow_queries: root blocker of {row['blocked']} waiting session(s)", skip)
    if "reset_statement_stats" in remediate:
        log.append(Action(action="reset_statement_stats", target="pg_stat_statements of this database",
                          reason=reason or "slow_queries: start a fresh measurement window"))
    return log


def apply_slow_queries_plan(
    conn: Connection,
    actions: ActionLog,
    *,
    audit: AuditLog | None = None,
    connect_for_changes: Callable[[], Connection] | None = None,
) -> ActionLog:
    """Apply a plan from ``plan_for_slow_queries``; skipped actions stay as they are.

    Cancels run on ``conn`` (allowed on the read-only session, see the module's docstring).
    The statistics reset needs a writable session: ``connect_for_changes()`` opens one (and it is
    closed again) only if a reset is planned; without it, ``conn`` must itself be writable.
    """
    done = ActionLog()
    for action in actions:
        if action.outcome != "planned":
            done.append(action)
        elif action.action == "cancel_backend":
            done.extend(cancel_backends(conn, [action.detail], apply=True, audit=audit, reason=action.reason))
        elif action.action == "reset_statement_stats":
            if connect_for_changes is None:
                done.extend(reset_statement_stats(conn, apply=True, audit=audit, reason=action.reason))
            else:
                with connect_for_changes() as writable:
                    done.extend(reset_statement_stats(writable, apply=True, audit=audit, reason=action.reason))
        else:
            raise ParameterError(f"apply_slow_queries_plan: unknown action {action.action!r}")
    return done


def remediate_slow_queries(
    conn: Connection,
    remediate: list[str],
    *,
    long_running: Finding | list[dict] | None = None,
    blocked: Finding | list[dict] | None = None,
    apply: bool = False,
    audit: AuditLog | None = None,
    connect_for_changes: Callable[[], Connection] | None = None,
    reason: str | None = None,
) -> ActionLog:
    """The notebook's remediation cell in one call: the plan (dry run), or with ``apply=True``
    the plan applied and audited. Applying the same findings twice changes nothing the second
    time (cancelled queries are "already gone", the reset is "already done in this run")."""
    plan = plan_for_slow_queries(remediate, long_running=long_running, blocked=blocked, reason=reason)
    if not apply or not plan:
        return plan
    return apply_slow_queries_plan(conn, plan, audit=audit, connect_for_changes=connect_for_changes)
