"""What a check found, in one shape for the notebook, the archive and the run's JSON.

A check returns a ``Finding``. Left as a cell's last expression, it renders as an HTML block
for people and also carries itself as ``application/vnd.opsbook.finding+json``: the runner
reads those outputs back from the executed notebook, so the notebook is the single record of
what the run found.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .literal import html_attr, html_text, inert, one_line

FINDING_MIME = "application/vnd.opsbook.finding+json"
METRICS_MIME = "application/vnd.opsbook.metrics+json"
ACTION_MIME = "application/vnd.opsbook.action+json"
RUN_MIME = "application/vnd.opsbook.run+json"  # a run's identity, displayed where it starts

SEVERITIES = ("ok", "info", "warning", "critical")
MAX_JSON_ROWS = 200  # evidence rows a finding keeps in the run's JSON (the notebook table shows 50)
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

_COLOURS = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828"}


def severity_rank(severity: str) -> int:
    return _RANK[severity]


def worst(severities: Iterable[str]) -> str:
    return max(severities, key=severity_rank, default="ok")


def _plain(value: Any) -> Any:
    """JSON-safe copy of evidence rows (timestamps, Decimals, intervals become strings or numbers)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@dataclass
class Finding:
    check: str
    severity: str
    title: str
    items: list = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    remediation: str | None = None
    note: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"unknown severity {self.severity!r}")
        self.rows = _plain(list(self.rows))
        self.items = _plain(list(self.items))
        if self.count is None:
            self.count = len(self.items) if self.items else len(self.rows)

    @classmethod
    def from_rows(
        cls,
        check: str,
        rows: list[dict],
        *,
        severity: str,
        title: str,
        ok_title: str,
        item: str | None = None,
        items: Iterable | None = None,
        remediation: str | None = None,
        note: str | None = None,
    ) -> "Finding":
        """The usual shape: any row is a problem of ``severity``; no rows is ``ok``.

        Items are ``row[item]`` for each row, or ``items`` when given (e.g. sorted or deduplicated ids).
        """
        if not rows:
            return cls(check, "ok", ok_title, note=note)
        if items is None:
            items = [row[item] for row in rows] if item else []
        return cls(check, severity, title, items=items, rows=rows, remediation=remediation, note=note)

    @property
    def is_problem(self) -> bool:
        return self.severity != "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What the run's JSON keeps per finding: everything, its evidence capped at
        ``MAX_JSON_ROWS`` rows (``rows_total`` says how many there were)."""
        data = {k: v for k, v in self.to_dict().items() if v not in (None, [])}
        if len(self.rows) > MAX_JSON_ROWS:
            data["rows"], data["rows_total"] = self.rows[:MAX_JSON_ROWS], len(self.rows)
        return data

    def _repr_html_(self) -> str:
        colour = _COLOURS[self.severity]
        parts = [
            f'<b style="color:{colour}">{self.severity.upper()}</b> '
            f"<code>{html_text(self.check)}</code> — {html_text(self.title, limit=1000)}",
        ]
        if self.note:
            parts.append(f"<div><i>{html_text(self.note, limit=2000)}</i></div>")
        if self.remediation and self.is_problem:
            parts.append(f"<div><b>Fix:</b> {html_text(self.remediation, limit=2000)}</div>")
        if self.rows:
            parts.append(rows_to_html(self.rows))
        return inert("".join(parts), classes="opsbook-finding", attrs=(
            f'data-check="{html_attr(self.check)}" style="border-left:6px solid {colour};padding:4px 10px;margin:6px 0"'))

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {
            "text/html": self._repr_html_(),
            "text/plain": f"[{self.severity}] {one_line(self.check)}: {one_line(self.title, limit=1000)}",
            FINDING_MIME: self.summary(),
        }


def run_checks(checks: Mapping[str, Callable[..., Finding]], inputs: Mapping[str, Any],
               options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Finding]:
    """Every check of a domain's ``CHECKS`` (check id -> function), in order.

    The one way each domain package runs its checks: a check is called with the ``inputs`` its
    parameters name (``conn``, ``usage``, ``events``, …) and its own keyword options from
    ``options[check_id]``; an option for a check id the domain does not have is refused.
    """
    options = dict(options or {})
    unknown = set(options) - set(checks)
    if unknown:
        from .errors import ParameterError

        raise ParameterError(f"unknown check id(s): {', '.join(sorted(unknown))}; known: {', '.join(checks)}")
    findings = []
    for check_id, check in checks.items():
        wanted = inspect.signature(check).parameters
        given = {name: inputs[name] for name in wanted if name in inputs}
        findings.append(check(**given, **options.get(check_id, {})))
    return findings


def rows_to_html(rows: list[dict], limit: int = 50) -> str:
    """Evidence rows as an HTML table; every header and cell is shown as literal text."""
    columns = list(rows[0].keys())
    head = "".join(f"<th>{html_text(c)}</th>" for c in columns)
    body = []
    for row in rows[:limit]:
        cells = "".join(f"<td>{html_text(_cell(row.get(c)))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    more = (f"<div>… {len(rows) - limit} more rows: the run's JSON keeps up to {MAX_JSON_ROWS} "
            "(findings[].rows)</div>") if len(rows) > limit else ""
    # overflow-wrap: a long word (a statement without spaces, a hash) wraps instead of widening the page
    table = inert(f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>', tag="table",
                  classes="dataframe", attrs='style="overflow-wrap:anywhere"')
    return f'<div style="overflow-x:auto">{table}</div>{more}'  # a wide table scrolls, never clipped


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class Metrics(dict):
    """Numbers the run measured (not problems): shown as a small table, kept in the JSON."""

    def _repr_mimebundle_(self, include=None, exclude=None):
        plain = _plain(dict(self))
        rows = [{"metric": k, "value": v} for k, v in plain.items()]
        return {
            "text/html": rows_to_html(rows) if rows else "",
            "text/plain": json.dumps(plain),
            METRICS_MIME: plain,
        }


@dataclass
class Action:
    """A remediation step: planned (dry run) or applied; the runner keeps both in the JSON."""

    action: str
    target: str
    reason: str
    applied: bool = False
    outcome: str = "planned"
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _plain(asdict(self))


class ActionLog(list):
    """The remediation plan or its result, displayed as one table."""

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = [a.to_dict() for a in self]
        if not data:
            text = "Nothing to do."
            return {"text/html": inert(text, tag="p"), "text/plain": text, ACTION_MIME: []}
        shown = [{k: v for k, v in row.items() if k != "detail"} for row in data]
        return {"text/html": rows_to_html(shown), "text/plain": json.dumps(shown, indent=1), ACTION_MIME: data}
