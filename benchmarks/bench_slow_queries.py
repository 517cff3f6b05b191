"""Wall time of slow_queries through papermill versus the same checks in plain Python, and of `opsbook demo`.

    .venv/bin/python benchmarks/bench_slow_queries.py [--runs 5] [--demo-runs 3]

"Plain Python" executes the notebook's own code cells with exec() in a fresh interpreter — the
same calls, without a kernel, papermill, HTML export or the archive — so the difference is
exactly what the notebook machinery costs. Every figure is a median of several runs, with the
demo target already up (except for the `opsbook demo` row, which builds a fresh one each time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPSBOOK = [sys.executable, "-m", "ops_lib.cli"]
NOTEBOOK = REPO / "notebooks" / "slow_queries.ipynb"
DEMO_PARAMS = REPO / "params" / "slow_queries" / "demo.yaml"

PLAIN = r"""
import json, sys, time
started = time.perf_counter()
import yaml
from ops_lib import runbooks
nb = json.load(open(sys.argv[1]))
params = runbooks.get("slow_queries").params.resolve([sys.argv[2]])
scope = {**params, "run_id": None}
for cell in nb["cells"]:
    if cell["cell_type"] == "code" and "parameters" not in cell["metadata"].get("tags", []):
        exec("".join(cell["source"]), scope)
print(json.dumps({"checks": len(scope["ctx"].findings), "seconds": time.perf_counter() - started}))
"""


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def median_of(label: str, runs: int, command: list[str], env: dict) -> dict:
    times = [timed(command, env) for _ in range(runs)]
    row = {"what": label, "runs": runs, "median_s": round(statistics.median(times), 2),
           "min_s": round(min(times), 2), "max_s": round(max(times), 2)}
    print(f"{label:<55} median {row['median_s']:6.2f}s  (min {row['min_s']:.2f}, max {row['max_s']:.2f}, n={runs})", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--demo-runs", type=int, default=3)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="opsbook-bench-"))
    scratch.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET",
                                                             "STRIPE_API_BASE", "OPSBOOK_WEBHOOK_URL", "OPSBOOK_SCHEMA")}
    env.update(OPSBOOK_HOME=str(scratch / "home"), OPSBOOK_OUTPUTS=str(scratch / "outputs"))
    results = []
    try:
        subprocess.run([*OPSBOOK, "demo", "up"], env=env, check=True, capture_output=True, cwd=REPO)
        results.append(median_of("opsbook run slow_queries (papermill, archive, HTML)", args.runs,
                                 [*OPSBOOK, "run", "slow_queries", "-f", str(DEMO_PARAMS)], env))
        results.append(median_of("same checks, plain Python (notebook cells via exec)", args.runs,
                                 [sys.executable, "-c", PLAIN, str(NOTEBOOK), str(DEMO_PARAMS)], env))
        subprocess.run([*OPSBOOK, "demo", "down", "--destroy"], env=env, check=True, capture_output=True, cwd=REPO)
        results.append(median_of("opsbook demo (fresh target, every runbook)", args.demo_runs, [*OPSBOOK, "demo"], env))
    finally:
        subprocess.run([*OPSBOOK, "demo", "down", "--destroy"], env=env, capture_output=True, cwd=REPO)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
