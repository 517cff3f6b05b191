"""The demo target for tests: one per test session, in its own scratch home, torn down at the end.

Used as a fixture by the tests (conftest) and as a pytest plugin by the notebook run
(`pytest --nbval-lax notebooks/ -p tests.demo_target`), where kernels must see the target's
environment before the first notebook is collected.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ops_lib.target import TARGET_VARIABLES

_state: dict | None = None


def scratch_dir(name: str) -> Path:
    # Not pytest's tmp_path: its 0700 parents would lock out the unprivileged postgres user.
    root = Path(tempfile.gettempdir()) / "opsbook-tests"
    root.mkdir(exist_ok=True)
    root.chmod(root.stat().st_mode | stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    path.chmod(0o755)
    return path


def start() -> dict:
    """Bring the demo up once; every target variable is cleared so the demo is the target."""
    global _state
    if _state is None:
        from ops_lib.demo import lifecycle

        os.environ["OPSBOOK_HOME"] = str(scratch_dir("demo-home"))
        os.environ["OPSBOOK_OUTPUTS"] = str(scratch_dir("outputs"))
        os.environ["OPSBOOK_STRICT"] = "1"  # every run archived by a test is checked against run.schema.json
        for name in TARGET_VARIABLES:
            os.environ.pop(name, None)
        _state = lifecycle.up(seed=42, scale=1.0)
    return _state


def stop() -> None:
    global _state
    if _state is not None:
        from ops_lib.demo import lifecycle

        lifecycle.down(destroy=True)
        _state = None
        for name in ("OPSBOOK_HOME", "OPSBOOK_OUTPUTS"):
            shutil.rmtree(os.environ.pop(name, ""), ignore_errors=True)


def _runs_tests(config) -> bool:
    """False in pytest-xdist's controller: its workers run the tests, each with a demo of its own."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def pytest_sessionstart(session):
    if _runs_tests(session.config):
        start()


def pytest_sessionfinish(session, exitstatus):
    stop()
