"""Where things live: the project checkout, its notebooks and parameter sets, the archive, the demo."""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout opsbook runs from: OPSBOOK_ROOT, else the one this package sits in, else cwd."""
    if os.environ.get("OPSBOOK_ROOT"):
        return Path(os.environ["OPSBOOK_ROOT"]).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def params_dir() -> Path:
    return project_root() / "params"


def outputs_dir() -> Path:
    return Path(os.environ.get("OPSBOOK_OUTPUTS") or project_root() / "outputs")


def home() -> Path:
    """Local state (the demo target's data and credentials); git-ignored."""
    return Path(os.environ.get("OPSBOOK_HOME") or project_root() / ".opsbook")
