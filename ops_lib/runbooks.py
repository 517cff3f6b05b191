"""The runbooks opsbook knows: every notebook in the runbook folders, each declared by itself.

A runbook is a notebook. Its ``parameters`` cell declares each parameter once — the name, the
default (whose type is the parameter's type) and, in the line's comment, its help — read the
way papermill reads it (``papermill.inspect_notebook``). Beside them, in that cell's metadata,
``opsbook.constraints`` bounds them (minimum, maximum, choices, pattern). The notebook's metadata
``opsbook`` says what a run needs before its kernel starts: title and question, the schema
mapping entities it reads and the columns of each its code reads unconditionally (``columns``:
entity → logical names; a mapping without one is refused before the run), the one Stripe read its key must be allowed (``stripe_probe``), and a
check of its parameters against the target (``preflight``: ``module:function``).

The folders: those named by ``OPSBOOK_RUNBOOKS`` (``:``-separated, like ``PATH``; the first that
has a name wins), then the shipped ones. A folder's parameter sets are
``params/<runbook>/*.yaml`` inside it (the shipped ones: the project's ``params/``).
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .errors import ConfigurationError, InvalidInvocation, quote
from .parameters import Param, ParamSpec

RUNBOOK_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
RUNNER_PARAMETERS = ("run_id",)  # set by the runner, not by whoever runs the runbook
_TYPES = {bool: bool, int: int, float: float, str: str, list: list}
_CONSTRAINTS = ("minimum", "maximum", "choices", "pattern", "pattern_hint", "max_length", "max_items", "url")


class RunbookDefinitionError(ConfigurationError):
    """A runbook notebook that cannot be read as a runbook (exit 3): the message names the file."""


@dataclass(frozen=True)
class Runbook:
    name: str
    notebook: Path
    title: str
    question: str
    params: ParamSpec
    params_dir: Path  # holds <name>/*.yaml parameter sets
    shipped: bool = True
    entities: tuple[str, ...] = ()  # schema-mapping entities it reads; checked before the run
    optional_entities: tuple[str, ...] = ()  # read when the mapping names them; then checked too
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)  # entity → the columns its code reads
    stripe_probe: str | None = None  # one cheap read the runbook's key must be allowed
    preflight: str | None = None  # "module:function(params, target)": raises InvalidInvocation

    @property
    def uses_stripe(self) -> bool:
        return self.stripe_probe is not None

    def parameter_sets(self) -> list[Path]:
        return sorted((self.params_dir / self.name).glob("*.yaml"))

    def validate(self, params: dict[str, Any], target) -> None:
        """The runbook's own checks of its parameters against each other and the target."""
        if not self.preflight:
            return
        module, _, function = self.preflight.partition(":")
        try:
            check = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError, ValueError) as err:
            raise RunbookDefinitionError(
                f"{self.notebook}: its metadata opsbook.preflight names {quote(self.preflight)}, which cannot be "
                f"imported ({type(err).__name__}) — fix the notebook's metadata"
            ) from None
        check(params, target)


def folders() -> list[tuple[Path, Path, bool]]:
    """(notebook folder, parameter-set folder, shipped) in the order names are looked up."""
    own = [Path(entry).expanduser().resolve() for entry in os.environ.get("OPSBOOK_RUNBOOKS", "").split(":") if entry]
    return [*((folder, folder / "params", False) for folder in own), (paths.notebooks_dir(), paths.params_dir(), True)]


_cache: dict[tuple[str, int, int], Runbook] = {}


def load(notebook: Path, params_dir: Path, shipped: bool) -> Runbook:
    """Read one runbook notebook (cached while the file is unchanged)."""
    try:
        stat = notebook.stat()
    except OSError as err:
        raise RunbookDefinitionError(f"runbook notebook {notebook} cannot be read ({err.strerror})") from None
    key = (str(notebook), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        _cache[key] = _read(notebook, params_dir, shipped)
    return _cache[key]


def _read(notebook: Path, params_dir: Path, shipped: bool) -> Runbook:
    name = notebook.stem
    try:
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise RunbookDefinitionError(f"runbook notebook {notebook} is not a readable notebook ({type(err).__name__})") from None
    meta = nb.get("metadata", {}).get("opsbook", {}) if isinstance(nb.get("metadata"), dict) else {}
    tagged = [c for c in cells if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    constraints = (tagged[0].get("metadata", {}).get("opsbook", {}).get("constraints", {}) if tagged else {}) or {}
    params = ParamSpec(tuple(_param(notebook, declared, constraints.get(declared["name"], {}))
                             for declared in _declared(notebook) if declared["name"] not in RUNNER_PARAMETERS))
    columns = meta.get("columns") or {}
    if not isinstance(columns, dict) or not all(
            isinstance(cols, list) and all(isinstance(c, str) for c in cols) for cols in columns.values()):
        raise RunbookDefinitionError(f"{notebook}: its metadata opsbook.columns must map each entity to a list of "
                                     "column names")
    unknown = set(constraints) - {p.name for p in params}
    if unknown:
        raise RunbookDefinitionError(f"{notebook}: constraints for {', '.join(sorted(unknown))}, which its parameters cell does not declare")
    return Runbook(
        name=name,
        notebook=notebook,
        title=str(meta.get("title") or _first_heading(cells) or name),
        question=str(meta.get("question", "")),
        params=params,
        params_dir=params_dir,
        shipped=shipped,
        entities=tuple(meta.get("entities", ())),
        optional_entities=tuple(meta.get("optional_entities", ())),
        columns={str(entity): tuple(cols) for entity, cols in columns.items()},
        stripe_probe=meta.get("stripe_probe"),
        preflight=meta.get("preflight"),
    )


def _declared(notebook: Path) -> list[dict]:
    """The parameters cell as papermill reads it: name, default (source text), help."""
    from .execution import _silence_slow_imports

    _silence_slow_imports()
    import papermill as pm

    try:
        return list(pm.inspect_notebook(str(notebook)).values())
    except Exception as err:  # papermill's own parse errors have no common base
        raise RunbookDefinitionError(f"{notebook}: its parameters cell cannot be read ({type(err).__name__}: {err})") from None


def _param(notebook: Path, declared: dict, constraints: dict) -> Param:
    name = declared["name"]
    try:
        default = ast.literal_eval(declared["default"])
    except (ValueError, SyntaxError):
        raise RunbookDefinitionError(
            f"{notebook}: parameter {name}'s default {quote(declared['default'])} is not a literal — "
            "give a number, text, true/false or a list of texts"
        ) from None
    kind = type(default)
    if kind not in _TYPES or (kind is list and not all(isinstance(v, str) for v in default)):
        raise RunbookDefinitionError(
            f"{notebook}: parameter {name}'s default is a {kind.__name__}; a runbook parameter is a bool, int, "
            "float, str or list of str"
        )
    bad = set(constraints) - set(_CONSTRAINTS)
    if bad:
        raise RunbookDefinitionError(f"{notebook}: parameter {name} has unknown constraints {sorted(bad)}; known: {', '.join(_CONSTRAINTS)}")
    given = {k: (tuple(v) if k in ("choices", "url") else v) for k, v in constraints.items()}
    return Param(name, kind, default, str(declared.get("help") or ""), **given)


def _first_heading(cells: list) -> str | None:
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            match = re.search(r"^#\s+(.+)$", source, re.M)
            if match:
                return match.group(1).strip()
    return None


def all_runbooks() -> dict[str, Runbook]:
    """Every runbook by name; a name in an earlier folder hides the same name in a later one."""
    found: dict[str, Runbook] = {}
    for folder, params_dir, shipped in folders():
        for notebook in sorted(folder.glob("*.ipynb")) if folder.is_dir() else ():
            if RUNBOOK_NAME.fullmatch(notebook.stem) and notebook.stem not in found:
                found[notebook.stem] = load(notebook, params_dir, shipped)
    return found


def names() -> list[str]:
    """Runbook names without reading the notebooks (for messages and `run --all`)."""
    seen: list[str] = []
    for folder, _, _ in folders():
        for notebook in sorted(folder.glob("*.ipynb")) if folder.is_dir() else ():
            if RUNBOOK_NAME.fullmatch(notebook.stem) and notebook.stem not in seen:
                seen.append(notebook.stem)
    return seen


def notebook_path(name: str) -> Path | None:
    """The notebook ``get(name)`` would read, without reading it."""
    for folder, _, _ in folders():
        notebook = folder / f"{name}.ipynb"
        if RUNBOOK_NAME.fullmatch(name) and notebook.is_file():
            return notebook
    return None


def get(name: str) -> Runbook:
    for folder, params_dir, shipped in folders():
        notebook = folder / f"{name}.ipynb"
        if RUNBOOK_NAME.fullmatch(name) and notebook.is_file():
            return load(notebook, params_dir, shipped)
    raise InvalidInvocation(f"unknown runbook {quote(name, 60)}; known: {', '.join(names())} (see `opsbook list`)")


# --------------------------------------------------------------------------------------------
# The shipped runbooks' checks of their parameters against the target (named in their metadata)


def check_webhook_failure(params: dict, target) -> None:
    if params["apply"]:
        from .webhooks.replay import require_replay_target

        require_replay_target(target.webhook_url, target.stripe_webhook_secret)


def check_revenue_report(params: dict, target) -> None:
    from .revenue.period import resolve_period

    resolve_period(params["period"], params["start_date"], params["end_date"])


def check_quota_audit(params: dict, target) -> None:
    from .quota.plans import read_plans_file

    read_plans_file(params["plans_file"])
    if params["plan_limits"] == "database":
        # (quota.plans.load_plans reads the table only when it maps code and usage_limit)
        from .errors import SchemaMappingError
        from .schema_map import SchemaMap

        schema = SchemaMap.load(target.schema_path)
        plans = schema.entities.get("plans") or ()
        if not plans:
            raise SchemaMappingError(f"plan_limits=database needs a plans entity in {schema.path} — add entities.plans "
                                     "(the app's plan table), or use plan_limits=params")
        schema.require_columns({"plans": ("code", "usage_limit")}, "plan_limits=database", ["plans"])


# --------------------------------------------------------------------------------------------
# A team's own runbook, from the template


def create(name: str, title: str | None = None) -> Path:
    """Write a thin runbook notebook (and an example parameter set) into the first OPSBOOK_RUNBOOKS
    folder; returns the notebook's path. Nothing is overwritten."""
    if not RUNBOOK_NAME.fullmatch(name):
        raise InvalidInvocation(f"runbook name {quote(name, 60)}: use lower-case letters, digits and _ (like disk_usage), "
                                "starting with a letter")
    own = [entry for entry in os.environ.get("OPSBOOK_RUNBOOKS", "").split(":") if entry]
    if not own:
        raise InvalidInvocation("OPSBOOK_RUNBOOKS is not set — export OPSBOOK_RUNBOOKS=/path/to/your/runbooks "
                                "(a folder; several are :-separated, the first gets new runbooks)")
    if name in names():
        raise InvalidInvocation(f"there is already a runbook {name!r} ({get(name).notebook}) — choose another name")
    folder = Path(own[0]).expanduser().resolve()
    title = title or name.replace("_", " ").capitalize()
    template = (Path(__file__).parent / "templates" / "runbook.ipynb").read_text(encoding="utf-8")
    text = template.replace("RUNBOOK_NAME", name).replace("RUNBOOK_TITLE", json.dumps(title)[1:-1]) \
        .replace("RUNBOOK_QUESTION", json.dumps(f"What {title.lower()} checks, in one sentence")[1:-1])
    notebook = folder / f"{name}.ipynb"
    example = folder / "params" / name / "daily.yaml"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(notebook, "x", encoding="utf-8") as handle:
            handle.write(text)
        example.parent.mkdir(parents=True, exist_ok=True)
        if not example.exists():
            example.write_text("# opsbook run " + name + " -f daily\nmin_rows: 1000\n", encoding="utf-8")
    except OSError as err:
        raise ConfigurationError(f"cannot write {notebook} ({err.strerror}) — is OPSBOOK_RUNBOOKS a folder you may write?") from None
    return notebook
