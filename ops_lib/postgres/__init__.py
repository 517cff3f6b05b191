"""PostgreSQL health checks for the slow_queries runbook, in the manner of PgHero.

Every check takes an open SQLAlchemy ``Connection`` (the runbook's read-only session; checks
never open one) and keyword thresholds, and returns a ``Finding`` with a stable check id.
A check that cannot see something (a missing extension, a privilege) says so in a note
rather than raising, and statements that may fail run inside a SAVEPOINT so the session's
transaction stays usable.

A role with only ``pg_monitor`` and ``pg_read_all_data`` can run all of them.
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.engine import Connection

from ..findings import Finding
from ..findings import run_checks as _run_checks
from .activity import (
    blocked_queries,
    connection_limits,
    connection_saturation,
    connections_by_state,
    idle_in_transaction,
    long_running_queries,
    session_key,
    usable_connections,
)
from .indexes import duplicate_indexes, invalid_indexes, missing_index_candidates, unused_indexes
from .maintenance import (
    low_cache_hit_ratio,
    sequence_overflow_risk,
    table_cache_hits,
    transaction_id_wraparound_risk,
)
from .metrics import server_metrics
from .queries import (
    pg_stat_statements_missing,
    slow_queries,
    statement_plans,
    statements_available,
    statements_info,
    top_statements,
)
from .remediation import (
    apply_slow_queries_plan,
    cancel_backends,
    plan_cancel_backends,
    plan_for_slow_queries,
    remediate_slow_queries,
    reset_statement_stats,
)

#: check id -> function, in the order the runbook reports them.
CHECKS: dict[str, Callable[..., Finding]] = {
    "pg_stat_statements_missing": pg_stat_statements_missing,
    "slow_queries": slow_queries,
    "long_running_queries": long_running_queries,
    "blocked_queries": blocked_queries,
    "idle_in_transaction": idle_in_transaction,
    "connection_saturation": connection_saturation,
    "low_cache_hit_ratio": low_cache_hit_ratio,
    "unused_indexes": unused_indexes,
    "duplicate_indexes": duplicate_indexes,
    "invalid_indexes": invalid_indexes,
    "missing_index_candidates": missing_index_candidates,
    "sequence_overflow_risk": sequence_overflow_risk,
    "transaction_id_wraparound_risk": transaction_id_wraparound_risk,
}


def run_checks(conn: Connection, thresholds: dict[str, dict[str, Any]] | None = None) -> list[Finding]:
    """Every check in ``CHECKS`` with its keyword thresholds from ``thresholds[check_id]``."""
    return _run_checks(CHECKS, {"conn": conn}, thresholds)


__all__ = [
    "CHECKS",
    "run_checks",
    "blocked_queries",
    "cancel_backends",
    "connection_limits",
    "connection_saturation",
    "connections_by_state",
    "duplicate_indexes",
    "idle_in_transaction",
    "invalid_indexes",
    "long_running_queries",
    "low_cache_hit_ratio",
    "missing_index_candidates",
    "pg_stat_statements_missing",
    "plan_cancel_backends",
    "reset_statement_stats",
    "sequence_overflow_risk",
    "server_metrics",
    "session_key",
    "slow_queries",
    "statement_plans",
    "statements_available",
    "statements_info",
    "table_cache_hits",
    "top_statements",
    "transaction_id_wraparound_risk",
    "unused_indexes",
    "usable_connections",
    "plan_for_slow_queries",
    "apply_slow_queries_plan",
    "remediate_slow_queries",
]
