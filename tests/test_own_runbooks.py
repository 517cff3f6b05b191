"""A team's own runbooks: written with `opsbook new`, found through OPSBOOK_RUNBOOKS, run like the shipped ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ops_lib.target import TARGET_VARIABLES

from .demo_target import scratch_dir


def opsbook(*args, folder: Path, out: Path | None = None, env: dict | None = None):
    full = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    full.update(OPSBOOK_RUNBOOKS=str(folder), **(env or {}))
    if out is not None:
        full["OPSBOOK_OUTPUTS"] = str(out)
    return subprocess.run([sys.executable, "-m", "ops_lib.cli", *args], capture_output=True, text=True, env=full,
                          timeout=300)


@pytest.fixture
def folder():
    return scratch_dir("own-runbooks") / "runbooks"


def test_a_new_runbook_is_listed_validated_run_and_archived(folder, database18):
    database18.execute("CREATE TABLE no_key AS SELECT g AS id FROM generate_series(1, 2000) g")
    database18.execute("CREATE TABLE keyed (id int PRIMARY KEY)")
    database18.execute("ANALYZE")
    target = {"DATABASE_URL": database18.url}
    out = folder.parent / "out"

    created = opsbook("new", "table_keys", folder=folder)
    assert created.returncode == 0, created.stderr
    assert (folder / "table_keys.ipynb").is_file() and (folder / "params/table_keys/daily.yaml").is_file()

    listed = opsbook("list", folder=folder)
    assert listed.returncode == 0, listed.stderr
    assert "table_keys — Table keys" in listed.stdout and "min_rows" in listed.stdout
    assert "slow_queries" in listed.stdout, "the shipped runbooks are still there"

    refused = opsbook("run", "table_keys", "-p", "min_rows", "-1", folder=folder, out=out, env=target)
    assert refused.returncode == 3 and "min_rows" in refused.stderr

    found = opsbook("run", "table_keys", "-f", "daily", folder=folder, out=out, env=target)
    assert found.returncode == 1, found.stderr
    (record_path,) = [p for p in out.glob("table_keys/*/*.json") if json.loads(p.read_text())["status"] == "findings"]
    record = json.loads(record_path.read_text())
    (finding,) = record["findings"]
    assert finding["check"] == "tables_without_primary_key" and finding["items"] == ["no_key"]
    assert record["parameters"]["min_rows"] == 1000
    assert (out / record["html"]).is_file() and (out / record["notebook"]).is_file()

    database18.execute("ALTER TABLE no_key ADD PRIMARY KEY (id)")
    clean = opsbook("run", "table_keys", folder=folder, out=out, env=target)
    assert clean.returncode == 0, clean.stderr
    statuses = [json.loads(line)["status"] for line in (out / "runs.jsonl").read_text().splitlines()]
    assert statuses.count("invalid") == 1 and "findings" in statuses and statuses[-1] == "ok"


def test_new_refuses_a_taken_or_malformed_name_and_needs_a_folder(folder):
    assert opsbook("new", "slow_queries", folder=folder).returncode == 3
    assert opsbook("new", "Bad-Name", folder=folder).returncode == 3
    done = subprocess.run([sys.executable, "-m", "ops_lib.cli", "new", "fine_name"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "OPSBOOK_RUNBOOKS"}, timeout=60)
    assert done.returncode == 3 and "OPSBOOK_RUNBOOKS" in done.stderr
    assert not (folder / "fine_name.ipynb").exists()


def test_an_earlier_folder_hides_a_runbook_of_the_same_name(folder):
    second = folder.parent / "second"
    assert opsbook("new", "shared_check", folder=second).returncode == 0
    both = Path(f"{folder}:{second}")
    assert opsbook("new", "shared_check", "--title", "First", folder=both).returncode == 3, "names are unique"
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(second / "shared_check.ipynb", as_version=4)
    nb.metadata["opsbook"]["title"] = "The first folder's"
    nbformat.write(nb, folder / "shared_check.ipynb")
    listed = opsbook("list", folder=both)
    assert "shared_check — The first folder's" in listed.stdout


@pytest.mark.parametrize("breakage, words", [
    ("not json", "not a readable notebook"),
    ("constraint for an undeclared parameter", "does not declare"),
    ("a default that is not a literal", "not a literal"),
    ("an unknown constraint", "unknown constraints"),
])
def test_a_broken_runbook_notebook_is_one_line_naming_it(folder, breakage, words):
    assert opsbook("new", "broken_one", folder=folder).returncode == 0
    path = folder / "broken_one.ipynb"
    nb = json.loads(path.read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    if breakage == "not json":
        path.write_text("{ not json")
    else:
        if breakage == "constraint for an undeclared parameter":
            cell["metadata"]["opsbook"]["constraints"]["ghost"] = {"minimum": 1}
        elif breakage == "a default that is not a literal":
            cell["source"] = "min_rows = compute()  # nope\nrun_id = None"
        else:
            cell["metadata"]["opsbook"]["constraints"]["min_rows"]["at_least"] = 1
        path.write_text(json.dumps(nb))
    done = opsbook("run", "broken_one", folder=folder, out=folder.parent / "out")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "broken_one.ipynb" in lines[0]
    assert opsbook("list", folder=folder).returncode == 3, "list names the broken notebook rather than hiding it"


def test_log_output_streams_cell_output_to_stderr_masked(folder, database18):
    assert opsbook("new", "chatty", folder=folder).returncode == 0
    path = folder / "chatty.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(4, nbformat.v4.new_code_cell('print("hello from the cell", "sk_" + "test_" + "abcdefghijklmnop")'))
    nbformat.write(nb, path)
    done = opsbook("run", "chatty", "--log-output", folder=folder, out=folder.parent / "out",
                   env={"DATABASE_URL": database18.url})
    assert done.returncode == 0, done.stderr
    assert "hello from the cell sk_test_***" in done.stderr
    assert "abcdefghijklmnop" not in done.stderr
    quiet = opsbook("run", "chatty", folder=folder, out=folder.parent / "out", env={"DATABASE_URL": database18.url})
    assert quiet.returncode == 0 and quiet.stderr == "", "quiet when not asked and not on a terminal"


def test_a_stripe_probe_that_is_not_a_listing_is_one_line_naming_the_notebook(folder, demo):
    from ops_lib.demo import lifecycle

    assert opsbook("new", "probing", folder=folder).returncode == 0
    path = folder / "probing.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["opsbook"]["stripe_probe"] = "make_client"
    path.write_text(json.dumps(nb))
    done = opsbook("run", "probing", folder=folder, out=folder.parent / "out", env=lifecycle.target_of(demo).env())
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "probing.ipynb" in lines[0] and "list_charges" in lines[0]
