"""Executing a runbook notebook with papermill: the kernel's environment, masked saves, and ends.

A run ends in one of four ways, each leaving the executed notebook archived:

- ``completed``: every cell ran;
- ``cell_error``: a cell raised (papermill marks it);
- ``timeout`` / ``kernel_died``: a cell outlived ``--timeout`` or the kernel vanished (marked here);
- ``interrupted``: SIGTERM or SIGINT reached opsbook. The kernel is interrupted (KeyboardInterrupt in
  the running cell), and killed if it does not stop within ``INTERRUPT_GRACE_S``; a signal between
  cells marks the next cell as not run.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .archive import atomic_write
from .errors import RunInterrupted, first_line
from .secrets import Masker

DEFAULT_CELL_TIMEOUT_S = 600
KERNEL_START_TIMEOUT_S = 60
INTERRUPT_GRACE_S = 5.0
ERROR_TAG = "papermill-error-cell-tag"

_ENGINE = "opsbook"
_MASKED_SCHEME = "opsbook-masked://"


@dataclass
class Execution:
    """One notebook being executed: where it is saved, how it is masked, and how to stop it."""

    nb_path: Path
    masker: Masker
    thread: int = field(default_factory=threading.get_ident)
    phase: str = "preflight"  # preflight → executing → finishing
    interrupted: str | None = None  # the signal's name, once one arrived
    kernel_pid: int | None = None
    early_kernel: "EarlyKernel | None" = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def interrupt(self, signal_name: str) -> None:
        """Stop the run: interrupt the kernel's cell, then kill the kernel if it does not stop."""
        with self._lock:
            repeated = self.interrupted is not None
            self.interrupted = self.interrupted or signal_name
            pid = self.kernel_pid
        if pid is None or self.phase != "executing":
            return
        if repeated:
            _kill(pid, signal.SIGKILL)
            return
        _kill(pid, signal.SIGINT)
        timer = threading.Timer(INTERRUPT_GRACE_S, self._kill_kernel_if_running)
        timer.daemon = True
        timer.start()

    def _kill_kernel_if_running(self) -> None:
        if self.phase == "executing" and self.kernel_pid is not None:
            _kill(self.kernel_pid, signal.SIGKILL)

    def raise_if_interrupted(self) -> None:
        if self.interrupted:
            raise RunInterrupted(self.interrupted)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------ signals

_active: dict[str, Execution] = {}  # by notebook path: papermill's IO handlers are global
_active_lock = threading.Lock()
_handlers_installed = 0


@contextmanager
def tracked(execution: Execution):
    """Make an execution reachable by signals and by the masked notebook writer."""
    with _active_lock:
        _active[str(execution.nb_path)] = execution
    try:
        with signals_end_runs():
            yield execution
    finally:
        with _active_lock:
            _active.pop(str(execution.nb_path), None)


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    with _active_lock:
        runs = list(_active.values())
    for run in runs:
        run.interrupt(name)
    main = threading.main_thread().ident
    if any(run.thread == main and run.phase == "preflight" for run in runs):
        raise RunInterrupted(name)  # nothing started yet: end the main thread's run at once


@contextmanager
def signals_end_runs():
    """SIGTERM and SIGINT end the runs of this process with a complete record (main thread only;
    in a worker thread the main thread's handler reaches the run through the registry)."""
    global _handlers_installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    if _handlers_installed == 0:
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    _handlers_installed += 1
    try:
        yield
    finally:
        _handlers_installed -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ early kernel

_KERNEL_ARGUMENTS = [
    "--IPKernelApp.log_level=CRITICAL",  # not its TCP notice nor shutdown chatter
    "--HistoryManager.hist_file=:memory:",  # as nbclient starts kernels: no history database
]
# The kernel process's own streams: not the run's stderr, which says what went wrong in one line.
# Cells' output travels over ZMQ (and fd-level writes are captured into it); what is left is the
# kernel's own noise, e.g. the traceback of one that dies at start because two kernels started
# at once drew the same free port (the run starts another: `execute_managed_notebook`).
_KERNEL_STREAMS = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


class EarlyKernel:
    """The run's kernel, started while the run is still being checked.

    A kernel takes ~0.5 s to start and the first cell ~1 s to import pandas, SQLAlchemy and
    ops_lib; started before the preflight, both overlap the parent's own work on the other core.
    The kernel imports the notebook's imports at startup (IPython's ``exec_lines``, names not
    bound, errors ignored: the cell that imports will raise them). A run that never executes
    discards it."""

    def __init__(self, notebook: Path, kernel_env: dict[str, str], cwd: Path):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.kernel_env, self.cwd = dict(kernel_env), Path(cwd)
        self.km = AsyncKernelManager(kernel_name="python3")
        warm = warm_imports(notebook)
        arguments = _KERNEL_ARGUMENTS + ([f"--IPKernelApp.exec_lines={warm}"] if warm else [])
        run_sync(self.km.start_kernel)(env=self.kernel_env, cwd=str(self.cwd), extra_arguments=arguments,
                                       **_KERNEL_STREAMS)

    @property
    def pid(self) -> int | None:
        return getattr(getattr(self.km, "provisioner", None), "pid", None)

    def suits(self, kernel_env: dict[str, str], cwd: Path) -> bool:
        return self.kernel_env == kernel_env and self.cwd == Path(cwd)

    def discard(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # already gone: nothing to stop
            pid = self.pid
            if pid:
                _kill(pid, signal.SIGKILL)


def warm_imports(notebook: Path) -> str | None:
    """Code importing what the notebook's code cells import, bound to no name, failures ignored."""
    try:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted: list[tuple[str, list[str]]] = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        try:
            tree = ast.parse("".join(source) if isinstance(source, list) else str(source))
        except (SyntaxError, ValueError):  # magics, or not Python: the kernel will say
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                wanted += [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                wanted.append((node.module, [alias.name for alias in node.names if alias.name != "*"]))
    if not wanted:
        return None
    return ("def _opsbook_warm():\n"
            f"    for module, names in {wanted!r}:\n"
            "        try:\n"
            "            __import__(module, fromlist=names)\n"
            "        except BaseException:\n"
            "            pass\n"
            "_opsbook_warm()\n"
            "del _opsbook_warm\n")


# ------------------------------------------------------------------------------------ papermill


def _silence_slow_imports() -> None:
    # jsonschema imports rfc3987_syntax (a >1 s grammar build) only to check the "iri" format,
    # which notebook validation never uses; an absent module makes it skip that format.
    sys.modules.setdefault("rfc3987_syntax", None)


@dataclass
class Outcome:
    """How the execution ended: ``reason`` is None when every cell ran."""

    reason: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.reason is not None


class _MaskedStream:
    """Cell output streamed to the terminal (--log-output), masked as the archive is."""

    def __init__(self, stream, masker: Masker):
        self.stream, self.masker = stream, masker

    def write(self, text: str) -> None:
        self.stream.write(self.masker.text(text))

    def flush(self) -> None:
        self.stream.flush()


def _execute_notebook(pm, execution: Execution, source: Path, parameters: dict, *, kernel_env: dict[str, str],
                      cwd: Path, timeout: float | None, progress: bool, log_output: bool, masker: Masker) -> None:
    pm.execute_notebook(
        str(source),
        _MASKED_SCHEME + str(execution.nb_path),
        parameters=parameters,
        engine_name=_ENGINE,
        kernel_name="python3",
        progress_bar=progress,  # a bar over cells, on a terminal only
        log_output=False,
        stdout_file=_MaskedStream(sys.stderr, masker) if log_output else None,
        stderr_file=_MaskedStream(sys.stderr, masker) if log_output else None,
        execution_timeout=timeout,
        start_timeout=KERNEL_START_TIMEOUT_S,
        cwd=str(cwd),
        kernel_env=kernel_env,
        execution=execution,
        extra_arguments=list(_KERNEL_ARGUMENTS),
    )


def execute(execution: Execution, source: Path, parameters: dict, *, kernel_env: dict[str, str],
            cwd: Path, timeout: float | None, progress: bool = False, log_output: bool = False) -> Outcome:
    """Run ``source`` into ``execution.nb_path``; every ending leaves a masked notebook there."""
    _silence_slow_imports()
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    _register_papermill_extensions()
    masker = execution.masker
    execution.raise_if_interrupted()
    execution.phase = "executing"
    try:
        try:
            _execute_notebook(pm, execution, source, parameters, kernel_env=kernel_env, cwd=cwd, timeout=timeout,
                              progress=progress, log_output=log_output, masker=masker)
        finally:
            _SAVES.flush(execution.nb_path, forget=True)  # every ending: the held save, before anyone reads it
    except PapermillExecutionError as err:
        if execution.interrupted:
            return Outcome("interrupted", masker.text(f"interrupted by {execution.interrupted} in cell {err.exec_count}"))
        return Outcome("cell_error", masker.text(f"cell {err.exec_count} raised {err.ename}: {first_line(err.evalue)}"))
    except BaseException as err:  # the kernel died, timed out or never started; or we were told to stop
        reason, line = _stopped(execution, err)
        line = masker.text(line)
        if execution.nb_path.exists():
            mark_stopped_cell(execution.nb_path, reason, line, masker)
        else:
            atomic_write(execution.nb_path, masker.text(source.read_text(encoding="utf-8")))
        if not isinstance(err, Exception) and not isinstance(err, KeyboardInterrupt):
            raise
        return Outcome(reason, line)
    finally:
        execution.phase = "finishing"
    return Outcome()


def _stopped(execution: Execution, err: BaseException) -> tuple[str, str]:
    if execution.interrupted or isinstance(err, (KeyboardInterrupt, RunInterrupted)):
        return "interrupted", f"interrupted by {execution.interrupted or 'SIGINT'}"
    name = type(err).__name__
    if "Timeout" in name:
        return "timeout", f"execution stopped: {name}: {first_line(err)}"
    if "DeadKernel" in name:
        return "kernel_died", f"execution stopped: the kernel died ({first_line(err)})"
    return "execution_failed", f"execution stopped: {name}: {first_line(err)}"


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
    import nbformat
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
    from papermill.iorw import papermill_io

    class QuickSavingManager(NotebookExecutionManager):
        """papermill saves at every cell's start and end through nbformat.writes, which deep-copies
        and validates the whole notebook (~20 ms each with plots, 50–70 times a run). A save while
        cells run is the notebook's JSON as it stands (a valid notebook: sources as strings); the
        last save, when the run ends however it ends, is nbformat's."""

        final = False

        def save(self, **kwargs):
            if kwargs.get("nb"):
                self.nb = kwargs["nb"]
            if self.output_path:
                text = nbformat.writes(self.nb) if self.final else \
                    json.dumps(self.nb, ensure_ascii=False)  # compact: the C encoder (indent is pure Python)
                papermill_io.write(text, self.output_path)
            self.last_save_time = self.now()

        def notebook_complete(self, **kwargs):
            self.final = True
            return super().notebook_complete(**kwargs)

    class InterruptibleClient(PapermillNotebookClient):
        """papermill's client, which also stops between cells once the run is interrupted."""

        def __init__(self, nb_man, execution: Execution, **kwargs):
            super().__init__(nb_man, **kwargs)
            self.execution = execution

        def papermill_execute_cells(self):
            provisioner = getattr(self.km, "provisioner", None)
            self.execution.kernel_pid = getattr(provisioner, "pid", None)
            if self.execution.interrupted:  # the signal came while the kernel was starting
                self.execution.interrupt(self.execution.interrupted)
            for index, cell in enumerate(self.nb.cells):
                if self.execution.interrupted:
                    if cell.cell_type == "code":
                        _mark_not_run(cell, self.execution.interrupted)
                        self.nb_man.cell_exception(cell, cell_index=index)
                        break
                    continue
                try:
                    self.nb_man.cell_start(cell, index)
                    self.execute_cell(cell, index)
                except Exception as ex:
                    from nbclient.exceptions import CellExecutionError

                    if not isinstance(ex, CellExecutionError):
                        raise
                    self.nb_man.cell_exception(self.nb.cells[index], cell_index=index, exception=ex)
                    break
                finally:
                    self.nb_man.cell_complete(self.nb.cells[index], cell_index=index)

    class KernelEnvEngine(NBClientEngine):
        """papermill's nbclient engine, but the kernel gets the run's environment, not ours (and
        may have been started already: `EarlyKernel`)."""

        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):
            # papermill's Engine.execute_notebook, with the quick-saving manager
            nb_man = QuickSavingManager(nb, output_path=output_path, progress_bar=progress_bar,
                                        log_output=log_output, autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, *, kernel_env, execution, execution_timeout=None,
                                     start_timeout=60, log_output=False, stdout_file=None, stderr_file=None, **kwargs):
            kwargs.pop("input_path", None)
            early, execution.early_kernel = execution.early_kernel, None
            if early is not None and not early.suits(kernel_env, kwargs.get("cwd") or early.cwd):
                early.discard()
                early = None
            def client(km):
                return InterruptibleClient(
                    nb_man, execution, km=km, timeout=execution_timeout,
                    startup_timeout=start_timeout, kernel_name=kernel_name,
                    # the kernel holds nothing worth a graceful goodbye once the last cell ran: saves ~0.4 s
                    shutdown_kernel="immediate",
                    log=logging.getLogger("papermill.opsbook"), log_output=log_output, stdout_file=stdout_file,
                    stderr_file=stderr_file, **kwargs,
                )

            try:
                # a kernel we started is ours to stop, as nbclient stops the ones it starts
                return client(early.km if early else None).execute(env=kernel_env, cleanup_kc=True, **_KERNEL_STREAMS)
            except RuntimeError as exc:
                if not _died_starting(exc, execution):
                    raise
            # Two kernels started at once (two runs, `run --all`) may draw the same free port from
            # the system: the one that binds second dies before it replies. Once more, with a
            # kernel of its own (no cell had run).
            return client(None).execute(env=kernel_env, cleanup_kc=True, **_KERNEL_STREAMS)

    # nbclient logs a timeout or a dead kernel itself; the run's record says it, in one line.
    quiet = logging.getLogger("papermill.opsbook")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    papermill_engines.register(_ENGINE, KernelEnvEngine)
    papermill_io.register(_MASKED_SCHEME, _SAVES)


def _died_starting(error: RuntimeError, execution: Execution) -> bool:
    """The kernel died before it could run a cell (nbclient's words), and no signal asked to stop."""
    return ("died before replying to kernel_info" in str(error) and execution.kernel_pid is None
            and not execution.interrupted)


def _mark_not_run(cell, signal_name: str) -> None:
    line = f"not run: the run was interrupted by {signal_name} before this cell"
    cell.outputs = [{"output_type": "error", "ename": "RunInterrupted", "evalue": line, "traceback": [line]}]
    _tag(cell)


def _tag(cell) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if ERROR_TAG not in tags:
        tags.append(ERROR_TAG)


# papermill saves the notebook twice per cell (start and end): 50–70 masked, atomic writes for a
# runbook of cells that take milliseconds. A save within SAVE_INTERVAL_S of the previous one is
# held and written when the interval is up (a timer) or when execution ends (`flush`, called on
# every ending before anything reads the notebook), so the file on disk is never more than
# SAVE_INTERVAL_S behind the run, and always complete once `execute` returns.
SAVE_INTERVAL_S = 1.0


class _MaskedNotebookHandler:
    """papermill saves the notebook after every cell: mask each save and write it atomically
    (at most one write per SAVE_INTERVAL_S per notebook; the held one is written by `flush`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[Path, float] = {}
        self._pending: dict[Path, tuple[str, Masker]] = {}
        self._timers: dict[Path, threading.Timer] = {}

    @staticmethod
    def _path(path: str) -> Path:
        return Path(path[len(_MASKED_SCHEME):])

    def read(self, path):
        return self._path(path).read_text(encoding="utf-8")

    def listdir(self, path):
        return [str(p) for p in self._path(path).iterdir()]

    def write(self, buf, path):
        target = self._path(path)
        with _active_lock:
            execution = _active.get(str(target))
        masker = execution.masker if execution else Masker.from_env()
        with self._lock:
            now = time.monotonic()
            last = self._last.get(target)
            if last is not None and now - last < SAVE_INTERVAL_S:
                self._pending[target] = (buf, masker)
                if target not in self._timers:
                    timer = threading.Timer(SAVE_INTERVAL_S - (now - last), self.flush, args=(target,))
                    timer.daemon = True
                    self._timers[target] = timer
                    timer.start()
                return
            self._pending.pop(target, None)
            self._last[target] = now
            atomic_write(target, masker.json_text(buf))

    def flush(self, target: Path, *, forget: bool = False) -> None:
        """Write the held save of ``target`` now, if there is one (``forget``: its run ended)."""
        target = Path(target)
        with self._lock:
            timer = self._timers.pop(target, None)
            if timer is not None:
                timer.cancel()
            held = self._pending.pop(target, None)
            if held is not None:
                buf, masker = held
                atomic_write(target, masker.json_text(buf))
                self._last[target] = time.monotonic()
            if forget:
                self._last.pop(target, None)

    def pretty_path(self, path):
        return str(self._path(path))


_SAVES = _MaskedNotebookHandler()


def mark_stopped_cell(nb_path: Path, reason: str, line: str, masker: Masker) -> None:
    """papermill marks only cells that raised; a timeout, a dead kernel or an interruption gets the
    same mark here, on the last cell that started (or, if none did, the first code cell)."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    started = [c for c in code if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    cell = started[-1] if started else (code[0] if code else None)
    if cell is None:
        return
    if not any("papermill-error-cell" in "".join(c.get("source", "")) for c in nb["cells"]
               if c.get("cell_type") == "markdown"):
        anchor = {"cell_type": "markdown", "id": "opsbook-stopped-here", "metadata": {"tags": [ERROR_TAG]},
                  "source": [f'<span id="papermill-error-cell" style="color:red;font-size:1.5em">'
                             f"The run stopped here ({reason}):</span>"]}
        nb["cells"].insert(nb["cells"].index(cell), anchor)
    outputs = cell.setdefault("outputs", [])
    if not any(o.get("output_type") == "error" for o in outputs):
        outputs.append({"output_type": "error", "ename": reason, "evalue": line, "traceback": [line]})
    _tag(cell)
    pm_meta = cell.setdefault("metadata", {}).setdefault("papermill", {})
    pm_meta.update(exception=True, status="failed")
    atomic_write(nb_path, masker.json_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n"))
