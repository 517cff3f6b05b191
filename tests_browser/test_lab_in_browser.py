"""`opsbook lab` in a real browser: Run All and Save leave an interactive run in the archive.

Headless Chromium (Debian's package, at OPSBOOK_CHROMIUM) driven by playwright opens a copy of the
slow_queries runbook in the JupyterLab that `opsbook lab` starts against the session's demo
target, runs every cell from the Run menu and saves from the File menu — what an engineer does
during an incident. Then `opsbook history` must list that session's run with its verdict, the
archive must hold its findings (the demo's planted problems) and no secret, and the runbook
folder must hold no output.

Run with `make test-browser` (it installs playwright and Chromium first): the plugin
`tests.demo_target` brings up the demo target for the session.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from ops_lib import paths
from ops_lib.demo import lifecycle
from ops_lib.demo.postgres import free_port
from ops_lib.demo.seed import SLOW_STATEMENTS
from tests import demo_target
from tests.demo_target import scratch_dir

CHROMIUM = os.environ.get("OPSBOOK_CHROMIUM", "/usr/bin/chromium")
RUNBOOK = "slow_queries"
SERVER_START_S = 90
KERNEL_IDLE_S = 120
RUN_ALL_S = 180
SAVE_S = 90
SERVER_STOP_S = 30

# The session's parameters, as an engineer sets them during an incident: the demo's live incidents
# are seconds old (params/slow_queries/demo.yaml), and the long-running query is to be cancelled.
SESSION_PARAMETERS = {"long_running_seconds": "2", "idle_in_transaction_seconds": "2",
                      "remediate": '["cancel_long_running"]', "apply": "True"}

# An engineer checking which database the session is on, the careless way: the session shows the
# password, and the archive must not.
CARELESS_CELL = 'import os; print(os.environ["DATABASE_URL"])'

# Every code cell has finished: none is queued or running ([*]) and at least one has run ([n]).
# A cell that raises stops Run All, and the cells after it go back to [ ]. A dialog (a dead kernel,
# a kernel to select) ends the wait too: the test reports it.
RUN_ALL_FINISHED = """() => {
  if (document.querySelector('.jp-Dialog')) return true;
  const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  return prompts.length > 0 && !prompts.some(t => t.includes('*')) && prompts.some(t => /\\[\\d+\\]/.test(t));
}"""


class Hidden(list):
    """Secrets that a failure report (pytest shows fixtures' values) must not print."""

    def __repr__(self) -> str:
        return f"<{len(self)} secrets>"


def _session_secrets(state: dict) -> Hidden:
    """What must never be written: the demo's passwords and Stripe secrets."""
    values = [urlsplit(state[key]).password for key in ("database_url", "monitor_url")]
    values += [state.get("stripe_api_key"), state.get("stripe_webhook_secret")]
    values += [os.environ.get(name) for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET")]
    found = [v for v in values if v and len(v) >= 8]
    assert len(found) >= 4, "the demo has database passwords and Stripe secrets to keep out"
    return Hidden(found)


def _files_holding(folder: Path, needles: list[str]) -> list[str]:
    """Files under folder that contain any of needles (names only: the needles are secrets)."""
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", "replace")
        if any(needle in text for needle in needles):
            hits.append(str(path.relative_to(folder)))
    return hits


def _redacted(text: str, needles: list[str]) -> str:
    """Text for a failure message: the session's secrets replaced."""
    for needle in needles:
        text = text.replace(needle, "***")
    return text


def _ledger(out: Path) -> list[dict]:
    ledger = out / "runs.jsonl"
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.exists() else []


def _wait_for_server(base: str, token: str, lab: subprocess.Popen, log: Path, hidden: list[str]) -> None:
    request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=3) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if lab.poll() is not None:
            pytest.fail(_redacted(f"`opsbook lab` exited with {lab.returncode}:\n{log.read_text()[-3000:]}", hidden))
        if time.monotonic() > deadline:
            pytest.fail(_redacted(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}", hidden))
        time.sleep(0.5)


def _stop(lab: subprocess.Popen) -> None:
    """SIGTERM stops JupyterLab and its kernels; a server that hangs is killed."""
    if lab.poll() is None:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(timeout=SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait(timeout=10)


def _notebook_kernel_state(s: dict) -> str | None:
    """The execution state of the kernel the server runs for the runbook, if it runs one."""
    request = urllib.request.Request(f"{s['base']}/api/sessions", headers={"Authorization": f"token {s['token']}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        sessions = json.load(answer)
    states = [x["kernel"].get("execution_state") for x in sessions if x.get("path") == f"{RUNBOOK}.ipynb" and x.get("kernel")]
    return states[0] if states else None


def _start_kernel(page, s: dict) -> None:
    """Open the notebook's kernel as a user does: JupyterLab asks which kernel, the user takes the
    notebook's own (Python 3). Returns once the server runs it and the notebook shows it idle."""
    deadline = time.monotonic() + KERNEL_IDLE_S
    select = page.locator(".jp-Dialog", has_text="Select Kernel").locator("button.jp-mod-accept")
    idle = page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")
    while not (_notebook_kernel_state(s) == "idle" and idle.count() > 0):
        assert time.monotonic() < deadline, f"no idle kernel for the notebook within {KERNEL_IDLE_S} s"
        if select.count() > 0:
            select.first.click(timeout=10_000)
        time.sleep(0.5)


def _menu(page, menu: str, item: re.Pattern) -> None:
    """An item of the menu bar's menu, clicked as a user clicks it."""
    page.locator(f'.lm-MenuBar-itemLabel:text-is("{menu}")').click(timeout=30_000)
    page.locator(".lm-Menu-content .lm-Menu-itemLabel").filter(has_text=item).click(timeout=30_000)


@pytest.fixture()
def lab_session(tmp_path):
    """`opsbook lab` on a scratch copy of the runbook, against the session's demo target."""
    hidden = _session_secrets(demo_target.start())
    home = scratch_dir("lab-browser")
    folder, out = home / "runbooks", home / "out"
    folder.mkdir()
    nb = nbformat.read(paths.notebooks_dir() / f"{RUNBOOK}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for name, value in SESSION_PARAMETERS.items():
        cell.source, n = re.subn(rf"^{name} = [^#\n]*", f"{name} = {value}  ", cell.source, flags=re.M)
        assert n == 1, f"the runbook has no parameter {name}"
    where = next(i for i, c in enumerate(nb.cells) if "runtime.start(" in c.source) + 1
    nb.cells.insert(where, nbformat.v4.new_code_cell(CARELESS_CELL))
    nbformat.write(nb, folder / f"{RUNBOOK}.ipynb")
    # JupyterLab's own settings for this session: no news or update checks (the browser has no
    # internet), everything else as a user gets it.
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        OPSBOOK_RUNBOOKS=str(folder),  # `opsbook lab` opens the first runbook folder
        OPSBOOK_OUTPUTS=str(out),
        HOME=str(home),
        JUPYTER_TOKEN=token,
        JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    command = [sys.executable, "-m", "ops_lib.cli", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = home / "lab.log"
    with open(log, "w") as sink:
        lab = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base, token, lab, log, hidden)
        yield {"base": base, "token": token, "folder": folder, "out": out, "env": env, "log": log, "secrets": hidden}
    finally:
        _stop(lab)
        (tmp_path / "lab.log").write_text(_redacted(log.read_text(), hidden))  # for whoever debugs a failure
        shutil.rmtree(home, ignore_errors=True)


def test_run_all_and_save_in_a_real_browser_archives_an_interactive_run_with_its_verdict(lab_session, tmp_path):
    s = lab_session
    launch_args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launch_args.append("--disable-dev-shm-usage")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=launch_args, timeout=60_000)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{s['base']}/lab/tree/{RUNBOOK}.ipynb?token={s['token']}", wait_until="domcontentloaded",
                      timeout=90_000)
            _start_kernel(page, s)

            _menu(page, "Run", re.compile(r"^Run All Cells$"))
            page.wait_for_function(RUN_ALL_FINISHED, timeout=RUN_ALL_S * 1000, polling=500)
            dialogs = page.locator(".jp-Dialog").all_inner_texts()
            assert not dialogs, _redacted(f"JupyterLab asked: {dialogs}\n{s['log'].read_text()[-3000:]}", s["secrets"])
            prompts = [t.strip() for t in page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt").all_text_contents()]
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_text_contents()
            assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), \
                _redacted(f"not every cell ran: {prompts}\n{errors[-1:]}", s["secrets"])
            shown = page.locator(".jp-NotebookPanel .jp-Notebook").text_content()  # offscreen cells too
            session_showed_password = s["secrets"][0] in shown
            assert session_showed_password, "the careless cell printed the database URL in the live session"
            verdict_shown = re.search(r"Verdict: (WARNING|CRITICAL)", shown)
            run_shown = re.search(rf"{RUNBOOK} run ({RUNBOOK}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{6}})", shown)
            assert verdict_shown and run_shown, "the session shows its run id and, last, its verdict"

            _menu(page, "File", re.compile(r"^Save( Notebook)?$"))
            deadline = time.monotonic() + SAVE_S
            while not any(line.get("interactive") for line in _ledger(s["out"])):
                assert time.monotonic() < deadline, \
                    _redacted(f"no interactive run archived:\n{s['log'].read_text()[-3000:]}", s["secrets"])
                time.sleep(0.5)
            # the engineer still sees what they ran: only the file on disk is stripped
            page.locator(".lm-TabBar-tab.jp-mod-dirty").first.wait_for(state="detached", timeout=SAVE_S * 1000)
            still_shown = page.locator(".jp-NotebookPanel .jp-Notebook").text_content()  # offscreen cells too
            assert run_shown.group(1) in still_shown and "Verdict:" in still_shown
        except (AssertionError, PlaywrightError):
            # the careless cell's output shows a password: masked in the picture
            hide = [page.locator(".jp-OutputArea-output", has_text=secret) for secret in s["secrets"]]
            page.screenshot(path=str(tmp_path / "lab-failure.png"), mask=hide, timeout=15_000)
            raise
        finally:
            browser.close()

    run_id, severity = run_shown.group(1), verdict_shown.group(1).lower()
    (line,) = [line for line in _ledger(s["out"]) if line.get("interactive")]
    assert line["run_id"] == run_id and line["runbook"] == RUNBOOK
    assert line["status"] == "findings" and line["severity"] == severity

    # `opsbook history` lists the session's run with its verdict and what it found
    history = subprocess.run([sys.executable, "-m", "ops_lib.cli", "history", RUNBOOK], env=s["env"],
                             capture_output=True, text=True, timeout=60)
    assert history.returncode == 0, history.stderr
    rows = [row for row in history.stdout.splitlines() if run_id in row]
    assert len(rows) == 1, f"the session's run is listed once:\n{history.stdout}"
    listed = rows[0]
    assert re.search(rf"\b{RUNBOOK}\s+{severity}\s+lab\s+{run_id}\b", listed), listed  # a lab session
    planted = lifecycle.planted()["slow_queries"]
    for check in planted:
        assert check in listed, f"{check} missing from the history line: {listed}"

    # the archived run holds its findings: the planted problems, named
    record = json.loads((s["out"] / line["json"]).read_text())
    assert record["interactive"] is True and record["run_id"] == run_id
    by_check = {f["check"]: f for f in record["findings"]}
    for check, names in planted.items():
        if check == "slow_queries":  # named by the demo's statement keys; their count is checked below
            continue
        items = [str(item) for item in by_check[check]["items"]]
        for name in names:
            assert any(str(name) in item for item in items), f"{check}: {name} not in {items}"
    assert by_check["slow_queries"]["count"] == len(SLOW_STATEMENTS)
    # the action the session applied: in the run, and in the audit log under the run's id
    long_running = {f"pid {pid}" for pid in by_check["long_running_queries"]["items"]}
    applied = [a for a in record["actions"] if a["applied"]]
    assert applied and all(a["action"] == "cancel_backend" and a["target"] in long_running for a in applied), record["actions"]
    audited = [json.loads(raw) for raw in (s["out"] / "audit.jsonl").read_text().splitlines() if raw.strip()]
    assert sorted(a["target"] for a in audited if a["run_id"] == run_id) == sorted(a["target"] for a in applied)
    assert record["parameters"]["apply"] is True and record["parameters"]["remediate"] == ["cancel_long_running"]
    archived = nbformat.read(s["out"] / record["notebook"], as_version=4)
    assert archived.cells[0].source.startswith(f"# Verdict: {severity}"), "the archived notebook opens with its verdict"
    assert any(c.get("outputs") for c in archived.cells if c.cell_type == "code"), "the archive keeps what the session saw"

    # the runbook folder keeps no output (no checkpoint either), and nothing secret was written
    saved = nbformat.read(s["folder"] / f"{RUNBOOK}.ipynb", as_version=4)
    assert any(c.cell_type == "code" and c.source == CARELESS_CELL for c in saved.cells), "the session's edit is saved"
    assert all(c.outputs == [] and c.execution_count is None for c in saved.cells if c.cell_type == "code")
    for checkpoint in s["folder"].rglob("*.ipynb"):
        nb = nbformat.read(checkpoint, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), checkpoint
    assert _files_holding(s["out"], s["secrets"]) == [], "a secret was written into the archive"
    assert _files_holding(s["folder"], s["secrets"]) == [], "a secret was written into the runbook folder"
    assert run_id not in json.dumps(saved), "the saved runbook carries no run"
