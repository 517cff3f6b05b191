"""revenue_report's time and memory after the Stripe objects arrive, on synthetic objects.

    .venv/bin/python benchmarks/bench_revenue_memory.py                      # 100k subscriptions, this tree
    .venv/bin/python benchmarks/bench_revenue_memory.py --n 500000 --baseline 2479718  # the code before records
    .venv/bin/python benchmarks/bench_revenue_memory.py --n 100000 --tracemalloc

Builds ``--n`` subscriptions' worth of Stripe-like objects in-process
(``ops_lib.revenue.synthetic``: the emulator's builders, every rule of the report, ~1 invoice,
~1 charge and ~1 balance transaction per subscription with ``--history-periods 0``, the 1M
demo's shape) and runs the notebook's cells in order, as ``notebooks/revenue_report.ipynb`` calls
them, holding what its kernel holds: the notebook's variables and every displayed table (IPython
keeps each cell's result in ``Out``; ``--no-output-cache``: as a kernel with ``cache_size=0``).
Each step is timed; memory is the process's RSS after the step and its peak so far
(``ru_maxrss``), and with ``--tracemalloc`` the step's traced peak (Python allocations only;
tracemalloc slows everything ~2×, so its times are not comparable).

``--baseline REV`` runs the same steps on ``ops_lib/revenue`` as committed at ``REV`` too (read
with ``git show``, imported as ``ops_lib._revenue_baseline``; the listing is fed to its
``fetch_stripe`` through its ``list_*`` names) and compares a digest of every table, metric and
finding: the two must agree. Each variant runs in a process of its own.

"Fetch" includes building the objects (the emulator's builders: ~0.2 ms a subscription), which a
real run replaces with reading them from Stripe or the local mirror: that share is timed apart
(``listing``), and the totals say what is left, the report's own work after the listing.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=timezone.utc)  # late in a month: most renewals are in the period


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_baseline(rev: str):
    """``ops_lib/revenue`` at ``rev`` as the package ``ops_lib._revenue_baseline``."""
    folder = Path(tempfile.mkdtemp(prefix="revenue-baseline-"))
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:ops_lib/revenue"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:ops_lib/revenue/{name}"], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout
            (folder / name).write_text(text)
    import ops_lib
    spec = importlib.util.spec_from_file_location("ops_lib._revenue_baseline", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    ops_lib._revenue_baseline = package
    return package


def _digest(value) -> str:
    """A hash of ``repr(value)``, a list's item by item (a 500k-row table's repr is ~150 MB)."""
    h = hashlib.sha256()
    for item in value if isinstance(value, list) else [value]:
        h.update(repr(item).encode())
    return h.hexdigest()[:16]


def run(variant: str, n: int, history_periods: int, trace: bool, rev: str, keep_outputs: bool = True) -> dict:
    from ops_lib import runtime
    from ops_lib.revenue import synthetic
    from ops_lib.revenue.period import resolve_period

    if variant == "baseline":
        pkg = load_baseline(rev)
    else:
        pkg = importlib.import_module("ops_lib.revenue")
    checks, conversion, data, movements, mrr, plots, revenue = (
        importlib.import_module(f"{pkg.__name__}.{m}") for m in ("checks", "conversion", "data", "movements", "mrr",
                                                                   "plots", "revenue"))
    mrr_metrics, revenue_metrics = pkg.mrr_metrics, pkg.revenue_metrics
    account = synthetic.SyntheticAccount(n, NOW, history_periods=history_periods, json_round_trip=False)
    period = resolve_period(now=NOW)
    history_months = 12

    listing_seconds = [0.0]  # of the fetch: building the objects, what a real run spends reading Stripe

    def listing(kind, since, until):
        objs = account.listing(kind, since, until)
        while True:
            started = time.perf_counter()
            obj = next(objs, None)
            listing_seconds[0] += time.perf_counter() - started
            if obj is None:
                return
            yield obj

    if not hasattr(data, "gather"):  # the baseline's fetch_stripe reads through its list_* names
        def lister(kind):
            def listed(client, *, since=None, until=None, created_since=None, **_):
                return listing(kind, since if created_since is None else created_since, until)
            return listed
        for kind in synthetic.KINDS:
            setattr(data, f"list_{kind}", lister(kind))
        fetch = lambda: data.fetch_stripe(None, period, history_months=history_months)  # noqa: E731
    else:
        fetch = lambda: data.gather(listing, period, history_months=history_months)  # noqa: E731

    ns: dict = {}
    out: list = []  # IPython's Out: every cell's displayed result stays referenced
    found: dict[str, str] = {}
    steps: list[dict] = []

    digesting = [0.0]  # seconds spent on the digests: the benchmark's own work, not the notebook's

    def digest(value) -> str:
        started = time.perf_counter()
        try:
            return _digest(value)
        finally:
            digesting[0] += time.perf_counter() - started

    def step(name, fn):
        gc.collect()
        if trace:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        started, digested = time.perf_counter(), digesting[0]
        result = fn()
        checked = digesting[0] - digested
        seconds = time.perf_counter() - started - checked
        row = {"step": name, "s": round(seconds, 2), "digest_s": round(checked, 2), "rss_mib": round(rss_mib()),
               "peak_rss_mib": round(peak_rss_mib())}
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            row["traced_peak_mib"] = round((peak - base) / 2**20)
            row["traced_now_mib"] = round(current / 2**20)
        steps.append(row)
        if result is not None and keep_outputs:
            out.append(result)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return result

    def table(rows, key):
        found[key] = digest(rows)
        return runtime.table(rows, empty="-")

    if trace:
        tracemalloc.start()
    found["start_rss"] = rss_mib()

    def fetch_cell():
        ns["stripe_data"] = fetch()
        metrics = ns["stripe_data"].metrics()
        found["metrics"] = digest(dict(metrics))
        return metrics

    step("fetch_stripe (synthetic) + metrics", fetch_cell)
    steps[-1]["listing_s"] = round(listing_seconds[0], 2)

    def mrr_cell():
        ns["book"] = mrr.MRRBook(ns["stripe_data"].subscriptions, ns["stripe_data"].invoices, grace_days=30)
        ns["at_end"] = ns["book"].closing(period.until_ts)
        ns["mrr_totals"] = mrr.mrr_by_currency(ns["at_end"])
        return table(mrr.display_totals(ns["mrr_totals"]), "mrr_totals")

    step("MRRBook + closing + mrr_by_currency", mrr_cell)
    step("mrr_metrics", lambda: found.__setitem__("mrr_metrics", digest(dict(mrr_metrics(ns["mrr_totals"])))))
    step("subscription_rows table", lambda: table(mrr.subscription_rows(ns["at_end"]), "subscription_rows"))

    def unpriced():
        found["unpriced"] = digest(checks.unpriced_items(ns["at_end"]).to_dict())
    step("unpriced_items", unpriced)

    def history_cell():
        ns["mrr_history"] = movements.history(ns["book"], period, months=history_months)
        return table(movements.history_table(ns["mrr_history"]), "history")
    step("history (12 months)", history_cell)
    step("plot_mrr_history", lambda: plots.plot_mrr_history(ns["mrr_history"]).savefig(os.devnull, format="png"))

    def identity():
        found["identity"] = digest(checks.mrr_identity_broken(ns["mrr_history"], ns["mrr_totals"]).to_dict())
    step("mrr_identity_broken", identity)
    step("customer_movements table", lambda: table(movements.customer_table(
        movements.customer_movements(ns["book"], period.start_ts, period.until_ts), ns["book"]), "customer_movements"))
    step("movement_metrics", lambda: found.__setitem__("movement_metrics",
                                                       digest(dict(movements.movement_metrics(ns["book"], period)))))

    def revenue_cell():
        ns["revenue_rows"] = revenue.revenue_by_plan(ns["stripe_data"])
        return table(revenue.revenue_table(ns["revenue_rows"]), "revenue")
    step("revenue_by_plan", revenue_cell)
    step("plot_revenue_by_plan", lambda: plots.plot_revenue_by_plan(
        revenue.revenue_table(ns["revenue_rows"], with_totals=False)).savefig(os.devnull, format="png"))

    def charges_cell():
        ns["charges"] = ns["stripe_data"].charges_in_period
        found["revenue_metrics"] = digest(dict(revenue_metrics(ns["revenue_rows"], revenue.success_rate(ns["charges"]))))
    step("charges_in_period + revenue_metrics", charges_cell)
    step("failures_by_code", lambda: table(revenue.failures_by_code(ns["charges"]), "failures"))

    def over_time():
        rows = revenue.success_over_time(ns["charges"], period)
        found["over_time"] = digest(rows)
        plots.plot_success_rate(rows, threshold_pct=99.0).savefig(os.devnull, format="png")
    step("success_over_time + plot", over_time)

    def low():
        found["low_success"] = digest(checks.payment_success_rate_low(ns["charges"], threshold_pct=99.0).to_dict())
    step("payment_success_rate_low", low)

    def cohorts_cell():
        ns["cohorts"] = conversion.trial_cohorts(ns["stripe_data"].subscriptions, NOW)
        found["conversion"] = digest(conversion.trial_conversion_low(ns["cohorts"], 20.0).to_dict())
        return table(ns["cohorts"], "cohorts")
    step("trial_cohorts", cohorts_cell)

    def reconcile_cell():  # the app's payments: one per succeeded charge, a few wrong (no database here)
        payments = importlib.import_module(f"{pkg.__name__}.payments")
        app = []
        for k, c in enumerate(c for c in ns["stripe_data"].charges if c["status"] == "succeeded"):
            if k % 5000 == 1:
                continue  # missing in the app
            app.append({"organisation_id": k, "stripe_charge_id": c["id"], "stripe_invoice_id": c.get("invoice"),
                        "amount": c["amount"] + (1 if k % 7001 == 2 else 0), "currency": c["currency"],
                        "status": "succeeded", "paid_at": datetime.fromtimestamp(c["created"], timezone.utc)})
        found["mismatch"] = digest(checks.revenue_mismatch(payments.reconcile(ns["stripe_data"], app), tolerance=0.0).to_dict())
    step("reconcile", reconcile_cell)

    return {"variant": variant, "steps": steps, "found": found, "peak_rss_mib": round(peak_rss_mib()),
            "objects": {k: len(getattr(ns["stripe_data"], k)) for k in synthetic.KINDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="subscriptions (default 100k)")
    parser.add_argument("--history-periods", type=int, default=0,
                        help="billing periods invoiced before the current one (0: the 1M demo's shape; 6: the 100k demo's)")
    parser.add_argument("--baseline", metavar="REV", help="also run ops_lib/revenue as committed at REV, and compare")
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations per step (slower)")
    parser.add_argument("--no-output-cache", action="store_true",
                        help="drop each cell's result once shown (a kernel run with InteractiveShell.cache_size=0)")
    parser.add_argument("--child", choices=("baseline", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.n, args.history_periods, args.tracemalloc, args.baseline or "HEAD",
                             keep_outputs=not args.no_output_cache)))
        return
    variants = (["baseline"] if args.baseline else []) + ["new"]
    results = {}
    for variant in variants:
        command = [sys.executable, __file__, "--child", variant, "--n", str(args.n),
                   "--history-periods", str(args.history_periods)] + (["--baseline", args.baseline] if args.baseline else []) \
            + (["--tracemalloc"] if args.tracemalloc else []) + (["--no-output-cache"] if args.no_output_cache else [])
        print(f"# {variant}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    first = results[variants[0]]
    print(f"\n{args.n:,} subscriptions, history_periods={args.history_periods}: "
          + ", ".join(f"{v:,} {k}" for k, v in first["objects"].items()))
    key = "traced_peak_mib" if args.tracemalloc else "peak_rss_mib"
    head = "| step | " + " | ".join(f"{v} s | {v} RSS after | {v} {key}" for v in variants) + " |"
    print(head)
    print("|---|" + "---|" * (3 * len(variants)))
    for k, row in enumerate(first["steps"]):
        cells = []
        for v in variants:
            r = results[v]["steps"][k]
            cells += [f"{r['s']:.2f}", f"{r['rss_mib']}", f"{r[key]}"]
        print(f"| {row['step']} | " + " | ".join(cells) + " |")
    for v in variants:
        total = sum(r["s"] for r in results[v]["steps"])
        after = sum(r["s"] for r in results[v]["steps"][1:])
        listed = results[v]["steps"][0]["listing_s"]
        print(f"{v}: {total:.1f} s in all, {listed:.1f} s of it listing the objects, {total - listed:.1f} s after the "
              f"listing ({after:.1f} s after the fetch); peak RSS {results[v]['peak_rss_mib']} MiB")
    if args.baseline:
        a, b = results["baseline"]["found"], results["new"]["found"]
        differ = [k for k in a if k != "start_rss" and a[k] != b.get(k)]
        print("results identical" if not differ else f"RESULTS DIFFER: {differ}")
        if differ:
            sys.exit(1)


if __name__ == "__main__":
    main()
