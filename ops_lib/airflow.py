"""Runbooks over a fleet from Airflow: one task per runbook per target.

A DAG file is two lines::

    from ops_lib.airflow import make_dag
    dag = make_dag("opsbook_fleet", "/srv/opsbook/targets.yaml", ["slow_queries"], schedule="0 6 * * *")

The targets file names each target's variables by *reference* — an Airflow connection or an
environment variable of the worker — never by value, unless the value is not secret::

    targets:
      eu-prod:
        DATABASE_URL: {airflow_connection: eu_prod_db}
        STRIPE_API_KEY: {env: EU_STRIPE_KEY}
        OPSBOOK_SCHEMA: {value: /srv/opsbook/schema/eu.yaml}
        runbooks: [slow_queries, webhook_failure]     # optional: only these here

References are resolved when the task runs, on the worker; parsing the DAG reads no secret.
Each task runs ``opsbook run`` (the command line is the contract: exit codes, the archive) with
exactly its target's variables, then pushes what the run's JSON says to XCom: ``run_id``,
``json_path``, ``status``, ``severity``, ``verdict``, ``exit_code``, ``findings`` (counts by
severity) and ``checks`` (the checks with findings: id, severity, count) — never a secret or
the findings' rows. Exit code → task state:

    0 → success;  1 → failed, no retry (findings are the answer, retrying does not change them);
    2 → failed, retried (the run failed, timed out or was interrupted: may pass next time);
    3 → failed, no retry (invalid configuration: a retry would fail the same way).

This module is the only part of opsbook that imports Airflow, and only when a DAG is made or a
task runs: loading a targets file needs no Airflow (``load_targets``).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field as _field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .errors import EXIT_FINDINGS, EXIT_INVALID, EXIT_OK, ConfigurationError, quote
from .findings import SEVERITIES
from .runbooks import RUNBOOK_NAME
from .secrets import Masker
from .target import TARGET_VARIABLES

# Never given as a literal: these are credentials whatever they look like.
ALWAYS_SECRET = ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET")
REFERENCE_KINDS = ("airflow_connection", "env", "value")
# What a connection gives a variable: DATABASE_URL its URL, any other variable its password.
CONNECTION_FIELDS = ("uri", "password", "login", "host")
# A task waits this long for `opsbook run` to archive an interrupted run before killing it
# (opsbook itself kills a kernel that has not stopped 5 s after the signal).
STOP_GRACE_S = 30
_TASK_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class TargetsFileError(ConfigurationError):
    """The targets file is unreadable, malformed, or holds a secret: the DAG does not load."""


class TargetResolutionError(ConfigurationError):
    """A reference could not be resolved on the worker (no such connection or variable)."""


@dataclass(frozen=True)
class Reference:
    """Where one target variable's value comes from."""

    kind: str  # airflow_connection | env | value
    name: str = ""  # the connection id or environment variable
    field: str | None = None  # of a connection: uri, password, login, host, extra.KEY
    value: str | None = _field(default=None, repr=False)  # a literal (never a secret)

    def describe(self) -> str:
        if self.kind == "airflow_connection":
            return f"Airflow connection {quote(self.name)}" + (f" ({self.field})" if self.field else "")
        if self.kind == "env":
            return f"environment variable {self.name}"
        return "a literal value"


@dataclass(frozen=True)
class FleetTarget:
    name: str
    variables: Mapping[str, Reference]
    runbooks: tuple[str, ...] | None = None  # None: every runbook the DAG runs

    @property
    def env_names(self) -> set[str]:
        return {ref.name for ref in self.variables.values() if ref.kind == "env"}


# ---------------------------------------------------------------------------------------------
# The targets file: read when the DAG is parsed, no Airflow needed.


def load_targets(path: str | Path) -> dict[str, FleetTarget]:
    """Read and check a targets file; every problem is one TargetsFileError line naming the entry."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TargetsFileError(f"targets file {path}: cannot be read ({err.strerror or type(err).__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TargetsFileError(f"targets file {path}: not valid YAML{where}") from None
    return parse_targets(document, origin=str(path))


def parse_targets(document: Any, origin: str = "targets file") -> dict[str, FleetTarget]:
    if not isinstance(document, dict) or not isinstance(document.get("targets"), dict) or not document["targets"]:
        raise TargetsFileError(f"{origin}: expected a mapping `targets:` with one entry per target")
    unknown = sorted(set(document) - {"targets"})
    if unknown:
        raise TargetsFileError(f"{origin}: unknown top-level key {quote(unknown[0])} (only `targets:`)")
    targets = {}
    for name, entry in document["targets"].items():
        targets[str(name)] = _parse_target(str(name), entry, origin)
    return targets


def _parse_target(name: str, entry: Any, origin: str) -> FleetTarget:
    where = f"{origin}: target {quote(name)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise TargetsFileError(f"{where}: a target name is letters, digits, '.', '_' and '-' (it becomes a task id)")
    if not isinstance(entry, dict):
        raise TargetsFileError(f"{where}: expected a mapping of variables, e.g. DATABASE_URL: {{airflow_connection: my_db}}")
    variables: dict[str, Reference] = {}
    runbooks = None
    for key, spec in entry.items():
        if key == "runbooks":
            runbooks = _parse_runbooks(spec, where)
            continue
        if key not in TARGET_VARIABLES:
            raise TargetsFileError(f"{where}: unknown variable {quote(key)} — one of {', '.join(TARGET_VARIABLES)}, "
                                   "or `runbooks:`")
        variables[key] = _parse_reference(key, spec, where)
    if not any(v in variables for v in ("DATABASE_URL", "STRIPE_API_KEY")):
        # without them opsbook would run against its local demo: never what a fleet means
        raise TargetsFileError(f"{where}: names neither DATABASE_URL nor STRIPE_API_KEY")
    return FleetTarget(name, variables, runbooks)


def _parse_runbooks(spec: Any, where: str) -> tuple[str, ...]:
    if not isinstance(spec, list) or not spec or not all(isinstance(r, str) and RUNBOOK_NAME.fullmatch(r) for r in spec):
        raise TargetsFileError(f"{where}: `runbooks:` is a list of runbook names, e.g. [slow_queries]")
    return tuple(spec)


def _parse_reference(variable: str, spec: Any, where: str) -> Reference:
    if not isinstance(spec, dict):  # a bare value is a literal
        spec = {"value": spec}
    kinds = [k for k in REFERENCE_KINDS if k in spec]
    extra = sorted(set(spec) - {*REFERENCE_KINDS, "field"})
    if len(kinds) != 1 or extra:
        raise TargetsFileError(f"{where}: {variable} takes exactly one of "
                               f"{{airflow_connection: ID}}, {{env: NAME}} or {{value: ...}}")
    kind = kinds[0]
    raw = spec[kind]
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool) or str(raw) == "":
        raise TargetsFileError(f"{where}: {variable}: {kind} must be a non-empty string")
    raw = str(raw)
    if kind == "value":
        # The file is read by everyone who can read DAGs: a credential in it is leaked already.
        if variable in ALWAYS_SECRET or Masker().text(raw) != raw:
            raise TargetsFileError(f"{where}: {variable} holds a secret in the file — name it by reference instead: "
                                   f"{{airflow_connection: ID}} or {{env: NAME}}")
        return Reference("value", value=raw)
    if "field" in spec and kind != "airflow_connection":
        raise TargetsFileError(f"{where}: {variable}: `field` goes with airflow_connection only")
    chosen = spec.get("field")
    if chosen is not None and (not isinstance(chosen, str) or
                               (chosen not in CONNECTION_FIELDS and not re.fullmatch(r"extra\.\w+", chosen))):
        raise TargetsFileError(f"{where}: {variable}: field is one of {', '.join(CONNECTION_FIELDS)}, or extra.KEY")
    if kind == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
        raise TargetsFileError(f"{where}: {variable}: {quote(raw)} is not an environment variable name")
    if kind == "env" and (raw in TARGET_VARIABLES or raw.startswith("AIRFLOW_")):
        raise TargetsFileError(f"{where}: {variable}: name a variable of your own (e.g. EU_DATABASE_URL), "
                               f"not {raw}: each task sees only its own target")
    return Reference(kind, name=raw, field=chosen)


# ---------------------------------------------------------------------------------------------
# On the worker, when the task runs.


def resolve(target: FleetTarget, *, get_connection: Callable[[str], Any] | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The target's variables with their values, read now. ``get_connection`` is Airflow's
    (``BaseHook.get_connection``); it is asked only if the target names a connection."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for variable, ref in target.variables.items():
        where = f"target {quote(target.name)}: {variable} names {ref.describe()}"
        if ref.kind == "value":
            values[variable] = ref.value or ""
        elif ref.kind == "env":
            if not environ.get(ref.name):
                raise TargetResolutionError(f"{where}, which is not set on this worker")
            values[variable] = environ[ref.name]
        else:
            if get_connection is None:
                raise TargetResolutionError(f"{where}, and no Airflow is here to ask")
            try:
                connection = get_connection(ref.name)
            except Exception as err:  # AirflowNotFoundException, or the secrets backend's own
                reason = "which is not defined" if "not defined" in str(err) or "NotFound" in type(err).__name__ \
                    else f"which could not be read ({type(err).__name__})"
                raise TargetResolutionError(f"{where}, {reason} — add it (Admin → Connections, or "
                                            f"AIRFLOW_CONN_{ref.name.upper()})") from None
            value = connection_value(connection, ref.field or ("uri" if variable == "DATABASE_URL" else "password"))
            if not value:
                raise TargetResolutionError(f"{where}, whose {ref.field or 'password'} is empty")
            values[variable] = value
    return values


def connection_value(connection: Any, which: str) -> str | None:
    if which == "uri":
        return database_url(connection)
    if which.startswith("extra."):
        value = (connection.extra_dejson or {}).get(which[len("extra."):])
        return None if value is None else str(value)
    return getattr(connection, which, None)


def database_url(connection: Any) -> str:
    """A SQLAlchemy/libpq URL from a connection's fields. Not ``get_uri()``: Airflow writes
    ``postgres://``, which SQLAlchemy 2 refuses, and nests extras under ``__extra__``."""
    from urllib.parse import quote as q, urlencode

    credentials = ""
    if connection.login:
        credentials = q(connection.login, safe="")
        if connection.password:
            credentials += ":" + q(connection.password, safe="")
        credentials += "@"
    host = connection.host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    port = f":{connection.port}" if connection.port else ""
    database = f"/{q(connection.schema, safe='')}" if connection.schema else ""
    extras = {k: v for k, v in (connection.extra_dejson or {}).items() if isinstance(v, (str, int, float))}
    query = f"?{urlencode(extras)}" if extras else ""
    return f"postgresql://{credentials}{host}{port}{database}{query}"


def child_environment(target_values: Mapping[str, str], hidden: set[str],
                      environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one `opsbook run`: the worker's, less every target variable, every
    variable a targets file references (other targets' secrets) and Airflow's own settings
    (its database, its keys), plus this target's variables."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items()
           if k not in TARGET_VARIABLES and k != "OPSBOOK_DEMO" and k not in hidden and not k.startswith("AIRFLOW")}
    env.update(target_values)
    return env


def opsbook_arguments(runbook: str, *, parameter_sets: Sequence[str] = (), parameters: Mapping[str, Any] | None = None,
                      out: str | None = None, fail_on: str = "warning", cell_timeout: int | None = None) -> list[str]:
    args = ["run", runbook, "--fail-on", fail_on]
    if out:
        args += ["--out", str(out)]
    if cell_timeout:
        args += ["--timeout", str(int(cell_timeout))]
    for name in parameter_sets:
        args += ["-f", str(name)]
    for name, value in (parameters or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        args += ["-p", str(name), str(value)]
    return args


def run_summary(record: dict | None, *, exit_code: int, json_path: str | None, error: str | None = None) -> dict:
    """What goes to XCom: where the run is and what it concluded; no rows, no secrets."""
    record = record or {}
    status = record.get("status") or ("invalid" if exit_code == EXIT_INVALID else "error")
    severity = record.get("severity") if status in ("ok", "findings") else None
    findings = [f for f in record.get("findings", []) if isinstance(f, dict)]
    return {
        "run_id": record.get("run_id"),
        "runbook": record.get("runbook"),
        "json_path": json_path,
        "status": status,
        "severity": severity,
        "verdict": severity or status,
        "exit_code": exit_code,
        "findings": {s: sum(1 for f in findings if f.get("severity") == s) for s in SEVERITIES if s != "ok"},
        "checks": [{"check": f.get("check"), "severity": f.get("severity"), "count": f.get("count", 0)}
                   for f in findings if f.get("severity") != "ok"],
        "error": record.get("error") or error,
    }


def task_id_for(target: str, runbook: str) -> str:
    return f"{_TASK_ID_UNSAFE.sub('_', target)}.{runbook}"


# ---------------------------------------------------------------------------------------------
# Airflow: imported only from here on, when a DAG is made or a task runs.


def _airflow():
    """Airflow's names, wherever this version keeps them (3.x: airflow.sdk; 2.x: the old paths)."""
    from airflow.exceptions import AirflowException, AirflowFailException

    try:
        from airflow.sdk import DAG, BaseHook, BaseOperator
    except ImportError:  # Airflow 2
        from airflow import DAG
        from airflow.hooks.base import BaseHook
        from airflow.models.baseoperator import BaseOperator
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:
        from airflow.utils.log.secrets_masker import mask_secret
    return DAG, BaseOperator, BaseHook, AirflowException, AirflowFailException, mask_secret


_operator_class = None


def __getattr__(name: str):
    if name == "OpsbookRunOperator":
        return _operator()
    raise AttributeError(name)


def _operator():
    """The operator class, made once on first use so that importing this module needs no Airflow."""
    global _operator_class
    if _operator_class is not None:
        return _operator_class
    DAG, BaseOperator, BaseHook, AirflowException, AirflowFailException, mask_secret = _airflow()

    class OpsbookRunOperator(BaseOperator):
        """`opsbook run RUNBOOK` against one fleet target; the run's JSON summary to XCom."""

        template_fields = ("out",)
        ui_color = "#e8f1fb"

        def __init__(self, *, target: FleetTarget, runbook: str, hidden_env: Sequence[str] = (),
                     parameter_sets: Sequence[str] = (), parameters: Mapping[str, Any] | None = None,
                     out: str | None = None, fail_on: str = "warning", cell_timeout: int | None = None,
                     opsbook_command: Sequence[str] | None = None, **kwargs):
            super().__init__(**kwargs)
            self.target, self.runbook = target, runbook
            self.hidden_env = set(hidden_env) | target.env_names
            self.parameter_sets, self.parameters = list(parameter_sets), dict(parameters or {})
            self.out, self.fail_on, self.cell_timeout = out, fail_on, cell_timeout
            self.opsbook_command = list(opsbook_command or [sys.executable, "-m", "ops_lib.cli"])
            self._process: subprocess.Popen | None = None

        def execute(self, context):
            ti = context["ti"]
            try:
                values = resolve(self.target, get_connection=BaseHook.get_connection)
            except TargetResolutionError as err:
                self._push(ti, run_summary(None, exit_code=EXIT_INVALID, json_path=None, error=str(err)))
                raise AirflowFailException(str(err)) from None
            for variable, value in values.items():
                if variable in ("DATABASE_URL", *ALWAYS_SECRET, "OPSBOOK_WEBHOOK_URL"):
                    mask_secret(value)  # Airflow's own masker too: its logs never show them
            command = [*self.opsbook_command, *opsbook_arguments(
                self.runbook, parameter_sets=self.parameter_sets, parameters=self.parameters, out=self.out,
                fail_on=self.fail_on, cell_timeout=self.cell_timeout)]
            self.log.info("target %s: opsbook %s", self.target.name, " ".join(command[len(self.opsbook_command):]))
            lines: deque[str] = deque(maxlen=200)
            self._process = subprocess.Popen(
                command, env=child_environment(values, self.hidden_env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            reader = threading.Thread(target=self._relay, args=(self._process.stdout, lines), daemon=True)
            reader.start()
            try:
                exit_code = self._process.wait()
            except BaseException:  # execution_timeout, or the worker stopping: archive the run as interrupted
                exit_code = self._stop(self._process)
                reader.join(timeout=10)
                self._push(ti, self._summary(exit_code, lines))
                raise
            reader.join(timeout=10)  # the output ends with the process; a stray kernel holding it does not hold us
            summary = self._summary(exit_code, lines)
            self._push(ti, summary)
            where = f"{self.target.name} {self.runbook}: {summary['run_id'] or 'no run archived'}"
            if exit_code == EXIT_OK:
                return summary
            if exit_code == EXIT_FINDINGS:
                checks = ", ".join(f"{c['check']} ({c['severity']})" for c in summary["checks"]
                                   if _at_least(c["severity"], self.fail_on))
                raise AirflowFailException(f"{where}: findings at or above {self.fail_on}: {checks} — {summary['json_path']}")
            if exit_code == EXIT_INVALID:
                raise AirflowFailException(f"{where}: invalid — {summary['error']}")
            raise AirflowException(f"{where}: {summary['status']} (exit {exit_code}) — {summary['error'] or 'see the log'}")

        def on_kill(self):
            """The task is being stopped: SIGTERM lets `opsbook run` archive the run as interrupted
            (exit 2); a run still there after the grace period is killed. Never blocks: Airflow
            calls this from a signal handler while execute() waits."""
            process = self._process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                timer = threading.Timer(STOP_GRACE_S, lambda: process.poll() is None and process.kill())
                timer.daemon = True
                timer.start()

        def _stop(self, process: subprocess.Popen) -> int:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    return process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
            return process.wait(timeout=10)

        def _relay(self, stream, lines: deque) -> None:
            # opsbook masks what it prints with this target's values; Airflow's masker sees them too
            for line in stream:
                line = line.rstrip("\n")
                lines.append(line)
                self.log.info("%s", line)

        def _summary(self, exit_code: int, lines: Sequence[str]) -> dict:
            from .archive import Archive

            run_id = _run_id_in(self.runbook, lines)
            error = next((line.removeprefix("opsbook: ") for line in reversed(lines) if line.startswith("opsbook: ")), None)
            record, json_path = None, None
            if run_id:
                try:
                    archive = Archive.open(self.out)
                    record = archive.load(run_id)
                    if record.get("json"):
                        json_path = f"{archive.location.rstrip('/')}/{record['json']}"
                except Exception as err:  # the run's exit code still decides; say why the summary is thin
                    self.log.warning("run %s: its archived JSON could not be read (%s)", run_id, type(err).__name__)
            return run_summary(record or {"run_id": run_id}, exit_code=exit_code, json_path=json_path, error=error)

        def _push(self, ti, summary: dict) -> None:
            for key, value in summary.items():
                ti.xcom_push(key=key, value=value)

    _operator_class = OpsbookRunOperator
    return OpsbookRunOperator


def _run_id_in(runbook: str, lines: Sequence[str]) -> str | None:
    pattern = re.compile(rf"^({re.escape(runbook)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}}): ")
    for line in lines:
        match = pattern.match(line)
        if match:
            return match.group(1)
    return None


def _at_least(severity: str | None, floor: str) -> bool:
    order = list(SEVERITIES)
    return severity in order and order.index(severity) >= order.index(floor)


def make_dag(dag_id: str, targets_file: str | Path, runbooks: Sequence[str] | None = None, *,
             parameter_sets: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
             parameters: Mapping[str, Mapping[str, Any]] | None = None, fail_on: str = "warning",
             cell_timeout: int | None = None, out: str | None = None,
             opsbook_command: str | Sequence[str] | None = None, task_kwargs: Mapping[str, Any] | None = None,
             **dag_kwargs):
    """A DAG with one task per (target, runbook), ids ``<target>.<runbook>``.

    ``runbooks``: default every runbook of this opsbook; a target's own ``runbooks:`` narrows it.
    ``parameter_sets``: ``-f`` sets — one for every runbook ("daily"), or per runbook
    ({"slow_queries": "daily"}). ``parameters``: ``-p`` values per runbook. ``out``: the archive,
    a folder or an fsspec URL (default: OPSBOOK_OUTPUTS, else ./outputs of the worker).
    ``cell_timeout``: opsbook's ``--timeout``; the whole task is bounded by ``execution_timeout``
    (default 2 h, in ``default_args``). ``opsbook_command``: another installation's ``opsbook``.
    Other keyword arguments go to the DAG (``schedule``, ``default_args``, ``tags``, …)."""
    DAG, *_ = _airflow()
    from datetime import datetime, timedelta, timezone

    if fail_on not in ("info", "warning", "critical"):
        raise ConfigurationError(f"fail_on must be info, warning or critical, not {quote(fail_on)}")
    targets = load_targets(targets_file)
    command = [opsbook_command] if isinstance(opsbook_command, str) else opsbook_command
    known = None
    if command is None:  # the same installation runs the tasks: its runbooks are known now
        from .runbooks import names

        known = names()
    chosen = list(runbooks) if runbooks is not None else list(known or ())
    for name in chosen + [r for t in targets.values() for r in (t.runbooks or ())]:
        if not RUNBOOK_NAME.fullmatch(name) or (known is not None and name not in known):
            raise ConfigurationError(f"{targets_file}: unknown runbook {quote(name)}"
                                     + (f"; known: {', '.join(known)}" if known else ""))
    hidden = {name for t in targets.values() for name in t.env_names}

    default_args = {"retries": 1, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(hours=2),
                    **dict(dag_kwargs.pop("default_args", None) or {})}
    dag_kwargs.setdefault("schedule", None)
    dag_kwargs.setdefault("start_date", datetime(2024, 1, 1, tzinfo=timezone.utc))
    dag_kwargs.setdefault("catchup", False)
    dag_kwargs.setdefault("tags", ["opsbook"])
    operator = _operator()
    dag = DAG(dag_id, default_args=default_args, **dag_kwargs)
    seen: dict[str, str] = {}
    with dag:
        for target in targets.values():
            for runbook in chosen:
                if target.runbooks is not None and runbook not in target.runbooks:
                    continue
                task_id = task_id_for(target.name, runbook)
                if task_id in seen:
                    raise TargetsFileError(f"{targets_file}: targets {quote(seen[task_id])} and {quote(target.name)} "
                                           f"both become task {task_id} — rename one")
                seen[task_id] = target.name
                operator(task_id=task_id, target=target, runbook=runbook, hidden_env=sorted(hidden),
                         parameter_sets=_sets_for(parameter_sets, runbook),
                         parameters=(parameters or {}).get(runbook), out=out, fail_on=fail_on,
                         cell_timeout=cell_timeout, opsbook_command=command, **dict(task_kwargs or {}))
    return dag


def _sets_for(parameter_sets, runbook: str) -> list[str]:
    if parameter_sets is None:
        return []
    if isinstance(parameter_sets, str):
        return [parameter_sets]
    if isinstance(parameter_sets, Mapping):
        chosen = parameter_sets.get(runbook) or []
        return [chosen] if isinstance(chosen, str) else list(chosen)
    return list(parameter_sets)
