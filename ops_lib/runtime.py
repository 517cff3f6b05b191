"""What a runbook notebook needs at its top: the target, a read-only connection, the run's identity.

    ctx = runtime.start("slow_queries", run_id=run_id)
    conn = ctx.connect()

Nothing here reads notebook parameters for the target: it comes from the environment (or the
demo), so no secret is ever written into a notebook.
"""
from __future__ import annotations

import html
import secrets as _secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property

from . import __version__, db
from . import target as target_mod
from .audit import AuditLog
from .findings import Finding, rows_to_html, worst
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
            f"<b>{html.escape(self.runbook)}</b> run <code>{html.escape(self.run_id)}</code>",
            f"database <code>{html.escape(described['database'] or 'none')}</code>",
            f"stripe <code>{html.escape(described['stripe'] or 'not configured')}</code>",
        ]
        if described["demo"]:
            parts.append("<i>demo target</i>")
        return "<div>" + " · ".join(parts) + f" · opsbook {__version__}</div>"

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
        rows = [{"check": f.check, "severity": f.severity, "count": f.count, "title": f.title} for f in problems]
        head = f"<h3>Verdict: {self.severity.upper()}</h3>"
        if not rows:
            return head + f"<p>All {len(self.findings)} checks passed.</p>"
        return head + f"<p>{len(rows)} of {len(self.findings)} checks found something.</p>" + rows_to_html(rows)


def _show_figures_inline() -> None:
    """In a kernel, display matplotlib figures left as a cell's value (JupyterLab and papermill alike)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")


def start(runbook: str, run_id: str | None = None, *, statement_timeout_ms: int = db.DEFAULT_STATEMENT_TIMEOUT_MS) -> RunContext:
    """The run's context; with no run_id (an interactive session) one is made up."""
    _show_figures_inline()
    return RunContext(
        runbook=runbook,
        run_id=run_id or new_run_id(runbook),
        target=target_mod.from_env(),
        statement_timeout_ms=statement_timeout_ms,
    )


def table(rows: list[dict], empty: str = "(none)"):
    """Rows as a DataFrame for display; a short note when there are none."""
    import pandas as pd

    if not rows:
        from IPython.display import Markdown

        return Markdown(f"*{empty}*")
    return pd.DataFrame(rows)
