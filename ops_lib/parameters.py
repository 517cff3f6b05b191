"""Typed runbook parameters, merged from parameter sets and the command line, checked before any kernel starts.

Order of precedence (later wins): the notebook's defaults, then each ``-f`` file in the order
given, then each ``-p NAME VALUE``. A wrong name, type or range stops the run with one line.

Every value is bounded: a number is finite and within its parameter's range (a parameter that
declares none gets ``DEFAULT_MINIMUM``..``DEFAULT_MAXIMUM``), a text is at most
``MAX_TEXT_CHARS`` characters without control characters, a list at most ``MAX_LIST_ITEMS``
items of at most ``MAX_ITEM_CHARS`` each. The YAML files read here (parameter sets, schema
mappings, plans files) are at most ``MAX_FILE_BYTES`` of UTF-8, and their aliases may not
expand past ``MAX_YAML_VALUES`` values.
"""
from __future__ import annotations

import difflib
import math
import re
import stat
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import yaml

from .errors import ParameterError, first_line, quote

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}

# Bounds for a parameter that declares none: no runbook threshold needs more than a billion,
# and any such number fits a PostgreSQL integer column comparison (bigint) with room to spare.
DEFAULT_MAXIMUM = 1_000_000_000
DEFAULT_MINIMUM = -DEFAULT_MAXIMUM
MAX_TEXT_CHARS = 1000
MAX_LIST_ITEMS = 1000
MAX_ITEM_CHARS = 200
MAX_FILE_BYTES = 1024 * 1024
MAX_YAML_VALUES = 100_000
MAX_MESSAGE_CHARS = 280  # a message that would be longer leaves out what is only helpful
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def show_path(path: Path | str) -> str:
    """A file name as a message shows it: clipped, never spanning lines."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(path))
    return text if len(text) <= 100 else f"…{text[-80:]} (a {len(str(path)):,}-character path)"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


class _Refused(ValueError):
    """The value has the right shape but cannot be used; the message says why."""


def url_problem(url: str, schemes: Sequence[str], *, bare: bool = True) -> str | None:
    """What makes ``url`` unusable as an address to call, in words (None: nothing): a scheme other
    than ``schemes``, no host, a port that cannot exist; if ``bare``, also credentials, a query or
    a fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # (a port out of range, or not a number; an IPv6 address without its brackets)
        return "its port is not a number from 1 to 65535" if ":" in url.split("//", 1)[-1] else "it cannot be parsed"
    if parts.scheme not in schemes:
        return f"it does not start with {' or '.join(f'{scheme}://' for scheme in schemes)}"
    if not parts.hostname:
        return "it names no host"
    if port == 0:
        return "port 0 is not a port a server listens on"
    if not bare:
        return None
    if "@" in parts.netloc:
        return "it holds credentials (user:password@): give them where the runbook says, never in a URL"
    if parts.query or parts.fragment:
        return "it has a query or fragment (?… or #…)"
    return None


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # bool, int, float, str or list (of str)
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Sequence[str] | None = None
    # a str, or each item of a list, must match this (whole); ``pattern_hint`` says what it is in words
    pattern: str | None = None
    pattern_hint: str = ""
    max_length: int | None = None  # characters of a str, or of each list item
    max_items: int | None = None  # items of a list
    # a str (when not empty), or each list item, must be a URL of one of these schemes (``url_problem``)
    url: Sequence[str] | None = None

    @property
    def lower(self) -> float:
        return DEFAULT_MINIMUM if self.minimum is None else self.minimum

    @property
    def upper(self) -> float:
        return DEFAULT_MAXIMUM if self.maximum is None else self.maximum

    def describe_type(self) -> str:
        if self.type is list:
            return "list" + (f" of {{{', '.join(self.choices)}}}" if self.choices else "")
        if self.choices:
            return "{" + ", ".join(self.choices) + "}"
        return self.type.__name__

    def _in_words(self) -> str:
        if self.type is int:
            return "a whole number"
        if self.type is float:
            return "a number"
        if self.type is bool:
            return "true or false"
        if self.type is list:
            return "a list of text items"
        return "text"

    def _range(self) -> str:
        return f"from {_number(self.lower)} to {_number(self.upper)}"

    def coerce(self, value: Any, source: str) -> Any:
        """Turn a YAML value or a command-line string into this parameter's type, or say why not."""
        where = f"parameter {self.name!r} from {show_path(source)}"
        try:
            converted = self._convert(value)
        except _Refused as why:
            raise ParameterError(f"{where}: {why}") from None
        except (TypeError, ValueError, OverflowError):
            hint = (f"give one {self._range()}" if self.type in (int, float)
                    else "give true or false (or yes/no, on/off, 1/0)" if self.type is bool else self.help)
            raise ParameterError(f"{where}: {quote(value)} is not {self._in_words()} — {hint}") from None
        self._check_range(converted, where)
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
            if isinstance(value, str) and len(value.strip()) > 40:  # past any bound: do not parse 4000 digits
                raise _Refused(f"{quote(value)} is far outside the range — give a whole number {self._range()}")
            return int(value.strip()) if isinstance(value, str) else int(value)
        if self.type is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value.strip() if isinstance(value, str) else value)
            if not math.isfinite(number):
                raise _Refused(f"{quote(value)} is not a finite number — give one {self._range()}")
            return number
        if self.type is list:
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list):
                raise ValueError
            limit = self.max_items or MAX_LIST_ITEMS
            if len(value) > limit:
                raise _Refused(f"the list has {len(value):,} items, more than the {limit:,} allowed")
            for n, item in enumerate(value, 1):
                label = f"item {n} of the list"
                if not isinstance(item, str) or not item.strip():
                    raise _Refused(f"{label}, {quote(item)}, is not a non-empty text — {self.help}")
                self._check_text(item, label, self.max_length or MAX_ITEM_CHARS)
            return list(value)
        if self.type is str:
            if isinstance(value, date) and not isinstance(value, datetime):
                value = value.isoformat()  # YAML reads an unquoted 2026-11-30 as a date
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            text = str(value)
            self._check_text(text, "the value", self.max_length or MAX_TEXT_CHARS)
            return text
        raise TypeError(self.type)

    @staticmethod
    def _check_text(text: str, label: str, limit: int) -> None:
        if len(text) > limit:
            raise _Refused(f"{label} is {len(text):,} characters long, more than the {limit:,} allowed "
                           f"({quote(text, 40)}) — is it the right value?")
        if _CONTROL.search(text):
            raise _Refused(f"{label}, {quote(text)}, holds a control character (a newline, tab or NUL) — give it on one line")

    def _check_range(self, value: Any, where: str) -> None:
        values = value if isinstance(value, list) else [value]
        if self.pattern is not None:
            bad = [v for v in values if not re.fullmatch(self.pattern, v)]
            if bad:
                wanted = self.pattern_hint or f"of the form {self.pattern}"
                raise ParameterError(f"{where}: {quote(bad[0])} is not {wanted}")
        if self.url is not None:
            for v in values:
                why = url_problem(v, self.url) if v else None
                if why:
                    raise ParameterError(f"{where}: {quote(v)} is not a usable URL: {why} — {self.help}")
        if self.choices is not None:
            bad = [v for v in values if v not in self.choices]
            if bad:
                raise ParameterError(f"{where}: {quote(bad[0])} is not one of {', '.join(self.choices)}")
        if self.type in (int, float):
            if value < self.lower:
                raise ParameterError(f"{where}: {quote(value)} is below the minimum {_number(self.lower)} — give one {self._range()}")
            if value > self.upper:
                raise ParameterError(f"{where}: {quote(value)} is above the maximum {_number(self.upper)} — give one {self._range()}")


@dataclass(frozen=True)
class ParamSpec:
    params: tuple[Param, ...] = field(default_factory=tuple)

    def __iter__(self):
        return iter(self.params)

    def get(self, name: str, source: str = "") -> Param:
        for param in self.params:
            if param.name == name:
                return param
        names = [p.name for p in self.params]
        head = f"unknown parameter {quote(name, 40)}" + (f" in {show_path(source)}" if source else "")
        close = difflib.get_close_matches(str(name)[:100], names, n=1)
        tail = f" — did you mean {close[0]!r}?" if close else ""
        message = f"{head}; this runbook takes: {', '.join(names)}{tail}"
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{head} (`opsbook list` shows the ones this runbook takes){tail}"
        raise ParameterError(message)

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
                values[name] = self.get(name, str(path)).coerce(value, str(path))
        for name, value in overrides:
            values[name] = self.get(name).coerce(value, f"-p {name}")
        return values


# --------------------------------------------------------------------------- YAML files


def read_text_file(path: Path | str, *, what: str, error: type[Exception], missing_hint: str = "",
                   max_bytes: int = MAX_FILE_BYTES) -> str:
    """A small UTF-8 text file's content, or one line that says why it cannot be used."""
    path = Path(path)
    shown = f"{what} {show_path(path)}"
    fix = missing_hint or " — give the path of a YAML file"
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{shown} does not exist{fix}") from None
    except PermissionError:
        raise error(f"{shown} cannot be read: permission denied on a folder on its path — check the folders' permissions") from None
    except (OSError, ValueError) as err:  # a name too long, a loop of links, a NUL in the name
        raise error(f"{shown} cannot be read: {getattr(err, 'strerror', None) or err}{fix}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{shown} is a directory, not a file{fix}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{shown} is not a regular file (a device, pipe or socket){fix}")
    too_big = f"{shown} is larger than {max_bytes // 1024} KiB, far more than a {what} holds — is it the right file?"
    if info.st_size > max_bytes:
        raise error(too_big.replace("is larger than", f"is {info.st_size:,} bytes, larger than"))
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except PermissionError:
        raise error(f"{shown} cannot be read: permission denied — make it readable (chmod u+r) or run as its owner") from None
    except OSError as err:
        raise error(f"{shown} cannot be read: {err.strerror or err}") from None
    if len(raw) > max_bytes:
        raise error(too_big)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise error(f"{shown} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}) — save it as UTF-8") from None
    if "\x00" in text:
        raise error(f"{shown} holds NUL bytes: it is a binary file, not YAML")
    return text


class _YamlRefused(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing documents whose aliases expand past MAX_YAML_VALUES values
    (the 'billion laughs') or refer to themselves."""

    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        return super().compose_node(parent, index)

    def construct_document(self, node):
        _check_expansion(node, self.aliases)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node, aliases: int, limit: int = MAX_YAML_VALUES) -> None:
    """Count the values the document holds once every alias is expanded, without expanding them."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _YamlRefused("an alias (*name) refers to the value that contains it — write the values out")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = ()
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise _YamlRefused(
                    f"its {aliases} aliases (*name) expand to more than {limit:,} values — write the values out"
                    if aliases else f"it holds more than {limit:,} values, far more than opsbook reads"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def load_yaml_mapping(path: Path | str, *, what: str, error: type[Exception],
                      missing_hint: str = "", shape: str = "a mapping") -> dict:
    """A YAML file that must hold a mapping; anything else is one line naming the file (and line)."""
    path = Path(path)
    text = read_text_file(path, what=what, error=error, missing_hint=missing_hint)
    shown = f"{what} {show_path(path)}"
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise error(f"{shown} is not valid YAML{where}: {quote(problem, 120).strip(chr(39))}") from None
    except _YamlRefused as why:
        raise error(f"{shown} is refused: {why}") from None
    except RecursionError:
        raise error(f"{shown} nests lists or mappings too deeply to be a {what}") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of 5000 digits
        raise error(f"{shown} holds a value opsbook cannot read: {quote(str(err), 120).strip(chr(39))}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a single text", int: "a single number", float: "a single number",
                bool: "a single true/false"}.get(type(data), type(data).__name__)
        raise error(f"{shown} must be {shape}, not {kind}")
    return data


def load_parameter_file(path: Path | str) -> dict[str, Any]:
    return load_yaml_mapping(path, what="parameter file", error=ParameterError, shape="a mapping of name: value",
                             missing_hint=" — give a YAML file of name: value lines, like params/slow_queries/daily.yaml")
