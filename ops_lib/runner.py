"""Run a runbook: validate, check the target, execute the notebook with papermill, archive the result.

Everything that can be wrong with an invocation (parameters, target variables, the schema
mapping, an unreachable database) is found before a kernel starts and ends as an ``invalid``
record with exit 3. Once execution has started, every outcome leaves an archived notebook.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from . import __version__, changes, db, report, runbooks
from . import execution as execution_mod
from . import target as target_mod
from .archive import Archive
from .demo import target_or_demo
from .errors import (
    EXIT_EXECUTION_FAILED,
    EXIT_FINDINGS,
    EXIT_INVALID,
    EXIT_OK,
    InvalidInvocation,
    ParameterError,
    RunInterrupted,
    StripeAccessError,
    TargetUnreachable,
    quote,
)
from .execution import DEFAULT_CELL_TIMEOUT_S, Execution, tracked
from .findings import ACTION_MIME, FINDING_MIME, METRICS_MIME, severity_rank, worst
from .runtime import new_run_id
from .schema_map import SchemaMap
from .secrets import Masker

FAIL_ON = ("info", "warning", "critical")
RUN_SCHEMA_VERSION = 1  # ops_lib/run.schema.json
_RUNBOOK_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_CELL_TIMEOUT_S = 86_400


@dataclass
class RunResult:
    record: dict
    exit_code: int

    @property
    def run_id(self) -> str:
        return self.record["run_id"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def exit_code_for(status: str, severity: str, fail_on: str) -> int:
    if status == "invalid":
        return EXIT_INVALID
    if status == "error":
        return EXIT_EXECUTION_FAILED
    if status == "findings" and severity_rank(severity) >= severity_rank(fail_on):
        return EXIT_FINDINGS
    return EXIT_OK


def preflight(runbook: runbooks.Runbook, target: target_mod.Target, run_id: str) -> dict[str, str]:
    """Reach the database read-only and check the mapping entries this runbook reads."""
    versions = {"opsbook": __version__}
    engine = db.make_engine(target.require_database(), runbook=runbook.name, run_id=run_id, statement_timeout_ms=10_000)
    try:
        with db.connect(engine) as conn:
            versions["postgres"] = db.server_version(conn)
            if runbook.entities or runbook.optional_entities:
                schema = SchemaMap.load(target.schema_path)
                optional = [e for e in runbook.optional_entities if e in schema.entities]
                schema.validate(conn, [*runbook.entities, *optional], needed=runbook.columns, reader=runbook.name)
    finally:
        engine.dispose()
    if runbook.uses_stripe:
        versions["stripe_api"] = check_stripe_access(runbook, target)
    return versions


def check_stripe_access(runbook: runbooks.Runbook, target: target_mod.Target) -> str:
    """One cheap read, so a wrong or revoked key stops the run before a kernel starts."""
    from . import stripe_api

    if not target.stripe_api_key:
        raise InvalidInvocation(
            f"{runbook.name} reads Stripe but STRIPE_API_KEY is not set — export a restricted read-only key (rk_test_… or rk_live_…)"
        )
    client = stripe_api.make_client(target.stripe_api_key, target.stripe_api_base, max_network_retries=1,
                                    timeout=stripe_api.PREFLIGHT_TIMEOUT_S)
    probe = getattr(stripe_api, str(runbook.stripe_probe), None) if str(runbook.stripe_probe).startswith("list_") else None
    if not callable(probe):
        listings = ", ".join(name for name in dir(stripe_api) if name.startswith("list_"))
        raise runbooks.RunbookDefinitionError(
            f"{runbook.notebook}: its metadata opsbook.stripe_probe is {quote(runbook.stripe_probe)}; give one of {listings}")
    try:
        next(iter(probe(client)), None)
    except StripeAccessError as err:
        raise TargetUnreachable(str(err)) from None
    return stripe_api.API_VERSION


def validate_timeout(timeout: Any) -> int:
    """--timeout: a whole number of seconds, at least 1 (a per-cell bound is always set)."""
    if timeout is None:
        return DEFAULT_CELL_TIMEOUT_S
    text = str(timeout).strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (seconds == seconds and 1 <= seconds <= MAX_CELL_TIMEOUT_S and seconds.is_integer()):
        raise ParameterError(
            f"--timeout {quote(text)} is not a whole number of seconds between 1 and {MAX_CELL_TIMEOUT_S} "
            f"— the longest any one cell may run (default {DEFAULT_CELL_TIMEOUT_S})"
        )
    return int(seconds)


def run(
    name: str,
    param_files: Sequence[Path | str] = (),
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    outputs: Path | str | None = None,
    fail_on: str = "warning",
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    progress: bool = False,
    log_output: bool = False,
) -> RunResult:
    """Validate, check the target, execute and archive one runbook.

    Raises InvalidInvocation (exit 3) when nothing was executed; every other ending is a
    RunResult whose record is archived, an interrupted run included."""
    archive = Archive.open(outputs)  # where the record goes: nothing can be recorded before it is known
    started = _utcnow()
    run_id = new_run_id(name if _RUNBOOK_NAME.fullmatch(name) else "unknown", started)
    files = archive.files(name, run_id) if name in runbooks.names() else None
    record: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run_id": run_id,
        "runbook": name[:64],
        "status": "invalid",
        "severity": "ok",
        "started_at": _iso(started),
    }
    execution = Execution(files["ipynb"] if files else archive.root / f".{run_id}.ipynb", Masker.from_env(env))
    with tracked(execution), _discarding_unused_kernel(execution):
        try:
            if fail_on not in FAIL_ON:
                raise ParameterError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {quote(fail_on)}")
            cell_timeout = validate_timeout(timeout)
            _start_kernel_early(execution, name, run_id, archive, env)
            runbook = runbooks.get(name)
            params = runbook.params.resolve(_parameter_files(runbook, param_files), overrides)
            record["parameters"] = params
            if not runbook.notebook.is_file():
                raise InvalidInvocation(f"notebook {runbook.notebook} is missing — is OPSBOOK_ROOT the opsbook checkout?")
            target = target_or_demo(env)
            execution.masker = target.masker()
            record["target"] = target.describe()
            if runbook.validate:
                runbook.validate(params, target)
            record["versions"] = preflight(runbook, target, run_id)
            execution.raise_if_interrupted()
        except InvalidInvocation as err:
            _archive_unexecuted(archive, record, started, "invalid", EXIT_INVALID, str(err), execution.masker)
            raise
        except RunInterrupted as err:
            record = _archive_unexecuted(archive, record, started, "error", EXIT_EXECUTION_FAILED, str(err),
                                         execution.masker, reason="interrupted")
            return RunResult(record, EXIT_EXECUTION_FAILED)

        archive.record_running(record)
        report.prepare_html_export()  # while the kernel works and this process waits
        outcome = execution_mod.execute(
            execution, runbook.notebook, {**params, "run_id": run_id},
            kernel_env=_kernel_env(target, archive, run_id), cwd=runbook.notebook.parent, timeout=cell_timeout,
            progress=progress, log_output=log_output,
        )
        return _archive_executed(archive, record, files, started, outcome, execution.masker, fail_on)


def _kernel_env(target: target_mod.Target, archive: Archive, run_id: str) -> dict[str, str]:
    # the audit log beside the run; and the kernel knows its verdict goes on top of the report
    return {**kernel_environment(target), "OPSBOOK_OUTPUTS": str(archive.root), "OPSBOOK_ARCHIVED_RUN": run_id}


def _start_kernel_early(execution: Execution, name: str, run_id: str, archive: Archive,
                        env: dict[str, str] | None) -> None:
    """Start the kernel now when its notebook and target are already known (the demo only if it
    is running), so that it starts while the runbook, parameters and target are checked. Whatever
    goes wrong here is found again, and reported, by the checks that follow."""
    notebook = runbooks.notebook_path(name)
    if notebook is None:
        return
    try:
        target = target_or_demo(env, start=False)
        execution.early_kernel = execution_mod.EarlyKernel(notebook, _kernel_env(target, archive, run_id),
                                                           notebook.parent)
    except Exception:
        execution.early_kernel = None


@contextmanager
def _discarding_unused_kernel(execution: Execution):
    try:
        yield
    finally:
        if execution.early_kernel is not None:  # the run ended before its notebook could use it
            execution.early_kernel.discard()
            execution.early_kernel = None


MAX_PARALLEL_RUNS = 8


def parallel_runs(count: int) -> int:
    """How many of ``count`` runs go at once (``run --all``, the demo). A run mostly waits — its
    kernel on the database and Stripe, this process on its kernel — so all of them, measured
    faster than one per core (5 runbooks on 2 cores: 11.5–14.4 s against 16.2–18.2 s), up to
    MAX_PARALLEL_RUNS kernels (memory, and connections to the target)."""
    return max(1, min(count, MAX_PARALLEL_RUNS))


def slowest_first(names: Sequence[str], archive: Archive) -> list[str]:
    """Order for parallel runs: the longest first (by each runbook's last finished run), so the
    slowest never starts last and leaves a core idle; unknown durations go first."""
    last: dict[str, float] = {}
    for run in archive.runs():  # newest first
        if run.get("runbook") in names and run["runbook"] not in last and isinstance(run.get("duration_s"), (int, float)) \
                and run.get("status") in ("ok", "findings"):
            last[run["runbook"]] = float(run["duration_s"])
    return sorted(names, key=lambda name: -last.get(name, float("inf")))


def _parameter_files(runbook: runbooks.Runbook, given: Sequence[Path | str]) -> list[Path | str]:
    """-f takes a file, or the name of one of the runbook's shipped sets (``-f daily``)."""
    sets = {path.stem: path for path in runbook.parameter_sets()}
    return [sets[str(f)] if str(f) in sets and not Path(f).exists() else f for f in given]


def _archive_unexecuted(archive: Archive, record: dict, started: datetime, status: str, exit_code: int,
                        error: str, masker: Masker, reason: str | None = None) -> dict:
    """The record of a run that never reached its notebook; an unknown runbook gets only its
    ledger line (no folder is made for a mistyped name)."""
    record.update(status=status, error=error, finished_at=_iso(_utcnow()), exit_code=exit_code,
                  findings=[], checks=[], metrics={}, actions=[])
    if record["runbook"] in runbooks.names():
        record["json"] = str(archive.files(record["runbook"], record["run_id"])["json"].relative_to(archive.root))
    if reason:
        record["reason"] = reason
    record["duration_s"] = round((_utcnow() - started).total_seconds(), 3)
    record = masker.obj(record)
    archive.record(record, write_json="json" in record)
    return record


def _archive_executed(archive: Archive, record: dict, files: dict[str, Path], started: datetime,
                      outcome: execution_mod.Outcome, masker: Masker, fail_on: str) -> RunResult:
    nb = _read_notebook(files["ipynb"])
    collected = collect_outputs(nb) if nb is not None else {"findings": [], "metrics": {}, "actions": [], "checks": []}
    finished = _utcnow()
    severity = worst(f["severity"] for f in collected["findings"])
    status = "error" if outcome.failed else ("findings" if severity != "ok" else "ok")
    record.update(
        status=status,
        severity=severity,
        finished_at=_iso(finished),
        duration_s=round((finished - started).total_seconds(), 3),
        findings=collected["findings"],
        checks=collected["checks"],
        metrics=collected["metrics"],
        actions=collected["actions"],
        notebook=str(files["ipynb"].relative_to(archive.root)),
        html=str(files["html"].relative_to(archive.root)),
        json=str(files["json"].relative_to(archive.root)),
    )
    if outcome.failed:
        record.update(error=outcome.error, reason=outcome.reason)
    record["exit_code"] = exit_code_for(status, severity, fail_on)
    record["changes"] = changes.compare(changes.previous_run(archive, record), record)
    record = masker.obj(record)
    if nb is not None:
        report.finish_notebook(nb, record, files, masker)
    archive.record(record)
    return RunResult(record, record["exit_code"])


def kernel_environment(target: target_mod.Target) -> dict[str, str]:
    """The kernel learns its target from its environment: exactly this run's target variables."""
    env = {k: v for k, v in os.environ.items() if k not in target_mod.TARGET_VARIABLES and k != "OPSBOOK_DEMO"}
    return {**env, **target.env()}


def archive_interactive(nb_dict: dict, identity: dict, *, outputs: Path | str | None = None) -> dict:
    """Archive a notebook run in JupyterLab as a run: masked, verdict first, in the ledger as
    interactive. Saving the same session again replaces that run's files."""
    import nbformat

    archive = Archive.open(outputs)
    runbook = runbooks.get(str(identity["runbook"]))
    run_id = str(identity["run_id"])
    if not re.fullmatch(r"[a-z][a-z0-9_]*-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}", run_id) or not run_id.startswith(runbook.name):
        raise InvalidInvocation(f"the notebook's run id {quote(run_id)} is not one opsbook made")
    nb = nbformat.reads(json.dumps(nb_dict), as_version=4)  # rejoins sources split into lines
    collected = collect_outputs(nb)
    started = str(identity.get("started_at") or _iso(_utcnow()))
    finished = _utcnow()
    severity = worst(f["severity"] for f in collected["findings"])
    errored = any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    status = "error" if errored else ("findings" if severity != "ok" else "ok")
    files = archive.files(runbook.name, run_id)
    record: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION, "run_id": run_id, "runbook": runbook.name, "interactive": True,
        "status": status, "severity": severity, "started_at": started, "finished_at": _iso(finished),
        "duration_s": max(0.0, round((finished - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds(), 3)),
        "parameters": _parameters_cell_values(nb, runbook),
        "target": identity.get("target") or {},
        "findings": collected["findings"], "checks": collected["checks"], "metrics": collected["metrics"],
        "actions": collected["actions"],
        "notebook": str(files["ipynb"].relative_to(archive.root)), "html": str(files["html"].relative_to(archive.root)),
        "json": str(files["json"].relative_to(archive.root)),
    }
    if errored:
        record.update(error="a cell raised in the interactive session (see the notebook)", reason="cell_error")
    record["exit_code"] = exit_code_for(status, severity, "warning")
    record["changes"] = changes.compare(changes.previous_run(archive, record), record)
    masker = Masker.from_env()
    record = masker.obj(record)
    report.finish_notebook(nb, record, files, masker)
    archive.record(record)
    return record


def _parameters_cell_values(nb, runbook: runbooks.Runbook) -> dict[str, Any]:
    """The values the session's parameters cell held (simple assignments of literals)."""
    import ast

    values = runbook.params.defaults()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                break
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                        and node.targets[0].id in values:
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            break
    return values


def _read_notebook(path: Path):
    if not path.exists():
        return None
    import nbformat

    return nbformat.read(str(path), as_version=4)


def collect_outputs(nb) -> dict:
    """Findings, metrics and remediation actions, as the notebook's cells displayed them."""
    by_check: dict[str, dict] = {}
    metrics: dict[str, Any] = {}
    actions: list[dict] = []
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if FINDING_MIME in data:
                finding = dict(data[FINDING_MIME])
                by_check[finding["check"]] = finding  # a re-run check replaces its earlier result
            if METRICS_MIME in data:
                metrics.update(data[METRICS_MIME])
            if ACTION_MIME in data:
                actions.extend(data[ACTION_MIME])
    checks = [{"check": f["check"], "severity": f["severity"], "count": f.get("count", 0)} for f in by_check.values()]
    problems = [f for f in by_check.values() if f["severity"] != "ok"]
    problems.sort(key=lambda f: -severity_rank(f["severity"]))
    return {"findings": problems, "checks": checks, "metrics": metrics, "actions": actions}
