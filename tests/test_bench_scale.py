"""A smoke of benchmarks/bench_scale.py: the smallest measurement, on the session's demo target.

The benchmark itself (fresh targets at 100k and 1M customers) is run by hand; see
docs/benchmarks.md. This only checks that the script still measures and writes its table.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    return module


def test_the_smallest_scale_measures_a_runbook_and_writes_the_table(demo, bench, tmp_path):
    out = tmp_path / "benchmarks.md"
    assert bench.main(["--reuse", "--runbooks", "webhook_failure", "--no-all", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Command: `" in text and "cores" in text
    row = next(line for line in text.splitlines() if "| webhook_failure |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    wall, kernel_mib, requests, floor = float(cells[2]), float(cells[4]), int(cells[8]), int(cells[9])
    assert wall > 0 and kernel_mib > 0
    assert 0 < requests <= floor + 10  # the events and endpoints listings, at ⌈N/100⌉
    exact, planted = map(int, cells[12].split("/"))  # the planted incidents, compared with the run's findings
    assert planted > 0 and 0 <= exact <= planted


def test_the_stripe_floor_counts_every_listed_collection(bench):
    assert bench.stripe_floor({"/v1/customers": 3, "/v1/events": 1}, {"customer": 250, "event": 0}) == 3 + 1


def test_every_scale_uses_only_knobs_the_demo_has(bench):
    from ops_lib.demo import lifecycle

    for name, knobs in bench.SCALES.items():
        assert set(knobs or {}) <= set(lifecycle.SIZE_KNOBS), name
