"""The command line: what it prints and the exit code for every outcome."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ops_lib.demo.postgres import free_port
from ops_lib.runner import exit_code_for
from ops_lib.target import TARGET_VARIABLES

from .demo_target import scratch_dir

REPO = Path(__file__).resolve().parent.parent


def opsbook(*args, env=None, out=None):
    base = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    base.update(env or {})
    if out is not None:
        base["OPSBOOK_OUTPUTS"] = str(out)
    return subprocess.run([sys.executable, "-m", "ops_lib.cli", *args], capture_output=True, text=True, env=base, timeout=300)


def test_list_shows_every_runbook_with_its_parameters():
    done = opsbook("list")
    assert done.returncode == 0
    assert "slow_queries" in done.stdout and "min_mean_ms" in done.stdout and "default 20.0" in done.stdout


def test_an_unknown_runbook_exits_3_with_one_line(tmp_path):
    done = opsbook("run", "no_such_runbook", out=tmp_path)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown runbook 'no_such_runbook'; known: " in lines[0]
    assert all(name in lines[0] for name in ("slow_queries", "webhook_failure", "quota_audit", "revenue_report"))


def test_a_bad_flag_exits_3_not_argparses_2(tmp_path):
    assert opsbook("run", "slow_queries", "--fail-on", "sometimes", out=tmp_path).returncode == 3


def test_a_wrong_parameter_exits_3_and_is_recorded_as_an_invalid_run(tmp_path, demo):
    done = opsbook("run", "slow_queries", "-p", "min_calls", "0", out=tmp_path)
    assert done.returncode == 3
    assert "parameter 'min_calls' from -p min_calls: 0 is below the minimum 1" in done.stderr
    ledger = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert ledger[-1]["status"] == "invalid" and "notebook" not in ledger[-1]
    assert not list(tmp_path.rglob("*.ipynb")), "nothing may execute"


def test_an_unreachable_database_exits_3_and_says_how_to_fix_it(tmp_path):
    url = f"postgresql://app:hunter2secret@127.0.0.1:{free_port()}/app"
    done = opsbook("run", "slow_queries", env={"DATABASE_URL": url}, out=tmp_path)
    assert done.returncode == 3
    line = done.stderr.strip()
    assert "cannot connect to postgresql://app:***@127.0.0.1" in line and "check DATABASE_URL" in line
    assert "hunter2secret" not in done.stderr + done.stdout
    assert "hunter2secret" not in "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_a_healthy_database_exits_0(tmp_path, database18):
    done = opsbook("run", "slow_queries", env={"DATABASE_URL": database18.url}, out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert record["status"] == "ok" and record["findings"] == []
    assert {c["check"] for c in record["checks"]} >= {"slow_queries", "blocked_queries", "unused_indexes"}


@pytest.mark.parametrize(
    "status, severity, fail_on, code",
    [("ok", "ok", "warning", 0), ("findings", "info", "warning", 0), ("findings", "warning", "warning", 1),
     ("findings", "warning", "critical", 0), ("findings", "info", "info", 1), ("error", "ok", "warning", 2),
     ("invalid", "ok", "warning", 3)],
)
def test_exit_codes_follow_status_severity_and_fail_on(status, severity, fail_on, code):
    assert exit_code_for(status, severity, fail_on) == code


def checkout_with_extra_cell(tmp_path, position: int, source: str) -> Path:
    """A copy of the checkout whose slow_queries notebook has one more cell (for OPSBOOK_ROOT)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "params", root / "params")
    nb = nbformat.read(root / "notebooks" / "slow_queries.ipynb", as_version=4)
    nb.cells.insert(position, nbformat.v4.new_code_cell(source))
    nbformat.write(nb, root / "notebooks" / "slow_queries.ipynb")
    return root


def test_a_failing_cell_exits_2_and_the_archived_notebook_marks_it(tmp_path, demo):
    root = checkout_with_extra_cell(tmp_path, 6, "raise RuntimeError('the index catalogue is on fire')")
    out = tmp_path / "out"
    done = opsbook("run", "slow_queries", env={"OPSBOOK_ROOT": str(root)}, out=out)
    assert done.returncode == 2
    assert "RuntimeError: the index catalogue is on fire" in done.stderr
    record = json.loads(next(out.rglob("*.json")).read_text())
    assert record["status"] == "error"
    archived = nbformat.read(out / record["notebook"], as_version=4)
    failed = [c for c in archived.cells if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs)]
    assert len(failed) == 1 and "on fire" in failed[0].source
    assert any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in archived.cells)
    assert archived.cells[0].source.startswith("# Verdict: error")
    # the checks before the failure still count
    assert {c["check"] for c in record["checks"]} >= {"pg_stat_statements_missing"}


def test_history_and_show_read_the_archive(tmp_path, database18):
    assert opsbook("run", "slow_queries", env={"DATABASE_URL": database18.url}, out=tmp_path).returncode == 0
    history = opsbook("history", out=tmp_path)
    assert history.returncode == 0 and "slow_queries" in history.stdout
    _, runbook, verdict, how, run_id, *_ = history.stdout.split()
    assert (runbook, verdict, how) == ("slow_queries", "ok", "run")
    shown = opsbook("show", run_id, out=tmp_path)
    assert shown.returncode == 0 and run_id in shown.stdout
    as_json = json.loads(opsbook("show", run_id, "--json", out=tmp_path).stdout)
    assert as_json["run_id"] == run_id
    assert opsbook("show", "slow_queries-nope", out=tmp_path).returncode == 3


def test_no_secret_reaches_any_archived_file(tmp_path, demo):
    secrets = {
        "STRIPE_API_KEY": "sk_test_4eC39HqLyjWDarjtT1zdp7dcSECRET",
        "STRIPE_WEBHOOK_SECRET": "whsec_SECRET-in-a-test-1234",
        "OPSBOOK_WEBHOOK_URL": "http://127.0.0.1:9/hooks?token=tok_SECRET_in_query",
    }
    env = {"DATABASE_URL": demo["database_url"], **secrets}
    done = opsbook("run", "slow_queries", "-f", str(REPO / "params/slow_queries/demo.yaml"), env=env, out=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    password = demo["database_url"].split(":")[2].split("@")[0]
    needles = [password, *secrets.values(), "tok_SECRET_in_query"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".ipynb", ".html", ".json", ".jsonl"}
    for path in files:
        text = path.read_text()
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked into {path.name}"
    for needle in needles:
        assert needle not in done.stdout + done.stderr


def test_a_cell_over_the_timeout_fails_the_run_with_exit_2(tmp_path, demo):
    root = checkout_with_extra_cell(tmp_path, 4, "import time\ntime.sleep(30)")
    # 6 s: far under the sleep, and over what the imports cell takes on a loaded machine
    done = opsbook("run", "slow_queries", "--timeout", "6", env={"OPSBOOK_ROOT": str(root)}, out=tmp_path / "out")
    assert done.returncode == 2
    assert "timed out" in done.stderr.lower() or "timeout" in done.stderr.lower(), done.stderr
    record = json.loads(next((tmp_path / "out").rglob("*.json")).read_text())
    assert record["status"] == "error"
    archived = nbformat.read(tmp_path / "out" / record["notebook"], as_version=4)
    marked = [c for c in archived.cells if c.cell_type == "code" and "papermill-error-cell-tag" in c.metadata.get("tags", [])]
    assert len(marked) == 1 and "time.sleep(30)" in marked[0].source
    anchor = archived.cells[archived.cells.index(marked[0]) - 1]
    assert 'id="papermill-error-cell"' in anchor.source, "the verdict's link lands on the stopped cell"
    assert any(o.get("output_type") == "error" for o in marked[0].outputs)


def _processes_marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (what a test started, and all they started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_lab_serves_the_notebooks_and_leaves_nothing_running_when_stopped(tmp_path, demo):
    import time
    import urllib.request
    import uuid

    port, mark = free_port(), f"OPSBOOK_LAB_TEST={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path), HOME=str(tmp_path), OPSBOOK_LAB_TEST=mark.split("=")[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops_lib.cli", "lab", "--no-browser", f"--port={port}", "--IdentityProvider.token=",
         "--ServerApp.disable_check_xsrf=True", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/contents/slow_queries.ipynb", timeout=2) as resp:
                    assert json.load(resp)["name"] == "slow_queries.ipynb"
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        start = urllib.request.Request(f"{base}/kernels", data=b"{}", method="POST",
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(start, timeout=30) as resp:
            assert json.load(resp)["id"]
        assert len(_processes_marked(mark)) >= 2, "JupyterLab and a kernel are running"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _processes_marked(mark) == [], "a process outlived `opsbook lab`"


@pytest.mark.parametrize("url", ["postgresql://app:pw@127.0.0.1:notaport/app", "mysql://app:pw@127.0.0.1/app"])
def test_a_malformed_database_url_exits_3_with_one_line(tmp_path, url):
    done = opsbook("run", "slow_queries", env={"DATABASE_URL": url}, out=tmp_path)
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_show_reads_an_invalid_run_too(tmp_path, demo):
    assert opsbook("run", "slow_queries", "-p", "top_n", "0", out=tmp_path).returncode == 3
    run_id = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])["run_id"]
    shown = opsbook("show", run_id, out=tmp_path)
    assert shown.returncode == 0 and "invalid" in shown.stdout and "top_n" in shown.stdout


@pytest.mark.parametrize(
    "runbook, args, env_drop, words",
    [
        ("revenue_report", ["-p", "period", "2026-13"], (), "parameter 'period'"),
        ("quota_audit", ["-p", "plans_file", "params/quota/nope.yaml"], (), "plans file"),
        ("webhook_failure", ["-p", "apply", "true"], ("OPSBOOK_WEBHOOK_URL",), "OPSBOOK_WEBHOOK_URL"),
    ],
)
def test_parameters_checked_against_each_other_and_the_target_exit_3_before_running(tmp_path, demo, runbook, args, env_drop, words):
    from ops_lib.demo import lifecycle

    env = {k: v for k, v in lifecycle.target_of(demo).env().items() if k not in env_drop}
    done = opsbook("run", runbook, *args, env=env, out=tmp_path)
    assert done.returncode == 3, done.stderr
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.ipynb"))


def test_run_all_runs_every_runbook_at_once_up_to_a_bound():
    from ops_lib.runner import MAX_PARALLEL_RUNS, parallel_runs

    assert parallel_runs(5) == 5, "more runs than cores: a run mostly waits"
    assert parallel_runs(50) == MAX_PARALLEL_RUNS and parallel_runs(0) == 1


@pytest.fixture(scope="module")
def two_runs(demo):
    out = scratch_dir("two-runs")
    for _ in range(2):
        assert opsbook("run", "slow_queries", "-f", "demo", out=out).returncode in (0, 1)
    finished = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()
                if json.loads(line).get("status") != "running"]
    return out, finished


@pytest.mark.parametrize("damage", [b'{"run_id": "cut sh', b"[1, 2]", b'{"run_id": "another-run"}'])
def test_a_damaged_run_record_is_one_line_for_show_and_diff_and_skipped_as_an_earlier_run(two_runs, damage):
    out, (first, second) = two_runs
    record = out / first["json"]
    intact = record.read_bytes()
    record.write_bytes(damage)
    try:
        for args in (["show", first["run_id"]], ["diff", first["run_id"], second["run_id"]]):
            done = opsbook(*args, out=out)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            [line] = done.stderr.strip().splitlines()
            assert f"the archived record of {first['run_id']}" in line and "damaged" in line
        # (diff against "the previous run" finds none rather than failing)
        done = opsbook("diff", second["run_id"], out=out)
        assert done.returncode == 3 and "no earlier finished run" in done.stderr, done.stderr
    finally:
        record.write_bytes(intact)
