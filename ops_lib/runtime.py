"""What a runbook notebook needs at its top: the target, a read-only connection, the run's identity.

    ctx = runtime.start("slow_queries", run_id=run_id)
    conn = ctx.connect()

Nothing here reads notebook parameters for the target: it comes from the environment (or the
demo), so no secret is ever written into a notebook.
"""
from __future__ import annotations

import os

import secrets as _secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from . import __version__, bulk, db
from . import target as target_mod
from .audit import AuditLog
from .demo import target_or_demo
from .findings import RUN_MIME, Finding, rows_to_html, worst
from .literal import html_text, inert, visible
from .schema_map import SchemaMap


def new_run_id(runbook: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{runbook}-{now.strftime('%Y%m%dT%H%M%SZ')}-{_secrets.token_hex(3)}"


@dataclass
class RunContext:
    runbook: str
    run_id: str
    target: target_mod.Target
    statement_timeout_ms: int = db.DEFAULT_STATEMENT_TIMEOUT_MS
    findings: list[Finding] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @cached_property
    def engine(self):
        return db.make_engine(
            self.target.require_database(),
            runbook=self.runbook,
            run_id=self.run_id,
            statement_timeout_ms=self.statement_timeout_ms,
        )

    def connect(self):
        """A read-only connection for the checks."""
        return db.connect(self.engine)

    def connect_for_changes(self):
        """A writable connection, for a remediation run with apply=True only."""
        engine = db.make_engine(self.target.require_database(), runbook=self.runbook, run_id=self.run_id, read_only=False)
        return db.connect(engine)

    @cached_property
    def stripe(self):
        """A StripeClient pinned to the specification's API version, for the target's key."""
        from . import stripe_api
        from .errors import ConfigurationError

        if not self.target.stripe_api_key:
            raise ConfigurationError("STRIPE_API_KEY is not set — export a restricted read-only key (rk_test_… or rk_live_…)")
        return stripe_api.make_client(self.target.stripe_api_key, self.target.stripe_api_base)

    @cached_property
    def schema(self) -> SchemaMap:
        return SchemaMap.load(self.target.schema_path)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.run_id, self.runbook, self.target.describe()["database"] or "", masker=self.target.masker())

    def record(self, finding: Finding) -> Finding:
        """Keep a check's finding for the closing verdict; returns it so the cell displays it."""
        self.findings = [f for f in self.findings if f.check != finding.check] + [finding]
        return finding

    def _repr_html_(self) -> str:
        described = self.target.describe()
        parts = [
            f"<b>{html_text(self.runbook)}</b> run <code>{html_text(self.run_id)}</code>",
            f"database <code>{html_text(described['database'] or 'none')}</code>",
            f"stripe <code>{html_text(described['stripe'] or 'not configured')}</code>",
        ]
        if described["demo"]:
            parts.append("<i>demo target</i>")
        return inert(" · ".join(parts) + f" · opsbook {html_text(__version__)}")

    def _repr_mimebundle_(self, include=None, exclude=None):
        # The run's identity travels with the notebook: a save in JupyterLab archives it as this run.
        return {"text/html": self._repr_html_(), "text/plain": f"{self.runbook} run {self.run_id}",
                RUN_MIME: {"run_id": self.run_id, "runbook": self.runbook, "target": self.target.describe(),
                           "started_at": self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z")}}

    def verdict(self) -> "Verdict":
        return Verdict(self.findings)


@dataclass
class Verdict:
    findings: list[Finding]

    @property
    def severity(self) -> str:
        return worst(f.severity for f in self.findings)

    def _repr_html_(self) -> str:
        problems = [f for f in self.findings if f.is_problem]
        if os.environ.get("OPSBOOK_ARCHIVED_RUN"):  # the archived report has the run's verdict on top, once
            return inert(f"<p><a href=\"#\">The verdict</a> of this run is at the top: "
                         f"{len(problems)} of {len(self.findings)} checks found something.</p>")
        rows = [{"check": f.check, "severity": f.severity, "count": f.count, "title": f.title} for f in problems]
        head = f"<h3>Verdict: {html_text(self.severity.upper())}</h3>"
        if not rows:
            return inert(head + f"<p>All {len(self.findings)} checks passed.</p>")
        return inert(head + f"<p>{len(rows)} of {len(self.findings)} checks found something.</p>" + rows_to_html(rows))


def _show_figures_inline() -> None:
    """In a kernel, display matplotlib figures left as a cell's value (JupyterLab and papermill alike)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")


def _tables_without_math() -> None:
    """DataFrames this kernel displays carry MathJax's ignore classes: a ``$`` in a statement or
    a name (``$1`` in every normalised statement) must not be typeset as math.

    Registered by the DataFrame's name, so a run's first cell does not pay for importing pandas.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    html = shell.display_formatter.formatters["text/html"]
    for module in ("pandas", "pandas.core.frame"):  # DataFrame.__module__ in pandas 3, and before
        html.for_type_by_name(module, "DataFrame", _frame_html)


def _frame_html(frame) -> str | None:
    import pandas as pd

    with pd.option_context("display.html.use_mathjax", False):
        return frame._repr_html_()


def start(runbook: str, run_id: str | None = None, *, statement_timeout_ms: int = db.DEFAULT_STATEMENT_TIMEOUT_MS) -> RunContext:
    """The run's context; with no run_id (an interactive session) one is made up."""
    _show_figures_inline()
    _tables_without_math()
    bulk.return_large_blocks()
    return RunContext(
        runbook=runbook,
        run_id=run_id or new_run_id(runbook),
        target=target_or_demo(),  # no target variables: the demo, started if needed
        statement_timeout_ms=statement_timeout_ms,
    )


def table(rows: list[dict], empty: str = "(none)"):
    """Rows as a DataFrame for display; a short note when there are none.

    Text values (and column names) are shown with their control characters as escapes, so a NUL,
    an ANSI escape or a right-to-left override in target text cannot cut or reorder the table.

    More rows than pandas shows (``display.max_rows``: a million organisations' usage) become an
    ``Excerpt``: the first and last rows pandas would show, numbered as in the whole table, and
    the whole table's size — a 500,000-row frame built only to show ten of its rows cost seconds
    and hundreds of MB.
    """
    import pandas as pd

    pd.set_option("display.html.use_mathjax", False)  # also when shown without runtime.start()
    if not rows:
        from IPython.display import HTML

        return HTML(inert(f"<i>{html_text(empty)}</i>", tag="p"))
    total = len(rows)
    if total <= pd.get_option("display.max_rows"):
        return _visible_frame(pd.DataFrame(rows))
    half = max(1, (pd.get_option("display.min_rows") or 10) // 2)
    shown = [*rows[:half], *rows[total - half:]]
    frame = _visible_frame(pd.DataFrame(shown, index=[*range(half), *range(total - half, total)]))
    return Excerpt(frame, total, half)


def _visible_frame(frame):
    frame.columns = [visible(c) for c in frame.columns]
    for column in frame.select_dtypes(include=["object", "string"]).columns:
        frame[column] = frame[column].map(lambda v: visible(v) if isinstance(v, str) else v)
    return frame


class Excerpt:
    """A long table as pandas shows one: its first and last ``half`` rows (``frame``, indexed by
    their place in the whole table), a row of "…" between them, and ``rows`` × columns under it."""

    def __init__(self, frame, rows: int, half: int):
        self.frame, self.rows, self.half = frame, rows, half

    def __len__(self) -> int:
        return self.rows

    def _shown(self):
        import pandas as pd

        gap = pd.DataFrame([["…"] * len(self.frame.columns)], columns=self.frame.columns, index=["…"])
        return pd.concat([self.frame.iloc[:self.half].astype(object), gap, self.frame.iloc[self.half:].astype(object)])

    def _size(self) -> str:
        return f"{self.rows:,} rows × {len(self.frame.columns)} columns (the first and last {self.half} shown)"

    def _repr_html_(self) -> str:
        return self._shown()._repr_html_() + inert(html_text(self._size()), tag="p")

    def __repr__(self) -> str:
        return f"{self._shown()!r}\n\n{self._size()}"
