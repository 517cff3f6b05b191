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
    assert not {"papermill", "opsbook_run"} & set(nb.get("metadata", {})), f"{path.name}: carries a run's metadata"


def test_git_strips_notebooks_through_nbstripout():
    attributes = (REPO / ".gitattributes").read_text().splitlines()
    assert "*.ipynb filter=nbstripout" in attributes


def _module_imports() -> dict[str, set[str]]:
    """ops_lib's modules and the ops_lib modules each imports at module level (imports inside
    functions are deferred on purpose and left out)."""
    import ast

    root = REPO / "ops_lib"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules]
                # `from . import trust` loads the submodule, not the package's own body
                targets = submodules if submodules and not node.module else [module, *submodules]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_ops_lib_has_no_import_cycles():
    graph = _module_imports()
    cycles, seen = [], set()

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in seen:
            return
        for nxt in graph[node]:
            visit(nxt, path + [node])
        seen.add(node)

    for module in graph:
        visit(module, [])
    assert cycles == []


def test_resolving_a_target_never_imports_the_demo():
    graph = _module_imports()
    assert not any(m.startswith("ops_lib.demo") for m in graph["ops_lib.target"])
