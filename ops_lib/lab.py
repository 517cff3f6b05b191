"""JupyterLab as `opsbook lab` configures it: a session during an incident leaves a record.

Saving a runbook notebook that has been run (its ``runtime.start`` cell displayed the run's
identity) archives a masked, executed copy as that run — marked interactive in the ledger, with
its findings and applied actions — and the file itself is saved without outputs, so customer
data from a Run All never lands in the runbook folder (or in git).
"""
from __future__ import annotations

import copy
import logging

from .errors import first_line
from .findings import RUN_MIME

log = logging.getLogger("opsbook.lab")


def run_identity(nb: dict) -> dict | None:
    """The run a notebook's outputs belong to (the last one started in it), if it was run."""
    identity = None
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else ():
            data = output.get("data", {})
            if RUN_MIME in data:
                identity = data[RUN_MIME]
    return identity


def strip_outputs(nb: dict) -> None:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    for key in ("papermill", "opsbook_run", "widgets"):
        nb.get("metadata", {}).pop(key, None)


def pre_save_hook(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """jupyter_server's ContentsManager.pre_save_hook (set by `opsbook lab`)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    identity = run_identity(nb)
    if identity is not None:
        from .runner import archive_interactive

        try:
            record = archive_interactive(copy.deepcopy(nb), identity)
            log.info("opsbook: archived %s as %s (%s)", path, record["run_id"], record["status"])
        except Exception as err:  # a failed archive must not lose the user's save
            log.warning("opsbook: %s was saved but not archived: %s", path, first_line(err))
    strip_outputs(nb)
