"""What the repository commits: notebooks without outputs (they would hold customer data)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _committed(path: Path) -> str:
    """The notebook as git holds it (the index), or as the checkout has it outside git."""
    if shutil.which("git") and (REPO / ".git").exists():
        shown = subprocess.run(["git", "show", f":{path.relative_to(REPO)}"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode == 0:
            return shown.stdout
    return path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_committed_notebook_has_no_outputs_and_no_run_record(path):
    nb = json.loads(_committed(path))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: a code cell has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: a code cell has an execution count"
    assert not {"papermill", "opsbook"} & set(nb.get("metadata", {})), f"{path.name}: carries a run's metadata"


def test_git_strips_notebooks_through_nbstripout():
    attributes = (REPO / ".gitattributes").read_text().splitlines()
    assert "*.ipynb filter=nbstripout" in attributes
