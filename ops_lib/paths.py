"""Where things live: the shipped notebooks and parameter sets, the archive, the demo's state.

From a checkout, the notebooks and parameter sets are the repository's top-level ``notebooks/``
and ``params/``; from an installed wheel they are package data beside this module (the wheel
maps the same folders to ``ops_lib/notebooks`` and ``ops_lib/params``). The archive and the demo's
state go in the checkout, or, for an installed opsbook, in the folder it runs from.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository this package sits in, when it runs from a checkout (editable or not)."""
    root = _PACKAGE.parent
    if (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file():
        return root
    return None


def project_root() -> Path:
    """Where the shipped notebooks/ and params/ are: OPSBOOK_ROOT, the checkout, or the package."""
    if os.environ.get("OPSBOOK_ROOT"):
        return Path(os.environ["OPSBOOK_ROOT"]).resolve()
    return checkout_root() or _PACKAGE


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def params_dir() -> Path:
    return project_root() / "params"


def _working_root() -> Path:
    return checkout_root() or Path.cwd()


def outputs_dir() -> Path:
    return Path(os.environ.get("OPSBOOK_OUTPUTS") or _working_root() / "outputs")


def home() -> Path:
    """Local state (the demo target's data and credentials); git-ignored in a checkout."""
    return Path(os.environ.get("OPSBOOK_HOME") or _working_root() / ".opsbook")
