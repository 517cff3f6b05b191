"""opsbook's command line: parses, calls the library, reports. Exit codes are in ops_lib.errors."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import __version__, paths, runbooks
from .errors import EXIT_EXECUTION_FAILED, EXIT_INVALID, EXIT_OK, InvalidInvocation, OpsbookError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is 2, which means "execution failed" here
        self.print_usage(sys.stderr)
        print(f"opsbook: error: {message}", file=sys.stderr)
        sys.exit(EXIT_INVALID)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opsbook", description="Executable runbook notebooks for PostgreSQL and Stripe operations.")
    parser.add_argument("--version", action="version", version=f"opsbook {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="runbooks, their parameters and defaults")

    run = sub.add_parser("run", help="run a runbook and archive the executed notebook")
    run.add_argument("runbook", nargs="?")
    run.add_argument("--all", action="store_true", help="every runbook, in parallel up to the core count")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE",
                     help="a params/RUNBOOK/SET.yaml; several are merged in order, then -p on top")
    run.add_argument("--out", help="archive folder (default: outputs/)")
    run.add_argument("--fail-on", default="warning", choices=("info", "warning", "critical"))
    run.add_argument("--timeout", type=float, help="seconds any one cell may run before the run fails")

    demo = sub.add_parser("demo", help="fresh demo target, every runbook, a verdict table")
    demo.add_argument("action", nargs="?", choices=("up", "env", "down"))
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--scale", type=float, default=1.0)
    demo.add_argument("--keep", action="store_true", help="leave the demo target running afterwards")
    demo.add_argument("--destroy", action="store_true", help="with `down`: delete the demo's data too")
    demo.add_argument("--out", help="archive folder (default: outputs/)")

    history = sub.add_parser("history", help="archived runs with verdicts, newest first")
    history.add_argument("runbook", nargs="?")
    history.add_argument("-n", "--limit", type=int, default=20)
    history.add_argument("--out", help="archive folder (default: outputs/)")

    show = sub.add_parser("show", help="one run's findings")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true", help="print the run's JSON")
    show.add_argument("--out", help="archive folder (default: outputs/)")

    sub.add_parser("lab", help="JupyterLab on notebooks/ against the current target (other options go to jupyter lab)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.lab_args = extra
    try:
        return COMMANDS[args.command](args)
    except OpsbookError as err:
        print(f"opsbook: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("opsbook: interrupted", file=sys.stderr)
        return EXIT_EXECUTION_FAILED
    except Exception as err:  # a bug of ours: still one masked line and a failure code, not a traceback
        from .secrets import Masker

        print(f"opsbook: unexpected {type(err).__name__}: {Masker.from_env().text(str(err)).strip().splitlines()[0] if str(err).strip() else ''}"
              " (set OPSBOOK_DEBUG=1 for the traceback)", file=sys.stderr)
        if os.environ.get("OPSBOOK_DEBUG"):
            raise
        return EXIT_EXECUTION_FAILED


def cmd_list(args) -> int:
    for rb in runbooks.RUNBOOKS.values():
        print(f"{rb.name} — {rb.title}")
        print(f"  {rb.question}")
        for p in rb.params:
            print(f"  {p.name:<30} {p.describe_type():<12} default {p.default!r:<10} {p.help}")
        sets = [str(s.relative_to(paths.project_root())) for s in rb.parameter_sets()]
        if sets:
            print(f"  parameter sets: {', '.join(sets)}")
        print()
    return EXIT_OK


def _print_result(result, out: str | None) -> None:
    r = result.record
    counts = ", ".join(f"{f['check']}={f['severity']}" for f in r.get("findings", [])) or "no findings"
    print(f"{r['run_id']}: {r['status']} ({r['severity']}) in {r.get('duration_s', 0):.1f}s — {counts}")
    if r.get("error"):
        print(f"  error: {r['error']}")
    root = Path(out or paths.outputs_dir()).resolve()
    for label, key in (("report", "html"), ("json", "json")):
        if r.get(key):
            print(f"  {label}: {root / r[key]}")


def cmd_run(args) -> int:
    from . import runner

    if args.all == bool(args.runbook):
        raise InvalidInvocation("name one runbook, or --all (see `opsbook list`)")
    names = list(runbooks.RUNBOOKS) if args.all else [args.runbook]
    if args.all and (args.parameter or args.parameters_file):
        raise InvalidInvocation("-p and -f apply to one runbook; with --all each runbook runs with its defaults")

    def one(name: str):
        try:
            result = runner.run(name, args.parameters_file, [tuple(p) for p in args.parameter],
                                outputs=args.out, fail_on=args.fail_on, timeout=args.timeout)
        except OpsbookError as err:
            print(f"opsbook: {name}: {err}", file=sys.stderr)
            return err.exit_code
        _print_result(result, args.out)
        if result.record.get("error"):
            print(f"opsbook: {name}: {result.record['error']}", file=sys.stderr)
        return result.exit_code

    if len(names) == 1:
        return one(names[0])
    from . import target

    target.from_env()  # start the demo once, not once per runbook
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        codes = list(pool.map(one, names))
    return max(codes)


def cmd_demo(args) -> int:
    from .demo import lifecycle

    if args.action == "up":
        state = lifecycle.up(seed=args.seed, scale=args.scale, quiet=False)
        print(lifecycle.env_exports(state))
        return EXIT_OK
    if args.action == "env":
        state = lifecycle.read_state()
        if state is None:
            raise InvalidInvocation("the demo is not running — start it with `opsbook demo up`")
        print(lifecycle.env_exports(state))
        return EXIT_OK
    if args.action == "down":
        stopped = lifecycle.down(destroy=args.destroy)
        print("demo stopped" if stopped else "the demo was not running")
        return EXIT_OK
    from .demo import showcase

    return showcase.run(seed=args.seed, scale=args.scale, keep=args.keep, outputs=args.out)


def cmd_history(args) -> int:
    from .archive import Archive

    runs = Archive.default(args.out).runs(args.runbook)[: args.limit]
    if not runs:
        print("no archived runs")
        return EXIT_OK
    for r in runs:
        verdict = r.get("severity") if r.get("status") in ("ok", "findings") else r.get("status")
        problems = ", ".join(c for c, s in r.get("findings", {}).items() if s != "ok")
        print(f"{r.get('started_at', ''):<22} {r['runbook']:<16} {verdict:<9} {r['run_id']}  {r.get('error') or problems}")
    return EXIT_OK


def cmd_show(args) -> int:
    import json

    from .archive import Archive

    try:
        record = Archive.default(args.out).load(args.run_id)
    except KeyError:
        raise InvalidInvocation(f"no archived run {args.run_id!r} — see `opsbook history`") from None
    if args.json:
        print(json.dumps(record, indent=2))
        return EXIT_OK
    print(f"{record['run_id']}  {record['status']} / {record['severity']}  started {record['started_at']}")
    print(f"target: {record.get('target')}")
    if record.get("error"):
        print(f"error: {record['error']}")
    for f in record.get("findings", []):
        print(f"  [{f['severity']}] {f['check']} ({f.get('count', 0)}): {f['title']}")
        if f.get("remediation"):
            print(f"      fix: {f['remediation']}")
    for name in ("notebook", "html"):
        if record.get(name):
            print(f"{name}: {Path(Archive.default(args.out).root) / record[name]}")
    return EXIT_OK


def cmd_lab(args) -> int:
    from . import target

    env = {**os.environ, **target.from_env().env()}
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter), "lab", "--notebook-dir", str(paths.notebooks_dir()), *args.lab_args]
    return subprocess.call(command, env=env)


COMMANDS = {
    "list": cmd_list,
    "run": cmd_run,
    "demo": cmd_demo,
    "history": cmd_history,
    "show": cmd_show,
    "lab": cmd_lab,
}

if __name__ == "__main__":
    sys.exit(main())
