"""Size and load time of a run's HTML report with report mode on and off.

    .venv/bin/python benchmarks/bench_report_html.py outputs/slow_queries/2026-12-01/<run_id>.ipynb
    .venv/bin/python benchmarks/bench_report_html.py --run slow_queries --run revenue_report --out /tmp/runs

For each executed notebook (an archived run's .ipynb, or one this script archives itself with
`opsbook run RUNBOOK --out DIR` on the current target), the HTML is rendered twice with
`ops_lib.report.render_html`:

- report mode **on** — what opsbook archives: code inputs hidden behind a "show code" toggle;
- report mode **off** — nbconvert's `HTMLExporter(template_name="lab")` unchanged, i.e. the
  plain HTML papermill/nbconvert would give (checked byte for byte against the exporter).

and for each it measures:

- size: bytes, and gzip bytes (level 6, what a web server typically sends);
- load in headless Chromium (playwright, `file://`, a fresh browser context each time):
  time to the `load` event (`PerformanceNavigationTiming.loadEventEnd`) and to first
  contentful paint (`performance.getEntriesByType('paint')`), medians of `--runs` loads, the two
  variants interleaved (order alternating per round). Requests leaving the machine (the lab
  template's require.js and MathJax from cdnjs) are aborted unless `--network` is given, so the
  figure does not depend on a CDN; their count is printed;
- code cells: how many `.jp-CodeCell .jp-Cell-inputWrapper` elements there are and how many are
  visible (computed display not `none` and rendered, i.e. no hidden ancestor either), and how
  many are visible after ticking "show code" (report mode on);
- visible text: `document.body.innerText.length`.

Prints a Markdown table. Timings on a shared machine are noisy: compare variants, not machines.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VISIBLE_CODE = """() => {
  const els = [...document.querySelectorAll('.jp-CodeCell .jp-Cell-inputWrapper')];
  const shown = els.filter(e => getComputedStyle(e).display !== 'none' && e.getClientRects().length > 0);
  return [els.length, shown.length];
}"""
TIMING = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
  return {load: nav ? nav.loadEventEnd : null, fcp: fcp ? fcp.startTime : null,
          text: document.body.innerText.length};
}"""


def archive_run(runbook: str, out: Path) -> Path:
    """`opsbook run RUNBOOK --out OUT` on the current target; the archived .ipynb."""
    before = set(out.rglob(f"{runbook}-*.json")) if out.exists() else set()
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "opsbook"), "run", runbook, "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"opsbook run {runbook}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    new = sorted(set(out.rglob(f"{runbook}-*.json")) - before)
    if not new:
        sys.exit(f"opsbook run {runbook}: no archived run found under {out}")
    return new[-1].with_suffix(".ipynb")


def render(notebook: Path, folder: Path) -> dict[str, Path]:
    import nbformat
    from nbconvert import HTMLExporter

    from ops_lib.report import render_html

    nb = nbformat.read(notebook, as_version=4)
    on = render_html(nb, report_mode=True)
    off = render_html(nb, report_mode=False)
    plain, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, as_version=4))
    if off != plain:
        print(f"note: report_mode=False differs from the bare lab exporter for {notebook.name}", file=sys.stderr)
    files = {}
    for name, suffix, html in (("report mode on", "on", on), ("report mode off (nbconvert lab)", "off", off)):
        path = folder / f"{notebook.stem}.{suffix}.html"
        path.write_text(html, encoding="utf-8")
        files[name] = path
    return files


def measure(files: dict[str, Path], runs: int, chromium: str, network: bool) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright

    samples = {name: {"load": [], "fcp": []} for name in files}
    result = {name: {"bytes": p.stat().st_size, "gzip": len(gzip.compress(p.read_bytes(), 6))}
              for name, p in files.items()}
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            for round_ in range(runs + 1):  # round 0 warms the browser and the page cache
                names = list(files) if round_ % 2 == 0 else list(reversed(files))
                for name in names:
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    external = []
                    if not network:
                        def abort(route, request, _external=external):
                            _external.append(request.url)
                            route.abort()
                        page.route(lambda url: not url.startswith("file:"), abort)
                    page.goto(files[name].as_uri(), wait_until="load")
                    page.wait_for_timeout(100)  # let the paint entries settle
                    timing = page.evaluate(TIMING)
                    if round_ == 0:
                        total, shown = page.evaluate(VISIBLE_CODE)
                        toggle = page.query_selector("#opsbook-show-code")
                        if toggle:
                            toggle.check()
                            after = page.evaluate(VISIBLE_CODE)[1]
                        else:
                            after = shown
                        result[name].update(code_cells=total, code_visible=shown, code_visible_toggled=after,
                                            text=timing["text"], external=len(external))
                    else:
                        samples[name]["load"].append(timing["load"])
                        samples[name]["fcp"].append(timing["fcp"])
                    context.close()
        finally:
            browser.close()
    for name, s in samples.items():
        result[name]["load_ms"] = statistics.median(s["load"])
        result[name]["fcp_ms"] = statistics.median(x for x in s["fcp"] if x is not None) if any(
            x is not None for x in s["fcp"]) else None
        result[name]["load_all"] = s["load"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="archived runs' .ipynb files")
    parser.add_argument("--run", action="append", default=[], metavar="RUNBOOK",
                        help="archive a fresh run of RUNBOOK on the current target first (repeatable)")
    parser.add_argument("--out", type=Path, help="archive folder for --run (default: a temporary folder)")
    parser.add_argument("--runs", type=int, default=5, help="page loads per variant (median; default 5)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--network", action="store_true", help="let the CDN requests through")
    parser.add_argument("--keep-html", type=Path, help="write the rendered HTML files here")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args()
    if not args.notebooks and not args.run:
        parser.error("give an archived .ipynb or --run RUNBOOK")

    with tempfile.TemporaryDirectory(prefix="bench-report-html-") as tmp:
        out = args.out or Path(tmp) / "outputs"
        notebooks = list(args.notebooks) + [archive_run(r, out) for r in args.run]
        folder = args.keep_html or Path(tmp) / "html"
        folder.mkdir(parents=True, exist_ok=True)
        rows, raw = [], {}
        for notebook in notebooks:
            figures = measure(render(notebook, folder), args.runs, args.chromium, args.network)
            raw[notebook.name] = figures
            for name, f in figures.items():
                fcp = f"{f['fcp_ms']:.0f}" if f["fcp_ms"] is not None else "n/a"
                rows.append(
                    f"| {notebook.stem} | {name} | {f['bytes']:,} | {f['gzip']:,} | {f['load_ms']:.0f} | {fcp} "
                    f"| {f['code_visible']} / {f['code_cells']} | {f['code_visible_toggled']} | {f['text']:,} |")
    print(f"Headless Chromium, file://, median of {args.runs} loads per variant (interleaved); "
          f"CDN requests {'allowed' if args.network else 'aborted'}.\n")
    print("| run | HTML | bytes | gzip bytes | load ms | FCP ms | code inputs visible / total "
          "| visible after \"show code\" | visible text chars |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))
    if args.json:
        print(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
