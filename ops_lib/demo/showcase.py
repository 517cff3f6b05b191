"""`opsbook demo`: a fresh demo target, every runbook run against it, a verdict table, then stop."""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import paths, runbooks, runner
from ..errors import EXIT_EXECUTION_FAILED, EXIT_OK, OpsbookError
from ..target import TARGET_VARIABLES
from . import lifecycle


def demo_parameter_files(name: str) -> list[Path]:
    """The demo's own parameter set, where a runbook has one (e.g. shorter live-incident thresholds)."""
    path = paths.params_dir() / name / "demo.yaml"
    return [path] if path.is_file() else []


def run(*, seed: int = 42, scale: float = 1.0, keep: bool = False, outputs: str | None = None) -> int:
    # The demo is the target here, whatever the shell points at.
    for name in TARGET_VARIABLES:
        os.environ.pop(name, None)
    started = time.monotonic()
    lifecycle.up(seed=seed, scale=scale, fresh=True, quiet=False)
    results: dict[str, object] = {}

    def one(name: str):
        try:
            return runner.run(name, demo_parameter_files(name), outputs=outputs)
        except OpsbookError as err:
            return err

    try:
        names = [name for name, rb in runbooks.all_runbooks().items() if rb.shipped]
        with ThreadPoolExecutor(max_workers=runner.parallel_runs(len(names))) as pool:
            results = dict(zip(names, pool.map(one, names)))
    finally:
        if not keep:
            lifecycle.down()
    print_table(results, outputs)
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s"
          + ("; the demo target is still up (`opsbook demo env`, `opsbook demo down`)" if keep else ""))
    failed = [n for n, r in results.items() if isinstance(r, OpsbookError) or r.record["status"] != "ok" and r.record["status"] != "findings"]
    return EXIT_EXECUTION_FAILED if failed else EXIT_OK


def print_table(results: dict, outputs: str | None) -> None:
    root = Path(outputs) if outputs else paths.outputs_dir()
    print()
    print(f"{'runbook':<18} {'verdict':<10} {'findings':<9} report")
    for name, result in results.items():
        if isinstance(result, OpsbookError):
            print(f"{name:<18} {'invalid':<10} {'':<9} {result}")
            continue
        r = result.record
        verdict = r["severity"] if r["status"] in ("ok", "findings") else r["status"]
        print(f"{name:<18} {verdict:<10} {len(r.get('findings', [])):<9} {root / r['html']}")
        for f in r.get("findings", []):
            print(f"    {f['severity']:<9} {f['check']:<32} {f.get('count', '')}")
        if r.get("error"):
            print(f"    error: {r['error']}", file=sys.stderr)
