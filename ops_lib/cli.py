"""opsbook's command line: parses, calls the library, reports. Exit codes are in ops_lib.errors."""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import __version__, paths, runbooks
from .errors import EXIT_EXECUTION_FAILED, EXIT_INVALID, EXIT_OK, InvalidInvocation, OpsbookError, first_line, quote


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is 2, which means "execution failed" here
        complain(f"{message} — see `{self.prog} --help`")
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
    run.add_argument("--log-output", action="store_true", help="stream the cells' output to stderr (masked)")
    run.add_argument("--timeout", help="seconds any one cell may run before the run fails (default 600)")

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

    diff = sub.add_parser("diff", help="new / resolved / still-open items per check between two runs")
    diff.add_argument("runs", nargs="*", metavar="RUN", help="none: the latest run against its previous one; one: "
                      "that run against its previous one; two: the first (older) against the second")
    diff.add_argument("--json", action="store_true", help="print the changes as JSON")
    diff.add_argument("--out", help="archive folder (default: outputs/)")

    new = sub.add_parser("new", help="a thin runbook notebook from a template, in the first OPSBOOK_RUNBOOKS folder")
    new.add_argument("name", help="the runbook's name: lower-case letters, digits and _")
    new.add_argument("--title", help="its title (default: from the name)")

    sub.add_parser("lab", help="JupyterLab on notebooks/ against the current target (other options go to jupyter lab)")
    return parser


def say(message: str, *, stream=None) -> None:
    """Everything opsbook prints goes through here: masked as the archive is (cron mail and CI
    logs keep it), and with the target's control characters made visible, not obeyed."""
    from .literal import terminal_safe
    from .secrets import Masker

    lines = Masker.from_env().text(message).split("\n")
    print("\n".join(terminal_safe(line) for line in lines), file=stream or sys.stdout)


def complain(message: str) -> None:
    """One line on stderr."""
    say(f"opsbook: {first_line(message, limit=1000)}", stream=sys.stderr)


def _take_parameters(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Pull every ``-p NAME VALUE`` out before argparse sees it: a value may start with a dash
    (``-inf``, ``-5d``), which argparse would take for an option."""
    rest, pairs, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            rest.extend(argv[i:])
            break
        if token in ("-p", "--parameter"):
            if i + 2 >= len(argv):
                raise InvalidInvocation(f"{token} takes a NAME and a VALUE, e.g. -p since_hours 48")
            pairs.append((argv[i + 1], argv[i + 2]))
            i += 3
            continue
        rest.append(token)
        i += 1
    return rest, pairs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, pairs = _take_parameters(argv)
    except InvalidInvocation as err:
        complain(str(err))
        return err.exit_code
    args, extra = parser.parse_known_args(argv)
    if pairs:
        if args.command != "run":
            parser.error("-p NAME VALUE is an option of `opsbook run`")
        args.parameter = [*args.parameter, *pairs]
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {quote(' '.join(extra))}")
    args.lab_args = extra
    try:
        return COMMANDS[args.command](args)
    except OpsbookError as err:
        complain(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        complain("interrupted")
        return EXIT_EXECUTION_FAILED
    except BrokenPipeError:  # `opsbook list | head`: the reader has gone, nothing to say
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except Exception as err:  # a bug of ours: still one masked line and a failure code, not a traceback
        complain(f"unexpected {type(err).__name__}: {first_line(err)} (set OPSBOOK_DEBUG=1 for the traceback)")
        if os.environ.get("OPSBOOK_DEBUG"):
            raise
        return EXIT_EXECUTION_FAILED


def cmd_list(args) -> int:
    for rb in runbooks.all_runbooks().values():
        say(f"{rb.name} — {rb.title}" + ("" if rb.shipped else f"  [{rb.notebook}]"))
        if rb.question:
            say(f"  {rb.question}")
        for p in rb.params:
            say(f"  {p.name:<30} {p.describe_type():<12} default {p.default!r:<10} {p.help}")
        sets = [str(s.relative_to(rb.params_dir.parent)) for s in rb.parameter_sets()]
        if sets:
            say(f"  parameter sets: {', '.join(sets)}")
        say("")
    return EXIT_OK


def _print_result(result, out: str | None) -> None:
    r = result.record
    counts = ", ".join(f"{f['check']}={f['severity']}" for f in r.get("findings", [])) or "no findings"
    say(f"{r['run_id']}: {r['status']} ({r['severity']}) in {r.get('duration_s', 0):.1f}s — {counts}")
    if r.get("error"):
        say(f"  error: {r['error']}")
    for label, key in (("report", "html"), ("json", "json")):
        if r.get(key):
            say(f"  {label}: {_located(out, r[key])}")


def _located(out: str | None, relative: str) -> str:
    """Where an archived file is: a path, or the URL of a remote archive."""
    from .archive import _URL_SCHEME

    root = out or os.environ.get("OPSBOOK_OUTPUTS") or str(paths.outputs_dir())
    if _URL_SCHEME.match(root) and not root.startswith("file://"):
        return f"{root.rstrip('/')}/{relative}"
    return str(Path(root.removeprefix("file://")).resolve() / relative)


def cmd_run(args) -> int:
    from . import db, runner

    # (this process's own waits, the preflight's, say they are still waiting to a person at a terminal
    # or with --log-output; a scheduler's log gets only the one line that ends them: they are bounded)
    db.REPORT_PROGRESS = sys.stderr.isatty() or args.log_output

    if args.all == bool(args.runbook):
        raise InvalidInvocation("name one runbook, or --all (see `opsbook list`)")
    names = runbooks.names() if args.all else [args.runbook]
    if args.all and (args.parameter or args.parameters_file):
        raise InvalidInvocation("-p and -f apply to one runbook; with --all each runbook runs with its defaults")

    def one(name: str):
        try:
            result = runner.run(name, args.parameters_file, [tuple(p) for p in args.parameter],
                                outputs=args.out, fail_on=args.fail_on, timeout=args.timeout,
                                progress=len(names) == 1 and sys.stderr.isatty(), log_output=args.log_output)
        except OpsbookError as err:
            complain(f"{name}: {err}")
            return err.exit_code
        _print_result(result, args.out)
        if result.record.get("error"):
            complain(f"{name}: {result.record['error']}")
        return result.exit_code

    if len(names) == 1:
        return one(names[0])
    from .archive import Archive
    from .demo import target_or_demo
    from .execution import signals_end_runs

    runner.validate_timeout(args.timeout)  # once, not once per runbook
    Archive.open(args.out)
    target_or_demo()  # start the demo once, not once per runbook
    names = runner.slowest_first(names, Archive.open(args.out))
    with signals_end_runs(), ThreadPoolExecutor(max_workers=runner.parallel_runs(len(names))) as pool:
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
        say("demo stopped" if stopped else "the demo was not running")
        return EXIT_OK
    from .demo import showcase

    return showcase.run(seed=args.seed, scale=args.scale, keep=args.keep, outputs=args.out)


def cmd_history(args) -> int:
    from .archive import Archive

    if args.limit < 1:
        raise InvalidInvocation(f"--limit {args.limit}: give how many runs to show, 1 or more")
    archive = Archive.open(args.out)
    runs = archive.runs(args.runbook)[: args.limit]
    if archive.unreadable_lines:
        lines = ", ".join(map(str, archive.unreadable_lines[:10])) + (" …" if len(archive.unreadable_lines) > 10 else "")
        complain(f"skipped {len(archive.unreadable_lines)} unreadable line(s) of the ledger in {archive.location} (line {lines})")
    if not runs:
        say("no archived runs")
        return EXIT_OK
    for r in runs:
        verdict = r.get("severity") if r.get("status") in ("ok", "findings") else r.get("status")
        findings = r.get("findings") if isinstance(r.get("findings"), dict) else {}
        problems = ", ".join(str(c) for c, s in findings.items() if s != "ok")
        how = "lab" if r.get("interactive") else "run"  # a JupyterLab session saved, or `opsbook run`
        say(f"{str(r.get('started_at', '')):<22} {r['runbook']:<16} {str(verdict):<9} {how:<3} {r['run_id']}  "
            f"{r.get('error') or problems}")
    return EXIT_OK


def cmd_show(args) -> int:
    import json

    from .archive import Archive

    try:
        record = Archive.open(args.out).load(args.run_id)
    except KeyError:
        raise InvalidInvocation(f"no archived run {quote(args.run_id)} — see `opsbook history`") from None
    if args.json:
        say(json.dumps(record, indent=2))
        return EXIT_OK
    say(f"{record['run_id']}  {record.get('status')} / {record.get('severity', '?')}  started {record.get('started_at', '?')}")
    say(f"target: {record.get('target')}")
    if record.get("error"):
        say(f"error: {record['error']}")
    for f in record.get("findings", []):
        say(f"  [{f['severity']}] {f['check']} ({f.get('count', 0)}): {f['title']}")
        if f.get("remediation"):
            say(f"      fix: {f['remediation']}")
    for name in ("notebook", "html"):
        if record.get(name):
            say(f"{name}: {_located(args.out, record[name])}")
    return EXIT_OK


def cmd_diff(args) -> int:
    import json

    from . import changes
    from .archive import Archive

    if len(args.runs) > 2:
        raise InvalidInvocation("diff takes at most two run ids: the older, then the newer")
    archive = Archive.open(args.out)

    def load(run_id: str) -> dict:
        try:
            return archive.load(run_id)
        except KeyError:
            raise InvalidInvocation(f"no archived run {quote(run_id)} — see `opsbook history`") from None

    if len(args.runs) == 2:
        older, newer = load(args.runs[0]), load(args.runs[1])
        if older.get("runbook") != newer.get("runbook"):
            raise InvalidInvocation(f"{older['run_id']} and {newer['run_id']} are runs of different runbooks")
    else:
        finished = [r for r in archive.runs() if r.get("status") in changes.FINISHED]
        if not finished:
            raise InvalidInvocation("no finished run to compare — see `opsbook history`")
        newer = load(args.runs[0]) if args.runs else load(finished[0]["run_id"])
        older = changes.previous_run(archive, newer)
        if older is None:
            raise InvalidInvocation(f"{newer['run_id']} has no earlier finished run of {newer['runbook']} on the same target")
    result = changes.compare(older, newer)
    if args.json:
        say(json.dumps(result, indent=2))
        return EXIT_OK
    say(f"{older['run_id']} → {newer['run_id']}: {result['new']} new, {result['resolved']} resolved")
    for check, change in result["checks"].items():
        say(f"  {check}: {len(change['new'])} new, {len(change['resolved'])} resolved, {change['still_open']} still open")
        for item in change["new"]:
            say(f"    + {item}")
        for item in change["resolved"]:
            say(f"    - {item}")
    return EXIT_OK


def cmd_new(args) -> int:
    notebook = runbooks.create(args.name, args.title)
    say(f"{notebook}")
    say(f"  edit it in `opsbook lab`, then: opsbook run {args.name}  (parameter sets: {notebook.parent / 'params' / args.name})")
    return EXIT_OK


def cmd_lab(args) -> int:
    from .demo import target_or_demo

    env = {**os.environ, **target_or_demo().env()}
    jupyter = Path(sys.executable).with_name("jupyter")
    own = [entry for entry in os.environ.get("OPSBOOK_RUNBOOKS", "").split(":") if entry]
    folder = Path(own[0]).expanduser() if own else paths.notebooks_dir()  # a team's runbooks, else the shipped ones
    # saving a notebook that was run archives it as an interactive run and keeps the file output-free
    command = [str(jupyter), "lab", "--notebook-dir", str(folder),
               "--ContentsManager.pre_save_hook=ops_lib.lab.pre_save_hook", *args.lab_args]
    sys.stdout.flush()
    sys.stderr.flush()
    # JupyterLab takes this process's place: a signal that stops `opsbook lab` stops JupyterLab
    # and, through it, its kernels — nothing is left running behind a parent that has gone.
    os.execve(str(jupyter), command, env)
    return EXIT_OK  # not reached


COMMANDS = {
    "list": cmd_list,
    "run": cmd_run,
    "demo": cmd_demo,
    "history": cmd_history,
    "show": cmd_show,
    "diff": cmd_diff,
    "new": cmd_new,
    "lab": cmd_lab,
}

if __name__ == "__main__":
    sys.exit(main())
