"""Typed runbook parameters, merged from parameter sets and the command line, checked before any kernel starts.

Order of precedence (later wins): the notebook's defaults, then each ``-f`` file in the order
given, then each ``-p NAME VALUE``. A wrong name, type or range stops the run with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ParameterError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # bool, int, float, str or list (of str)
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] | None = None

    def describe_type(self) -> str:
        if self.type is list:
            return "list" + (f" of {{{', '.join(self.choices)}}}" if self.choices else "")
        if self.choices:
            return "{" + ", ".join(self.choices) + "}"
        return self.type.__name__

    def coerce(self, value: Any, source: str) -> Any:
        """Turn a YAML value or a command-line string into this parameter's type, or say why not."""
        try:
            converted = self._convert(value)
        except (TypeError, ValueError):
            raise ParameterError(
                f"parameter {self.name!r} from {source}: {value!r} is not a {self.describe_type()} — {self.help}"
            ) from None
        self._check_range(converted, source)
        return converted

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError
        if self.type is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if self.type is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if self.type is list:
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if self.type is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        raise TypeError(self.type)

    def _check_range(self, value: Any, source: str) -> None:
        values = value if isinstance(value, list) else [value]
        if self.choices is not None:
            bad = [v for v in values if v not in self.choices]
            if bad:
                raise ParameterError(
                    f"parameter {self.name!r} from {source}: {bad[0]!r} is not one of {', '.join(self.choices)}"
                )
        if self.type in (int, float):
            if self.minimum is not None and value < self.minimum:
                raise ParameterError(f"parameter {self.name!r} from {source}: {value} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ParameterError(f"parameter {self.name!r} from {source}: {value} is above the maximum {self.maximum:g}")


@dataclass(frozen=True)
class ParamSpec:
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __iter__(self):
        return iter(self.params)

    def get(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        known = ", ".join(p.name for p in self.params)
        raise ParameterError(f"unknown parameter {name!r}; this runbook takes: {known}")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(
        self,
        files: Sequence[Path | str] = (),
        overrides: Sequence[tuple[str, Any]] = (),
    ) -> dict[str, Any]:
        values = self.defaults()
        for path in files:
            for name, value in load_parameter_file(path).items():
                values[name] = self.get(name).coerce(value, str(path))
        for name, value in overrides:
            values[name] = self.get(name).coerce(value, f"-p {name}")
        return values


def load_yaml_mapping(path: Path | str, *, what: str, error: type[Exception],
                      missing_hint: str = "", shape: str = "a mapping") -> dict:
    """A YAML file that must hold a mapping; anything else is one line naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"{what} {path} does not exist{missing_hint}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML{where}: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be {shape}")
    return data


def load_parameter_file(path: Path | str) -> dict[str, Any]:
    return load_yaml_mapping(path, what="parameter file", error=ParameterError, shape="a mapping of name: value")
