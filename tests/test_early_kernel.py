"""The kernel starts while the run is checked, and leaves no trace when the run never executes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from ops_lib import execution as execution_mod
from ops_lib import runner
from ops_lib.errors import InvalidInvocation
from ops_lib.execution import warm_imports

from .demo_target import scratch_dir
from .test_own_runbooks import opsbook


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


def test_warm_imports_name_the_notebooks_imports_only(tmp_path):
    code = warm_imports(_notebook(
        tmp_path / "n.ipynb",
        "import json, os.path as p\nx = 1",
        "from ops_lib.postgres import queries, plots\nfrom collections import *",
        "%matplotlib inline\nimport this_is_not_parsed",  # a magic: the cell is not Python
        "def f():\n    import inside_a_function",  # only what the cell itself imports
        "from . import relative",
    ))
    namespace: dict = {}
    compiled = compile(code, "warm", "exec")
    assert "this_is_not_parsed" not in code and "inside_a_function" not in code and "relative" not in code
    assert "('json', [])" in code and "('os.path', [])" in code
    assert "('ops_lib.postgres', ['queries', 'plots'])" in code and "('collections', [])" in code
    exec(compiled, namespace)
    assert set(namespace) == {"__builtins__"}, "the warm-up binds no name"


def test_warm_imports_of_a_notebook_without_imports_is_nothing(tmp_path):
    assert warm_imports(_notebook(tmp_path / "n.ipynb", "x = 1")) is None
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert warm_imports(tmp_path / "broken.ipynb") is None


def test_a_module_that_fails_to_import_is_left_for_its_cell_to_report(tmp_path):
    code = warm_imports(_notebook(tmp_path / "n.ipynb", "import no_such_module_anywhere\nimport json"))
    exec(compile(code, "warm", "exec"), {})  # no exception: the cell raises it, where the reader sees it


def test_the_runbook_runs_in_the_kernel_started_early_and_sees_no_warm_up_names(demo):
    folder = scratch_dir("early-kernel") / "runbooks"
    assert opsbook("new", "early_probe", folder=folder).returncode == 0
    path = folder / "early_probe.ipynb"
    nb = nbformat.read(path, as_version=4)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    probe = nbformat.v4.new_code_cell(
        "import sys\n"
        "assert 'ops_lib.runtime' in sys.modules, 'the notebook imports were loaded at kernel start'\n"
        "assert not {'_opsbook_warm', 'runtime', 'db', 'Finding'} & set(globals()), sorted(globals())"
    )
    nb.cells.insert(first_code, probe)
    nbformat.write(nb, path)
    out = folder.parent / "out"

    done = opsbook("run", "early_probe", folder=folder, out=out)

    assert done.returncode in (0, 1), done.stderr
    (record_path,) = out.glob("early_probe/*/*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] in ("ok", "findings"), record.get("error")


def _kernels_of_this_process() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == os.getpid() and b"ipykernel" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("overrides", [[("min_mean_ms", "-5")], [("no_such_parameter", "1")]])
def test_a_run_refused_after_its_kernel_started_leaves_no_kernel_behind(demo, tmp_path, monkeypatch, overrides):
    started: list[execution_mod.EarlyKernel] = []

    class Recorded(execution_mod.EarlyKernel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(execution_mod, "EarlyKernel", Recorded)
    before = set(_kernels_of_this_process())

    with pytest.raises(InvalidInvocation):
        runner.run("slow_queries", overrides=overrides, outputs=tmp_path)

    assert len(started) == 1 and started[0].pid, "the kernel was started before the parameters were checked"
    assert set(_kernels_of_this_process()) - before == set()
    assert not Path(f"/proc/{started[0].pid}").exists() or "Z" in Path(f"/proc/{started[0].pid}/stat").read_text().split()[2]


def test_the_html_export_warm_up_renders_without_error():
    from ops_lib import report

    report.warm_html_export()  # raises what the background thread would swallow


def test_a_kernel_that_dies_before_it_replies_is_started_once_more_and_the_notebook_runs(tmp_path):
    # The race two runs at once can lose: the early kernel's port is taken (here, by a socket we
    # hold), so it dies before it replies; the run starts a kernel of its own and goes on.
    import socket

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    from ops_lib.secrets import Masker

    source = _notebook(tmp_path / "n.ipynb", "x = 6 * 7", "print(x)")
    env = dict(os.environ)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        early = execution_mod.EarlyKernel.__new__(execution_mod.EarlyKernel)
        early.kernel_env, early.cwd = dict(env), tmp_path
        early.km = AsyncKernelManager(kernel_name="python3")
        early.km.cache_ports = False  # (the ports as set, not drawn from its cache)
        early.km.shell_port = taken.getsockname()[1]
        run_sync(early.km.start_kernel)(env=env, cwd=str(tmp_path), extra_arguments=list(execution_mod._KERNEL_ARGUMENTS))
        execution = execution_mod.Execution(nb_path=tmp_path / "out.ipynb", masker=Masker())
        execution.early_kernel = early
        outcome = execution_mod.execute(execution, source, {}, kernel_env=env, cwd=tmp_path, timeout=60)
    finally:
        taken.close()
    assert outcome.reason is None, outcome
    ran = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert ran.cells[-1].outputs[0]["text"] == "42\n"
    assert not run_sync(early.km.is_alive)(), "the early kernel died; another ran the notebook"


def test_a_kernel_that_dies_at_start_says_nothing_on_the_runs_stderr(tmp_path, monkeypatch, capfd):
    # A run's stderr is one line saying what went wrong: the traceback of a kernel that lost the
    # port race (here, a port we hold) is the kernel's own noise, never the run's.
    import socket
    import time

    import jupyter_client.manager
    from jupyter_core.utils import run_sync

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()

    class OnTheTakenPort(jupyter_client.manager.AsyncKernelManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cache_ports = False
            self.shell_port = taken.getsockname()[1]

    monkeypatch.setattr(jupyter_client.manager, "AsyncKernelManager", OnTheTakenPort)
    try:
        early = execution_mod.EarlyKernel(_notebook(tmp_path / "n.ipynb", "x = 1"), dict(os.environ), tmp_path)
        deadline = time.monotonic() + 20
        while run_sync(early.km.is_alive)() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not run_sync(early.km.is_alive)(), "the kernel lost the race for its port"
        early.discard()
    finally:
        taken.close()
    assert capfd.readouterr().err == ""
