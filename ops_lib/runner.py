"""Run a runbook: validate, check the target, execute the notebook with papermill, archive the result.

Everything that can be wrong with an invocation (parameters, target variables, the schema
mapping, an unreachable database) is found before a kernel starts and ends as an ``invalid``
record with exit 3. Once execution has started, every outcome leaves an archived notebook.
"""
from __future__ import annotations

import json
import os
import sys
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from . import __version__, db, paths, report, runbooks
from . import target as target_mod
from .archive import Archive, atomic_write
from .errors import (
    EXIT_EXECUTION_FAILED,
    EXIT_FINDINGS,
    EXIT_INVALID,
    EXIT_OK,
    InvalidInvocation,
    ParameterError,
    StripeAccessError,
    TargetUnreachable,
)
from .findings import ACTION_MIME, FINDING_MIME, METRICS_MIME, severity_rank, worst
from .runtime import new_run_id
from .schema_map import SchemaMap
from .secrets import Masker

FAIL_ON = ("info", "warning", "critical")
_MASKED_SCHEME = "opsbook-masked://"
_maskers: dict[str, Masker] = {}


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
            if runbook.entities:
                SchemaMap.load(target.schema_path).validate(conn, runbook.entities)
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
    client = stripe_api.make_client(target.stripe_api_key, target.stripe_api_base, max_network_retries=1)
    try:
        next(iter(getattr(stripe_api, runbook.stripe_probe)(client)), None)
    except StripeAccessError as err:
        raise TargetUnreachable(str(err)) from None
    return stripe_api.API_VERSION


def run(
    name: str,
    param_files: Sequence[Path | str] = (),
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    outputs: Path | str | None = None,
    fail_on: str = "warning",
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> RunResult:
    if fail_on not in FAIL_ON:
        raise ParameterError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    runbook = runbooks.get(name)
    archive = Archive.default(outputs)
    started = _utcnow()
    run_id = new_run_id(name, started)
    record: dict[str, Any] = {
        "run_id": run_id,
        "runbook": name,
        "status": "invalid",
        "severity": "ok",
        "started_at": _iso(started),
    }
    masker = Masker.from_env(env)
    try:
        params = runbook.params.resolve(param_files, overrides)
        record["parameters"] = params
        if not runbook.notebook.is_file():
            raise InvalidInvocation(f"notebook {runbook.notebook} is missing — is OPSBOOK_ROOT the opsbook checkout?")
        target = target_mod.from_env(env)
        masker = target.masker()
        record["target"] = target.describe()
        if runbook.validate:
            runbook.validate(params, target)
        record["versions"] = preflight(runbook, target, run_id)
    except InvalidInvocation as err:
        record.update(error=masker.text(str(err)), finished_at=_iso(_utcnow()), exit_code=EXIT_INVALID,
                      findings=[], checks=[], metrics={}, actions=[],
                      json=str(archive.files(name, run_id)["json"].relative_to(archive.root)))
        record["duration_s"] = round((_utcnow() - started).total_seconds(), 3)
        archive.record(masker.obj(record))
        raise

    files = archive.files(name, run_id)
    error_line = _execute(runbook, params, run_id, target, files["ipynb"], masker, timeout, archive.root)
    nb = _read_notebook(files["ipynb"])
    collected = collect_outputs(nb) if nb is not None else {"findings": [], "metrics": {}, "actions": [], "checks": []}
    finished = _utcnow()
    severity = worst(f["severity"] for f in collected["findings"])
    status = "error" if error_line else ("findings" if severity != "ok" else "ok")
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
    if error_line:
        record["error"] = error_line
    record["exit_code"] = exit_code_for(status, severity, fail_on)
    record = masker.obj(record)
    if nb is not None:
        report.finish_notebook(nb, record, files, masker)
    archive.record(record)
    return RunResult(record, record["exit_code"])


def _execute(runbook, params, run_id, target, nb_path: Path, masker: Masker, timeout, archive_root: Path) -> str | None:
    """Run the notebook; returns the one-line error when a cell failed, else None."""
    _silence_slow_imports()
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    _register_papermill_extensions()
    _maskers[str(nb_path)] = masker
    try:
        pm.execute_notebook(
            str(runbook.notebook),
            _MASKED_SCHEME + str(nb_path),
            parameters={**params, "run_id": run_id},
            engine_name=_ENGINE,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
            cwd=str(paths.notebooks_dir()),
            kernel_env={**kernel_environment(target), "OPSBOOK_OUTPUTS": str(archive_root)},  # audit log beside the run
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],  # not its TCP notice nor shutdown chatter
        )
    except PapermillExecutionError as err:
        return masker.text(f"cell {err.exec_count} raised {err.ename}: {_first_line(err.evalue)}")
    except Exception as err:  # the kernel died, timed out or never started
        line = masker.text(f"execution stopped: {type(err).__name__}: {_first_line(str(err))}")
        if nb_path.exists():
            _mark_stopped_cell(nb_path, type(err).__name__, line, masker)
        else:
            _write_unstarted_notebook(runbook.notebook, nb_path, masker)
        return line
    finally:
        _maskers.pop(str(nb_path), None)
    return None


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _silence_slow_imports() -> None:
    # jsonschema imports rfc3987_syntax (a >1 s grammar build) only to check the "iri" format,
    # which notebook validation never uses; an absent module makes it skip that format.
    sys.modules.setdefault("rfc3987_syntax", None)


def kernel_environment(target: target_mod.Target) -> dict[str, str]:
    """The kernel learns its target from its environment: exactly this run's target variables."""
    env = {k: v for k, v in os.environ.items() if k not in target_mod.TARGET_VARIABLES and k != "OPSBOOK_DEMO"}
    return {**env, **target.env()}


_ENGINE = "opsbook"


_registration = threading.Lock()
_registered = False


def _register_papermill_extensions() -> None:
    """Once per process: papermill keeps its handlers in a list that every run would grow."""
    global _registered
    with _registration:
        if not _registered:
            _register()
            _registered = True


def _register() -> None:
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.iorw import papermill_io

    class KernelEnvEngine(NBClientEngine):
        """papermill's nbclient engine, but the kernel gets the run's environment, not ours."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, *, kernel_env, execution_timeout=None,
                                     start_timeout=60, log_output=False, stdout_file=None, stderr_file=None, **kwargs):
            kwargs.pop("input_path", None)
            client = PapermillNotebookClient(
                nb_man, timeout=execution_timeout, startup_timeout=start_timeout, kernel_name=kernel_name,
                log=logging.getLogger("papermill"), log_output=log_output, stdout_file=stdout_file,
                stderr_file=stderr_file, **kwargs,
            )
            return client.execute(env=kernel_env)

    papermill_engines.register(_ENGINE, KernelEnvEngine)
    papermill_io.register(_MASKED_SCHEME, _MaskedNotebookHandler())


class _MaskedNotebookHandler:
    """papermill saves the notebook after every cell: mask each save and write it atomically."""

    @staticmethod
    def _path(path: str) -> Path:
        return Path(path[len(_MASKED_SCHEME):])

    def read(self, path):
        return self._path(path).read_text(encoding="utf-8")

    def listdir(self, path):
        return [str(p) for p in self._path(path).iterdir()]

    def write(self, buf, path):
        target = self._path(path)
        masker = _maskers.get(str(target)) or Masker.from_env()
        atomic_write(target, masker.json_text(buf))

    def pretty_path(self, path):
        return str(self._path(path))


def _mark_stopped_cell(nb_path: Path, ename: str, line: str, masker: Masker) -> None:
    """papermill marks only cells that raised; a timeout or a dead kernel gets the same mark here,
    on the last cell that started."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    started = [c for c in nb["cells"] if c.get("cell_type") == "code"
               and c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return
    cell = started[-1]
    cell.setdefault("outputs", []).append({"output_type": "error", "ename": ename, "evalue": line, "traceback": [line]})
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if "papermill-error-cell-tag" not in tags:
        tags.append("papermill-error-cell-tag")
    atomic_write(nb_path, masker.json_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n"))


def _write_unstarted_notebook(source: Path, nb_path: Path, masker: Masker) -> None:
    atomic_write(nb_path, masker.text(source.read_text(encoding="utf-8")))


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
