"""opsbook over a fleet, every morning: one task per runbook per target (`<target>.<runbook>`).

Copy this file and targets.yaml into the DAGs folder of an Airflow whose workers have opsbook
installed (`pip install opsbook`; `opsbook_command=` points at another installation's). Each task
runs `opsbook run`, archives the run in `out`, pushes run_id, json_path, verdict and finding
counts to XCom, and ends as the README's exit-code table says.
"""
from datetime import timedelta
from pathlib import Path

from ops_lib.airflow import make_dag

dag = make_dag(
    "opsbook_fleet",
    Path(__file__).with_name("targets.yaml"),
    ["slow_queries", "service_health", "webhook_failure", "quota_audit"],
    parameter_sets={"slow_queries": "daily", "service_health": "daily",
                    "webhook_failure": "daily", "quota_audit": "daily"},
    fail_on="warning",
    out="s3://ops-archive/opsbook",             # one archive for every worker (or a shared folder)
    schedule="0 6 * * *",
    max_active_tasks=4,                         # runbook kernels at once across the fleet
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10), "execution_timeout": timedelta(hours=1)},
)
