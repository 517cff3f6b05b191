"""`opsbook lab`: an interactive session leaves a record when the engineer saves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

from ops_lib.demo.postgres import free_port
from ops_lib.findings import RUN_MIME
from ops_lib.target import TARGET_VARIABLES

from .demo_target import scratch_dir


def _executed(notebook: Path, database_url: str, workdir: Path) -> dict:
    """The notebook as JupyterLab holds it after Run All (executed by nbclient, as a kernel would)."""
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    # an engineer checking which database the session is on, the careless way
    nb.cells.insert(4, nbformat.v4.new_code_cell('import os; print(os.environ["DATABASE_URL"])'))
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES and k != "OPSBOOK_ARCHIVED_RUN"}
    env["DATABASE_URL"] = database_url
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nbformat.writes(nb) and json.loads(nbformat.writes(nb))


def test_saving_a_run_notebook_archives_it_as_an_interactive_run_and_keeps_the_file_clean(database18):
    home = scratch_dir("lab")
    # the test cluster trusts local connections: the password is never checked, only to be kept out of the archive
    database_url = database18.url.replace("://postgres@", "://postgres:Lab-Secret-pw-0451@", 1)
    assert "Lab-Secret" in database_url
    folder, out = home / "runbooks", home / "out"
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env.update(OPSBOOK_RUNBOOKS=str(folder), OPSBOOK_OUTPUTS=str(out), DATABASE_URL=database_url,
               JUPYTER_RUNTIME_DIR=str(home), HOME=str(home))
    assert subprocess.run([sys.executable, "-m", "ops_lib.cli", "new", "table_keys"], env=env, timeout=60).returncode == 0
    database18.execute("CREATE TABLE no_key (id int)")
    content = _executed(folder / "table_keys.ipynb", database_url, folder)
    identities = [o["data"][RUN_MIME] for c in content["cells"] if c["cell_type"] == "code"
                  for o in c.get("outputs", []) if RUN_MIME in o.get("data", {})]
    assert identities, "runtime.start displayed the run's identity"

    port = free_port()
    lab = subprocess.Popen([sys.executable, "-m", "ops_lib.cli", "lab", "--no-browser", f"--port={port}",
                            "--IdentityProvider.token=", "--ServerApp.disable_check_xsrf=True", "--allow-root"],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(home / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}/api/contents/table_keys.ipynb"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and lab.poll() is None, "JupyterLab did not start"
                time.sleep(0.3)
        body = json.dumps({"type": "notebook", "format": "json", "content": content}).encode()
        save = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(save, timeout=60).close()
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(timeout=30)

    assert (out / "runs.jsonl").exists(), (home / "lab.log").read_text()[-3000:]
    saved = json.loads((folder / "table_keys.ipynb").read_text())
    assert all(c.get("outputs") == [] for c in saved["cells"] if c["cell_type"] == "code"), "the file keeps no outputs"
    (line,) = [json.loads(raw) for raw in (out / "runs.jsonl").read_text().splitlines()]
    assert line["interactive"] is True and line["run_id"] == identities[-1]["run_id"]
    assert line["status"] == "findings" and line["findings"] == {"tables_without_primary_key": "warning"}
    record = json.loads((out / line["json"]).read_text())
    assert record["findings"][0]["items"] == ["no_key"]
    history = subprocess.run([sys.executable, "-m", "ops_lib.cli", "history"], capture_output=True, text=True,
                             timeout=60, env={**env, "OPSBOOK_OUTPUTS": str(out)})
    assert f"table_keys       warning   lab {line['run_id']}" in history.stdout, history.stdout
    archived = (out / record["notebook"]).read_text()
    assert "# Verdict: warning" in archived and RUN_MIME in archived
    assert "Lab-Secret-pw-0451" in json.dumps(content), "the session's own outputs held the password"
    for path in (record["notebook"], record["html"], line["json"], "runs.jsonl"):
        assert "Lab-Secret-pw-0451" not in (out / path).read_text(), path
