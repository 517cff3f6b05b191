"""The repository is self-contained: a fresh clone runs its tests with nothing beside it.

Two guards. The first scans every source, test, notebook and build file for a path that leaves
the repository: a `..` component, a `shared/` folder (where the project's material once came
from), a machine's home or work directory, or a walk up from `__file__` past the repository's
root (`Path(__file__).resolve().parents[N]`, `.parent` chains, names bound to them, `REPO.parent`).
Prose (comments, docstrings) is not scanned; system installs such as /usr/lib/postgresql are
allowed, since a repository cannot hold them. The second checks that the Stripe specification
the tests validate against is carried here, is API version 2023-08-16 and has its licence.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
from pathlib import Path

import ops_lib.stripe_api
import ops_lib.stripe_emulator.objects

from . import stripe_fixtures, stripe_spec

REPO = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()

SCANNED_DIRS = ["ops_lib", "tests", "benchmarks", "notebooks", "params", ".ci"]
SCANNED_FILES = ["Makefile", "pyproject.toml"]
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
CARRIED = Path("tests") / "data"  # the carried third-party files, not the project's code
TEXT_SUFFIXES = {".toml", ".yaml", ".yml", ".cfg", ".ini", ".sql", ".sh", ".txt", ""}

# In a string (or a line of a build file): a `..` path component, a `shared` folder, a home or
# work directory of some machine.
PARENT_COMPONENT = re.compile(r"(?:^|[/\\\s\"'=:(])\.\.(?:[/\\]|$)")
SHARED_FOLDER = re.compile(r"(?:^|[/\\\s\"'=:(])shared[/\\]")
MACHINE_DIR = re.compile(r"(?:^|[\s\"'=:(])/(?:work|home|Users|root|mnt|srv|media|workspace)(?:/|$)")
HOME_DIR = re.compile(r"(?:^|[\s\"'=:(])~[/\\]")
OUTSIDE = {"'..' component": PARENT_COMPONENT, "shared/ folder": SHARED_FOLDER,
           "machine-specific directory": MACHINE_DIR, "home directory": HOME_DIR}

_PATH_CONSTRUCTORS = {"Path", "PurePath", "PosixPath"}
_SAME_PATH_METHODS = {"resolve", "absolute", "expanduser", "abspath", "realpath", "normpath"}


def scanned_files(root: Path) -> list[Path]:
    files = [root / name for name in SCANNED_FILES if (root / name).is_file()]
    for folder in SCANNED_DIRS:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root)
            if (path.is_file() and not set(relative.parts[:-1]) & SKIPPED_PARTS
                    and not relative.is_relative_to(CARRIED) and path.resolve() != SELF):
                files.append(path)
    return files


def string_problems(text: str) -> list[str]:
    return [what for what, pattern in OUTSIDE.items() if pattern.search(text)]


class _PathWalk(ast.NodeVisitor):
    """Finds path strings leaving the repo and walks up from __file__ past the repo's root.

    A path expression's value is how many levels above the file it points (the file itself is 0,
    its folder 1): `depth` levels up is the repository's root, anything above it is outside.
    """

    def __init__(self, depth: int):
        self.depth = depth
        self.levels: dict[str, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.docstrings: set[int] = set()

    # -- the level of a path expression, or None when it is not one derived from __file__
    def level(self, node: ast.AST) -> int | None:
        if isinstance(node, ast.Name):
            return 0 if node.id == "__file__" else self.levels.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = self.level(node.value)
            return None if inner is None else inner + 1
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, int)):
            inner = self.level(node.value.value)
            return None if inner is None else inner + node.slice.value + 1
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            inner = self.level(node.left)
            if inner is None or not isinstance(node.right, ast.Constant):
                return None
            return self._joined(inner, str(node.right.value))
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _PATH_CONSTRUCTORS and len(node.args) == 1:
                return self.level(node.args[0])
            if name in _SAME_PATH_METHODS:
                target = node.args[0] if node.args else getattr(func, "value", None)
                return None if target is None else self.level(target)
            if name == "dirname" and node.args:
                inner = self.level(node.args[0])
                return None if inner is None else inner + 1
            if name == "join" and node.args:
                inner = self.level(node.args[0])
                for arg in node.args[1:]:
                    if inner is None or not isinstance(arg, ast.Constant):
                        return None
                    inner = self._joined(inner, str(arg.value))
                return inner
        return None

    def _joined(self, level: int, relative: str) -> int:
        for part in re.split(r"[/\\]", relative):
            if part == "..":
                level += 1
                if level > self.depth:
                    return level
            elif part not in ("", "."):
                level -= 1
        return level

    # -- the walk
    def visit_Module(self, node: ast.Module) -> None:
        self._note_docstring(node)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._note_docstring(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def _note_docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            self.docstrings.add(id(body[0].value))

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        level = self.level(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if level is None:
                    self.levels.pop(target.id, None)
                else:
                    self.levels[target.id] = level

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit_Assign(ast.Assign(targets=[node.target], value=node.value))

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.BinOp, ast.Call)):
            level = self.level(node)
            if level is not None and level > self.depth:
                self.problems.append((node.lineno, f"walks {level - self.depth} level(s) above "
                                                   "the repository from __file__"))
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in self.docstrings):
            for what in string_problems(node.value):
                self.problems.append((node.lineno, f"{what} in {node.value[:80]!r}"))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "home" and not node.args
                and "Path" in (getattr(node.func.value, "id", None),
                               getattr(node.func.value, "attr", None))):
            self.problems.append((node.lineno, "the home directory (Path.home())"))
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                and isinstance(node.right, ast.Constant) and node.right.value in ("..", "shared")):
            self.problems.append((node.lineno, f"joins {node.right.value!r} onto a path"))
        super().generic_visit(node)


def python_problems(source: str, depth: int) -> list[tuple[int, str]]:
    walk = _PathWalk(depth)
    walk.visit(ast.parse(source))
    return sorted(set(walk.problems))


def text_problems(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("#", "--")):
            continue
        found += [(number, f"{what}: {line.strip()[:100]}") for what in string_problems(line)]
    return found


def notebook_problems(text: str, depth: int) -> list[tuple[int, str]]:
    found = []
    for index, cell in enumerate(json.loads(text)["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        try:
            problems = python_problems(source, depth)
        except SyntaxError:  # IPython magics: fall back to the line scan
            problems = text_problems(source)
        found += [(line, f"cell {index}: {what}") for line, what in problems]
    return found


def problems_in(path: Path, root: Path) -> list[tuple[int, str]]:
    depth = len(path.relative_to(root).parts)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".py":
        return python_problems(text, depth)
    if path.suffix == ".ipynb":
        return notebook_problems(text, depth)
    if path.suffix in TEXT_SUFFIXES or path.name == "Makefile":
        return text_problems(text)
    return []


# --------------------------------------------------------------------------- the scan


def test_no_test_module_or_build_file_refers_to_a_path_outside_the_repository():
    files = scanned_files(REPO)
    assert any(f.name == "stripe_spec.py" for f in files) and any(f.suffix == ".ipynb" for f in files)
    found = [f"{path.relative_to(REPO)}:{line}: {what}"
             for path in files for line, what in problems_in(path, REPO)]
    assert found == [], "paths outside the repository:\n" + "\n".join(found)


def test_the_scan_catches_the_ways_a_path_leaves_the_repository():
    depth = 2  # a file in tests/
    leaving = [
        'SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "stripe-openapi"',
        'SPEC = Path(__file__).resolve().parents[2] / "spec3.json"',
        'SPEC = Path(__file__).parent.parent.parent / "x"',
        '_REPO = Path(__file__).resolve().parents[1]\nSPEC = _REPO.parent / "spec"',
        'ROOT = Path(__file__).resolve().parent\nREPO = ROOT.parent\nOUT = REPO.parent / "x"',
        'SPEC = os.path.join(os.path.dirname(os.path.dirname(__file__)), "..", "spec")',
        'SPEC = Path(__file__).parent / "../../shared/spec3.json"',
        'SPEC = "/work/shared/stripe-openapi/spec3.json"',
        'SPEC = Path("/home/me/spec3.json")',
        'SPEC = Path.home() / "specs" / "spec3.json"',
        'SPEC = Path("~/specs/spec3.json").expanduser()',
        'def f():\n    return open(f"{base}/../spec3.json")',
    ]
    for source in leaving:
        assert python_problems(source, depth), source
    staying = [
        '"""Where it came from: ../shared/stripe-openapi (prose, not a path)."""',
        'REPO = Path(__file__).resolve().parents[1]\nDATA = REPO / "tests" / "data"',
        'HERE = Path(__file__).resolve().parent\nSPEC = HERE / "data" / "stripe-openapi"',
        'PG = Path("/usr/lib/postgresql/15/bin")',
        'conf = "shared_preload_libraries = \'pg_stat_statements\'"',
        'url = "/v1/checkout/sessions"',
        'def demo_dir():\n    return paths.home() / "demo"',
    ]
    for source in staying:
        assert python_problems(source, depth) == [], source
    assert text_problems("test:\n\tpytest ../shared/tests\n")
    assert text_problems("# a comment about ../shared\ntest:\n\tpytest tests\n") == []


# --------------------------------------------------------------------------- the carried spec

SPEC_SHA256 = "c4474e1a1a17d5277c7c18b0b9cf81077a7a0b1e801716181977ec85d9a2ec6c"
FIXTURES_SHA256 = "eb74d3298b5c566ace659da06ac8e395c73246e9e7592e2b0cb6e5e0d9916419"


def test_the_stripe_specification_is_carried_in_the_repository():
    for path in (stripe_spec.SPEC_PATH, stripe_spec.FIXTURES_PATH, stripe_spec.LICENSE_PATH):
        assert path.is_file(), path
        assert path.resolve().is_relative_to(REPO / "tests" / "data"), path


def test_the_carried_specification_is_api_version_2023_08_16_unaltered():
    with gzip.open(stripe_spec.SPEC_PATH, "rb") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == SPEC_SHA256
    spec = json.loads(raw)
    assert spec["openapi"].startswith("3.0")
    assert spec["info"]["version"] == "2023-08-16"
    assert len(spec["components"]["schemas"]) == 819
    with gzip.open(stripe_spec.FIXTURES_PATH, "rb") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == FIXTURES_SHA256
    assert {"charge", "invoice", "subscription", "event"} <= set(json.loads(raw)["resources"])


def test_the_specification_version_is_the_one_every_request_pins():
    assert (stripe_spec.API_VERSION == stripe_fixtures.API_VERSION == ops_lib.stripe_api.API_VERSION
            == ops_lib.stripe_emulator.objects.API_VERSION == "2023-08-16")


def test_the_specifications_mit_licence_is_beside_it():
    licence = stripe_spec.LICENSE_PATH.read_text(encoding="utf-8")
    assert licence.startswith("The MIT License")
    assert "Stripe, Inc." in licence
    assert "The above copyright notice and this permission notice shall be included" in licence
    readme = (stripe_spec.SPEC_DIR / "README.md").read_text(encoding="utf-8")
    assert "2023-08-16" in readme and "LICENSE" in readme
